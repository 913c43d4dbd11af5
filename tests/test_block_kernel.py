"""Tests for block verification, jaxspec.sampling.accept.verify_block (Sun et al. 2024, Algorithm 2).

Two layers. A float64 numpy reference enumerates every draft block of a small
context-free case (position-dependent p_n, q_n; drafts independent across
positions) and gives the exact law of n and of the emitted tokens; the kernel's
own w and h (`_block_weights`) are checked against it, and the closed-form
claims (E[n] = 11/9 on the paper's example, exactness, never worse than
token-wise in expectation) are checked on it. Sampled tests then run the
kernel itself against those exact laws.

Statistical tests: alpha = 1e-3, fixed seeds (each either always passes or
always fails). Chi-square tests use tests/stats.py; each asserts its own
power >= 0.99 (Patnaik's approximation of the noncentral chi-square) against
a stated alternative, and separately that cells of probability 0 stay empty.
"""

import itertools
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from stats import chi_square_power, chi_square_test

from jaxspec.sampling.accept import VerifyResult, _block_weights, verify_block, verify_tokenwise
from jaxspec.sampling.processing import SamplingConfig, processed_probs, sample_from_probs

ALPHA = 1e-3
Z_CRIT = 3.2905  # two-sided normal critical value for alpha = 1e-3
N = 100_000  # rows per sampled test (the paper's example uses 2 N)

# Jitted once per shape; tests reuse a few shapes to keep compiles few.
_block = jax.jit(verify_block)
_tokenwise = jax.jit(verify_tokenwise)
_weights = jax.jit(_block_weights)
_sample = jax.jit(sample_from_probs)
_probs = jax.jit(processed_probs, static_argnums=1)


@pytest.fixture(autouse=True, scope="module")
def _raise_on_rank_promotion():
    # Implicit rank promotion hides shape bugs ([B] vs [B, 1]); make it an error.
    with jax.numpy_rank_promotion("raise"):
        yield


# ----------------------------------------------------------------------------
# Float64 reference: context-free p_0..p_K [K+1, V], q_0..q_{K-1} [K, V]
# ----------------------------------------------------------------------------


def _all_drafts(k, v):
    """Every draft block, int [V^K, K]."""
    return np.array(list(itertools.product(range(v), repeat=k)), np.int64).reshape(-1, k)


def _at(dist_KxV, drafts_MxK):
    """dist_KxV[i, drafts[:, i]] as [M, K]."""
    return dist_KxV[np.arange(drafts_MxK.shape[1]), drafts_MxK]


def running_weights_ref(p_x, q_x):
    """w_0..w_K [M, K+1] by the paper's recursion w_n = min(1, w_{n-1} p / q).

    Ratio p / q is +inf for q = 0 < p and 0 for p = 0 (the token-wise rule's
    semantics), and 0 * inf = 0: a weight of 0 stays 0.
    """
    m, k = p_x.shape
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(p_x > 0, p_x / q_x, 0.0)
    w = np.ones((m, k + 1))
    for n in range(1, k + 1):
        with np.errstate(invalid="ignore"):  # 0 * inf, discarded by the where
            w[:, n] = np.minimum(1.0, np.where(w[:, n - 1] > 0, w[:, n - 1] * ratio[:, n - 1], 0.0))
    return w


def stop_probabilities_ref(w, p, q):
    """h_1..h_{K-1} [M, K-1]: Z_n / (Z_n + 1 - w_n), and 1 where that is 0 / 0 (w_n = 1, Z_n = 0)."""
    k = q.shape[0]
    z = np.zeros((w.shape[0], k - 1))
    for n in range(1, k):
        z[:, n - 1] = np.maximum(w[:, n, None] * p[n] - q[n], 0.0).sum(-1)
    denom = z + 1.0 - w[:, 1:k]
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(denom > 0, z / denom, 1.0)


def block_tau_distribution(w, h):
    """Exact law of n [M, K+1] given w_0..w_K [M, K+1] and h_1..h_{K-1} [M, K-1].

    h_K = w_K; n is the largest index whose test fires, so
    P(n = j) = h_j prod_{m > j} (1 - h_m), with h_0 = 1.
    """
    h_all = np.concatenate([np.ones((w.shape[0], 1)), h, w[:, -1:]], axis=1)  # h_0..h_K
    survive = np.cumprod((1.0 - h_all)[:, ::-1], axis=1)[:, ::-1]  # prod_{m >= j} (1 - h_m)
    after = np.concatenate([survive[:, 1:], np.ones((w.shape[0], 1))], axis=1)  # prod_{m > j}
    return h_all * after


def _residual_ref(weighted_p, q):
    r = np.maximum(weighted_p - q, 0.0)
    mass = r.sum(-1, keepdims=True)
    total = weighted_p.sum(-1, keepdims=True)
    # Zero-mass fallback as in residual_distribution; rows with w_n = 0 (never reached: h_n = 0) stay 0.
    fallback = weighted_p / np.where(total > 0, total, 1.0)
    return np.where(mass > 0, r / np.where(mass > 0, mass, 1.0), fallback)


def block_round_ref(p, q, scale_residual=True):
    """Exact law of one block-verification round over all V^K draft blocks.

    Args:
      p: float64 [K+1, V], q: float64 [K, V], context-free.
      scale_residual: False gives a plausible bug (residual max(0, p_n - q_n),
        weight w_n dropped), used as a stated alternative for power.

    Returns:
      dict with drafts [M, K], prob [M] (draft block law), w [M, K+1],
      h [M, K-1], tau [M, K+1] (law of n per block), residual [M, K+1, V]
      (what next_token is drawn from at each n).
    """
    k, v = q.shape
    drafts = _all_drafts(k, v)
    prob = np.prod(_at(q, drafts), axis=1)
    w = running_weights_ref(_at(p[:k], drafts), _at(q, drafts))
    h = stop_probabilities_ref(w, p, q)
    tau = block_tau_distribution(w, h)
    scale = w[:, :k, None] if scale_residual else np.ones((len(drafts), k, 1))
    residual = np.concatenate(
        [_residual_ref(scale * p[None, :k], q[None]), np.broadcast_to(p[k], (len(drafts), 1, v))], axis=1
    )
    return dict(drafts=drafts, prob=prob, w=w, h=h, tau=tau, residual=residual)


def first_token_law(rnd):
    """Law [V] of the first emitted token: x_0 if n >= 1, else next_token."""
    v = rnd["residual"].shape[-1]
    kept = rnd["prob"] * rnd["tau"][:, 1:].sum(1)
    law = np.bincount(rnd["drafts"][:, 0], weights=kept, minlength=v)
    return law + (rnd["prob"] * rnd["tau"][:, 0]) @ rnd["residual"][:, 0]


def first_two_law(p, q, **kwargs):
    """Law [V, V] of the first two emitted tokens, a second round (positions 1..K+1) when n = 0."""
    k, v = q.shape
    rnd = block_round_ref(p[: k + 1], q[:k], **kwargs)
    second_round_first = first_token_law(block_round_ref(p[1 : k + 2], q[1 : k + 1], **kwargs))
    x0 = np.eye(v)[rnd["drafts"][:, 0]]
    x1 = np.eye(v)[rnd["drafts"][:, 1]] if k >= 2 else None
    law = np.einsum(
        "m,mv,mu->vu", rnd["prob"] * rnd["tau"][:, 0], rnd["residual"][:, 0], np.tile(second_round_first, (len(x0), 1))
    )
    law += np.einsum("m,mv,mu->vu", rnd["prob"] * rnd["tau"][:, 1], x0, rnd["residual"][:, 1])
    if k >= 2:
        law += np.einsum("m,mv,mu->vu", rnd["prob"] * rnd["tau"][:, 2:].sum(1), x0, x1)
    return law


def expected_tau_block(p, q):
    rnd = block_round_ref(p, q)
    return float(rnd["prob"] @ (rnd["tau"] @ np.arange(q.shape[0] + 1)))


def expected_tau_tokenwise_per_block(p, q, drafts):
    """E[n | drafts] under token-wise verification: sum_j prod_{i<j} min(1, p_i / q_i)."""
    p_x, q_x = _at(p[: q.shape[0]], drafts), _at(q, drafts)
    with np.errstate(divide="ignore", invalid="ignore"):
        accept = np.where(p_x > 0, np.minimum(1.0, p_x / q_x), 0.0)
    return np.cumprod(accept, axis=1).sum(1)


def expected_tau_tokenwise(p, q):
    drafts = _all_drafts(*q.shape)
    return float(np.prod(_at(q, drafts), axis=1) @ expected_tau_tokenwise_per_block(p, q, drafts))


# ----------------------------------------------------------------------------
# Cases: context-free, position-dependent p_0..p_{K+1}, q_0..q_K over V = 4
# (one spare position each, for the second round of the joint test)
# ----------------------------------------------------------------------------

V = 4
K_MAX = 3


def _case(kind, seed):
    rng = np.random.default_rng(seed)
    p = rng.dirichlet(np.ones(V), size=K_MAX + 2)
    q = rng.dirichlet(np.ones(V), size=K_MAX + 1)
    if kind in ("q_zero_where_p_positive", "both_zeros"):
        q[:, [1, 3]] = 0.0  # p > 0 there: drafts never propose them, residuals must
    if kind in ("p_zero_where_q_positive", "both_zeros"):
        p[:, 2] = 0.0  # q > 0 there: such drafts get w = 0 and are never kept
        p[2, 0] = 0.0
    return p / p.sum(-1, keepdims=True), q / q.sum(-1, keepdims=True)


CASES = ["general", "q_zero_where_p_positive", "p_zero_where_q_positive", "both_zeros"]
PAPER_P, PAPER_Q = np.array([1 / 3, 2 / 3]), np.array([2 / 3, 1 / 3])


def _run_round(key, p, q, n=N, verify=_block):
    """n rows of one round with context-free p [K+1, V], q [K, V]; drafts drawn from q."""
    key_draft, key_verify = jax.random.split(key)
    q_rows = jnp.broadcast_to(jnp.asarray(q, jnp.float32), (n, *q.shape))
    p_rows = jnp.broadcast_to(jnp.asarray(p, jnp.float32), (n, *p.shape))
    draft = _sample(key_draft, q_rows)
    return np.asarray(draft), verify(key_verify, draft, q_rows, p_rows)


def _first_emitted(draft, result):
    return np.where(np.asarray(result.num_accepted) > 0, draft[:, 0], np.asarray(result.next_token))


def _assert_chi_square(counts, law, alternative, label):
    """Zero cells empty, chi-square p-value > alpha, and power >= 0.99 against `alternative`.

    The combined test rejects if a zero-probability cell is hit or the
    chi-square rejects. Its power is taken as 1 - (1 - m)^N (1 - chi-square
    power), m the alternative's mass on the zero cells: (1 - m)^N is exactly
    the chance of no such hit, and the chi-square power is Patnaik's
    approximation on the remaining cells (treating the two as independent).
    """
    law, alternative, counts = np.ravel(law), np.ravel(alternative), np.ravel(counts)
    n, zero = int(counts.sum()), law <= 1e-12
    assert counts[zero].sum() == 0, f"{label}: emitted an outcome of target probability 0"
    stat, p_value, df = chi_square_test(law, counts)
    miss = (1.0 - alternative[zero].sum()) ** n * (1.0 - chi_square_power(law, alternative, n, ALPHA))
    assert 1.0 - miss >= 0.99, f"{label}: test too weak (power {1.0 - miss:.3f})"
    assert p_value > ALPHA, f"{label}: chi2={stat:.1f} df={df} p={p_value:.2e}"


# ----------------------------------------------------------------------------
# Closed form
# ----------------------------------------------------------------------------


def test_paper_example_exact_expectations():
    """p = [1/3, 2/3], q = [2/3, 1/3], K = 2: E[n] = 11/9 (block), 10/9 (token-wise).

    Law of n under block verification: (1/3, 1/9, 5/9); token-wise: (1/3, 2/9, 4/9).
    Checked from the float64 reference and from the kernel's own w and h.
    """
    p, q = np.array([PAPER_P] * 3), np.array([PAPER_Q] * 2)
    np.testing.assert_allclose(expected_tau_block(p, q), 11 / 9, atol=1e-12)
    np.testing.assert_allclose(expected_tau_tokenwise(p, q), 10 / 9, atol=1e-12)
    rnd = block_round_ref(p, q)
    np.testing.assert_allclose(rnd["prob"] @ rnd["tau"], [1 / 3, 1 / 9, 5 / 9], atol=1e-12)
    # The kernel's float32 w, h on all four draft blocks give the same expectation.
    m = len(rnd["drafts"])
    w, h = _weights(
        jnp.asarray(rnd["drafts"], jnp.int32),
        jnp.broadcast_to(jnp.asarray(q, jnp.float32), (m, 2, 2)),
        jnp.broadcast_to(jnp.asarray(p, jnp.float32), (m, 3, 2)),
    )
    w = np.concatenate([np.ones((m, 1)), np.asarray(w, np.float64)], axis=1)
    tau = block_tau_distribution(w, np.asarray(h, np.float64)[:, :-1])
    np.testing.assert_allclose(rnd["prob"] @ (tau @ np.arange(3)), 11 / 9, atol=1e-6)


@pytest.mark.parametrize("kind", CASES)
def test_kernel_weights_match_reference(kind):
    """`_block_weights` (float32) == the float64 recursion on every draft block, K = 3.

    Includes drafts with q(x) = 0 (w -> 1, never NaN) and p(x) = 0 (w = 0, absorbing).
    """
    p, q = _case(kind, seed=10)
    p, q = p[: K_MAX + 1], q[:K_MAX]
    drafts = _all_drafts(K_MAX, V)  # every block, including ones q cannot draw
    m = len(drafts)
    w, h = _weights(
        jnp.asarray(drafts, jnp.int32),
        jnp.broadcast_to(jnp.asarray(q, jnp.float32), (m, *q.shape)),
        jnp.broadcast_to(jnp.asarray(p, jnp.float32), (m, *p.shape)),
    )
    w, h = np.asarray(w), np.asarray(h)
    assert np.all(np.isfinite(w)) and np.all(np.isfinite(h))
    w_ref = running_weights_ref(_at(p[:K_MAX], drafts), _at(q, drafts))
    h_ref = np.concatenate([stop_probabilities_ref(w_ref, p, q), w_ref[:, -1:]], axis=1)
    np.testing.assert_allclose(w, w_ref[:, 1:], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(h, h_ref, rtol=1e-5, atol=1e-7)
    # w = 1 implies h = 1 (the 0 / 0 convention is the value along w = 1).
    assert np.all(h[w == 1.0] == 1.0)


def test_weights_are_a_clipped_product_not_a_cumprod():
    # Ratios 0.5 then 4: w = (0.5, 1); cumprod(min(1, r)) would give (0.5, 0.5).
    p = jnp.array([[[0.25, 0.75], [0.8, 0.2], [0.5, 0.5]]])
    q = jnp.array([[[0.5, 0.5], [0.2, 0.8]]])
    w, h = _block_weights(jnp.array([[0, 0]]), q, p)
    np.testing.assert_allclose(w, [[0.5, 1.0]])
    np.testing.assert_allclose(h[0, 1], 1.0)


def test_edge_cases_zero_over_zero_and_zero_probabilities():
    """p_0 = q_0 and p_1 = q_1: w_1 = 1 and Z_1 = 0, so h_1 = 0 / 0, taken as 1.

    Row 0, drafts (0, 0, 0): w = (1, 1, 1); the last draft has q = 0 < p, so
    w_3 = 1 (ratio +inf) and all three are kept. Row 1, drafts (0, 2, 0): x_1
    has p = q = 0, so w_2 = 0, and w stays 0 through x_2 despite its q = 0 < p
    (0 * inf = 0); h_2 = h_3 = 0, h_1 = 1, so exactly one draft is kept and
    the zero-mass residual max(0, p_1 - q_1) falls back to p_1. (Drafts that q
    cannot produce pin the convention: for drafts drawn from q, h_1 is never
    the deciding test when it is 0 / 0; see `_block_weights`.)
    """
    p = jnp.array([[0.2, 0.3, 0.5], [0.5, 0.5, 0.0], [0.2, 0.3, 0.5], [0.1, 0.1, 0.8]])
    q = jnp.array([[0.2, 0.3, 0.5], [0.5, 0.5, 0.0], [0.0, 0.5, 0.5]])
    draft = jnp.array([[0, 0, 0], [0, 2, 0]], jnp.int32)
    p, q = jnp.broadcast_to(p, (2, *p.shape)), jnp.broadcast_to(q, (2, *q.shape))
    w, h = _weights(draft, q, p)
    np.testing.assert_array_equal(w, [[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    np.testing.assert_allclose(h, [[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    for seed in range(8):
        result = _block(jax.random.key(seed), draft, q, p)
        np.testing.assert_array_equal(result.num_accepted, [3, 1])
        assert int(result.next_token[1]) in (0, 1)  # p_1's support


@pytest.mark.parametrize("kind", CASES)
@pytest.mark.parametrize("k", [1, 2, 3])
def test_reference_rule_is_exact(kind, k):
    """Closed form: first token ~ p_0, first two tokens ~ p_0 x p_1, for the rule as specified."""
    p, q = _case(kind, seed=20)
    rnd = block_round_ref(p[: k + 1], q[:k])
    np.testing.assert_allclose(first_token_law(rnd), p[0], atol=1e-12)
    np.testing.assert_allclose(first_two_law(p, q), np.outer(p[0], p[1]), atol=1e-12)


def test_never_worse_than_tokenwise_in_expectation_but_can_be_per_block():
    """E[n] over the drafts: block >= token-wise (Sun et al.); for a fixed draft block it can be lower.

    Random context-free cases with K = 4, V = 3 (81 draft blocks), Dirichlet
    concentrations 0.3..3 and some zeros (measured gains 0.001..0.36). The
    per-block counterexample:
    ratios p/q = 1/2 at both drafts and Z_1 = 0 give block 2 w_2 + (1 - w_2) h_1
    = 0.5 < token-wise 1/2 + 1/4.
    """
    rng = np.random.default_rng(30)
    gains, worse_mass = [], []
    for trial in range(40):
        alpha = [0.3, 1.0, 3.0][trial % 3]
        p, q = rng.dirichlet(np.full(3, alpha), size=5), rng.dirichlet(np.full(3, alpha), size=4)
        if trial % 4 == 0:
            p[rng.integers(0, 5), rng.integers(0, 3)] = 0.0
            q[rng.integers(0, 4), rng.integers(0, 3)] = 0.0
            p, q = p / p.sum(-1, keepdims=True), q / q.sum(-1, keepdims=True)
        gains.append(expected_tau_block(p, q) - expected_tau_tokenwise(p, q))
        rnd = block_round_ref(p, q)
        per_block_gain = rnd["tau"] @ np.arange(5) - expected_tau_tokenwise_per_block(p, q, rnd["drafts"])
        worse_mass.append(rnd["prob"] @ (per_block_gain < -1e-12))
    assert min(gains) >= -1e-12
    assert max(gains) > 0.05
    # Per block, block verification keeps fewer for much of the draft mass (here up to > 90%).
    assert max(worse_mass) > 0.5
    # One fixed draft block where block verification keeps fewer in expectation.
    p = np.array([[0.25, 0.75], [0.25, 0.75], [0.5, 0.5]])
    q = np.array([[0.5, 0.5], [0.5, 0.5]])
    rnd = block_round_ref(p, q)
    per_block = rnd["tau"] @ np.arange(3)
    tokenwise = expected_tau_tokenwise_per_block(p, q, rnd["drafts"])
    first = np.flatnonzero((rnd["drafts"] == 0).all(1))[0]
    np.testing.assert_allclose([per_block[first], tokenwise[first]], [0.5, 0.75])
    assert rnd["prob"] @ per_block >= rnd["prob"] @ tokenwise


# ----------------------------------------------------------------------------
# Sampled: the kernel itself
# ----------------------------------------------------------------------------


def test_sampled_paper_example_mean_and_law():
    """The paper's example through the kernel: 2N = 200k rows, one jitted call, seed 0.

    Var(n) = 68/81 under block verification, so the standard error of the mean
    is 0.00205: the z-test (|z| < 3.29, alpha = 1e-3) detects a shift of 0.01
    with power ~0.97, and the token-wise mean 10/9 lies 54 standard errors below
    11/9 (asserted > 40). The law of n (df = 2) is tested against
    (1/3, 1/9, 5/9) with the token-wise law as the alternative, and the first
    token (df = 1) against p with 0.95 p + 0.05 q as the alternative.
    """
    n_rows = 2 * N
    p, q = np.array([PAPER_P] * 3), np.array([PAPER_Q] * 2)
    draft, result = _run_round(jax.random.key(0), p, q, n=n_rows)
    n = np.asarray(result.num_accepted, np.float64)
    se = math.sqrt(68 / 81 / n_rows)
    assert abs((n.mean() - 11 / 9) / se) < Z_CRIT
    assert (n.mean() - 10 / 9) / se > 40
    counts = np.bincount(np.asarray(result.num_accepted), minlength=3)
    _assert_chi_square(counts, [1 / 3, 1 / 9, 5 / 9], [1 / 3, 2 / 9, 4 / 9], "law of n")
    first = np.bincount(_first_emitted(draft, result), minlength=2)
    _assert_chi_square(first, PAPER_P, 0.95 * PAPER_P + 0.05 * PAPER_Q, "first token")


@pytest.mark.parametrize("kind", CASES)
def test_sampled_first_token_and_law_of_n(kind):
    """K = 3, V = 4, N = 100k rows per case, seed 1: first token ~ p_0, n ~ its exact law.

    First token (df <= 3): alternative 0.95 p_0 + 0.05 q_0, the signature of
    draft mass leaking into the output. Law of n (df = 3): alternative the
    token-wise law of n on the same drafts. Both powers are computed and
    asserted >= 0.99.
    """
    p, q = _case(kind, seed=40)
    p, q = p[: K_MAX + 1], q[:K_MAX]
    draft, result = _run_round(jax.random.key(1), p, q)
    _assert_chi_square(
        np.bincount(_first_emitted(draft, result), minlength=V), p[0], 0.95 * p[0] + 0.05 * q[0], f"{kind} first"
    )
    rnd = block_round_ref(p, q)
    rates = np.minimum(p[:K_MAX], q).sum(-1)  # token-wise acceptance rates
    tokenwise_law = np.append(np.cumprod(np.append(1.0, rates[:-1])) * (1 - rates), rates.prod())
    _assert_chi_square(
        np.bincount(np.asarray(result.num_accepted), minlength=K_MAX + 1),
        rnd["prob"] @ rnd["tau"],
        tokenwise_law,
        f"{kind} law of n",
    )


# Seeds chosen so that the slip below changes the law (TV 0.018 and 0.044): for
# many (p, q) it leaves the first two tokens' law unchanged (seed 50: TV 0).
@pytest.mark.parametrize("k, kind, seed", [(2, "general", 52), (3, "both_zeros", 51)])
def test_sampled_first_two_tokens_joint(k, kind, seed):
    """First two emitted tokens jointly ~ p_0 x p_1 (context-free), N = 100k, seed 2.

    Rows with n = 0 emit one token; their second comes from a second round on
    positions 1..K+1, as the generation loop would do. Up to 16 cells. Power is
    asserted >= 0.99 against the law produced by dropping w_n from the
    residual (max(0, p_n - q_n) instead of max(0, w_n p_n - q_n)), the most
    likely implementation slip.
    """
    p, q = _case(kind, seed)
    key1, key2 = jax.random.split(jax.random.key(2))
    draft, result = _run_round(key1, p[: k + 1], q[:k])
    draft2, result2 = _run_round(key2, p[1 : k + 2], q[1 : k + 1])
    n = np.asarray(result.num_accepted)
    first = _first_emitted(draft, result)
    second = np.where(
        n >= 2, draft[:, 1], np.where(n == 1, np.asarray(result.next_token), _first_emitted(draft2, result2))
    )
    counts = np.bincount(first * V + second, minlength=V * V)
    buggy = first_two_law(p[: k + 2], q[: k + 1], scale_residual=False)
    _assert_chi_square(counts, np.outer(p[0], p[1]), buggy, f"K={k} {kind} joint")


# ----------------------------------------------------------------------------
# Relations to token-wise: K = 1 and greedy
# ----------------------------------------------------------------------------


def test_k1_is_bit_identical_to_tokenwise():
    """K = 1: h_1 = w_1 = min(1, p/q), and the kernel uses the key as verify_tokenwise does.

    Arbitrary (not drawn-from-q) drafts, p and q with zeros, many keys: equal arrays.
    """
    b, v = 4096, 6
    rng = np.random.default_rng(60)
    p = rng.dirichlet(np.full(v, 0.5), size=(b, 2)) * (rng.random((b, 2, v)) > 0.3)
    q = rng.dirichlet(np.full(v, 0.5), size=(b, 1)) * (rng.random((b, 1, v)) > 0.3)
    p[..., 0] += 1e-3  # no all-zero rows
    q[..., 1] += 1e-3
    p = jnp.asarray(p / p.sum(-1, keepdims=True), jnp.float32)
    q = jnp.asarray(q / q.sum(-1, keepdims=True), jnp.float32)
    draft = jnp.asarray(rng.integers(0, v, size=(b, 1)), jnp.int32)
    for seed in range(4):
        block, tokenwise = _block(jax.random.key(seed), draft, q, p), _tokenwise(jax.random.key(seed), draft, q, p)
        np.testing.assert_array_equal(block.num_accepted, tokenwise.num_accepted)
        np.testing.assert_array_equal(block.next_token, tokenwise.next_token)
    assert 0 < int(jnp.sum(block.num_accepted)) < b  # both outcomes occur


def test_greedy_one_hot_accepts_longest_argmax_prefix():
    """One-hot p and q: n = longest prefix with draft == argmax p, then argmax p; same as token-wise."""
    b, k, v = 64, 4, 10
    rng = np.random.default_rng(70)
    for seed in range(4):
        argmax = rng.integers(0, v, size=(b, k + 1))
        # Each draft matches the target argmax with probability 0.7: all match counts occur.
        draft = np.where(rng.random((b, k)) < 0.7, argmax[:, :k], rng.integers(0, v, size=(b, k)))
        p = jax.nn.one_hot(argmax, v)
        q = jax.nn.one_hot(draft, v)
        result = _block(jax.random.key(seed), jnp.asarray(draft, jnp.int32), q, p)
        matches = np.cumprod(draft == argmax[:, :k], axis=1).sum(1)
        np.testing.assert_array_equal(result.num_accepted, matches)
        np.testing.assert_array_equal(result.next_token, argmax[np.arange(b), matches])
    assert {0, k} <= set(matches.tolist())


def test_greedy_target_with_sampled_draft_emits_argmax():
    """One-hot p, drafts sampled from a real softmax q: still the greedy output."""
    b, k, v = 64, 4, 10
    rng = np.random.default_rng(71)
    seen = set()
    for seed in range(4):
        target_logits = rng.normal(size=(b, k + 1, v)).astype(np.float32)
        q = _probs(target_logits[:, :k] * 3 + rng.normal(size=(b, k, v)).astype(np.float32), SamplingConfig())
        draft = _sample(jax.random.key(seed), q)
        p = _probs(target_logits, SamplingConfig(temperature=0.0))
        result = _block(jax.random.key(100 + seed), draft, q, p)
        argmax = target_logits.argmax(-1)
        matches = np.cumprod(np.asarray(draft) == argmax[:, :k], axis=1).sum(1)
        np.testing.assert_array_equal(result.num_accepted, matches)
        np.testing.assert_array_equal(result.next_token, argmax[np.arange(b), matches])
        seen.update(matches.tolist())
    assert {0, k} < seen


# ----------------------------------------------------------------------------
# Shapes, jit, validation
# ----------------------------------------------------------------------------


def test_shapes_dtypes_and_no_retrace():
    fn = jax.jit(chex.assert_max_traces(verify_block, n=1))
    b, k, v = 2, 3, 5
    q = jnp.full((b, k, v), 1.0 / v, jnp.float32)
    p = jnp.full((b, k + 1, v), 1.0 / v, jnp.float32)
    draft = jnp.zeros((b, k), jnp.int32)
    result = fn(jax.random.key(0), draft, q, p)
    fn(jax.random.key(1), draft + 1, q, jax.nn.softmax(p * 3.0))  # new values, same shapes: no retrace
    assert isinstance(result, VerifyResult)
    chex.assert_shape([result.num_accepted, result.next_token], (b,))
    chex.assert_type([result.num_accepted, result.next_token], jnp.int32)


@pytest.mark.parametrize(
    "draft_shape, q_shape, p_shape, message",
    [((2, 3), (2, 3, 5), (2, 3, 5), "K \\+ 1"), ((2, 0), (2, 0, 5), (2, 1, 5), "K >= 1")],
)
def test_bad_shapes_raise(draft_shape, q_shape, p_shape, message):
    with pytest.raises(ValueError, match=message):
        verify_block(jax.random.key(0), jnp.zeros(draft_shape, jnp.int32), jnp.ones(q_shape), jnp.ones(p_shape))
