"""Metrics to `metrics.jsonl` (one JSON object a line) and TensorBoard event files.

Only the primary process writes. On resume the JSONL file is cut back to the
restored step, so a resumed run's log equals that of a run that never stopped.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np


def plain(value):
    """A JSON-ready Python number or (nested) list of one."""
    value = np.asarray(value)
    return value.item() if value.ndim == 0 else value.tolist()


class MetricWriter:
    def __init__(self, workdir, *, enabled: bool = True, resume_step: int = 0, tensorboard: bool = True):
        self.enabled = enabled
        self.path = Path(workdir) / "metrics.jsonl"
        self._tb = None
        if not enabled:
            return
        if self.path.exists():
            self._truncate_after(resume_step)
        if tensorboard:
            try:
                from tensorboardX import SummaryWriter
            except ImportError:  # optional: JSONL is the record of truth
                SummaryWriter = None
            if SummaryWriter is not None:
                self._tb = SummaryWriter(str(Path(workdir) / "tensorboard"), purge_step=resume_step + 1)

    def _truncate_after(self, step: int):
        kept = [line for line in self.path.read_text().splitlines() if line and json.loads(line)["step"] <= step]
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text("".join(line + "\n" for line in kept))
        os.replace(tmp, self.path)

    def write(self, step: int, metrics: dict):
        if not self.enabled:
            return
        record = {"step": int(step), **{k: plain(v) for k, v in metrics.items()}}
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        if self._tb is not None:
            for k, v in record.items():
                if k != "step" and isinstance(v, (int, float)) and math.isfinite(v):
                    self._tb.add_scalar(k, v, int(step))
            self._tb.flush()

    def close(self):
        if self._tb is not None:
            self._tb.close()


def read_metrics(workdir) -> list[dict]:
    path = Path(workdir) / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line]
