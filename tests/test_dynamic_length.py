"""Dynamic draft length in the chain kernels: `num_drafts` [B] (jaxspec.sampling.accept).

A row that stops after m drafts is a draft that proposes a virtual STOP token,
outside the vocabulary, at position m: both rules stay exact whatever rule
chose m, even one that looks at the drafted tokens themselves. The tests:

- num_drafts = K in every row gives the kernels' arrays bit for bit;
- a float64 enumeration of every draft block gives the exact law of the first
  two emitted tokens under a stopping rule that depends on the drafts (m = 1
  if x_0 = 0, 2 if x_1 = 1, else 3): the correct rule gives p_0 x p_1 exactly,
  the likely slip (at n = m, drawing from the residual of q_m instead of from
  p_m) does not;
- the kernels, sampled (N = 100k rows, fixed seeds), pass a chi-square test of
  that joint law at alpha = 1e-3 with power >= 0.99 against the slip, and the
  slip, implemented, fails the same test (the test can fail).
"""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from stats import chi_square_power, chi_square_test

from jaxspec.sampling.accept import residual_distribution, verify_block, verify_tokenwise
from jaxspec.sampling.processing import sample_from_probs

ALPHA = 1e-3
N = 100_000
V, K = 4, 3
RULES = {"tokenwise": jax.jit(verify_tokenwise), "block": jax.jit(verify_block)}
_sample = jax.jit(sample_from_probs)


def stop_rule(drafts_MxK: np.ndarray) -> np.ndarray:
    """Drafts each row keeps, chosen from the drafts themselves: 1 if x_0 = 0, 2 if x_1 = 1, else 3."""
    return np.where(drafts_MxK[:, 0] == 0, 1, np.where(drafts_MxK[:, 1] == 1, 2, 3))


def _pq(seed=24):  # a case where the slip moves the law by TV 0.10 (seed 7: 0.007)
    rng = np.random.default_rng(seed)
    p = rng.dirichlet(np.ones(V), size=K + 2)
    q = rng.dirichlet(np.ones(V), size=K + 1)
    return p, q


def _norm(x):
    mass = x.sum()
    return x / mass if mass > 0 else None


def round_law_ref(p, q, rule, slip=False):
    """Exact law of one round over every draft block: list of (prob, law of n [K+1], residuals [K+1, V], drafts).

    p: float64 [K+1, V], q: float64 [K, V], context-free. `slip`: at n = m < K
    the next token comes from norm(max(0, w_m p_m - q_m)) instead of p_m.
    """
    out = []
    for x in itertools.product(range(V), repeat=K):
        x = np.array(x)
        prob = np.prod(q[np.arange(K), x])
        m = int(stop_rule(x[None])[0])
        ratio = p[np.arange(K), x] / q[np.arange(K), x]
        law = np.zeros(K + 1)
        res = np.zeros((K + 1, V))
        if rule == "tokenwise":
            a = np.minimum(1.0, ratio)
            for j in range(m):
                law[j] = np.prod(a[:j]) * (1 - a[j])
                res[j] = _norm(np.maximum(p[j] - q[j], 0.0))
            law[m] = np.prod(a[:m])
            w_m = 1.0
        else:
            w = np.ones(m + 1)
            for i in range(1, m + 1):
                w[i] = min(1.0, w[i - 1] * ratio[i - 1])
            h = np.ones(m + 1)  # h_0 = 1: n = 0 when no later test fires
            for i in range(1, m):
                z = np.maximum(w[i] * p[i] - q[i], 0.0).sum()
                h[i] = z / (z + 1 - w[i]) if z + 1 - w[i] > 0 else 1.0
            h[m] = w[m]
            for j in range(m + 1):
                law[j] = h[j] * np.prod(1 - h[j + 1 : m + 1])
            for j in range(m):
                r = _norm(np.maximum(w[j] * p[j] - q[j], 0.0))
                res[j] = r if r is not None else p[j]
            w_m = w[m]
        res[m] = p[m]
        if slip and m < K:
            r = _norm(np.maximum(w_m * p[m] - q[m], 0.0))
            res[m] = r if r is not None else p[m]
        out.append((prob, law, res, x))
    return out


def first_two_law(p, q, rule, slip=False):
    """Law [V, V] of the first two emitted tokens; n = 0 starts a second round (positions 1..K+1)."""
    first_of_next = sum(
        prob * (law[0] * res[0] + (1 - law[0]) * np.eye(V)[x[0]])
        for prob, law, res, x in round_law_ref(p[1:], q[1:], rule, slip)
    )
    joint = np.zeros((V, V))
    for prob, law, res, x in round_law_ref(p[: K + 1], q[:K], rule, slip):
        joint += prob * law[0] * np.outer(res[0], first_of_next)
        joint += prob * law[1] * np.outer(np.eye(V)[x[0]], res[1])
        joint += prob * law[2:].sum() * np.outer(np.eye(V)[x[0]], np.eye(V)[x[1]])
    return joint


def slipped(kernel):
    """The slip as an implementation: stop by truncating n, but keep q_m in the residual at n = m."""

    def verify(key, drafts, q, p, num_drafts):
        res = kernel(key, drafts, q, p)  # all K drafts judged
        m = num_drafts
        n = jnp.minimum(res.num_accepted, m)
        key_next = jax.random.fold_in(key, 1)
        at_m = jnp.take_along_axis(p, m[:, None, None], axis=1)[:, 0]
        q_m = jnp.take_along_axis(q, jnp.minimum(m, K - 1)[:, None, None], axis=1)[:, 0]
        q_m = jnp.where((m < K)[:, None], q_m, 0.0)
        redraw = sample_from_probs(key_next, residual_distribution(at_m, q_m))
        return res._replace(num_accepted=n, next_token=jnp.where(res.num_accepted >= m, redraw, res.next_token))

    return jax.jit(verify)


def _sampled_first_two(verify, p, q, seed):
    """Sampled first two tokens of N rows, with the stop rule applied to each round's drafts."""

    def round_(key, p, q):
        key_draft, key_verify = jax.random.split(key)
        q_rows = jnp.broadcast_to(jnp.asarray(q, jnp.float32), (N, K, V))
        p_rows = jnp.broadcast_to(jnp.asarray(p, jnp.float32), (N, K + 1, V))
        drafts = np.asarray(_sample(key_draft, q_rows))
        m = jnp.asarray(stop_rule(drafts), jnp.int32)
        res = verify(key_verify, jnp.asarray(drafts), q_rows, p_rows, m)
        n = np.asarray(res.num_accepted)
        assert (n <= np.asarray(m)).all()
        return drafts, n, np.asarray(res.next_token)

    key1, key2 = jax.random.split(jax.random.key(seed))
    d1, n1, t1 = round_(key1, p[: K + 1], q[:K])
    d2, n2, t2 = round_(key2, p[1:], q[1:])
    first = np.where(n1 > 0, d1[:, 0], t1)
    second = np.where(n1 >= 2, d1[:, 1], np.where(n1 == 1, t1, np.where(n2 > 0, d2[:, 0], t2)))
    return np.bincount(first * V + second, minlength=V * V)


@pytest.mark.parametrize("rule", RULES)
def test_num_drafts_k_is_bit_identical_to_none(rule):
    rng = np.random.default_rng(3)
    b = 2048
    p = jnp.asarray(rng.dirichlet(np.ones(V), size=(b, K + 1)), jnp.float32)
    q = jnp.asarray(rng.dirichlet(np.ones(V), size=(b, K)), jnp.float32)
    drafts = _sample(jax.random.key(1), q)
    for seed in range(3):
        a = RULES[rule](jax.random.key(seed), drafts, q, p)
        b_ = RULES[rule](jax.random.key(seed), drafts, q, p, jnp.full((b,), K, jnp.int32))
        np.testing.assert_array_equal(a.num_accepted, b_.num_accepted)
        np.testing.assert_array_equal(a.next_token, b_.next_token)


@pytest.mark.parametrize("rule", RULES)
def test_stopping_on_the_drafts_keeps_the_law_exactly_in_float64(rule):
    p, q = _pq()
    np.testing.assert_allclose(first_two_law(p, q, rule), np.outer(p[0], p[1]), atol=1e-12)
    slip_tv = 0.5 * np.abs(first_two_law(p, q, rule, slip=True) - np.outer(p[0], p[1])).sum()
    assert slip_tv > 0.01, slip_tv  # the case can tell the slip apart


@pytest.mark.parametrize("rule", RULES)
def test_sampled_kernel_with_a_draft_dependent_stop_is_exact_and_the_slip_is_caught(rule):
    """Chi-square of the first two tokens (16 cells), alpha 1e-3, power >= 0.99 asserted against the slip."""
    p, q = _pq()
    law = np.outer(p[0], p[1]).ravel()
    slip_law = first_two_law(p, q, rule, slip=True).ravel()
    power = chi_square_power(law, slip_law, N, ALPHA)
    assert power >= 0.99, power
    counts = _sampled_first_two(RULES[rule], p, q, seed=11)
    stat, p_value, df = chi_square_test(law, counts)
    assert p_value > ALPHA, f"{rule}: chi2={stat:.1f} df={df} p={p_value:.2e}"
    # Negative control: the slip, implemented, is rejected by the same test.
    broken = _sampled_first_two(slipped(RULES[rule]), p, q, seed=11)
    assert chi_square_test(law, broken)[1] < ALPHA


def test_rows_stop_at_their_own_length_with_a_bonus_from_p_m():
    """One-hot p = q (everything accepted): n = num_drafts, and the next token is argmax p_m."""
    b = 5
    tokens = jnp.array([[1, 2, 3]] * b, jnp.int32)
    q = jax.nn.one_hot(tokens, V)
    p = jax.nn.one_hot(jnp.array([[1, 2, 3, 0]] * b), V)
    m = jnp.array([1, 2, 3, 1, 2], jnp.int32)
    for verify in RULES.values():
        res = verify(jax.random.key(0), tokens, q, p, m)
        assert res.num_accepted.tolist() == m.tolist()
        assert res.next_token.tolist() == [2, 3, 0, 2, 3]


# ----------------------------------------------------------------------------
# In the loop: speculative_sample(min_draft_confidence=...)
# ----------------------------------------------------------------------------


def _models(vocab=32, scale=4.0):
    from jaxspec.testing import random_model, tiny_config

    target = random_model(tiny_config("gpt2", vocab_size=vocab), seed=0, scale=scale)
    draft = random_model(tiny_config("opt", vocab_size=vocab), seed=1, scale=4.0)
    return target, draft


def test_threshold_zero_is_bit_identical_to_fixed_length():
    from jaxspec import speculative_sample

    target, draft = _models()
    run = lambda **kw: speculative_sample(  # the greedy test's shapes below: its token-wise loop is shared
        target, draft, [[1, 2, 3], [4, 5], [9]], key=jax.random.key(3), max_new_tokens=16, num_draft_tokens=5, **kw
    )
    fixed, dynamic = run(), run(min_draft_confidence=0.0)
    np.testing.assert_array_equal(fixed.tokens, dynamic.tokens)
    np.testing.assert_array_equal(fixed.num_drafted, dynamic.num_drafted)
    np.testing.assert_array_equal(fixed.num_accepted, dynamic.num_accepted)


def test_skipped_draft_steps_keep_the_draft_cache_right():
    """Batch 1, the target as its own draft (p = q): every proposed draft must be accepted.

    A threshold of 0.15 (on a peaked random model, scale 12) stops the row
    early in some rounds, so every remaining draft step of those rounds is
    skipped; a draft cache left wrong by a skipped step would give q != p in
    a later round and a rejection.
    """
    from jaxspec import speculative_sample

    target, _ = _models(scale=12.0)
    for verify in RULES:
        out = speculative_sample(
            target,
            target,
            [[7, 1, 2]],
            key=jax.random.key(5),
            max_new_tokens=40,
            num_draft_tokens=4,
            verify=verify,
            min_draft_confidence=0.15,
        )
        drafted, rounds = int(out.num_drafted[0]), int(out.num_rounds[0])
        assert rounds < drafted < 4 * rounds, (drafted, rounds)  # the row stopped early in some rounds, not all
        assert int(out.num_accepted[0]) == drafted


def test_greedy_dynamic_length_returns_the_target_greedy_tokens():
    from jaxspec import autoregressive_sample, speculative_sample

    target, draft = _models()
    prompts = [[1, 2, 3], [4, 5], [9]]
    plain = autoregressive_sample(target, prompts, key=jax.random.key(0), max_new_tokens=16, temperature=0.0)
    for verify in RULES:
        out = speculative_sample(
            target,
            draft,
            prompts,
            key=jax.random.key(1),
            max_new_tokens=16,
            num_draft_tokens=5,
            temperature=0.0,
            verify=verify,
            min_draft_confidence=0.9,
        )
        np.testing.assert_array_equal(out.tokens, plain.tokens)


@pytest.mark.parametrize("bad", [-0.1, 1.5, float("nan"), "high"])
def test_bad_threshold_is_refused_with_its_value(bad):
    from jaxspec import speculative_sample

    target, draft = _models()
    with pytest.raises(ValueError, match="min_draft_confidence"):
        speculative_sample(target, draft, [[1]], key=jax.random.key(0), max_new_tokens=2, min_draft_confidence=bad)
