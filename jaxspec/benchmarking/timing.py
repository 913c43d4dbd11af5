"""Wall-clock timing of jitted calls: interleaved runs, best-of, mean and spread."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import jax


def time_interleaved(
    methods: dict[str, Callable[[int], Any]],
    num_runs: int,
    warmup: int = 1,
    keep_results: bool = False,
    repeats: int = 1,
):
    """Times each method `num_runs` times, interleaving methods run by run.

    Interleaving makes drifting machine load hit every method alike. Each call
    gets its own seed (fresh PRNG key; every call also builds fresh caches
    inside), so no run reuses another's state. The first `warmup` calls of each
    method (compilation included) are timed separately, with seeds 10_000,
    10_001, ...; timed run i uses seed i. Every result is blocked on before the
    clock stops.

    With `repeats` > 1 every timed run is repeated back to back (same seed,
    so the same work) and its fastest time kept: a run that a scheduling
    hiccup stretched (seen here: single runs of 1.0-1.9 s among 0.53 s ones)
    then no longer passes for a property of the prompt.

    Args:
      methods: name -> fn(seed) returning a pytree of arrays (or anything
        `jax.block_until_ready` accepts).
      num_runs: timed runs per method.
      warmup: untimed-as-runs calls per method before the first timed one.
      keep_results: also return every timed run's result.
      repeats: timed calls per run; the fastest one is the run's time.

    Returns:
      {name: {"compile_and_first_s", "times_s": [...], "result": last result}},
      and with keep_results also {name: [result of each timed run]}.

    >>> out = time_interleaved({"double": lambda seed: jax.numpy.asarray(2 * seed)}, num_runs=2)
    >>> len(out["double"]["times_s"]), int(out["double"]["result"])
    (2, 2)
    """
    out = {name: {"times_s": []} for name in methods}
    for name, fn in methods.items():
        start = time.perf_counter()
        for w in range(warmup):
            out[name]["result"] = jax.block_until_ready(fn(10_000 + w))
        out[name]["compile_and_first_s"] = time.perf_counter() - start
    results = {name: [] for name in methods}
    for run in range(num_runs):
        for name, fn in methods.items():
            seconds, out[name]["result"] = _fastest(lambda fn=fn, run=run: fn(run), repeats)
            out[name]["times_s"].append(seconds)
            if keep_results:
                results[name].append(out[name]["result"])
    return (out, results) if keep_results else out


def _fastest(fn: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    """(seconds of the fastest of `repeats` timed calls of `fn()`, the last call's result), each blocked on."""
    best, result = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        result = jax.block_until_ready(fn())
        best = min(best, time.perf_counter() - start)
    return best, result


def best_seconds(fn: Callable[[], Any], repeats: int = 3) -> float:
    """The fastest of `repeats` timed calls of `fn()`, after one untimed call (compilation)."""
    jax.block_until_ready(fn())
    return _fastest(fn, repeats)[0]


def mean_std(xs: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)
