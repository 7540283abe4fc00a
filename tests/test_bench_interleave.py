"""The benchmarks' measurement harness (diffusion_seg/bench/common.py): interleaved rounds with
per-round ratios, on a fake clock; memory peaks of a fresh process."""

from __future__ import annotations

import statistics

import pytest
import torch

from diffusion_seg.bench.common import Measured, Ratio, interleave, ratio, run_isolated


class FakeMachine:
    """A clock that only the cases advance. Case ``name`` costs ``cost[name]`` seconds times
    the machine's slowness in the current round (``drift[round]``), times ``spike`` for
    (name, round) pairs — a disturbance that hits one call only. Calls are logged."""

    def __init__(self, cost, drift, spike=None, warmup_cost=None):
        self.now = 0.0
        self.cost, self.drift, self.spike = cost, drift, spike or {}
        self.warmup_cost = warmup_cost or {}
        self.calls: list[str] = []

    def clock(self) -> float:
        return self.now

    def round_of_call(self) -> int:
        # calls so far, minus one warm-up call per case, in rounds of len(cost) calls
        return (len(self.calls) - len(self.cost)) // len(self.cost)

    def case(self, name):
        def call() -> None:
            r = self.round_of_call()
            if r < 0:
                self.now += self.warmup_cost.get(name, self.cost[name])
            else:
                self.now += self.cost[name] * self.drift[r] * self.spike.get((name, r), 1.0)
            self.calls.append(name)

        return call

    def cases(self):
        return {name: self.case(name) for name in self.cost}


@pytest.mark.slow  # benchmark worker processes
def test_rounds_rotate_the_order_after_a_warm_up_in_the_given_order():
    machine = FakeMachine({"A": 1.0, "B": 1.0, "C": 1.0}, drift=[1.0] * 4)
    interleave(machine.cases(), rounds=4, clock=machine.clock)
    assert machine.calls == list("ABC" "ABC" "BCA" "CAB" "ABC")


def test_ratios_are_taken_per_round_so_machine_drift_cancels():
    # The machine is up to 6x slower in some rounds; each round slows every case alike.
    drift = [1.0, 3.0, 0.5, 2.0, 1.0]
    machine = FakeMachine({"A": 1.0, "B": 1.5, "C": 0.5}, drift, warmup_cost={"B": 40.0})
    results = interleave(machine.cases(), rounds=5, clock=machine.clock)
    a, b, c = results["A"], results["B"], results["C"]
    assert a.times == pytest.approx(drift)
    assert b.times == pytest.approx([1.5 * d for d in drift])
    assert a.median == pytest.approx(1.0) and b.median == pytest.approx(1.5)
    assert a.ratio is None  # the baseline (first case by default)
    assert b.ratio.rounds == pytest.approx([1.5] * 5)
    assert (b.ratio.median, b.ratio.low, b.ratio.high) == pytest.approx((1.5, 1.5, 1.5))
    assert c.ratio.median == pytest.approx(0.5)
    # The warm-up (compilation, ...) is reported apart and kept out of the times.
    assert b.first == pytest.approx(40.0) and a.first == pytest.approx(1.0)


def test_median_and_spread_of_the_per_round_ratios():
    drift = [1.0, 2.0, 1.0, 4.0, 1.0]
    # One disturbed call: B in round 2 takes twice as long; A in round 4 a quarter longer.
    spike = {("B", 2): 2.0, ("A", 4): 1.25}
    machine = FakeMachine({"A": 1.0, "B": 1.5}, drift, spike)
    results = interleave(machine.cases(), rounds=5, clock=machine.clock)
    r = results["B"].ratio
    expected = [1.5, 1.5, 3.0, 1.5, 1.2]
    assert r.rounds == pytest.approx(expected)
    assert r.median == pytest.approx(1.5)
    assert (r.low, r.high) == pytest.approx((1.2, 3.0))
    q1, _, q3 = statistics.quantiles(expected, n=4, method="inclusive")
    assert r.quartiles == pytest.approx((q1, q3))
    assert r.quartiles == pytest.approx((1.5, 1.5))
    assert str(r) == "1.50 [1.20–3.00]"
    # Not the ratio of the median times, which drift and the spikes skew: 3.0 / 1.25 = 2.4.
    assert results["B"].median == pytest.approx(3.0) and results["A"].median == pytest.approx(1.25)


def test_baseline_can_be_any_case_and_any_pair_has_a_ratio():
    machine = FakeMachine({"A": 2.0, "B": 1.0, "C": 4.0}, drift=[1.0, 5.0, 1.0])
    results = interleave(machine.cases(), rounds=3, baseline="B", clock=machine.clock)
    assert results["B"].ratio is None
    assert results["A"].ratio.rounds == pytest.approx([2.0] * 3)
    assert ratio(results["C"], results["A"]).rounds == pytest.approx([2.0] * 3)
    assert ratio(results["C"], Measured(error="OOM")) is None


def test_max_seconds_stops_after_the_round_that_passes_it():
    machine = FakeMachine({"A": 1.0, "B": 1.0}, drift=[1.0] * 10)
    results = interleave(machine.cases(), rounds=10, max_seconds=3.5, clock=machine.clock)
    assert len(results["A"].times) == len(results["B"].times) == 2


def test_a_case_out_of_memory_in_its_warm_up_is_left_out():
    machine = FakeMachine({"A": 1.0, "B": 2.0}, drift=[1.0] * 3)

    def oom() -> None:
        raise torch.OutOfMemoryError("CUDA out of memory")

    results = interleave({**machine.cases(), "X": oom}, rounds=3, clock=machine.clock)
    assert results["X"].error == "OOM" and not results["X"].ok and results["X"].ratio is None
    assert results["B"].ratio.rounds == pytest.approx([2.0] * 3)

    def broken() -> None:
        raise ValueError("a bug, not a measurement")

    with pytest.raises(ValueError):
        interleave({"A": broken}, rounds=1)


def test_ratio_statistics():
    r = Ratio([1.0, 2.0, 3.0, 4.0, 5.0])
    assert (r.median, r.low, r.high, r.quartiles) == (3.0, 1.0, 5.0, (2.0, 4.0))
    assert Ratio([1.25]).quartiles == (1.25, 1.25)


def test_real_clock_times_are_positive():
    results = interleave({"a": lambda: sum(range(1000)), "b": lambda: sum(range(2000))}, rounds=3)
    assert all(t > 0 for r in results.values() for t in r.times)
    assert len(results["b"].ratio.rounds) == 3


# ---------------------------------------------------------------------------- memory


def allocate(spec: dict) -> object:
    """A memory case: each call holds ``spec["mb"]`` MB of touched memory for a moment."""

    def call() -> None:
        torch.ones(spec["mb"] * 2**20 // 4).sum()

    return call


@pytest.mark.slow  # benchmark worker processes
def test_memory_case_runs_in_a_fresh_process_whatever_the_parent_held():
    # A parent that went through 600 MB must not lend its peak to the case (ru_maxrss of a
    # subprocess starts from its parent's).
    big = torch.ones(600 * 2**20 // 4)
    big.add_(1)
    del big
    result = run_isolated(allocate, {"device": "cpu", "mb": 96}, timeout=120)
    assert 90 * 2**20 <= result["peak"] <= 300 * 2**20, result
    assert result["total"] >= result["peak"]
    failed = run_isolated(allocate, {"device": "cpu", "mb": -1}, timeout=120)
    assert failed["error"].startswith("failed: RuntimeError"), failed
