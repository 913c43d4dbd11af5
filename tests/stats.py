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
