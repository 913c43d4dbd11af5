"""Pearson chi-square helpers (no scipy): p-values and power, stated explicitly."""

import jax.numpy as jnp
import numpy as np
from jax.scipy.special import gammaincc


def chi2_sf(stat: float, df: int) -> float:
    """P(X >= stat) for X ~ chi-square(df)."""
    return float(gammaincc(jnp.float32(df / 2), jnp.float32(stat / 2))) if df > 0 else 1.0


def merge_small_cells(expected: np.ndarray, observed: np.ndarray, min_expected: float = 5.0):
    """Pools the cells with expected count < min_expected into one cell."""
    small = expected < min_expected
    e = np.append(expected[~small], expected[small].sum())
    o = np.append(observed[~small], observed[small].sum())
    keep = e > 0
    return e[keep], o[keep]


def chi_square_test(probs: np.ndarray, counts: np.ndarray) -> tuple[float, float, int]:
    """(statistic, p-value, degrees of freedom) of counts against probs."""
    n = counts.sum()
    expected, observed = merge_small_cells(np.asarray(probs, np.float64) * n, counts.astype(np.float64))
    stat = float(((observed - expected) ** 2 / expected).sum())
    df = len(expected) - 1
    return stat, chi2_sf(stat, df), df


def chi_square_power(probs: np.ndarray, alternative: np.ndarray, n: int, alpha: float) -> float:
    """Power of the level-alpha test above when samples really follow `alternative`.

    Uses the noncentral chi-square with noncentrality n * sum((alt - p)^2 / p)
    over the same merged cells, approximated by Patnaik's scaled central
    chi-square (accurate to about 1e-2 in the power range that matters here).
    """
    expected = np.asarray(probs, np.float64) * n
    small = expected < 5.0
    p = np.append(probs[~small], probs[small].sum())
    a = np.append(alternative[~small], alternative[small].sum())
    keep = p > 0
    p, a = p[keep], a[keep]
    df = len(p) - 1
    lam = n * float(((a - p) ** 2 / p).sum())
    # Critical value of the central chi-square(df) at level alpha, by bisection.
    lo, hi = 0.0, 10.0 * df + 100.0
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if chi2_sf(mid, df) > alpha else (lo, mid)
    critical = hi
    c = (df + 2 * lam) / (df + lam)
    h = (df + lam) ** 2 / (df + 2 * lam)
    return chi2_sf(critical / c, h)


def chi_square_pvalue(counts, probs, min_expected=5.0):
    """Pearson chi-square goodness-of-fit p-value, without scipy.

    Cells with expected count < min_expected are pooled (smallest first) into
    one cell until it reaches min_expected. A count in a zero-probability cell
    gives p-value 0. The survival function of chi2(df) is gammaincc(df/2, s/2).
    """
    counts = np.asarray(counts, np.float64).ravel()
    probs = np.asarray(probs, np.float64).ravel()
    n = counts.sum()
    if np.any(counts[probs == 0] > 0):
        return 0.0
    counts, expected = counts[probs > 0], n * probs[probs > 0] / probs[probs > 0].sum()
    order = np.argsort(expected)
    counts, expected = counts[order], expected[order]
    pooled_o, pooled_e, i = 0.0, 0.0, 0
    while i < len(expected) and (expected[i] < min_expected or 0 < pooled_e < min_expected):
        pooled_o, pooled_e, i = pooled_o + counts[i], pooled_e + expected[i], i + 1
    cells_o = np.concatenate([[pooled_o], counts[i:]]) if pooled_e > 0 else counts[i:]
    cells_e = np.concatenate([[pooled_e], expected[i:]]) if pooled_e > 0 else expected[i:]
    df = len(cells_e) - 1
    if df < 1:
        raise ValueError("too few samples: every cell was pooled into one")
    stat = float(np.sum((cells_o - cells_e) ** 2 / cells_e))
    return float(gammaincc(df / 2.0, stat / 2.0))
