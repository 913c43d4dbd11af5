"""Exactness at GPT-2's vocabulary size: rare tokens drawn at exactly their rate.

An 8-token vocabulary cannot see an event of probability 1e-7 per entry; at
V = 50,257 such an event happens in ~0.5% of draws. The law used here is
peaked: one id at 1 - eps and each of the other 50,256 ids at ~2.5e-8
(eps ~ 1.26e-3). Two opposite sampler flaws show up as the count of non-top
ids over >= 50,000 draws:

- a race whose Exp(1) draw can be exactly 0 (jax.random.exponential: a 2^-23
  grid) lets any token win: ~0.6% extra non-top draws, ~5x the exact count;
- a race built from a float32 uniform (Gumbel-style -log(u)) never gives an
  Exp(1) below ~1.2e-7, so ids at 2.5e-8 almost never win: ~0 non-top draws.

Each count is checked two-sided at 5 sigma of the binomial (a false alarm
rate of 6e-7 per test); the two flawed races (in the flat race) and a
two-level race that weights groups by their largest id are run through the
same detector and must fail it (the test of the test). At this vocabulary the
sampler races in two levels (`draws.two_level_race`), also checked against a
closed-form law over 10,000 ids. The loops are tested on a
stand-in model whose logits are a constant vector (a real GPT-2-sized
embedding, a LayerNorm with zero scale), so every generated token is an
independent draw from the law above.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from stats import chi_square_power, chi_square_test

from jaxspec import autoregressive_sample, speculative_sample
from jaxspec.sampling import draws
from jaxspec.sampling.processing import SamplingConfig, processed_probs, sample_from_probs
from jaxspec.testing import random_model, tiny_config

VOCAB = 50_257
TOP = 1234
RARE_TARGET = 2.5e-8  # probability of each non-top id under the target
RARE_DRAFT = 1e-6  # under the draft: rare ids are drafted ~5% of the time and mostly rejected
ROWS, TOKENS = 512, 100  # 51,200 draws per loop
SIGMAS = 5.0

# Run time (51,200 draws over 50,257 ids per loop), not compiles, is this module's cost: LLVM at -O0
# made it ~5x slower, so it keeps the optimizations users run with (tests/conftest.py).
pytestmark = pytest.mark.optimized


def _constant_model(rare: float, seed: int):
    """A GPT-2-shaped model whose next-token law is top id at 1 - (V-1) rare, every other id at `rare`."""
    config = tiny_config("gpt2", vocab_size=VOCAB, hidden_size=8, num_layers=1, num_heads=2, max_positions=128)
    model = random_model(config, seed)
    top_logit = np.log(1.0 / rare - (VOCAB - 1))  # softmax of [top_logit, 0, 0, ...]
    embedding = np.zeros((VOCAB, 8), np.float32)
    embedding[TOP, 0] = 1.0
    params = dict(model.params)
    params["embed"] = {"embedding": jnp.asarray(embedding)}
    params["ln_final"] = {"scale": jnp.zeros(8), "bias": jnp.zeros(8).at[0].set(top_logit)}
    return model.replace(params=params)


@functools.cache
def _models():
    return _constant_model(RARE_TARGET, 0), _constant_model(RARE_DRAFT, 1)


@jax.jit
def _jitted_law(model):
    logits, _ = model(jnp.zeros((1, 1), jnp.int32), model.init_cache(1, 1))
    return processed_probs(logits[0, 0], SamplingConfig())


def _law(model) -> np.ndarray:
    """float64 [V]: the model's next-token law (one jitted pass, not op-by-op compiles)."""
    return np.asarray(_jitted_law(model), np.float64)


def _check_rate(tokens: np.ndarray, eps: float, label: str) -> None:
    draws_ = tokens.size
    count = int((tokens != TOP).sum())
    mean = draws_ * eps
    sigma = np.sqrt(draws_ * eps * (1 - eps))
    assert abs(count - mean) < SIGMAS * sigma, (
        f"{label}: {count} non-top ids in {draws_:,} draws; the exact law expects {mean:.1f} +- {sigma:.1f}"
    )


def test_constant_model_has_the_intended_law():
    target, draft = _models()
    p, q = _law(target), _law(draft)
    np.testing.assert_allclose(np.delete(p, TOP), RARE_TARGET, rtol=1e-3)
    np.testing.assert_allclose(np.delete(q, TOP), RARE_DRAFT, rtol=1e-3)
    assert 1.2e-3 < 1 - p[TOP] < 1.3e-3


@functools.partial(jax.jit, static_argnums=2)
def _sample_rows(key, probs_V, rows):
    return sample_from_probs(key, jnp.broadcast_to(probs_V, (rows, VOCAB)))


def _sampler_tokens(num_chunks=50, rows=1024) -> np.ndarray:
    p = jnp.asarray(_law(_models()[0]), jnp.float32)
    keys = jax.random.split(jax.random.key(11), num_chunks)
    return np.concatenate([np.asarray(_sample_rows(k, p, rows)) for k in keys])


def test_sample_from_probs_draws_rare_ids_at_their_rate():
    p = _law(_models()[0])
    _check_rate(_sampler_tokens(), 1 - p[TOP], "sample_from_probs")


# The two flaws, built (like the sampler's own draws) on XLA's fast bit
# generator rather than jax.random's expanded Threefry, which made each
# control ~1.5x the cost of the exact sampler's test.


def _uniform_23_bits(key, shape):
    """A float32 uniform on the grid {0, 2^-23, ..., 1 - 2^-23}, as jax.random.uniform draws it."""
    return (draws.random_bits(key, shape) >> 9).astype(jnp.float32) * jnp.float32(2.0**-23)


def _zero_prone_exponential(key, shape):
    """The old race (jax.random.exponential: -log1p(-u)): exactly 0 with probability 2^-23.

    Written -log(1 - u): 1 - u is exact on u's grid, so these are jax's values up to float32
    rounding with the same zeros, and log costs less than log1p (this control: 18.5 -> 16.0 s, one core).
    """
    return -jnp.log(1.0 - _uniform_23_bits(key, shape))


def _truncating_exponential(key, shape):
    """A Gumbel-style race -log(u) from a float32 uniform (as jax.random.uniform): never below ~1.2e-7."""
    return -jnp.log(_uniform_23_bits(key, shape))


def _group_max(weights, size):
    """A plausible two-level flaw: groups weighted by their largest id instead of their sum."""
    vocab = weights.shape[-1]
    groups = -(-vocab // size)
    return jax.lax.reduce_window(weights, 0.0, jax.lax.max, (1, size), (1, size), [(0, 0), (0, groups * size - vocab)])


# At this vocabulary `categorical` races in two levels (groups, then ids): the historical flaws of the
# exponential are run through the flat race (the path below `draws.TWO_LEVEL_MIN_VOCAB` ids, and the race
# inside each level), a flawed group weighting through the two-level one.
@pytest.mark.parametrize(
    "flaw",
    [("exponential", _zero_prone_exponential), ("exponential", _truncating_exponential), ("group_sums", _group_max)],
    ids=["zero", "truncating", "group-max"],
)
def test_the_rate_check_fails_flawed_races(monkeypatch, flaw):
    name, flawed = flaw
    monkeypatch.setattr(draws, name, flawed)
    if name == "exponential":
        monkeypatch.setattr(draws, "TWO_LEVEL_MIN_VOCAB", VOCAB + 1)  # the flat race over all 50,257 ids
    _sample_rows.clear_cache()  # compile with the flaw...
    try:
        p = _law(_models()[0])
        with pytest.raises(AssertionError, match="non-top ids"):
            _check_rate(_sampler_tokens(), 1 - p[TOP], f"flawed race {flawed.__name__}")
    finally:
        _sample_rows.clear_cache()  # ...and never leave it in the cache


# The two-level race against a closed-form law: 10,000 ids (groups of 128, the last one 16 ids), mass in
# the first and the partial last group, two whole groups of small ids, zeros elsewhere; rows unnormalised,
# up to the 1e18 per entry that `sample_from_probs` accepts.
TWO_LEVEL_VOCAB = 10_000
TWO_LEVEL_DRAWS = 200_000
TWO_LEVEL_ALPHA = 1e-3


def _two_level_weights() -> np.ndarray:
    w = np.zeros(TWO_LEVEL_VOCAB, np.float64)
    w[[0, 1, 127, 640, 9990, 9999]] = [1.0, 2.0, 3.0, 0.5, 4.0, 1.0]
    w[5120:5248] = 0.01
    w[2048:2176] = 0.05
    return w


@functools.partial(jax.jit, static_argnums=2)
def _draw_chunk(key, weights_V, rows):
    return draws.categorical(key, jnp.broadcast_to(weights_V, (rows, weights_V.shape[0])))


def _two_level_counts() -> np.ndarray:
    w = _two_level_weights()
    chunks, rows = 50, TWO_LEVEL_DRAWS // 50
    keys = jax.random.split(jax.random.key(21), chunks)
    tokens = [
        np.asarray(_draw_chunk(k, jnp.asarray(w * (1e-3 if i % 2 else 2.5e17), jnp.float32), rows))
        for i, k in enumerate(keys)
    ]
    return np.bincount(np.concatenate(tokens), minlength=TWO_LEVEL_VOCAB)


def _check_two_level(counts: np.ndarray) -> None:
    w = _two_level_weights()
    law = w / w.sum()
    size = draws.group_size(TWO_LEVEL_VOCAB)
    assert size == 128 and draws.TWO_LEVEL_MIN_VOCAB <= TWO_LEVEL_VOCAB  # the two-level path, a partial group
    # Power against 5% of the mass drawn with groups weighted by their largest id (the flaw above).
    group_of = np.arange(TWO_LEVEL_VOCAB) // size
    group_max = np.array([w[group_of == g].max() for g in range(group_of.max() + 1)])
    group_sum = np.bincount(group_of, weights=w)
    flawed = np.where(w > 0, law * group_max[group_of] / np.maximum(group_sum[group_of], 1e-300), 0.0)
    flawed /= flawed.sum()
    power = chi_square_power(law, 0.95 * law + 0.05 * flawed, TWO_LEVEL_DRAWS, TWO_LEVEL_ALPHA)
    assert power >= 0.99, f"test too weak (power {power:.3f})"
    assert counts[w == 0].sum() == 0, f"{counts[w == 0].sum()} draws of zero-weight ids"
    support = w > 0
    stat, p_value, df = chi_square_test(law[support], counts[support])
    assert p_value > TWO_LEVEL_ALPHA, f"two-level race: chi2={stat:.1f} df={df} p={p_value:.2e}"


def test_two_level_race_draws_the_closed_form_law():
    _check_two_level(_two_level_counts())


def test_the_closed_form_check_fails_a_group_max_race(monkeypatch):
    monkeypatch.setattr(draws, "group_sums", _group_max)
    _draw_chunk.clear_cache()
    try:
        with pytest.raises(AssertionError, match="two-level race"):
            _check_two_level(_two_level_counts())
    finally:
        _draw_chunk.clear_cache()


def test_autoregressive_draws_rare_ids_at_their_rate():
    target, _ = _models()
    out = autoregressive_sample(
        target, np.zeros((ROWS, 1), np.int32), key=jax.random.key(3), max_new_tokens=TOKENS, temperature=1.0
    )
    _check_rate(np.asarray(out.tokens), 1 - _law(target)[TOP], "autoregressive_sample")


@pytest.mark.parametrize("verify", ["tokenwise", "block"])
def test_speculative_draws_rare_ids_at_their_rate(verify):
    """Drafts, the accept test, the resample and the bonus draw all touch the rare ids."""
    target, draft = _models()
    out = speculative_sample(
        target,
        draft,
        np.zeros((ROWS, 1), np.int32),
        key=jax.random.key(4),
        max_new_tokens=TOKENS,
        num_draft_tokens=2,
        temperature=1.0,
        verify=verify,
    )
    tokens = np.asarray(out.tokens)
    assert np.all(np.asarray(out.lengths) == TOKENS)
    _check_rate(tokens, 1 - _law(target)[TOP], f"speculative_sample ({verify})")
    # The draft proposed rare ids ~5% of the time: the accept path was exercised.
    assert float(np.mean(np.asarray(out.acceptance_rate))) < 0.99


# ----------------------------------------------------------------------------
# The draws themselves, against a float64 reading of the same random bits
# ----------------------------------------------------------------------------


def _ideal_uniform(key, size):
    """The float64 uniform that `draws` represents, from the same 64 bits."""
    bits = np.asarray(draws.random_bits(key, (2, size))).astype(np.float64)
    hi, lo = bits[0], bits[1]
    upper = hi >= 2**31
    v = ((hi % 2**31) + (lo + 0.5) / 2**32) / 2**32
    return v, upper


def test_exponential_matches_its_bits_and_is_never_zero():
    key = jax.random.key(5)
    e = np.asarray(draws.exponential(key, (200_000,)), np.float64)
    v, upper = _ideal_uniform(key, 200_000)
    ideal = np.where(upper, -np.log(v), -np.log1p(-v))
    assert e.min() > 0 and np.isfinite(e).all()
    np.testing.assert_allclose(e, ideal, rtol=2e-6)
    # Mean and variance of Exp(1) (5-sigma bands).
    assert abs(e.mean() - 1) < 5 / np.sqrt(200_000)
    assert abs(e.var() - 1) < 5 * np.sqrt(8 / 200_000)


def test_bernoulli_decides_at_the_64_bit_uniform():
    """bernoulli(r) is exactly U < r for the 64-bit uniform U, at 1e-5 relative resolution.

    A float32 uniform (grid 2^-23 ~ 1.2e-7) would get r = U (1 +- 1e-5) wrong
    for every U below ~1e-2; here the rule holds for all 100,000 draws (the
    upper half checked where its float32 r = 1 - v/f still carries the gap).
    """
    key = jax.random.key(6)
    size = 100_000
    v, upper = _ideal_uniform(key, size)
    checked = ~upper | (v > 0.01)
    for factor, expected in ((1 + 1e-5, True), (1 - 1e-5, False)):
        # Lower half: U = v, so U < v f iff f > 1. Upper: U = 1 - v < 1 - v / f iff f > 1.
        r = np.where(upper, 1 - v / factor, v * factor).astype(np.float32)
        got = np.asarray(draws.bernoulli(key, jnp.asarray(r)))
        np.testing.assert_array_equal(got[checked], expected)
    assert v[~upper].min() < 1e-4  # the check reached uniforms far below the float32 grid's reach
    assert not np.asarray(draws.bernoulli(key, jnp.zeros(size))).any()  # prob 0 never fires
    assert np.asarray(draws.bernoulli(key, jnp.ones(size))).all()  # prob 1 always does
