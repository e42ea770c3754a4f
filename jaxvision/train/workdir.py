"""A run's folder: writable, one run at a time, its run.json, config.json and results.json.

A run started again after it finished keeps its results: `finished_results` returns the
results.json that run wrote, else the results saved with its final checkpoint, else
(checkpoints of older versions) rebuilds them from metrics.jsonl.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import platform
import sys
from pathlib import Path

import jax

from jaxvision.train.logging import read_metrics


def check_writable(workdir: Path) -> None:
    # One probe per process: on a shared filesystem the processes of a job would
    # otherwise delete each other's probe between its write and its removal.
    try:
        workdir.mkdir(parents=True, exist_ok=True)
        probe = workdir / f".write_test.{jax.process_index()}.{os.getpid()}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as err:
        raise PermissionError(
            f"Cannot write to workdir {str(workdir)!r} ({err.strerror}). Pass a writable --workdir."
        ) from err


@contextlib.contextmanager
def lock(workdir: Path, enabled: bool):
    """One run per workdir: a second run would interleave checkpoints and logs."""
    if not enabled:
        yield
        return
    with open(workdir / ".lock", "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            raise RuntimeError(
                f"Workdir {str(workdir)!r} is in use by another run ({f.read().strip() or 'unknown pid'}). "
                "Wait for it to finish, or pass another --workdir."
            ) from None
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()}\n")
        f.flush()
        yield


def host_cpu() -> str:
    """The CPU model and core count, so that a run's timings name their machine."""
    try:
        with open("/proc/cpuinfo") as f:
            name = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), None)
    except OSError:
        name = None
    return f"{name or platform.processor() or 'unknown CPU'}, {os.cpu_count()} cores"


def write_run_info(workdir: Path, config: dict | None, form, start_step: int) -> None:
    info = {
        "command": " ".join(sys.argv),
        "jax_version": jax.__version__,
        "backend": jax.default_backend(),
        "host_cpu": host_cpu(),
        "parallel": form.name,
        "devices": [str(d) for d in jax.devices()],
        "process_count": jax.process_count(),
        "resumed_from_step": start_step,
    }
    (workdir / "run.json").write_text(json.dumps(info, indent=2) + "\n")
    if config is not None:
        (workdir / "config.json").write_text(json.dumps(config, indent=2, default=str) + "\n")


def write_results(workdir: Path, results: dict) -> None:
    # Written beside, then renamed: a kill mid-write leaves the previous file whole.
    tmp = workdir / f".results.json.{jax.process_index()}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(results, indent=2) + "\n")
    os.replace(tmp, workdir / "results.json")


def read_results(workdir: Path) -> dict | None:
    """results.json, or None when it is missing or unreadable (then it is rebuilt)."""
    path = workdir / "results.json"
    try:
        return json.loads(path.read_text()) if path.is_file() else None
    except (OSError, ValueError):
        return None


def finished_results(workdir: Path, metadata: dict, step: int) -> tuple[dict, bool]:
    """(results, whether results.json needs writing) of a run already at its last step."""
    existing = read_results(workdir)
    if existing is not None and existing.get("steps") == step and "wall_seconds_total" in existing:
        return existing, False
    saved = metadata.get("results")
    if saved is not None and saved.get("steps") == step:
        return saved, True
    return results_from_log(workdir, step), True


def results_from_log(workdir: Path, step: int) -> dict:
    """The results of a run that stopped at `step`, from its last train and eval records
    (the same numbers the run returned; its times are unknown)."""
    records = [r for r in read_metrics(workdir) if r["step"] <= step]
    is_train = lambda r: any(k.startswith("train/") for k in r)  # noqa: E731
    train = next((r for r in reversed(records) if is_train(r)), {})
    evals = next((r for r in reversed(records) if not is_train(r)), {})
    return {
        "steps": step,
        "resumed_from_step": None,
        "wall_seconds": None,
        "wall_seconds_total": None,
        "train_images_per_second": train.get("train/images_per_second"),
        **{f"train_{k[len('train/'):]}": v for k, v in train.items()
           if k.startswith("train/") and k != "train/images_per_second"},
        **{k.replace("/", "_"): v for k, v in evals.items() if k != "step"},
    }
