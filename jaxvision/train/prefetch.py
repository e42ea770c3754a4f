"""Device prefetch: keep the next few batches already transferred while a step runs.

`prefetch(batches, put, size)` calls `put` (e.g. the parallel form's `put_batch`, which
starts an asynchronous host-to-device copy) on up to `size` batches ahead of the one being
consumed, so the copy of batch n+1 overlaps step n instead of following it.

The consumer sees exactly what it would see without prefetching: the same batches in the
same order, and an exception raised while reading or transferring batch n (a crashed
reader, a KeyboardInterrupt) is raised only when batch n is asked for - not `size` steps
early - so checkpoints and error reports fall on the same steps.
"""

from __future__ import annotations

import collections
from typing import Callable, Iterator


def prefetch(batches: Iterator, put: Callable = lambda batch: batch, size: int = 2) -> Iterator:
    if size < 0:
        raise ValueError(f"prefetch size must be >= 0, got {size}")
    if size == 0:
        for batch in batches:
            yield put(batch)
        return
    queue: collections.deque = collections.deque()
    exhausted = False

    def fill():
        nonlocal exhausted
        while not exhausted and len(queue) < size:
            try:
                queue.append((put(next(batches)), None))
            except StopIteration:
                exhausted = True
            except BaseException as err:  # noqa: BLE001 - deferred to the step that needs it
                queue.append((None, err))
                exhausted = True

    fill()
    while queue:
        batch, err = queue.popleft()
        if err is not None:
            raise err
        fill()  # start the next transfer before handing this batch to the step
        yield batch
