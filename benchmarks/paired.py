"""Paired timing: a fastseg call and its baseline's call, timed next to each other.

Why: the project's CPU machines are shared VMs with slow spells (about ±30%
for tens of seconds). pytest-benchmark times each contender in its own
block of rounds, so a spell can fall on the baseline's block and miss
fastseg's, or the reverse: the ratio of the two medians of the same code
then swings from run to run (the dense CRF against pydensecrf: 3.4x to 4.5x).
Two calls a fraction of a second apart see the same machine, so the ratio
of such a pair is untouched by a spell that covers both.

How (``paired_times``): pair i runs both callables on set (i // 2) mod
len(sets), the baseline on its copy of the set and fastseg on its own
(pydensecrf reads host arrays, fastseg the device's copy on a GPU run);
the baseline goes first in even pairs and fastseg in odd ones (A B, B A,
A B, ...: ABBA order), and each set in both orders, so that neither a
drift within a pair nor the order's own effect (a call that follows a
single-threaded one finds the second CPU idle) favours a side. ``before``
runs ahead of each timed call, outside the timing (the suite flushes the
cache there: both calls of a pair read the same tensors, and the second
would otherwise find them in the cache the first left them in); ``after``
runs inside it, before the clock is read (the suite synchronizes the
device there, so that the clock sees the kernels finish).
``paired_figures``: each pair's ratio baseline time / fastseg time, their
median (``paired_speedup``) and quartiles, and each side's median over
the pairs.
"""

import math
import statistics
import time
from collections.abc import Callable, Sequence


def pair_count(budget_s: float, baseline_s: float, fastseg_s: float, low: int = 5, high: int = 200) -> int:
    """How many pairs to time: as many as fit ``budget_s`` at the estimated
    seconds per call of each side, at least ``low`` (a median of fewer says
    little), at most ``high``, rounded up to an even count so that each
    order (baseline first, fastseg first) gets as many pairs."""
    if not (baseline_s > 0 and fastseg_s > 0):
        raise ValueError(f"estimated times must be positive, got {baseline_s} and {fastseg_s}")
    count = max(low, min(high, math.ceil(budget_s / (baseline_s + fastseg_s))))
    return count + count % 2


def _nothing() -> None:
    pass


def paired_times(baseline: Callable, fastseg: Callable, baseline_sets: Sequence, fastseg_sets: Sequence,
                 pairs: int, *, before: Callable[[], None] = _nothing, after: Callable[[], None] = _nothing,
                 clock: Callable[[], float] = time.perf_counter) -> list[tuple[float, float]]:
    """(baseline seconds, fastseg seconds) of each of ``pairs`` pairs:
    ``baseline(*baseline_sets[k])`` and ``fastseg(*fastseg_sets[k])`` next to
    each other, the baseline first when i is even, k = (i // 2) mod n: each
    set is run in both orders (with k = i mod n and two sets, one set would
    always run the baseline first and the other fastseg)."""
    if pairs < 1:
        raise ValueError(f"pairs must be at least 1, got {pairs}")
    if not baseline_sets or len(baseline_sets) != len(fastseg_sets):
        raise ValueError(f"one set per side: {len(baseline_sets)} baseline sets, {len(fastseg_sets)} fastseg sets")

    def timed(fn: Callable, args) -> float:
        before()
        start = clock()
        fn(*args)
        after()
        return clock() - start

    times = []
    for i in range(pairs):
        index = (i // 2) % len(baseline_sets)
        if i % 2 == 0:
            baseline_s = timed(baseline, baseline_sets[index])
            fastseg_s = timed(fastseg, fastseg_sets[index])
        else:
            fastseg_s = timed(fastseg, fastseg_sets[index])
            baseline_s = timed(baseline, baseline_sets[index])
        times.append((baseline_s, fastseg_s))
    return times


def paired_figures(times: Sequence[tuple[float, float]]) -> dict:
    """What a fastseg record keeps of its pairs: their count, each side's
    median time, the median of the per-pair ratios baseline / fastseg and
    their quartiles (how far one pair's ratio strays from the median: what
    says whether a floor is met with room to spare)."""
    ratios = [b / f for b, f in times]
    low, _, high = statistics.quantiles(ratios, n=4, method="inclusive") if len(ratios) > 1 else ratios * 3
    return {
        "paired_rounds": len(times),
        "paired_baseline_median_s": statistics.median(b for b, _ in times),
        "paired_median_s": statistics.median(f for _, f in times),
        "paired_speedup": statistics.median(ratios),
        "paired_speedup_p25": low,
        "paired_speedup_p75": high,
    }
