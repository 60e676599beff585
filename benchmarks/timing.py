"""Side-by-side timing: the variants of one case run interleaved, round after round, and each
is summarized by its median. On a shared machine the load drifts; interleaving puts every
variant under the same drift, so their ratio holds where absolute times do not.

Hand-written rather than torch.utils.benchmark: its Timer measures one statement at a time
(no interleaving of competing variants), and its adaptive repeat counts would not keep the
whole suite inside its time budget.
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from typing import Callable

import torch


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


@dataclass
class Timings:
    """Seconds per call of every variant, one entry per round."""

    samples: dict[str, list[float]] = field(default_factory=dict)

    def median(self, name: str) -> float:
        return statistics.median(self.samples[name])

    def ratio(self, a: str, b: str) -> float:
        """The median over rounds of a's time / b's time in the same round: paired, so that a
        load change between rounds cancels out."""
        return statistics.median(x / y for x, y in zip(self.samples[a], self.samples[b]))

    def spread(self, name: str) -> str:
        """Interquartile range relative to the median, as text (how noisy the machine was)."""
        s = sorted(self.samples[name])
        if len(s) < 4:
            return "–"
        q = statistics.quantiles(s, n=4)
        return f"{(q[2] - q[0]) / statistics.median(s):.0%}"


def clock_for(device: str, clock: str) -> Callable[[], float]:
    """`time.perf_counter` for "wall"; for "cpu", `time.thread_time`: the CPU seconds of this
    thread, which with one torch thread is all the work of a call (the intra-op pool is the
    caller), and which, unlike wall time, does not count the time the thread waits for a core
    on a shared machine. CUDA work is asynchronous, so a GPU is always timed by the wall clock."""
    if clock not in ("wall", "cpu"):
        raise ValueError(f"clock must be 'wall' or 'cpu', got {clock!r}")
    return time.thread_time if clock == "cpu" and not device.startswith("cuda") else time.perf_counter


def compare(variants: dict[str, Callable[[], object]], rounds: int, warmup: int = 1, device: str = "cpu",
            tick: Callable[[], None] | None = None, clock: str = "wall") -> Timings:
    """Run every variant `warmup` times, then `rounds` rounds of one call each, interleaved
    (the order rotates every round so that no variant always runs first). `clock`: "wall" or
    "cpu" (`clock_for`)."""
    now = clock_for(device, clock)
    names = list(variants)
    for _ in range(warmup):
        for name in names:
            variants[name]()
    _sync(device)
    out = Timings({n: [] for n in names})
    for r in range(rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            _sync(device)
            t0 = now()
            variants[name]()
            _sync(device)
            out.samples[name].append(now() - t0)
        if tick is not None:
            tick()
    return out
