"""Checkpoints with orbax: periodic, asynchronous, atomic, with exact resume.

orbax writes each step into a temporary folder and renames it when complete, so a
crash or SIGKILL mid-save leaves the previous checkpoint intact. If the newest
finished checkpoint cannot be read (disk fault, manual damage) we fall back to the
previous one and say so, rather than starting over.

With several processes, orbax's own barriers are collectives on the devices; the
processes first meet at a `distributed.barrier`, so none reaches a first collective
long before the others (see `distributed`).
"""

from __future__ import annotations

import logging
from pathlib import Path

import jax
import orbax.checkpoint as ocp
from flax import serialization

from jaxvision.train import distributed

log = logging.getLogger(__name__)


class Checkpointer:
    def __init__(self, directory, *, save_every: int, keep: int = 3, async_save: bool = True):
        self.directory = Path(directory).absolute()
        distributed.barrier("checkpointer")
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=keep,
                save_interval_steps=save_every,
                enable_async_checkpointing=async_save,
                create=True,
            ),
        )

    def all_steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def save(self, step: int, state, metadata: dict | None = None, *, force: bool = False) -> bool:
        args = ocp.args.Composite(
            state=ocp.args.StandardSave(serialization.to_state_dict(state)),
            metadata=ocp.args.JsonSave(metadata or {}),
        )
        distributed.barrier("checkpoint_save")
        return self.manager.save(step, args=args, force=force)

    def restore(self, target_state):
        """Restore the newest readable checkpoint into the structure and shardings of
        `target_state` (arrays or ShapeDtypeStructs). Returns (state, metadata, step)
        or None when the directory holds no checkpoint."""
        abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, serialization.to_state_dict(target_state))
        distributed.barrier("checkpoint_restore")
        for step in reversed(self.all_steps()):
            try:
                restored = self.manager.restore(
                    step,
                    args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract), metadata=ocp.args.JsonRestore()),
                )
            except Exception as err:  # noqa: BLE001 - any unreadable checkpoint: try the previous one
                log.warning("Checkpoint at step %d in %s is unreadable (%s); trying the previous one.",
                            step, self.directory, err)
                continue
            state = serialization.from_state_dict(target_state, restored["state"])
            return state, dict(restored["metadata"] or {}), step
        return None

    def wait(self):
        self.manager.wait_until_finished()

    def close(self):
        self.manager.wait_until_finished()
        self.manager.close()


def load_params(workdir, step: int | None = None, *, collection: str = "params"):
    """Parameters of a trained model for inference: `load_params("runs/vit")`.

    Accepts a run's workdir (which holds `checkpoints/`) or the checkpoint folder itself;
    `step=None` takes the newest. Returns a nested dict of arrays (host memory).
    """
    directory = Path(workdir)
    if (directory / "checkpoints").is_dir():
        directory = directory / "checkpoints"
    if not directory.is_dir():
        raise FileNotFoundError(f"No checkpoint folder at {directory}; pass a run's --workdir.")
    with ocp.CheckpointManager(directory.absolute()) as manager:
        step = manager.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"{directory} holds no finished checkpoint.")
        # Restore onto this process's first device, whatever mesh wrote the checkpoint
        # (a run on 8 GPUs loads for inference on a laptop).
        tree = ocp.StandardCheckpointer().metadata(directory.absolute() / str(step) / "state").item_metadata
        device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        target = jax.tree_util.tree_map(
            lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), dict(tree[collection]))
        restored = manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.PyTreeRestore(item={collection: target}, restore_args=jax.tree_util.tree_map(
                lambda t: ocp.ArrayRestoreArgs(sharding=device), {collection: target}), partial_restore=True)))
    return restored["state"][collection]
