"""Tests for jaxspec.sampling.accept: closed-form exactness, sampled exactness, greedy, shapes.

Statistical tests share one design: alpha = 1e-3, fixed seeds (so each either
always passes or always fails), N = 200,000 draws. Power against an alternative
at total variation delta from the null: the Pearson statistic is then
(asymptotically) noncentral chi-square with lambda = N * sum (p1 - p0)^2 / p0,
and by Cauchy-Schwarz (sum |p1 - p0|)^2 <= sum (p1 - p0)^2 / p0, so
lambda >= 4 N delta^2 = 80 for delta = 0.01. `test_documented_power` recomputes
every power figure quoted in the docstrings below.
"""

import math

import chex
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from stats import chi_square_pvalue

from jaxspec.sampling.accept import (
    VerifyResult,
    acceptance_probability,
    residual_distribution,
    verify_tokenwise,
)
from jaxspec.sampling.processing import SamplingConfig, processed_probs, sample_from_probs

ALPHA = 1e-3
Z_CRIT = 3.2905  # two-sided normal critical value for alpha = 1e-3
N = 200_000

# Jitted once per shape; tests reuse a handful of shapes to keep compiles few.
_verify = jax.jit(verify_tokenwise)
_sample = jax.jit(sample_from_probs)
_probs = jax.jit(processed_probs, static_argnums=1)


@pytest.fixture(autouse=True, scope="module")
def _raise_on_rank_promotion():
    # Implicit rank promotion hides shape bugs ([B] vs [B, 1]); make it an error.
    with jax.numpy_rank_promotion("raise"):
        yield


# ----------------------------------------------------------------------------
# Statistics helpers (no scipy: the chi2 survival function is gammaincc)
# ----------------------------------------------------------------------------


def _z_score(successes, n, rate):
    """Binomial z statistic of `successes` out of `n` against `rate`."""
    return (successes - n * rate) / math.sqrt(n * rate * (1.0 - rate))


def _chi2_power(df, lam, alpha=ALPHA):
    """P(noncentral chi2(df, lam) > chi2_{df, 1-alpha}) via the Poisson mixture."""
    # Critical value on a 0.01 grid (one vectorised call), rounded up: slightly
    # conservative. Fixed array sizes keep this to one compile per shape.
    grid = np.arange(0.0, 80.0, 0.01)
    sf = np.asarray(jax.scipy.special.gammaincc(np.full_like(grid, df / 2.0), grid / 2.0))
    critical = grid[np.argmax(sf <= alpha)]
    j = np.arange(400)  # Poisson(lam / 2) terms; ample for lam <= 200
    assert lam <= 200
    log_w = -lam / 2 + j * math.log(lam / 2) - np.array([math.lgamma(k + 1) for k in j])
    tails = np.asarray(jax.scipy.special.gammaincc((df + 2 * j) / 2.0, np.full(j.shape, critical / 2.0)), np.float64)
    return float(np.sum(np.exp(log_w) * tails))


def test_documented_power():
    lam = 4 * N * 0.01**2  # = 80, the lower bound at TV distance 0.01
    for df in (1, 2, 3, 4, 11):
        assert _chi2_power(df, lam) > 0.9999
    np.testing.assert_allclose(_chi2_power(4, 20.0), 0.698, atol=2e-3)  # vs scipy.stats.ncx2
    # z-test of an acceptance rate r: the standard error sqrt(r (1 - r) / N) is at
    # most sqrt(0.25 / N), so a shift of 0.01 is at least 8.9 sigma.
    shift = 0.01 / math.sqrt(0.25 / N)
    assert 0.5 * math.erfc((Z_CRIT - shift) / math.sqrt(2)) > 0.9999


# ----------------------------------------------------------------------------
# Closed form, from the kernel's own helpers
# ----------------------------------------------------------------------------


def _first_token_distribution(p, q, proposal=None):
    """Exact law of the first emitted token, from the kernel's own helpers.

    P(y) = sum_x s(x) [a(x) 1{x = y} + (1 - a(x)) r(y)], where a and r use the q
    given to the kernel and s is the law the draft token really has (q, unless
    the caller lies about q, as a greedy draft with a softmax q does).

    Returns:
      (P float64 [V], acceptance rate sum_x s(x) a(x)).
    """
    p = jnp.asarray(p, jnp.float32)
    q = jnp.asarray(q, jnp.float32)
    v = p.shape[-1]
    a = acceptance_probability(jnp.broadcast_to(p, (v, v)), jnp.broadcast_to(q, (v, v)), jnp.arange(v))
    a = np.asarray(a, np.float64)
    r = np.asarray(residual_distribution(p, q), np.float64)
    s = np.asarray(q if proposal is None else proposal, np.float64)
    return s * a + np.sum(s * (1.0 - a)) * r, float(np.sum(s * a))


def _pad(x, width):
    """Zero-pads the last axis of x to `width` tokens."""
    x = np.asarray(x)
    return np.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, width - x.shape[-1])])


def _normalise(w):
    w = np.asarray(w, np.float64)
    if w.sum() == 0:
        w = w.copy()
        w[0] = 1.0
    return (w / w.sum()).astype(np.float32)


def _weights(v, lo=0.0):
    return st.lists(st.floats(lo, 1.0, width=32, allow_subnormal=False), min_size=v, max_size=v).map(
        lambda xs: np.array(xs, np.float64)
    )


@st.composite
def _pq_pairs(draw, kind):
    """(p, q) float32 [8]: distributions over V in 2..8 tokens shaped by `kind`.

    Zero-padded to width 8 (tokens with p = q = 0, which must stay inert) so
    the helpers compile for one shape only.
    """
    v = draw(st.integers(2, 8))
    index = st.integers(0, v - 1)
    if kind == "general":
        p, q = draw(_weights(v)), draw(_weights(v))
    elif kind == "q_zero_where_p_positive":
        p, q = draw(_weights(v, 2**-6)), draw(_weights(v, 2**-6))
        zero = np.array(draw(st.lists(st.booleans(), min_size=v, max_size=v)))
        zero[draw(index)] = False  # q keeps some mass
        q[zero] = 0.0
    elif kind == "disjoint":
        perm = np.array(draw(st.permutations(range(v))))
        split = draw(st.integers(1, v - 1))
        p, q = np.zeros(v), np.zeros(v)
        p[perm[:split]] = draw(_weights(v, 2**-6))[perm[:split]]
        q[perm[split:]] = draw(_weights(v, 2**-6))[perm[split:]]
    elif kind == "equal":
        p = draw(_weights(v))
        q = p.copy()
    elif kind == "equal_up_to_rounding":
        p = draw(_weights(v, 2**-6))
        noise = np.array(draw(st.lists(st.floats(-1, 1), min_size=v, max_size=v)))
        q = p * (1 + 1e-6 * noise)
    elif kind == "one_hot_p":
        p, q = np.eye(v)[draw(index)], draw(_weights(v))
    elif kind == "one_hot_q":
        p, q = draw(_weights(v)), np.eye(v)[draw(index)]
    elif kind == "one_hot_both":
        p, q = np.eye(v)[draw(index)], np.eye(v)[draw(index)]
    elif kind == "near_uniform":
        scale = draw(st.sampled_from([1e-2, 1e-4, 1e-7]))
        noise = lambda: np.array(draw(st.lists(st.floats(-1, 1), min_size=v, max_size=v)))  # noqa: E731
        p, q = 1.0 + scale * noise(), 1.0 + scale * noise()
    else:
        raise ValueError(kind)
    return _pad(_normalise(p), 8), _pad(_normalise(q), 8)


PQ_KINDS = [
    "general",
    "q_zero_where_p_positive",
    "disjoint",
    "equal",
    "equal_up_to_rounding",
    "one_hot_p",
    "one_hot_q",
    "one_hot_both",
    "near_uniform",
]


@pytest.mark.parametrize("kind", PQ_KINDS)
@settings(deadline=None, max_examples=40, derandomize=True)
@given(data=st.data())
def test_closed_form_first_token_is_target_and_rate_is_sum_min(kind, data):
    """Exactness and optimal acceptance, from the kernel's a(x) and r(y)."""
    p, q = data.draw(_pq_pairs(kind), label="p, q")
    law, rate = _first_token_distribution(p, q)
    np.testing.assert_allclose(law, p, atol=1e-6)
    # Sum min(p, q) = 1 - TV: the best any exact rule can do; rules out
    # sample-match style rules that reach only sum p q.
    np.testing.assert_allclose(rate, np.sum(np.minimum(p, q), dtype=np.float64), atol=1e-6)


def test_helpers_documented_edge_cases():
    p = jnp.array([0.5, 0.5, 0.0])
    q = jnp.array([0.0, 0.5, 0.5])
    # q(x) = 0: accepted iff p(x) > 0 (the kernel's u * q < p event).
    np.testing.assert_array_equal(acceptance_probability(p, q, jnp.array(0)), 1.0)
    np.testing.assert_array_equal(acceptance_probability(p, jnp.array([0.0, 1.0, 0.0]), jnp.array(2)), 0.0)
    # p(x) = 0 < q(x): always rejected; p(x) >= q(x): always accepted.
    np.testing.assert_array_equal(acceptance_probability(p, q, jnp.array(2)), 0.0)
    np.testing.assert_array_equal(acceptance_probability(p, q, jnp.array(1)), 1.0)
    np.testing.assert_allclose(acceptance_probability(q, jnp.array([0.2, 0.2, 0.6]), jnp.array(2)), 0.5 / 0.6)
    # Residual of p == q is p itself (zero mass fallback), not NaN.
    np.testing.assert_array_equal(residual_distribution(p, p), p)
    np.testing.assert_allclose(residual_distribution(p, q), [1.0, 0.0, 0.0])
    # Batched helpers broadcast over leading axes.
    chex.assert_shape(
        acceptance_probability(jnp.ones((2, 3, 4)), jnp.ones((2, 3, 4)), jnp.zeros((2, 3), jnp.int32)), (2, 3)
    )


# ----------------------------------------------------------------------------
# Sampled: the kernel itself against the target law
# ----------------------------------------------------------------------------


def _draft_tokens(key, q_KxV, n):
    """Context-free drafts: token i drawn from exactly q_KxV[i], for n rows."""
    q = jnp.broadcast_to(jnp.asarray(q_KxV, jnp.float32), (n, *np.shape(q_KxV)))
    return _sample(key, q), q


V_SAMPLED = 6  # one vocab width for all sampled tests: fewer shapes to compile


def _run_round(key, p_list, q_list, n=N):
    """One verification round over n rows with context-free p_0..p_K, q_0..q_{K-1}.

    Distributions are zero-padded to V_SAMPLED tokens.
    """
    key_draft, key_verify = jax.random.split(key)
    p_list, q_list = _pad(np.array(p_list), V_SAMPLED), _pad(np.array(q_list), V_SAMPLED)
    draft, q = _draft_tokens(key_draft, q_list, n)
    p = jnp.broadcast_to(jnp.asarray(p_list, jnp.float32), (n, *p_list.shape))
    return draft, _verify(key_verify, draft, q, p)


def _first_emitted(draft, result):
    return np.asarray(jnp.where(result.num_accepted > 0, draft[:, 0], result.next_token))


P1 = np.array([0.3, 0.0, 0.25, 0.05, 0.4, 0.0])
Q1 = np.array([0.1, 0.3, 0.0, 0.35, 0.25, 0.0])  # mass where p = 0, none on token 2


def test_sampled_first_token_k1_chi_square_and_rate():
    """K = 1, N = 200k rows, drafts drawn from q: first token ~ p; rate ~ sum min.

    alpha = 1e-3, seed 0. Chi-square over the 4 tokens with p > 0 (df = 3,
    critical value 16.27): TV deviation 0.01 gives lambda >= 80, power > 0.9999.
    Tokens with p = 0 must never be emitted. Acceptance rate 0.4 = sum min(p, q),
    two-sided z-test at 3.29 sigma: a shift of 0.01 is 9.1 sigma, power > 0.9999
    (sum p q = 0.1475 would be ~320 sigma away).
    """
    draft, result = _run_round(jax.random.key(0), [P1, P1], [Q1])
    first = _first_emitted(draft, result)
    counts = np.bincount(first, minlength=P1.size)
    assert counts[P1 == 0].sum() == 0
    assert chi_square_pvalue(counts, P1) > ALPHA
    accepted = int(jnp.sum(result.num_accepted))
    assert abs(_z_score(accepted, N, np.minimum(P1, Q1).sum())) < Z_CRIT


# Context-free positions: p_0..p_4 (K = 3 plus a second round), q_0..q_3.
P3 = np.array(
    [
        [0.1, 0.4, 0.3, 0.2],
        [0.5, 0.1, 0.0, 0.4],
        [0.25, 0.25, 0.25, 0.25],
        [0.7, 0.1, 0.1, 0.1],
        [0.05, 0.05, 0.3, 0.6],
    ]
)
Q3 = np.array(
    [
        [0.4, 0.1, 0.2, 0.3],
        [0.2, 0.2, 0.3, 0.3],
        [0.1, 0.6, 0.1, 0.2],
        [0.3, 0.3, 0.3, 0.1],
    ]
)


def test_sampled_first_two_tokens_k3_joint_chi_square():
    """K = 3: the first two emitted tokens jointly ~ p_0 x p_1 (context-free).

    Rows that reject at position 0 emit one token, so their second token comes
    from a second round drafting positions 1..3 (q_1..q_3) against p_1..p_4, as
    the generation loop would. alpha = 1e-3, seed 1, N = 200k. 12 cells with
    positive probability (df = 11, critical value 31.26): TV deviation 0.01
    gives lambda >= 80, power > 0.9999.
    """
    key1, key2 = jax.random.split(jax.random.key(1))
    draft, result = _run_round(key1, P3[:4], Q3[:3])
    draft2, result2 = _run_round(key2, P3[1:5], Q3[1:4])
    n = np.asarray(result.num_accepted)
    first = _first_emitted(draft, result)
    second = np.where(
        n >= 2,
        np.asarray(draft[:, 1]),
        np.where(n == 1, np.asarray(result.next_token), _first_emitted(draft2, result2)),
    )
    counts = np.bincount(first * V_SAMPLED + second, minlength=V_SAMPLED**2)
    expected = np.outer(_pad(P3[0], V_SAMPLED), _pad(P3[1], V_SAMPLED)).ravel()
    assert counts[expected == 0].sum() == 0
    assert chi_square_pvalue(counts, expected) > ALPHA


def test_sampled_num_accepted_k3_chi_square():
    """K = 3: n follows P(n = j) = prod_{i<j} alpha_i * (1 - alpha_j), P(n = 3) = prod alpha_i.

    alpha_i = sum min(p_i, q_i) = (0.6, 0.6, 0.65). alpha = 1e-3, seed 2,
    N = 200k, 4 cells (df = 3, critical value 16.27): TV deviation 0.01 gives
    lambda >= 80, power > 0.9999.
    """
    _, result = _run_round(jax.random.key(2), P3[:4], Q3[:3])
    rates = np.minimum(P3[:3], Q3[:3]).sum(-1)
    law = np.array([1 - rates[0], rates[0] * (1 - rates[1]), rates[0] * rates[1] * (1 - rates[2]), rates.prod()])
    counts = np.bincount(np.asarray(result.num_accepted), minlength=4)
    assert chi_square_pvalue(counts, law) > ALPHA


def test_sampled_bonus_token_when_all_accepted():
    """q_i == p_i: every draft is accepted and next_token is the bonus ~ p_K.

    alpha = 1e-3, seed 3, N = 200k; bonus p_2 has 5 positive tokens (df = 4,
    critical value 18.47): TV deviation 0.01 gives lambda >= 80, power > 0.9999.
    """
    p = np.array([[0.2, 0.3, 0.5, 0.0, 0.0, 0.0], [0.0, 0.1, 0.1, 0.8, 0.0, 0.0], [0.1, 0.0, 0.2, 0.3, 0.15, 0.25]])
    _, result = _run_round(jax.random.key(3), p, p[:2])
    np.testing.assert_array_equal(result.num_accepted, 2)
    counts = np.bincount(np.asarray(result.next_token), minlength=6)
    assert counts[p[2] == 0].sum() == 0
    assert chi_square_pvalue(counts, p[2]) > ALPHA


def test_block_verification_paper_oracle_tokenwise_mean():
    """Sun et al. 2024 example: p = [1/3, 2/3], q = [2/3, 1/3], K = 2.

    Token-wise E[n] = 10/9 (block verification would reach 11/9), first token
    ~ p. alpha = 1e-3 for both checks, seed 4, N = 200k. Var(n) = 62/81, so the
    z-test's standard error is 0.00196: a shift of 0.01 in E[n] is detected with
    power ~0.97, the 1/9 gap to block verification with power ~ 1. The
    chi-square (df = 1, critical value 10.83) has power > 0.9999 at TV 0.01.
    """
    p, q = np.array([1 / 3, 2 / 3]), np.array([2 / 3, 1 / 3])
    draft, result = _run_round(jax.random.key(4), [p, p, p], [q, q])
    n = np.asarray(result.num_accepted, np.float64)
    z = (n.mean() - 10 / 9) / math.sqrt(62 / 81 / N)
    assert abs(z) < Z_CRIT
    counts = np.bincount(_first_emitted(draft, result), minlength=V_SAMPLED)
    assert chi_square_pvalue(counts, _pad(p, V_SAMPLED)) > ALPHA


# ----------------------------------------------------------------------------
# Greedy falls out of the same kernel
# ----------------------------------------------------------------------------


def test_greedy_accepts_while_draft_is_argmax_and_emits_argmax():
    b, k, v = 6, 4, 10
    logits = np.random.default_rng(0).normal(size=(b, k + 1, v)).astype(np.float32)
    argmax = logits.argmax(-1)  # [B, K+1]
    p = _probs(logits, SamplingConfig(temperature=0.0))
    matches = np.array([0, 1, 2, 3, 4, 4])  # leading matches per row
    draft = np.array(argmax[:, :k])
    for row, m in enumerate(matches):
        if m < k:
            draft[row, m] = (argmax[row, m] + 1) % v  # first mismatch
            draft[row, m + 1 :] = np.arange(k - m - 1) % v  # anything after it
    q = jax.nn.one_hot(draft, v)
    for seed in range(5):
        result = _verify(jax.random.key(seed), jnp.asarray(draft), q, p)
        np.testing.assert_array_equal(result.num_accepted, matches)
        np.testing.assert_array_equal(result.next_token, argmax[np.arange(b), matches])


def test_greedy_target_with_sampled_draft_emits_argmax():
    # p one-hot, q a real softmax the drafts were drawn from: still greedy output.
    b, k, v = 6, 4, 10
    rng = np.random.default_rng(1)
    seen_matches = set()
    for seed in range(8):
        target_logits = rng.normal(size=(b, k + 1, v)).astype(np.float32)
        # Sharp draft logits: drafts often equal the target argmax, sometimes not.
        draft_logits = target_logits[:, :k] * 3 + rng.normal(size=(b, k, v)).astype(np.float32)
        q = _probs(draft_logits, SamplingConfig())
        draft = _sample(jax.random.key(seed), q)
        p = _probs(target_logits, SamplingConfig(temperature=0.0))
        result = _verify(jax.random.key(100 + seed), draft, q, p)
        argmax = target_logits.argmax(-1)
        matches = np.cumprod(np.asarray(draft) == argmax[:, :k], axis=1).sum(1)
        np.testing.assert_array_equal(result.num_accepted, matches)
        np.testing.assert_array_equal(result.next_token, argmax[np.arange(b), matches])
        seen_matches.update(matches.tolist())
    assert {0, k} < seen_matches  # rejections at 0 and full acceptance both seen


# ----------------------------------------------------------------------------
# Regression tests for bugs others shipped (FIELD_NOTES.md)
# ----------------------------------------------------------------------------

P_G = np.array([0.5, 0.3, 0.2])  # target
Q_SOFT = np.array([0.6, 0.3, 0.1])  # greedy draft's softmax; the draft emits argmax = 0


def test_greedy_draft_needs_one_hot_q_closed_form():
    """transformers #32867: a greedy draft's q is one-hot, not its softmax.

    With the softmax as q, a(0) = 0.5/0.6 and the residual max(0, p - q_soft)
    lives on token 2 only, so token 1 is never emitted: TV 0.33 from p.
    """
    proposal = np.eye(3)[0]  # the token really is argmax, deterministically
    law_soft, _ = _first_token_distribution(P_G, Q_SOFT, proposal=proposal)
    law_one_hot, _ = _first_token_distribution(P_G, proposal, proposal=proposal)
    np.testing.assert_allclose(law_one_hot, P_G, atol=1e-6)
    np.testing.assert_allclose(law_soft, [5 / 6, 0.0, 1 / 6], atol=1e-6)
    assert 0.5 * np.abs(law_soft - P_G).sum() > 0.3


def test_greedy_draft_needs_one_hot_q_sampled():
    """Same bug through the kernel: soft q is rejected, one-hot q passes.

    alpha = 1e-3, seed 5, N = 200k, df = 2 (critical value 13.82), power > 0.9999
    at TV 0.01; the soft-q output is 0.33 away.
    """
    draft = jnp.zeros((N, 1), jnp.int32)  # the greedy draft's argmax, every row
    p_G = _pad(P_G, V_SAMPLED)
    p = jnp.broadcast_to(jnp.asarray(p_G, jnp.float32), (N, 2, V_SAMPLED))
    for q_row, should_pass in [(np.eye(3)[0], True), (Q_SOFT, False)]:
        q = jnp.broadcast_to(jnp.asarray(_pad(q_row, V_SAMPLED), jnp.float32), (N, 1, V_SAMPLED))
        result = _verify(jax.random.key(5), draft, q, p)
        counts = np.bincount(_first_emitted(draft, result), minlength=V_SAMPLED)
        assert (chi_square_pvalue(counts, p_G) > ALPHA) == should_pass


def test_sample_match_rule_is_exact_but_accepts_less():
    """lablup/mlxcel #902: accept-iff-equal-to-a-draw-from-p reaches only sum p q.

    p = [.5, .3, .2], q = [.4, .4, .2]: sum min = 0.9, sum p q = 0.36. Sample-match
    emits the right law (so an output-only test would pass it), but its rate is
    0.36; the kernel's is 0.9. alpha = 1e-3, seed 6, N = 200k: each rate is
    checked with a two-sided z-test at 3.29 sigma (a 0.01 shift is >= 9 sigma,
    power > 0.9999), and the kernel's rate is ~500 sigma above sum p q.
    """
    p, q = np.array([0.5, 0.3, 0.2]), np.array([0.4, 0.4, 0.2])
    sum_min, sum_pq = np.minimum(p, q).sum(), (p * q).sum()
    assert sum_pq < sum_min
    key_kernel, key_match = jax.random.split(jax.random.key(6))
    draft, result = _run_round(key_kernel, [p, p], [q])
    kernel_accepts = int(jnp.sum(result.num_accepted))
    assert abs(_z_score(kernel_accepts, N, sum_min)) < Z_CRIT
    assert _z_score(kernel_accepts, N, sum_pq) > 100
    # The sample-match rule on the same drafts: exact output, lower rate.
    y, _ = _draft_tokens(key_match, _pad(p[None], V_SAMPLED), N)  # [N, 1], y ~ p
    y = np.asarray(y[:, 0])
    match_accepts = int(np.sum(np.asarray(draft[:, 0]) == y))
    assert abs(_z_score(match_accepts, N, sum_pq)) < Z_CRIT
    assert chi_square_pvalue(np.bincount(y, minlength=V_SAMPLED), _pad(p, V_SAMPLED)) > ALPHA


# ----------------------------------------------------------------------------
# Shapes, jit, validation
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("k, use_jit", [(1, True), (4, True), (1, False)])
def test_shapes_and_ranges(k, use_jit):
    b, v = 6, 10
    rng = np.random.default_rng(k)
    q = _probs(rng.normal(size=(b, k, v)).astype(np.float32), SamplingConfig())
    p = _probs(rng.normal(size=(b, k + 1, v)).astype(np.float32), SamplingConfig(top_k=3))
    draft = _sample(jax.random.key(0), q)
    fn = _verify if use_jit else verify_tokenwise
    result = fn(jax.random.key(1), draft, q, p)
    assert isinstance(result, VerifyResult)
    chex.assert_shape([result.num_accepted, result.next_token], (b,))
    chex.assert_type([result.num_accepted, result.next_token], jnp.int32)
    n = np.asarray(result.num_accepted)
    assert np.all((0 <= n) & (n <= k))
    # The emitted token always has positive target probability at its position.
    assert np.all(np.asarray(p)[np.arange(b), n, np.asarray(result.next_token)] > 0)


def test_jit_does_not_retrace():
    fn = jax.jit(chex.assert_max_traces(verify_tokenwise, n=1))
    b, k, v = 2, 3, 5
    q = jnp.full((b, k, v), 1.0 / v, jnp.float32)  # not weak-typed: softmax below is not
    p = jnp.full((b, k + 1, v), 1.0 / v, jnp.float32)
    draft = jnp.zeros((b, k), jnp.int32)
    fn(jax.random.key(0), draft, q, p)
    fn(jax.random.key(1), draft + 1, q, jax.nn.softmax(p * 3.0))  # new values, same shapes


@pytest.mark.parametrize(
    "draft_shape, q_shape, p_shape, message",
    [
        ((2, 3), (2, 3, 5), (2, 3, 5), "K \\+ 1"),
        ((2, 3), (2, 2, 5), (2, 4, 5), "draft_probs"),
        ((2,), (2, 1, 5), (2, 2, 5), "draft_tokens"),
        ((2, 0), (2, 0, 5), (2, 1, 5), "K >= 1"),
    ],
)
def test_bad_shapes_raise(draft_shape, q_shape, p_shape, message):
    with pytest.raises(ValueError, match=message):
        verify_tokenwise(jax.random.key(0), jnp.zeros(draft_shape, jnp.int32), jnp.ones(q_shape), jnp.ones(p_shape))
