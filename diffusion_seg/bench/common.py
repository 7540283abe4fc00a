"""Measurement harness shared by the benchmarks (pdn, difnet, train, gpu, crf).

**Time: interleaved rounds in one process** (:func:`interleave`). Every case of a table is
built in the measuring process, warmed up once, then timed in rounds: each round calls every
case once, in an order rotated by one position per round (A B C, B C A, C A B, ...). A
case's ratio to the baseline is computed *per round* (its time / the baseline's time in the
same round) and reported as the median over rounds with its spread (min–max over rounds):
drift of a shared machine (another job starting, clock changes, thermal throttling) slows
both sides of a round alike and cancels in the ratio, where timing the cases one after the
other lands it in the ratio. Times are medians over rounds.

**Memory: one fresh process per case** (:func:`memory_peaks`). On CPU a process's peak
resident set cannot be reset for one case inside a process that holds the others' models,
so each case is built in a process forked from a clean server (``multiprocessing``'s
``forkserver``, torch already imported: ~50 ms per case instead of a new interpreter), runs
once to warm up and once more, and reports the growth of its peak RSS (``VmHWM``, reset
through ``/proc/self/clear_refs`` right before the warm-up) over the RSS at that moment.
``ru_maxrss`` is not used: a child started by ``subprocess`` inherits its parent's value.
On CUDA the peaks are taken in the measuring process instead:
``torch.cuda.max_memory_allocated`` over one call minus the memory allocated before it
(weights, optimizer state and inputs excluded), statistics reset per case.

:func:`benchmark` runs both for a set of cases: memory first on CPU (a case that runs out
of memory there is not built again for timing), then the interleaved timing, then on CUDA
the in-process peaks.
"""

from __future__ import annotations

import gc
import math
import multiprocessing
import resource
import statistics
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from diffusion_seg.runtime import keep_freed_memory

Builder = Callable[[dict[str, Any]], Callable[[], object]]

# Imported once by the forkserver, so a memory case starts in ~50 ms.
_PRELOAD = ["torch", "timm", "diffusion_seg.bench.pdn", "diffusion_seg.bench.difnet",
            "diffusion_seg.bench.train", "diffusion_seg.bench.crf"]
_CONTEXT: Any = None


# ------------------------------------------------------------------------------ basics


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def _status_kib(key: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _memory_mark(device: str) -> int:
    """Bytes to measure the coming peak against. CUDA: allocated memory, peak statistics
    reset. CPU: the resident set now, with the peak (``VmHWM``) reset to it; where
    ``/proc/self/clear_refs`` is missing, the peak resident set so far (``ru_maxrss``)."""
    if device.startswith("cuda"):
        import torch

        torch.cuda.reset_peak_memory_stats()
        return torch.cuda.memory_allocated()
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        rss = _status_kib("VmRSS")
        if rss is not None:
            return rss * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _memory_peak(device: str) -> int:
    if device.startswith("cuda"):
        import torch

        return torch.cuda.max_memory_allocated()
    hwm = _status_kib("VmHWM")
    if hwm is not None:
        return hwm * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _oom_message(err: BaseException) -> str | None:
    """"OOM" for an out-of-memory error of torch (CUDA) or of the CPU allocator, else None."""
    if type(err).__name__ == "OutOfMemoryError" or "can't allocate memory" in str(err):
        return "OOM"
    return None


def measure(
    fn: Callable[[], object], device: str, repeats: int, max_seconds: float = math.inf
) -> dict[str, Any]:
    """One warm-up run (kernel selection, allocator), then up to ``repeats`` timed runs,
    stopping early past ``max_seconds`` (a case too slow to repeat reports its warm-up).

    Returns the best (``time``) and median (``median``) run time in seconds, the number of
    timed ``runs``, ``peak``: the memory high-water mark over all runs, warm-up included,
    above its value right before them, and ``total``: the high-water mark itself (CPU: the
    process's peak resident set; CUDA: peak allocated memory, weights included).
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
    total = _memory_peak(device)
    return {
        "time": min(times),
        "median": statistics.median(times),
        "runs": len(times),
        "peak": max(total - before, 0),
        "total": total,
    }


# -------------------------------------------------------------------------- interleave


@dataclass
class Ratio:
    """Per-round ratios of one case's time to another's (same round)."""

    rounds: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.rounds)

    @property
    def low(self) -> float:
        return min(self.rounds)

    @property
    def high(self) -> float:
        return max(self.rounds)

    @property
    def quartiles(self) -> tuple[float, float]:
        """(Q1, Q3), inclusive method; both the value itself for one round."""
        if len(self.rounds) < 2:
            return self.rounds[0], self.rounds[0]
        q1, _, q3 = statistics.quantiles(self.rounds, n=4, method="inclusive")
        return q1, q3

    def __str__(self) -> str:
        return f"{self.median:.2f} [{self.low:.2f}–{self.high:.2f}]"


@dataclass
class Measured:
    """What a benchmark reports for one case.

    Attributes:
        times: seconds of each timed call, one per round, in round order.
        first: seconds of the first (warm-up) call: compilation, autotuning, allocator
            growth included.
        ratio: per-round ratio to the baseline's time (``None`` for the baseline itself
            and when no baseline was timed).
        peak: bytes one call adds to the memory high-water mark (see the module docstring).
        total: the high-water mark itself (CPU: peak RSS of the case's process; CUDA: peak
            allocated memory of the measuring process).
        error: why the case has no numbers ("OOM", "OOM-guard ...", "timeout ...").
    """

    times: list[float] = field(default_factory=list)
    first: float | None = None
    ratio: Ratio | None = None
    peak: int | None = None
    total: int | None = None
    error: str | None = None

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    @property
    def ok(self) -> bool:
        return self.error is None and bool(self.times)


def ratio(numerator: Measured, denominator: Measured) -> Ratio | None:
    """Per-round ratio of two cases timed in the same :func:`interleave` call (``None`` if
    either failed)."""
    if not (numerator.ok and denominator.ok) or len(numerator.times) != len(denominator.times):
        return None
    return Ratio([a / b for a, b in zip(numerator.times, denominator.times)])


def interleave(
    cases: Mapping[str, Callable[[], object]],
    rounds: int,
    device: str = "cpu",
    baseline: str | None = None,
    warmup: int = 1,
    max_seconds: float = math.inf,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[str, Measured]:
    """Time ``cases`` in interleaved rounds; see the module docstring.

    Args:
        cases: name → a call to time (its return value is ignored). Warm-up calls go in the
            given order (a case may rely on an earlier one having run once); timed rounds
            rotate it: round r starts with case ``r mod n``.
        rounds: timed rounds (at least one is run).
        device: ``cuda...`` synchronises before and after each call.
        baseline: the case every ``ratio`` refers to (default: the first case).
        warmup: untimed calls of each case before the rounds; the first one's time is
            ``first``. A case that runs out of memory there gets ``error="OOM"`` and is
            left out of the rounds.
        max_seconds: stop after the round that passes this much time (rounds included).
        clock: the time source (tests pass a fake one).
    """
    names = list(cases)
    results = {name: Measured() for name in names}
    for name in names:
        for i in range(warmup):
            try:
                elapsed = _timed(cases[name], device, clock)
            except Exception as err:  # noqa: BLE001 - an OOM fails the case, anything else the run
                message = _oom_message(err)
                if message is None:
                    raise
                results[name].error = message
                _release(device)
                break
            if i == 0:
                results[name].first = elapsed
    live = [name for name in names if results[name].error is None]
    start = clock()
    enabled = gc.isenabled()
    try:
        for r in range(max(1, rounds)):
            gc.collect(1)  # young garbage between rounds, no collector pause inside a call
            gc.disable()
            shift = r % len(live) if live else 0
            for name in live[shift:] + live[:shift]:
                results[name].times.append(_timed(cases[name], device, clock))
            if enabled:
                gc.enable()
            if clock() - start > max_seconds:
                break
    finally:
        if enabled:
            gc.enable()
    base = baseline if baseline is not None else (names[0] if names else None)
    if base is not None and results[base].ok:
        for name in names:
            if name != base:
                results[name].ratio = ratio(results[name], results[base])
    return results


def _timed(fn: Callable[[], object], device: str, clock: Callable[[], float]) -> float:
    _sync(device)
    start = clock()
    fn()
    _sync(device)
    return clock() - start


def _release(device: str) -> None:
    gc.collect()
    if device.startswith("cuda"):
        import torch

        torch.cuda.empty_cache()


# ------------------------------------------------------------------------------ memory


def _context() -> Any:
    global _CONTEXT
    if _CONTEXT is None:
        _CONTEXT = multiprocessing.get_context("forkserver")
        _CONTEXT.set_forkserver_preload(_PRELOAD)
    return _CONTEXT


def _child(conn: Any, builder: Builder, spec: dict[str, Any]) -> None:
    """Forked from the server: build the case, ``spec["memory_warmups"]`` calls (default 0)
    before the memory mark, then one warm-up + ``spec["memory_repeats"]`` (default 1) runs,
    fewer past ``spec["max_seconds"]`` (0: the warm-up alone)."""
    try:
        import torch

        keep_freed_memory()  # as in the timed process (bench/__main__.py) and in train
        if spec.get("threads"):
            torch.set_num_threads(spec["threads"])
        if spec.get("mem_limit_gb"):
            limit = int(spec["mem_limit_gb"] * 2**30)
            resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))
        fn = builder(spec)
        for _ in range(spec.get("memory_warmups", 0)):  # e.g. compilation, before the mark
            fn()
        result = measure(fn, spec["device"], spec.get("memory_repeats", 1),
                         spec.get("max_seconds", math.inf))
    except Exception as err:  # noqa: BLE001 - reported in the table, not raised
        message = _oom_message(err)
        if message and spec.get("mem_limit_gb"):
            message += f" (> {spec['mem_limit_gb']:g} GB limit)"
        tail = traceback.format_exception_only(err)[-1].strip()
        result = {"error": message or f"failed: {tail[:160]}"}
    conn.send(result)
    conn.close()


def run_isolated(builder: Builder, spec: dict[str, Any], timeout: float) -> dict[str, Any]:
    """``measure(builder(spec), ...)`` in a fresh process forked from the clean server: its
    result, or ``{"error": ...}`` (timeout, killed by the OOM killer, an exception).

    ``builder`` must be importable (a module-level function) and a calling script's main
    module import-safe (``if __name__ == "__main__":``), as for any ``multiprocessing`` start
    method but fork; ``python -m diffusion_seg.bench`` and pytest are."""
    ctx = _context()
    receiver, sender = ctx.Pipe(duplex=False)
    process = ctx.Process(target=_child, args=(sender, builder, spec), daemon=True)
    process.start()
    sender.close()
    try:
        if receiver.poll(timeout):
            try:
                return receiver.recv()
            except EOFError:
                pass
        else:
            process.kill()
            process.join()
            return {"error": f"timeout > {timeout:.0f} s"}
        process.join()
        if process.exitcode is not None and process.exitcode < 0:
            return {"error": f"killed (signal {-process.exitcode}, out of memory?)"}
        return {"error": f"failed (exit {process.exitcode})"}
    finally:
        process.join(timeout=10)
        receiver.close()


def memory_peaks(
    builder: Builder,
    specs: Mapping[str, dict[str, Any]],
    device: str,
    timeout: float,
    fns: Mapping[str, Callable[[], object]] | None = None,
) -> dict[str, dict[str, Any]]:
    """Peak memory of one call of each case: on CUDA with ``fns`` (the cases already built
    and warm in this process) by the allocator's statistics, else each in a fresh process
    (:func:`run_isolated`). Results have ``peak`` and ``total`` bytes, or ``error``."""
    results: dict[str, dict[str, Any]] = {}
    for name, spec in specs.items():
        if device.startswith("cuda") and fns is not None:
            if name not in fns:
                continue
            _release(device)
            try:
                results[name] = measure(fns[name], device, repeats=0, max_seconds=0.0)
            except Exception as err:  # noqa: BLE001
                message = _oom_message(err)
                if message is None:
                    raise
                results[name] = {"error": message}
                _release(device)
        else:
            results[name] = run_isolated(builder, spec, timeout)
    return results


def benchmark(
    builder: Builder,
    specs: Mapping[str, dict[str, Any]],
    *,
    device: str,
    rounds: int,
    baseline: str | None = None,
    memory: bool = True,
    timeout: float = 900.0,
    max_seconds: float = math.inf,
    errors: Mapping[str, str] | None = None,
) -> dict[str, Measured]:
    """Memory (fresh processes on CPU) and interleaved time of ``builder(spec)`` for every
    case; ``errors`` names cases not to run at all (e.g. an OOM guard), with the reason.

    The cases are built in this process all at once (their weights coexist), timed by
    :func:`interleave` with ``baseline`` (default: the first case) and released."""
    results = {name: Measured() for name in specs}
    for name, reason in (errors or {}).items():
        results[name].error = reason
    todo = {name: spec for name, spec in specs.items() if results[name].error is None}
    cuda = device.startswith("cuda")
    peaks: dict[str, dict[str, Any]] = {}
    if memory and not cuda:
        peaks = memory_peaks(builder, todo, device, timeout)
        for name, peak in peaks.items():
            if "error" in peak:
                results[name].error = peak["error"]
        todo = {name: spec for name, spec in todo.items() if results[name].error is None}
    fns: dict[str, Callable[[], object]] = {}
    for name, spec in todo.items():
        try:
            fns[name] = builder(spec)
        except Exception as err:  # noqa: BLE001
            message = _oom_message(err)
            if message is None:
                raise
            results[name].error = message
            _release(device)
    if fns:
        timed = interleave(fns, rounds, device, max_seconds=max_seconds)
        for name, measured in timed.items():
            results[name].times, results[name].first = measured.times, measured.first
            results[name].error = results[name].error or measured.error
        base = baseline if baseline is not None else next(iter(specs))
        if base in results and results[base].ok:
            for name in results:
                if name != base:
                    results[name].ratio = ratio(results[name], results[base])
        if memory and cuda:
            fns = {name: fn for name, fn in fns.items() if results[name].ok}
            peaks = memory_peaks(builder, {n: specs[n] for n in fns}, device, timeout, fns)
    for name, peak in peaks.items():
        if "error" not in peak:
            results[name].peak, results[name].total = peak["peak"], peak["total"]
        elif results[name].error is None:
            results[name].error = peak["error"]
    del fns
    _release(device)
    return results


# ---------------------------------------------------------------------------- formatting


def fmt_ms(result: Measured, scale: float = 1.0) -> str:
    """Median time in ms (× ``scale``, e.g. 1/batch for per image), or the error."""
    if not result.ok:
        return result.error or "–"
    ms = result.median * scale * 1e3
    return f"{ms:.0f}" if ms >= 1000 else f"{ms:.1f}" if ms >= 1 else f"{ms:.3f}"


def fmt_ratio(result: Measured) -> str:
    return "–" if result.ratio is None else str(result.ratio)


def fmt_mb(result: Measured, total: bool = False) -> str:
    value = result.total if total else result.peak
    return "–" if value is None else f"{value / 2**20:.0f}"


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)
