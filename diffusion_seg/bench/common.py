"""Measurement harness shared by the benchmarks: each case runs in a fresh interpreter (so one
case's allocations cannot hide another's peak) and reports time and peak memory as JSON."""

from __future__ import annotations

import json
import math
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

RESULT_PREFIX = "RESULT "


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def _memory_mark(device: str) -> int:
    """Bytes to measure peaks against: CUDA allocated memory (peak stats reset), else the
    process's peak resident set so far (``ru_maxrss``, KiB on Linux)."""
    if device.startswith("cuda"):
        import torch

        torch.cuda.reset_peak_memory_stats()
        return torch.cuda.memory_allocated()
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _memory_peak(device: str) -> int:
    if device.startswith("cuda"):
        import torch

        return torch.cuda.max_memory_allocated()
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def measure(
    fn: Callable[[], None], device: str, repeats: int, max_seconds: float = math.inf
) -> dict[str, Any]:
    """One warm-up run (kernel selection, allocator), then up to ``repeats`` timed runs,
    stopping early past ``max_seconds`` (a case too slow to repeat reports its warm-up).

    Returns the best (``time``) and median (``median``) run time in seconds, the number of
    timed ``runs`` and ``peak``: the memory high-water mark over all runs, warm-up included,
    above its value right before them.
    """
    before = _memory_mark(device)
    times: list[float] = []
    start_all = time.perf_counter()
    for i in range(repeats + 1):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        elapsed = time.perf_counter() - start
        if i > 0 or time.perf_counter() - start_all > max_seconds:
            times.append(elapsed)
        if time.perf_counter() - start_all > max_seconds:
            break
    peak = _memory_peak(device) - before
    return {
        "time": min(times),
        "median": statistics.median(times),
        "runs": len(times),
        "peak": max(peak, 0),
    }


def child_main(case: Callable[[dict[str, Any]], dict[str, Any]], spec_json: str) -> None:
    """Run one case from its JSON spec in this (child) process and print its JSON result."""
    import torch

    spec = json.loads(spec_json)
    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    try:
        result = case(spec)
    except torch.OutOfMemoryError:
        result = {"error": "OOM"}
    print(RESULT_PREFIX + json.dumps(result), flush=True)


def run_case(module: str, spec: dict[str, Any], timeout: float) -> dict[str, Any]:
    """``python -m <module> --child <spec>`` in a fresh interpreter: its JSON result, or an
    ``error`` entry (timeout, killed by the OOM killer, crashed)."""
    cmd = [sys.executable, "-m", module, "--child", json.dumps(spec)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timeout > {timeout:.0f} s"}
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(RESULT_PREFIX):
            return json.loads(line[len(RESULT_PREFIX) :])
    if proc.returncode < 0:  # killed by a signal: on CPU, the kernel's OOM killer
        return {"error": f"killed (signal {-proc.returncode}, out of memory?)"}
    tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
    return {"error": f"failed (exit {proc.returncode}): {tail[:120]}"}
