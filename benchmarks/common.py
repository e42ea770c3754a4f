"""Shared machinery of the benchmarks: side-by-side timing in worker processes.

Each side of a comparison (ours, the peer) runs in its own child process of the benchmark
(same process tree), built by a *factory* ``module:function(**kwargs)`` that returns a
`Bench`. The parent interleaves short timed bursts of every side - ours, peer, ours,
peer, ... - so that a machine whose load changes during the run slows both sides alike,
and reports the best burst of each (best-of-N). Separate processes also keep each side's
peak memory (RSS on CPU, allocator peak on GPU) its own, keep the two frameworks from
fighting over threads or GPU memory, and let each side have its own environment
(XLA_FLAGS, thread counts).

Protocol (JSON lines on a private pipe; the child's stdout is redirected to stderr so
library prints cannot corrupt it): the child answers ``{"ready": ...}`` or
``{"skipped": reason}`` (the peer's framework is not installed), then serves
``{"op": "warmup"}``, ``{"op": "time", "n": k}`` and ``{"op": "info"}`` until
``{"op": "exit"}``.
"""

from __future__ import annotations

import importlib
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


class Bench:
    """One side of a comparison. Subclasses set `items_per_call` and implement `run`."""

    items_per_call: int = 1  # images (or iterations) processed by one run(1)
    unit: str = "img/s"

    def run(self, n: int) -> None:
        """Do `n` steps and wait until the device has finished them."""
        raise NotImplementedError

    def info(self) -> dict:
        return {}


def peak_memory() -> dict:
    """Peak host RSS of this process, and the accelerator allocator's peak when there is one."""
    out = {"peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}
    if "jax" in sys.modules:
        import jax

        device = jax.devices()[0]
        if device.platform != "cpu":
            stats = device.memory_stats() or {}
            if "peak_bytes_in_use" in stats:
                out["device_peak_bytes_in_use"] = int(stats["peak_bytes_in_use"])
    if "torch" in sys.modules:
        import torch

        if torch.cuda.is_available() and torch.cuda.is_initialized():
            out["device_max_memory_allocated"] = int(torch.cuda.max_memory_allocated())
    return out


def machine() -> dict:
    info = {"platform": platform.platform(), "python": platform.python_version(),
            "cpu_count": os.cpu_count()}
    try:
        info["affinity_cpus"] = len(os.sched_getaffinity(0))
    except AttributeError:
        pass
    try:
        with open("/proc/cpuinfo") as f:
            info["cpu"] = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return info


def load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


# --- child side ------------------------------------------------------------------------------

def _serve(factory: str, kwargs: dict) -> None:
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # anything printed by libraries goes to stderr, not into the protocol
    sys.stdout = sys.stderr

    def send(obj):
        proto.write(json.dumps(obj) + "\n")
        proto.flush()

    module_name, func_name = factory.split(":")
    try:
        module = importlib.import_module(module_name)
        rss_after_import = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        bench = getattr(module, func_name)(**kwargs)
    except ImportError as err:
        send({"skipped": f"not installed: {err}"})
        return
    send({"ready": True, "pid": os.getpid(), "peak_rss_after_import_bytes": rss_after_import})
    for line in sys.stdin:
        msg = json.loads(line)
        op = msg["op"]
        if op == "exit":
            break
        if op == "warmup":
            t0 = time.perf_counter()
            bench.run(1)
            send({"seconds": time.perf_counter() - t0})
        elif op == "time":
            t0 = time.perf_counter()
            bench.run(msg["n"])
            send({"seconds": time.perf_counter() - t0})
        elif op == "info":
            send({**bench.info(), **peak_memory(), "items_per_call": bench.items_per_call,
                  "unit": bench.unit})


# --- parent side -----------------------------------------------------------------------------

class WorkerError(RuntimeError):
    pass


class Worker:
    """A child process running one `Bench` (see the module docstring)."""

    def __init__(self, name: str, factory: str, kwargs: dict, *, python: str | None = None,
                 env: dict | None = None, timeout: float = 600.0):
        self.name, self.timeout = name, timeout
        child_env = dict(os.environ)
        child_env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), child_env.get("PYTHONPATH")) if p)
        child_env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        for key, value in (env or {}).items():
            if value is None:
                child_env.pop(key, None)
            else:
                child_env[key] = str(value)
        self.proc = subprocess.Popen(
            [python or sys.executable, "-m", "benchmarks.common", factory, json.dumps(kwargs)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=str(ROOT), env=child_env,
        )
        self._hello = None  # read lazily, so that several workers start up side by side

    @property
    def hello(self) -> dict:
        if self._hello is None:
            self._hello = self._read()
        return self._hello

    @property
    def skipped(self):
        return self.hello.get("skipped")

    def _read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            code = self.proc.wait(timeout=30)
            raise WorkerError(f"benchmark worker {self.name!r} exited with status {code} (see stderr above)")
        return json.loads(line)

    def send(self, **msg) -> None:
        self.proc.stdin.write(json.dumps(msg) + "\n")
        self.proc.stdin.flush()

    def request(self, **msg) -> dict:
        self.send(**msg)
        return self._read()

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write(json.dumps({"op": "exit"}) + "\n")
                self.proc.stdin.flush()
                self.proc.wait(timeout=30)
            except (BrokenPipeError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def compare(sides: dict[str, Worker], *, steps: int, rounds: int, min_seconds: float = 0.0) -> dict:
    """Warm every side up, then `rounds` rounds of one timed burst of `steps` calls per side,
    interleaved. Returns per side: best and median rate, every burst, warm-up time, memory."""
    live = {name: w for name, w in sides.items() if not w.skipped}
    results = {name: {"skipped": w.skipped} for name, w in sides.items() if w.skipped}
    for w in live.values():  # compile side by side; each reports its own warm-up time
        w.send(op="warmup")
    warmup = {name: w._read()["seconds"] for name, w in live.items()}
    infos = {name: w.request(op="info") for name, w in live.items()}
    # Calibrate bursts to at least `min_seconds` each from a first, untimed burst.
    burst = {}
    for name, w in live.items():
        seconds = w.request(op="time", n=steps)["seconds"]
        burst[name] = steps if seconds >= min_seconds else max(steps, int(steps * min_seconds / max(seconds, 1e-9)) + 1)
    times = {name: [] for name in live}
    load = [load_average()]
    for _ in range(rounds):
        for name, w in live.items():
            times[name].append(w.request(op="time", n=burst[name])["seconds"])
    load.append(load_average())
    for name, w in live.items():
        info = w.request(op="info")
        per_call = infos[name]["items_per_call"]
        rates = [burst[name] * per_call / t for t in times[name]]
        results[name] = {
            "best": max(rates),
            "median": sorted(rates)[len(rates) // 2],
            "unit": info.pop("unit"),
            "rates": [round(r, 3) for r in rates],
            "calls_per_burst": burst[name],
            "warmup_seconds": warmup[name],
            **{k: v for k, v in info.items() if k != "items_per_call"},
            "items_per_call": per_call,
        }
    results["load_average_before_after"] = load
    return results


def start(name: str, factory: str, kwargs: dict, **worker_kwargs) -> Worker:
    return Worker(name, factory, kwargs, **worker_kwargs)


def ratio(results: dict, ours: str, peer: str) -> float | None:
    a, b = results.get(ours, {}), results.get(peer, {})
    if "best" in a and "best" in b:
        return a["best"] / b["best"]
    return None


def write_json(result: dict, out) -> Path:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(f"wrote {out}")
    return out


def fmt_bytes(n) -> str:
    return "-" if n is None else f"{n / 2**20:.0f} MiB"


def print_side(label: str, r: dict) -> None:
    if "skipped" in r and r["skipped"]:
        print(f"{label:<28} skipped ({r['skipped']})")
        return
    mem = r.get("device_peak_bytes_in_use", r.get("device_max_memory_allocated"))
    mem_s = f"device peak {fmt_bytes(mem)}, " if mem is not None else ""
    print(f"{label:<28} {r['best']:10.1f} {r['unit']} best (median {r['median']:.1f}; "
          f"warm-up {r['warmup_seconds']:.1f} s; {mem_s}peak RSS {fmt_bytes(r.get('peak_rss_bytes'))})")


if __name__ == "__main__":
    _serve(sys.argv[1], json.loads(sys.argv[2]))
