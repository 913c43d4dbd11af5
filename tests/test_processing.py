"""Tests for jaxspec.sampling.processing: exact values, order, ties, validation, sampling."""

import dataclasses
import functools
import math
import re
from unittest import mock

import chex
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from compile_report import count_compiles
from hypothesis import assume, given, settings
from stats import chi_square_pvalue

from jaxspec.sampling import processing
from jaxspec.sampling.processing import (
    SamplingConfig,
    processed_logprobs,
    processed_probs,
    sample_from_probs,
    sampling_params,
)

ALPHA = 1e-3  # significance level of every statistical test in this file


@pytest.fixture(autouse=True, scope="module")
def _raise_on_rank_promotion():
    # Implicit rank promotion hides shape bugs ([B] vs [B, 1]); make it an error.
    with jax.numpy_rank_promotion("raise"):
        yield


# ----------------------------------------------------------------------------
# References and statistics helpers
# ----------------------------------------------------------------------------


def _log_softmax64(x):
    x = np.asarray(x, np.float64)
    finite = np.isfinite(x)
    m = x[finite].max()
    z = np.log(np.exp(x[finite] - m).sum())
    return np.where(finite, x - m - z, -np.inf)


def _reference_logprobs(logits, temperature, top_k, top_p):
    """float64 reference, written group-by-group rather than with a sort mask."""
    x = np.asarray(logits, np.float64)
    if temperature == 0:
        out = np.full_like(x, -np.inf)
        out[np.argmax(x)] = 0.0
        return out
    x = x / temperature
    if 0 < top_k < x.size:
        kth = np.sort(x)[::-1][top_k - 1]
        x = np.where(x >= kth, x, -np.inf)
    if top_p < 1.0:
        probs = np.exp(_log_softmax64(x))
        kept = np.zeros(x.shape, bool)
        mass = 0.0
        # Add whole groups of tied logits, highest first, until mass >= top_p.
        for value in np.unique(x[np.isfinite(x)])[::-1]:
            group = x == value
            kept |= group
            mass += probs[group].sum()
            if mass >= top_p:
                break
        x = np.where(kept, x, -np.inf)
    return _log_softmax64(x)


# ----------------------------------------------------------------------------
# Exact values
# ----------------------------------------------------------------------------

NEG_INF = -np.inf


def test_temperature_exact():
    logits = np.array([1.0, 2.0, 3.0, -1.0], np.float32)
    out = processed_logprobs(logits, SamplingConfig(temperature=2.0))
    np.testing.assert_allclose(out, _log_softmax64(logits / 2.0), atol=1e-6)
    out = processed_logprobs(logits, SamplingConfig(temperature=0.5))
    np.testing.assert_allclose(out, _log_softmax64(logits * 2.0), atol=1e-6)


def test_default_config_is_plain_log_softmax():
    logits = np.array([[0.3, -2.0, 5.0], [1.0, 1.0, 1.0]], np.float32)
    out = processed_logprobs(logits, SamplingConfig())
    np.testing.assert_allclose(out, jax.nn.log_softmax(logits), atol=1e-6)


def test_tiny_temperature_stays_finite():
    # x / T would overflow to inf - inf = NaN without the max subtraction.
    logits = np.array([1.0, 3.0, 2.0], np.float32)
    out = processed_probs(logits, SamplingConfig(temperature=1e-30))
    np.testing.assert_array_equal(out, [0.0, 1.0, 0.0])


def test_top_k_exact():
    logits = np.array([1.0, 3.0, 2.0, 0.0], np.float32)
    out = processed_logprobs(logits, SamplingConfig(top_k=2))
    expected = np.array([NEG_INF, *_log_softmax64([3.0, 2.0]), NEG_INF])
    np.testing.assert_allclose(out, expected, atol=1e-6)


def test_top_k_keeps_all_ties_at_kth_value():
    # Documented rule: every token tied with the k-th logit is kept.
    out = processed_probs(np.array([1.0, 2.0, 2.0, 0.0], np.float32), SamplingConfig(top_k=2))
    np.testing.assert_allclose(out, [0.0, 0.5, 0.5, 0.0], atol=1e-7)
    out = processed_probs(np.array([3.0, 2.0, 2.0, 0.0], np.float32), SamplingConfig(top_k=2))
    np.testing.assert_allclose(out, np.exp(_log_softmax64([3.0, 2.0, 2.0, NEG_INF])), atol=1e-6)
    assert np.count_nonzero(out) == 3


@pytest.mark.parametrize("top_k", [4, 5, 1000])
def test_top_k_at_least_vocab_is_noop(top_k):
    logits = np.array([1.0, 3.0, 2.0, 0.0], np.float32)
    out = processed_logprobs(logits, SamplingConfig(top_k=top_k))
    np.testing.assert_allclose(out, _log_softmax64(logits), atol=1e-6)


@pytest.mark.parametrize(
    "top_p, kept",
    [
        (0.4, [0]),  # 0.5 >= 0.4
        (0.6, [0, 1]),  # 0.5 < 0.6 <= 0.8
        (0.85, [0, 1, 2]),  # 0.8 < 0.85 <= 0.95
        (0.99, [0, 1, 2, 3]),
    ],
)
def test_top_p_exact(top_p, kept):
    probs = np.array([0.5, 0.3, 0.15, 0.05])
    out = processed_probs(np.log(probs).astype(np.float32), SamplingConfig(top_p=top_p))
    expected = np.zeros(4)
    expected[kept] = probs[kept] / probs[kept].sum()
    np.testing.assert_allclose(out, expected, atol=1e-6)


def test_top_p_keeps_ties_with_last_kept_token():
    # {0, 1} already reaches 0.75 >= 0.7, but token 2 ties with token 1.
    probs = np.array([0.5, 0.25, 0.25])
    out = processed_probs(np.log(probs).astype(np.float32), SamplingConfig(top_p=0.7))
    np.testing.assert_allclose(out, probs, atol=1e-6)


@pytest.mark.parametrize("top_p", [1e-9, 1e-3, 0.1])
def test_tiny_top_p_keeps_exactly_the_top_token(top_p):
    logits = np.array([[0.0, 0.01, -0.01, 0.005], [2.0, 1.0, 0.0, 5.0]], np.float32)
    out = processed_logprobs(logits, SamplingConfig(top_p=top_p))
    np.testing.assert_array_equal(out, [[NEG_INF, 0.0, NEG_INF, NEG_INF], [NEG_INF] * 3 + [0.0]])


def test_top_p_is_computed_after_top_k():
    # Top-k renormalises first, so top-p sees [4/7, 3/7] and keeps one token;
    # top-p on the raw [.4, .3, .2, .1] would keep two.
    probs = np.array([0.4, 0.3, 0.2, 0.1])
    out = processed_probs(np.log(probs).astype(np.float32), SamplingConfig(top_k=2, top_p=0.5))
    np.testing.assert_allclose(out, [1.0, 0.0, 0.0, 0.0], atol=1e-6)


def test_fixed_order_temperature_then_top_k_then_top_p():
    """T=4, k=3, p=0.7 on [4, 2, 1, 0]: only T -> k -> p keeps exactly {0, 1}.

    Scaled logits [1, .5, .25, 0]; top-3 renormalised gives [.481, .292, .227]
    so top-p stops after two tokens (0.481 < 0.7 <= 0.773). Temperature last
    (k -> p -> T) sees [.843, ...] and keeps one token; top-p before top-k
    (T -> p -> k) sees [.409, .248, .193, .150] and keeps three.
    """
    logits = np.array([4.0, 2.0, 1.0, 0.0], np.float32)
    config = SamplingConfig(temperature=4.0, top_k=3, top_p=0.7)
    out = processed_logprobs(logits, config)
    expected = np.array([*_log_softmax64([1.0, 0.5]), NEG_INF, NEG_INF])
    np.testing.assert_allclose(out, expected, atol=1e-6)

    def kept(x):
        return np.isfinite(x)

    temperature_last = _reference_logprobs(_reference_logprobs(logits, 1.0, 3, 0.7), 4.0, 0, 1.0)
    top_p_first = _reference_logprobs(_reference_logprobs(logits, 4.0, 0, 0.7), 1.0, 3, 1.0)
    assert kept(temperature_last).sum() == 1
    assert kept(top_p_first).sum() == 3
    np.testing.assert_array_equal(kept(out), [True, True, False, False])


def test_greedy_is_exact_one_hot_at_first_argmax():
    logits = np.array([[0.1, 2.0, -1.0, 2.0], [5.0, 0.0, 0.0, 0.0]], np.float32)
    for config in [
        SamplingConfig(temperature=0.0),
        SamplingConfig(temperature=0.0, top_k=2, top_p=0.1),
    ]:
        assert config.is_greedy
        logprobs = processed_logprobs(logits, config)
        np.testing.assert_array_equal(logprobs, [[NEG_INF, 0.0, NEG_INF, NEG_INF], [0.0] + [NEG_INF] * 3])
        np.testing.assert_array_equal(processed_probs(logits, config), [[0, 1, 0, 0], [1, 0, 0, 0]])
    assert not SamplingConfig(temperature=1e-6).is_greedy


def test_greedy_ties_at_gpt2_vocabulary_go_to_the_lowest_index():
    """Equal maxima far apart, +0 and -0 (equal values), and a max only at the last id."""
    vocab = 50_257
    logits = np.full((4, vocab), -np.inf, np.float32)
    logits[0, [7, 30_000, vocab - 1]] = 3.0
    logits[1, 40_000], logits[1, 45_000] = -0.0, 0.0
    logits[2, 45_000], logits[2, 40_000] = -0.0, 0.0
    logits[3, :] = -1.0
    logits[3, vocab - 1] = 2.0
    params = sampling_params(np.zeros(4), 0, 1.0, 4)
    for probs in (processed_probs(logits, SamplingConfig(temperature=0.0)), jax.jit(processed_probs)(logits, params)):
        probs = np.asarray(probs)
        assert np.argmax(probs, axis=-1).tolist() == [7, 40_000, 40_000, vocab - 1]
        np.testing.assert_array_equal(probs.sum(-1), 1.0)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16, jnp.float32])
def test_any_float_input_gives_float32_output(dtype):
    logits = jnp.asarray([[1.5, -0.25, 3.0, 0.5]], dtype)
    config = SamplingConfig(temperature=0.7, top_k=3, top_p=0.9)
    out = processed_logprobs(logits, config)
    chex.assert_type(out, jnp.float32)
    chex.assert_type(processed_probs(logits, config), jnp.float32)
    # Same as processing the (exactly representable) values in float32.
    np.testing.assert_array_equal(out, processed_logprobs(logits.astype(jnp.float32), config))


# Jitted once per (shape, config): far cheaper than op-by-op compilation of a
# new shape, and the way callers use these functions.
_jit_logprobs = jax.jit(processed_logprobs, static_argnums=1)
_jit_probs = jax.jit(processed_probs, static_argnums=1)


def test_probs_are_the_law_of_logprobs():
    """processed_probs (exp / sum) and processed_logprobs give the same law: the same
    support, each within a few float32 ulp of the float64 softmax over that support."""
    logits = np.random.default_rng(0).normal(size=(4, 5, 11)).astype(np.float32) * 3
    params = sampling_params([1.3, 0.0, 0.7, 1.0], [7, 0, 0, 3], [0.8, 1.0, 0.5, 0.9], 4)
    probs = np.asarray(jax.jit(processed_probs)(logits, params), np.float64)
    logprobs = np.asarray(jax.jit(processed_logprobs)(logits, params), np.float64)
    np.testing.assert_array_equal(probs == 0, np.isneginf(logprobs))
    temperature = np.asarray(params.temperature, np.float64)[:, None, None]
    x = np.where(np.isneginf(logprobs), -np.inf, logits / np.where(temperature == 0, 1.0, temperature))
    law = np.exp(x - x.max(-1, keepdims=True))
    law /= law.sum(-1, keepdims=True)
    law[1] = np.exp(logprobs[1])  # the greedy row: an exact one-hot either way
    np.testing.assert_allclose(probs, law, rtol=4e-7, atol=0)
    np.testing.assert_allclose(np.exp(logprobs), law, rtol=2e-6, atol=0)
    assert set(np.unique(probs[1])) == {0.0, 1.0}


@pytest.mark.parametrize("shape", [(7,), (2, 7), (2, 3, 7)])
def test_any_leading_shape(shape):
    logits = np.random.default_rng(1).normal(size=shape).astype(np.float32)
    config = SamplingConfig(temperature=0.9, top_k=4, top_p=0.9)
    out = _jit_probs(logits, config)
    chex.assert_shape(out, shape)
    np.testing.assert_allclose(np.sum(out, -1), np.ones(shape[:-1]), atol=1e-6)
    flat = _jit_probs(logits.reshape(-1, shape[-1]), config)
    np.testing.assert_array_equal(np.reshape(out, (-1, shape[-1])), flat)


# ----------------------------------------------------------------------------
# Generated cases against the float64 reference
# ----------------------------------------------------------------------------

# Logits on a quarter grid and power-of-two temperatures: scaling is exact in
# float32, so ties are the same in the reference and the implementation. Vocab
# 2..8 is padded with -inf (masked tokens) to a fixed width of 8, which also
# tests -inf inputs and keeps eager op compilation to one shape.
_WIDTH = 8
_logits = (
    st.integers(2, _WIDTH)
    .flatmap(lambda v: st.lists(st.integers(-12, 12), min_size=v, max_size=v))
    .map(lambda xs: np.array(xs + [-np.inf] * (_WIDTH - len(xs)), np.float32) / 4)
)
_configs = st.builds(
    SamplingConfig,
    temperature=st.sampled_from([0.0, 0.5, 1.0, 2.0, 4.0]),
    top_k=st.integers(0, 9),
    top_p=st.sampled_from([1.0, 0.999, 0.95, 0.9, 0.7, 0.5, 0.3, 0.05]),
)


def _near_top_p_boundary(logits, config):
    # Cumulative masses within rounding of top_p may legitimately differ.
    if config.is_greedy or config.top_p >= 1.0:
        return False
    x = _reference_logprobs(logits, config.temperature, config.top_k, 1.0)
    probs = np.exp(x)
    for value in np.unique(x[np.isfinite(x)])[::-1]:
        mass = probs[x >= value].sum()
        if abs(mass - config.top_p) < 1e-5:
            return True
    return False


# The generated cases run one compiled program with the settings traced (a
# `SamplingParams`, the path every loop takes; a `SamplingConfig` is converted
# to the same): called eagerly, each new config re-traced the filter's
# branches (~0.4 s an example).
_traced_logprobs = jax.jit(processed_logprobs)
_traced_probs = jax.jit(processed_probs)


@settings(deadline=None, max_examples=150, derandomize=True)
@given(logits=_logits, config=_configs)
def test_matches_float64_reference(logits, config):
    assume(not _near_top_p_boundary(logits, config))
    out = np.asarray(_traced_logprobs(logits, config.as_params()))
    ref = _reference_logprobs(logits, config.temperature, config.top_k, config.top_p)
    np.testing.assert_array_equal(np.isfinite(out), np.isfinite(ref))
    np.testing.assert_allclose(out[np.isfinite(out)], ref[np.isfinite(ref)], atol=1e-5)


@functools.cache
def _logprobs_with_candidates(candidates):
    """`processed_logprobs` compiled with the fast path reading only `candidates` values (traced settings)."""

    def logprobs(logits, params):
        with mock.patch.object(processing, "_CANDIDATES", candidates):
            return processed_logprobs(logits, params)

    return jax.jit(logprobs)


@pytest.mark.parametrize("candidates", [1, 3])
@settings(deadline=None, max_examples=60, derandomize=True)
@given(logits=_logits, config=_configs)
def test_bisection_fallback_matches_float64_reference(candidates, logits, config):
    # With 1 or 3 candidates the fast path rarely settles top-k / top-p on its
    # own, so these cases run the bisection fallback (alone or beside rows
    # the candidates settle) at the widths above.
    assume(not _near_top_p_boundary(logits, config))
    out = np.asarray(_logprobs_with_candidates(candidates)(logits, config.as_params()))
    ref = _reference_logprobs(logits, config.temperature, config.top_k, config.top_p)
    np.testing.assert_array_equal(np.isfinite(out), np.isfinite(ref))
    np.testing.assert_allclose(out[np.isfinite(out)], ref[np.isfinite(ref)], atol=1e-5)


def _sorted_reference_logprobs(logits, temperature, top_k, top_p):
    """float64 reference for large vocabularies (one sort, groups of tied values).

    Returns:
      (log-probabilities, distance of the closest cumulative group mass to top_p).
    """
    x = np.asarray(logits, np.float64) / temperature
    values, group = np.unique(-x, return_inverse=True)  # groups by value, highest first
    counts = np.bincount(group)
    if 0 < top_k < x.size:
        kept_groups = np.cumsum(counts) - counts < top_k  # groups that start within the top k
        x = np.where(kept_groups[group], x, -np.inf)
    closest = np.inf
    if top_p < 1.0:
        probs = np.exp(_log_softmax64(x))
        cum = np.cumsum(np.bincount(group, weights=probs))
        closest = np.min(np.abs(cum - top_p))
        before = cum - np.bincount(group, weights=probs)
        x = np.where((before < top_p)[group], x, -np.inf)
    return _log_softmax64(x), closest


@pytest.mark.parametrize(
    "temperature, top_k, top_p",
    [(1.0, 0, 0.9), (1.0, 1000, 1.0), (1.0, 1000, 0.95), (0.7, 300, 0.5), (1.0, 50, 0.999)],
)
def test_filters_at_gpt2_vocabulary_match_float64_reference(temperature, top_k, top_p):
    # A flat law over 50,257 ids: the nucleus and k > 64 lie far beyond the
    # 64 candidates of the fast path, so the exact fallback decides; a row
    # the candidates settle shares the batch with one they do not.
    # The first seed whose laws have no cumulative mass within rounding of top_p.
    for seed in range(100):
        flat = np.random.default_rng(seed).standard_normal(50_257).astype(np.float32)
        peaked = flat.copy()
        peaked[:10] += 12.0
        logits = np.stack([flat, peaked])
        refs = [_sorted_reference_logprobs(row, temperature, top_k, top_p) for row in logits]
        if all(closest > 1e-5 for _, closest in refs):
            break
    config = SamplingConfig(temperature=temperature, top_k=top_k, top_p=top_p)
    out = np.asarray(jax.jit(processed_logprobs, static_argnums=1)(logits, config))
    for row, (ref, _) in enumerate(refs):
        np.testing.assert_array_equal(np.isfinite(out[row]), np.isfinite(ref))
        np.testing.assert_allclose(out[row][np.isfinite(ref)], ref[np.isfinite(ref)], atol=1e-5)


@settings(deadline=None, max_examples=100, derandomize=True)
@given(logits=_logits, config=_configs, seed=st.integers(0, 2**31 - 1))
def test_invariants(logits, config, seed):
    probs = np.asarray(_traced_probs(logits, config.as_params()))
    kept = probs > 0
    assert kept.sum() >= 1
    np.testing.assert_allclose(probs.sum(), 1.0, atol=1e-6)
    assert kept[np.argmax(logits)]  # the top token always survives
    assert not np.any(kept & np.isneginf(logits))  # masked inputs stay masked
    if 0 < config.top_k and config.top_p == 1.0 and not config.is_greedy:
        assert kept.sum() >= min(config.top_k, np.isfinite(logits).sum())
    if not config.is_greedy:
        # Tie rule makes the kept set a function of values, not positions.
        perm = np.random.default_rng(seed).permutation(logits.size)
        permuted = np.asarray(_traced_probs(logits[perm], config.as_params()))
        np.testing.assert_allclose(permuted, probs[perm], atol=1e-7)


# ----------------------------------------------------------------------------
# Validation
# ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, bad",
    [
        (dict(temperature=-0.5), "-0.5"),
        (dict(temperature=float("nan")), "nan"),
        (dict(temperature=float("inf")), "inf"),
        (dict(temperature="1.0"), "'1.0'"),
        (dict(top_k=-1), "-1"),
        (dict(top_k=2.5), "2.5"),
        (dict(top_k=True), "True"),
        (dict(top_p=0.0), "0.0"),
        (dict(top_p=1.5), "1.5"),
        (dict(top_p=-0.1), "-0.1"),
        (dict(top_p=float("nan")), "nan"),
    ],
)
def test_invalid_config_raises_naming_the_value(kwargs, bad):
    (name,) = kwargs
    with pytest.raises(ValueError, match=rf"{name}.*got {re.escape(bad)}(?![\w.])") as info:
        SamplingConfig(**kwargs)
    assert "use " in str(info.value)  # says how to fix it


def test_config_is_hashable_and_normalises_numpy_scalars():
    a = SamplingConfig(temperature=np.float32(0.5), top_k=np.int64(3), top_p=0.5)
    b = SamplingConfig(temperature=0.5, top_k=3, top_p=0.5)
    assert a == b and hash(a) == hash(b)
    assert type(a.top_k) is int and type(a.temperature) is float
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.top_k = 4  # frozen


# ----------------------------------------------------------------------------
# jit
# ----------------------------------------------------------------------------


def test_jit_matches_eager_and_does_not_retrace():
    config = SamplingConfig(temperature=0.8, top_k=5, top_p=0.9)
    fn = jax.jit(chex.assert_max_traces(processed_logprobs, n=1), static_argnums=1)
    logits = jax.random.normal(jax.random.key(2), (4, 16))
    np.testing.assert_allclose(fn(logits, config), processed_logprobs(logits, config), atol=1e-6)
    # New values and an equal-but-distinct config object: no second trace.
    fn(logits + 1.0, SamplingConfig(temperature=0.8, top_k=5, top_p=0.9))
    fn(-logits, config)


def test_eager_calls_compile_once_per_shape_whatever_the_settings():
    """Outside jit, each call used to trace and compile its `lax.cond`s again (~1 s per call at
    [4, 100] on one core): now one program per input shape, dtype and settings shape."""
    logits = np.random.default_rng(3).normal(size=(3, 40)).astype(np.float32)
    per_row = sampling_params([0.0, 0.7, 1.0], [0, 5, 0], [1.0, 0.9, 0.5], 3)
    configs = (SamplingConfig(), SamplingConfig(0.7, 5, 0.9), SamplingConfig(0.0), SamplingConfig(top_p=0.3))

    def calls(settings):
        functions = (processed_probs, processed_logprobs)
        return lambda: [jax.block_until_ready(f(logits, s)) for f in functions for s in settings]

    count_compiles(calls([configs[0], per_row]))  # the first calls compile (scalar and per-row settings)
    assert count_compiles(calls(configs + (per_row,))) == 0


def test_static_settings_compile_to_the_candidates_top_k_not_a_sort():
    """A `SamplingConfig` enters the program as constants; XLA:CPU then rewrote the 64-candidate
    `lax.top_k` of a constant top-k into a full sort of every row (~20x slower at [512, 50,257]).
    Checked in the optimized HLO: no sort, for static settings as for traced ones."""
    spec = jax.ShapeDtypeStruct((4, 50_257), jnp.float32)
    for config in (SamplingConfig(top_k=50), SamplingConfig(temperature=0.7, top_k=50, top_p=0.9)):
        hlo = jax.jit(lambda x, config=config: processed_probs(x, config)).lower(spec).compile().as_text()
        assert not re.search(r"\bsort\(", hlo), config
        assert "topk" in hlo.lower(), config  # the candidates' top_k is there


def test_sample_jit_does_not_retrace():
    fn = jax.jit(chex.assert_max_traces(sample_from_probs, n=1))
    probs = jnp.full((3, 5), 0.2)
    a = fn(jax.random.key(0), probs)
    fn(jax.random.key(1), probs * 2)
    chex.assert_shape(a, (3,))
    chex.assert_type(a, jnp.int32)


# ----------------------------------------------------------------------------
# sample_from_probs
# ----------------------------------------------------------------------------

_P = np.array([0.3, 0.0, 0.2, 0.1, 0.0, 0.35, 0.05])
_N = 200_000


def test_sample_from_probs_chi_square():
    """Pearson chi-square of 200k draws against a fixed p with zeros in it.

    alpha = 1e-3, deterministic seed; zero-probability tokens must never appear.
    Power: 5 nonzero cells (df = 4), critical value chi2_{4, 0.999} = 18.47.
    An alternative at total variation delta has noncentrality
    lambda = N * sum (p1 - p)^2 / p >= 4 N delta^2 (Cauchy-Schwarz), so
    delta = 0.01 gives lambda >= 80 and power > 0.999; delta = 0.005 gives
    lambda >= 20 and power ~ 0.70.
    """
    probs = jnp.broadcast_to(jnp.asarray(_P, jnp.float32), (_N, _P.size))
    tokens = jax.jit(sample_from_probs)(jax.random.key(123), probs)
    chex.assert_shape(tokens, (_N,))
    chex.assert_type(tokens, jnp.int32)
    counts = np.bincount(np.asarray(tokens), minlength=_P.size)
    assert counts[_P == 0].sum() == 0
    assert chi_square_pvalue(counts, _P) > ALPHA


def test_sample_from_unnormalised_probs_chi_square():
    """Rows need not sum to 1: 3 * p samples p. Same alpha and power as above."""
    probs = jnp.broadcast_to(jnp.asarray(3 * _P, jnp.float32), (_N, _P.size))
    tokens = sample_from_probs(jax.random.key(7), probs)
    counts = np.bincount(np.asarray(tokens), minlength=_P.size)
    assert counts[_P == 0].sum() == 0
    assert chi_square_pvalue(counts, _P) > ALPHA


def test_sample_never_picks_zero_prob_tokens():
    # Zero-probability tokens never win, whatever the race draws (the rates of
    # rare but possible tokens are tested at V = 50,257 in test_large_vocab.py).
    probs = jnp.tile(jnp.array([[0.0, 0.0, 0.6, 0.4], [0.0, 1.0, 0.0, 0.0]]), (5000, 1))
    tokens = np.asarray(sample_from_probs(jax.random.key(0), probs))
    assert bool(np.all(np.asarray(probs)[np.arange(len(tokens)), tokens] > 0))


def test_sample_batch_shape_and_one_hot():
    probs = jax.nn.one_hot(jnp.arange(6).reshape(2, 3) % 4, 4)
    tokens = sample_from_probs(jax.random.key(5), probs)
    chex.assert_shape(tokens, (2, 3))
    np.testing.assert_array_equal(tokens, np.arange(6).reshape(2, 3) % 4)


def test_chi_square_helper_rejects_a_wrong_distribution():
    # Guards the helper itself: a clear mismatch must give a tiny p-value.
    counts = np.array([30_000, 0, 20_000, 10_000, 0, 40_000, 0])  # token 6 missing
    assert chi_square_pvalue(counts, _P) < 1e-10
    # Expected [2, 4, 94, 100]: the two small cells are pooled (df = 2).
    pooled = chi_square_pvalue(np.array([3, 3, 94, 100]), np.array([0.01, 0.02, 0.47, 0.5]))
    np.testing.assert_allclose(pooled, 1.0, atol=1e-6)  # observed == expected
    # stat = 2 * 10^2 / 50 = 4 with df = 1: p = P(chi2_1 > 4) = erfc(sqrt(2)).
    pvalue = chi_square_pvalue(np.array([60, 40]), np.array([0.5, 0.5]))
    np.testing.assert_allclose(pvalue, math.erfc(math.sqrt(2.0)), rtol=1e-5)
