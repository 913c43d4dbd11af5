"""The figures the experiments report, each defined once.

Acceptance, in the vocabulary of `SpeculativeResult`: a round drafts K tokens;
the rule keeps the first n of them (accepted) and adds one target token; a
round that kept fewer than K ended with a rejection.

- acceptance_rate = accepted / drafted, summed over every run and row (a ratio
  of sums, not a mean of per-row ratios: the two differ whenever rows differ in
  length or acceptance);
- alpha_per_draft = accepted / (accepted + rejections): the drafts never judged
  (after a rejection) do not count; under token-wise verification it estimates
  E[min(1, p/q)], the alpha of (1 - alpha^(K+1)) / (1 - alpha);
- tokens_per_target_call = generated tokens / rounds.
"""

from __future__ import annotations

import math

import numpy as np


def acceptance_by_position(histogram: np.ndarray) -> list[float]:
    """Per draft position i, kept / judged, from a round histogram [K + 1] (rounds that kept j drafts).

    >>> acceptance_by_position(np.array([2, 1, 1]))  # 4 rounds: 2 kept none, 1 kept one, 1 kept both
    [0.5, 0.5]
    """
    judged = np.cumsum(np.asarray(histogram)[::-1])[::-1]  # rounds that kept >= j drafts, j = 0..K
    return (judged[1:] / np.maximum(judged[:-1], 1)).tolist()


def acceptance_summary(results: list) -> dict:
    """Acceptance figures of `SpeculativeResult`s, summed over every run and row (one definition for all scripts).

    Rejections are the rounds that kept fewer than K drafts, as `SpeculativeResult.num_rejections`.

    Returns:
      dict with acceptance_rate, alpha_per_draft, acceptance_by_position [K],
      tokens_per_target_call, accepted_per_round, drafted_per_round, rounds,
      accepted, rejections, drafted.
    """
    total = lambda field: int(sum(np.asarray(getattr(r, field)).sum() for r in results))
    histogram = sum(np.asarray(r.round_histogram).sum(axis=0) for r in results)  # [K + 1]
    rounds, accepted, drafted, generated = (total(f) for f in ("num_rounds", "num_accepted", "num_drafted", "lengths"))
    rejections = int(histogram[:-1].sum())
    return dict(
        acceptance_rate=accepted / max(drafted, 1),
        alpha_per_draft=accepted / max(accepted + rejections, 1),
        acceptance_by_position=acceptance_by_position(histogram),
        tokens_per_target_call=generated / max(rounds, 1),
        accepted_per_round=accepted / max(rounds, 1),
        drafted_per_round=drafted / max(rounds, 1),
        rounds=rounds,
        accepted=accepted,
        rejections=rejections,
        drafted=drafted,
    )


def accepted_per_round_by_row(result) -> np.ndarray:
    """float64 [B]: each row's accepted drafts / rounds, for paired per-row comparisons.

    Pooled over rows, the same figure is `acceptance_summary`'s accepted / rounds.
    """
    return np.asarray(result.num_accepted, np.float64) / np.asarray(result.num_rounds, np.float64)


def paired_speedup(baseline_times_s, times_s, clusters=None) -> dict:
    """Speedup over a baseline measured pairwise, run by run (the same prompt and key in both).

    Args:
      baseline_times_s, times_s: [n] seconds of each run.
      clusters: optional [n] labels of runs that are not independent (prompts
        cut from one file); the standard error is then the cluster-robust one
        (runs of a cluster pooled before their spread is taken). None: every
        run is its own cluster.

    Returns:
      dict with speedup (the median of the per-run ratios baseline / time),
      speedup_mean and speedup_se (the mean's standard error; 0 for one run or one cluster).

    >>> paired_speedup([2.0, 4.0, 3.0], [1.0, 1.0, 1.0])["speedup"]
    3.0
    >>> round(paired_speedup([2.0, 4.0, 3.0, 3.0], [1.0] * 4, clusters=[0, 0, 1, 1])["speedup_se"], 6)
    0.0
    """
    ratios = np.asarray(baseline_times_s, np.float64) / np.asarray(times_s, np.float64)
    se = _cluster_robust_se(ratios - ratios.mean(), clusters)
    return dict(speedup=float(np.median(ratios)), speedup_mean=float(np.mean(ratios)), speedup_se=se)


def speedup_of_means(baseline_times_s, times_s, clusters=None) -> dict:
    """The ratio of mean times, mean(baseline) / mean(times), with its standard error.

    This is the speedup in throughput over the whole prompt set, and the figure
    the cost model predicts (`efficiency`). Its standard error is the
    delta-method one, cluster-robust as in `paired_speedup`: the residual of
    run i is (baseline_i - R * time_i) / mean(times).

    Returns:
      dict with speedup_of_means (R) and speedup_of_means_se (0 for one run or one cluster).

    >>> round(speedup_of_means([2.0, 4.0], [1.0, 1.0])["speedup_of_means"], 6)
    3.0
    >>> round(speedup_of_means([2.0, 4.0, 2.0, 4.0], [1.0, 2.0, 1.0, 2.0])["speedup_of_means_se"], 6)
    0.0
    """
    baseline = np.asarray(baseline_times_s, np.float64)
    times = np.asarray(times_s, np.float64)
    ratio = baseline.mean() / times.mean()
    se = _cluster_robust_se((baseline - ratio * times) / times.mean(), clusters)
    return dict(speedup_of_means=float(ratio), speedup_of_means_se=se)


def _cluster_robust_se(residuals: np.ndarray, clusters=None) -> float:
    """Standard error of a mean from its [n] residuals, runs of one cluster label pooled (CR1).

    sqrt(G / (G - 1) * sum over clusters of (sum of residuals)^2) / n; with every
    run its own cluster this is the sample std / sqrt(n). 0 for fewer than 2 clusters.
    """
    labels = np.arange(len(residuals)) if clusters is None else np.asarray(clusters)
    _, cluster_of = np.unique(labels, return_inverse=True)
    groups = int(cluster_of.max()) + 1 if len(residuals) else 0
    if groups < 2:
        return 0.0
    sums = np.bincount(cluster_of, weights=residuals, minlength=groups)
    return float(np.sqrt(groups / (groups - 1) * np.sum(sums**2)) / len(residuals))


def efficiency(baseline_mean_s: float, mean_s: float, predicted_speedup: float) -> float:
    """Measured / predicted speedup, both as a ratio of mean times.

    The cost model predicts mean times (a round's cost times the mean number
    of rounds: time is linear in rounds), so the measured side is the ratio of
    the mean times too. The mean of per-prompt ratios is not comparable: it
    exceeds the ratio of means by more the more rounds vary between prompts
    (Jensen; up to 10% at K = 8 in the batch-1 sweep), and read against this
    prediction it grew with K for that reason alone.

    >>> round(efficiency(0.5, 0.25, 2.5), 6)
    0.8
    """
    return baseline_mean_s / mean_s / predicted_speedup


def paired_difference(a, b) -> dict:
    """Mean of the paired differences b - a, its standard error and z score (0 when the error is 0).

    >>> paired_difference([1.0, 2.0], [2.0, 3.0])
    {'difference': 1.0, 'difference_se': 0.0, 'z': 0.0}
    """
    diff = np.asarray(b, np.float64) - np.asarray(a, np.float64)
    se = float(np.std(diff, ddof=1) / np.sqrt(len(diff)))
    mean = float(np.mean(diff))
    return dict(difference=mean, difference_se=se, z=mean / se if se > 0 else 0.0)


def token_agreement(tokens: np.ndarray, reference: np.ndarray) -> tuple[float, int]:
    """(fraction of positions equal to `reference`, index of the first differing one or the length if none).

    >>> token_agreement(np.array([1, 2, 3, 4]), np.array([1, 2, 0, 4]))
    (0.75, 2)
    """
    same = np.asarray(tokens) == np.asarray(reference)
    return float(np.mean(same)), int(np.argmin(same)) if not same.all() else len(same)


def percentile(sorted_values: list[float], q: float) -> float:
    """The nearest-rank q-th percentile of already sorted values (nan when empty).

    >>> percentile([1.0, 2.0, 3.0, 4.0], 50), percentile([1.0, 2.0, 3.0, 4.0], 99)
    (2.0, 4.0)
    """
    if not sorted_values:
        return math.nan
    rank = min(len(sorted_values) - 1, max(0, round(q / 100 * len(sorted_values) + 0.5) - 1))
    return sorted_values[rank]
