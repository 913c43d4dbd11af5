"""Per-row traced sampling settings, degenerate settings and logits, pad ids.

- temperature / top_k / top_p take a scalar or one value per row; new values
  reuse the compiled loop (no retrace), and each row gets its own law;
- a temperature that underflows float32 is a clear error (not NaN, not id 0);
- a row whose logits have no distribution (NaN, +inf, all -inf) is stopped
  and flagged (`nonfinite_logits`), never answered with a silent id 0;
- an out-of-vocabulary pad_token_id is refused, and masked cache slots never
  leak NaN into real positions.
"""

import functools

import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings

from jaxspec import autoregressive_sample, speculative_sample
from jaxspec.generation import autoregressive, speculative
from jaxspec.sampling.processing import (
    SamplingConfig,
    processed_probs,
    sampling_params,
    valid_rows,
)
from jaxspec.testing import random_model, tiny_config

VOCAB = 16


@functools.cache
def _pair():
    target = random_model(tiny_config("gpt2", vocab_size=VOCAB), seed=0, scale=10.0)
    draft = random_model(tiny_config("opt", vocab_size=VOCAB), seed=1, scale=10.0)
    return target, draft


# The loop tests' common shapes: settings (per row or not), EOS and pad ids are traced, so tests
# that share these share one compiled loop per model pair and rule.
ROWS_PROMPTS = np.tile([3, 1, 4], (4, 1))
NEW_TOKENS = 8


# ----------------------------------------------------------------------------
# Per-row settings in processing
# ----------------------------------------------------------------------------

_row_settings = st.tuples(
    st.sampled_from([0.0, 0.5, 1.0, 3.0]),
    st.integers(0, 12),
    st.sampled_from([1.0, 0.95, 0.7, 0.3]),
)


# One compiled program per settings shape ([4] per-row, [] one config): called
# eagerly, each new setting re-traced the filter's branches (~2 s an example).
_jit_probs = jax.jit(processed_probs)
# A model call (lengths None: every token real), jitted: eager layers compile op by op.
_forward = jax.jit(lambda model, tokens, cache, lengths: model(tokens, cache, lengths))


@settings(deadline=None, max_examples=12, derandomize=True)  # 4 rows each: 48 settings
@given(rows=st.lists(_row_settings, min_size=4, max_size=4), seed=st.integers(0, 1000))
def test_per_row_params_equal_each_rows_static_config(rows, seed):
    logits = np.random.default_rng(seed).normal(size=(4, 3, 11)).astype(np.float32) * 3
    logits[1, 0, :4] = logits[1, 0, 4]  # exact ties
    t, k, p = (np.array(col) for col in zip(*rows))
    batched = np.asarray(_jit_probs(logits, sampling_params(t, k, p, 4)))
    for i, (ti, ki, pi) in enumerate(rows):
        config = SamplingConfig(temperature=ti, top_k=ki, top_p=pi)
        single = np.asarray(_jit_probs(logits[i], config.as_params()))
        np.testing.assert_allclose(batched[i], single, atol=1e-6, err_msg=f"row {i}: {rows[i]}")


def test_filters_are_skipped_only_when_no_row_uses_them():
    logits = jnp.asarray(np.random.default_rng(0).normal(size=(2, 9)).astype(np.float32))
    one_row = processed_probs(logits, sampling_params(1.0, [0, 2], 1.0, 2))
    assert int((np.asarray(one_row)[1] > 0).sum()) == 2 and int((np.asarray(one_row)[0] > 0).sum()) == 9
    one_row = processed_probs(logits, sampling_params(1.0, 0, [1.0, 0.01], 2))
    assert int((np.asarray(one_row)[1] > 0).sum()) == 1 and int((np.asarray(one_row)[0] > 0).sum()) == 9


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(temperature=[1.0, 2.0, 3.0]), r"temperature.*shape \(2,\).*\(3,\)"),
        (dict(top_k=np.zeros((2, 1), int)), r"top_k.*shape \(2,\)"),
        (dict(top_p=[0.5, 1.5]), r"top_p must lie in \(0, 1\], got 1.5.*\(row 1\)"),
        (dict(temperature=[1.0, -1.0]), r"temperature must be finite and >= 0, got -1.0.*\(row 1\)"),
        (dict(top_k=[1, 2.5]), r"top_k must be an int, got 2.5.*\(row 1\)"),
        (dict(temperature=["a", "b"]), r"temperature must hold numbers"),
    ],
)
def test_bad_row_settings_name_the_value_and_row(kwargs, match):
    args = dict(temperature=1.0, top_k=0, top_p=1.0) | kwargs
    with pytest.raises(ValueError, match=match):
        sampling_params(args["temperature"], args["top_k"], args["top_p"], 2)


# ----------------------------------------------------------------------------
# Per-row settings in the loops: one program, each row its own law
# ----------------------------------------------------------------------------


def test_greedy_rows_beside_sampled_rows_and_no_recompile():
    target, draft = _pair()
    prompts = ROWS_PROMPTS
    greedy = autoregressive_sample(target, prompts, key=jax.random.key(0), max_new_tokens=NEW_TOKENS, temperature=0.0)
    before_ar = autoregressive._generate._cache_size()
    before_spec = speculative._generate._cache_size()
    for i, temps in enumerate(([0.0, 1.0, 0.0, 2.0], [0.0, 0.3, 0.0, 1e-3], [0.0, 5.0, 0.0, 0.7])):
        kwargs = dict(temperature=np.array(temps), top_k=np.array([0, 3, 5, 0]), top_p=np.array([1.0, 0.9, 0.5, 0.8]))
        ar = autoregressive_sample(target, prompts, key=jax.random.key(i), max_new_tokens=NEW_TOKENS, **kwargs)
        spec = speculative_sample(target, draft, prompts, key=jax.random.key(i), max_new_tokens=NEW_TOKENS, **kwargs)
        for out in (ar, spec):
            np.testing.assert_array_equal(np.asarray(out.tokens)[[0, 2]], np.asarray(greedy.tokens)[[0, 2]])
    # One program per loop for all three mixes (the first call of each compiled it).
    assert autoregressive._generate._cache_size() - before_ar <= 1
    assert speculative._generate._cache_size() - before_spec <= 1
    ar = autoregressive_sample(target, prompts, key=jax.random.key(9), max_new_tokens=NEW_TOKENS, temperature=0.123)
    assert autoregressive._generate._cache_size() - before_ar <= 1


def test_per_row_draft_settings():
    """A greedy draft for some rows, a hot one for others: still exact in greedy target rows."""
    target, draft = _pair()
    prompts = ROWS_PROMPTS
    greedy = autoregressive_sample(target, prompts, key=jax.random.key(0), max_new_tokens=NEW_TOKENS, temperature=0.0)
    out = speculative_sample(
        target,
        draft,
        prompts,
        key=jax.random.key(1),
        max_new_tokens=NEW_TOKENS,
        temperature=0.0,
        draft_temperature=np.array([0.0, 2.0, 0.0, 2.0]),
    )
    np.testing.assert_array_equal(out.tokens, greedy.tokens)


# ----------------------------------------------------------------------------
# Degenerate settings and logits
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("temperature", [1e-40, 1e-39, np.float32(1e-45)])
def test_temperature_that_underflows_is_a_clear_error(temperature):
    target, draft = _pair()
    with pytest.raises(ValueError, match=r"underflows float32.*use 0.0 for greedy"):
        autoregressive_sample(target, [[1, 2]], key=jax.random.key(0), max_new_tokens=2, temperature=temperature)
    with pytest.raises(ValueError, match=r"underflows float32.*\(row 1\)"):
        speculative_sample(
            target, draft, [[1, 2], [3, 4]], key=jax.random.key(0), max_new_tokens=2, temperature=[1.0, temperature]
        )


def test_smallest_normal_temperature_is_greedy_like_not_nan():
    target, _ = _pair()
    prompts = ROWS_PROMPTS
    greedy = autoregressive_sample(target, prompts, key=jax.random.key(0), max_new_tokens=NEW_TOKENS, temperature=0.0)
    tiny = autoregressive_sample(target, prompts, key=jax.random.key(1), max_new_tokens=NEW_TOKENS, temperature=1.2e-38)
    np.testing.assert_array_equal(tiny.tokens, greedy.tokens)


@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
def test_rows_without_a_distribution_are_flagged_at_gpt2_vocabulary_size(jit):
    """A NaN anywhere in a 50,257-wide row (XLA:CPU's vectorised max can drop it), a +inf, or no finite entry."""
    vocab = 50_257
    logits = np.zeros((9, vocab), np.float32)
    for row, column in enumerate((0, 17, 4_096, vocab - 1)):
        logits[row, column] = np.nan
    logits[4, 30_000] = np.inf
    logits[5] = -np.inf
    logits[6, :-1] = -np.inf  # one finite entry: a distribution
    logits[7, 123] = -np.inf
    expected = [False] * 6 + [True] * 3
    check = jax.jit(valid_rows) if jit else valid_rows
    np.testing.assert_array_equal(check(logits), expected)
    probs = jax.jit(processed_probs, static_argnums=1)(logits, SamplingConfig())
    np.testing.assert_array_equal(np.isfinite(np.asarray(probs)).all(axis=-1), True)
    # Invalid rows are processed as all-zero logits: uniform.
    np.testing.assert_allclose(np.asarray(probs)[:6], 1 / vocab, rtol=1e-5)


def test_rows_without_a_distribution_are_flagged_and_never_nan():
    logits = np.array(
        [[np.nan, 1.0, 2.0], [-np.inf, -np.inf, -np.inf], [1.0, np.inf, 0.0], [0.0, -np.inf, 5.0]], np.float32
    )
    np.testing.assert_array_equal(valid_rows(logits), [False, False, False, True])
    for config in (SamplingConfig(), SamplingConfig(temperature=0.0), SamplingConfig(top_k=2, top_p=0.5)):
        probs = np.asarray(processed_probs(logits, config))
        assert np.isfinite(probs).all()
        np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-6)


@functools.cache
def _untied_target():
    """A target with its own LM head, so a NaN input embedding poisons only the rows that feed that token
    (with tied embeddings the NaN row would also be every row's logit for that token)."""
    return random_model(tiny_config("gpt2", vocab_size=VOCAB, tie_word_embeddings=False), seed=0, scale=10.0)


# Both rows [3, 1, 4]: the shapes of the poisoned-prompt test's, so the untied target's loops are shared.
_UNTIED_PROMPTS = [[3, 1, 4], [3, 1, 4]]


def _poisoned(model, token: int):
    """The model with token `token`'s input embedding set to NaN: any row that feeds it gets NaN logits."""
    params = dict(model.params)
    embed = params["embed"]["embedding"]
    params["embed"] = {"embedding": embed.at[token].set(jnp.nan)}
    return model.replace(params=params)


@pytest.mark.parametrize("loop", ["autoregressive", "tokenwise", "block"])
def test_nonfinite_target_logits_stop_the_row_and_are_reported(loop):
    target, draft = _untied_target(), _pair()[1]
    clean = autoregressive_sample(target, _UNTIED_PROMPTS, key=jax.random.key(0), max_new_tokens=10, temperature=0.0)
    # A token row 0 never feeds: its embedding poisons row 1 only.
    poison = min(set(range(VOCAB)) - {3, 1, 4} - set(np.asarray(clean.tokens)[0].tolist()))
    broken = _poisoned(target, poison)
    prompts = [[3, 1, 4], [3, 1, poison]]  # row 1's last prompt token has NaN logits
    kwargs = dict(key=jax.random.key(0), max_new_tokens=10, temperature=0.0)
    if loop == "autoregressive":
        out = autoregressive_sample(broken, prompts, **kwargs)
    else:
        out = speculative_sample(broken, draft, prompts, verify=loop, **kwargs)
    np.testing.assert_array_equal(out.nonfinite_logits, [False, True])
    assert int(out.lengths[1]) == 0
    np.testing.assert_array_equal(np.asarray(out.tokens)[0], np.asarray(clean.tokens)[0])


def test_nonfinite_mid_generation_keeps_the_valid_prefix():
    """A token poisons the model once generated: the row keeps the tokens up to it, flagged."""
    target, draft = _untied_target(), _pair()[1]
    clean = autoregressive_sample(target, _UNTIED_PROMPTS, key=jax.random.key(0), max_new_tokens=10, temperature=0.0)
    tokens = np.asarray(clean.tokens)[0]
    poison = next(int(t) for t in tokens[2:] if t not in (3, 1, 4))  # not in the prompt
    first = int(np.argmax(tokens == poison))  # the first time the greedy sequence emits it
    broken = _poisoned(target, poison)
    kwargs = dict(key=jax.random.key(0), max_new_tokens=10, temperature=0.0)
    for out in (
        autoregressive_sample(broken, _UNTIED_PROMPTS, **kwargs),
        speculative_sample(broken, draft, _UNTIED_PROMPTS, **kwargs),
    ):
        assert bool(out.nonfinite_logits[0])
        # The poisoned token itself was drawn from valid logits; the next one cannot be.
        assert int(out.lengths[0]) == first + 1
        np.testing.assert_array_equal(np.asarray(out.tokens)[0, : first + 1], tokens[: first + 1])


def test_nonfinite_draft_logits_keep_the_output_exact():
    """A broken draft proposes from the uniform law (truthful q): greedy output unchanged."""
    target, draft = _pair()
    broken_draft = _poisoned(draft, 4)
    prompts = ROWS_PROMPTS
    kwargs = dict(max_new_tokens=NEW_TOKENS, temperature=0.0)
    greedy = autoregressive_sample(target, prompts, key=jax.random.key(0), **kwargs)
    out = speculative_sample(target, broken_draft, prompts, key=jax.random.key(0), **kwargs)
    np.testing.assert_array_equal(out.tokens, greedy.tokens)
    assert not np.asarray(out.nonfinite_logits).any()


# ----------------------------------------------------------------------------
# Pad ids and masked cache slots
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("pad", [VOCAB, -1, 10**6])
def test_out_of_vocabulary_pad_id_is_refused(pad):
    target, draft = _pair()
    with pytest.raises(ValueError, match=rf"pad_token_id={pad} is outside the vocabulary 0\.\.{VOCAB - 1}"):
        autoregressive_sample(target, [[1, 2, 3], [4]], key=jax.random.key(0), max_new_tokens=2, pad_token_id=pad)
    with pytest.raises(ValueError, match=rf"pad_token_id={pad} is outside"):
        speculative_sample(target, draft, [[1, 2, 3], [4]], key=jax.random.key(0), max_new_tokens=2, pad_token_id=pad)


@pytest.mark.parametrize("poison", [np.nan, np.inf])
def test_masked_cache_slots_never_leak_into_real_positions(poison):
    """Slots past each row's length hold NaN/inf (as a padding id without an embedding
    would leave them); the logits of real positions are those of a clean cache."""
    target, _ = _pair()
    tokens = jnp.asarray([[5, 6, 7], [8, 9, 10]], jnp.int32)
    lengths = jnp.asarray([2, 1])
    clean = target.init_cache(2, 12)
    clean_logits, clean_cache = _forward(target, tokens[:, :2], clean, lengths)
    dirty = target.init_cache(2, 12)
    dirty = dirty._replace(keys=dirty.keys.at[:, :, 1:].set(poison), values=dirty.values.at[:, :, 1:].set(poison))
    dirty_logits, cache = _forward(target, tokens[:, :2], dirty, lengths)
    # Row 0's two tokens and row 1's first are real; row 1's slot 1 stays poisoned past its length.
    np.testing.assert_allclose(dirty_logits[0], clean_logits[0], atol=1e-5)
    np.testing.assert_allclose(dirty_logits[1, 0], clean_logits[1, 0], atol=1e-5)
    step_logits, _ = _forward(target, tokens[:, 2:], cache, None)
    clean_step, _ = _forward(target, tokens[:, 2:], clean_cache, None)
    assert np.isfinite(np.asarray(step_logits)).all()
    np.testing.assert_allclose(step_logits, clean_step, atol=1e-5)


def test_ragged_batch_with_an_in_vocabulary_pad_matches_each_row_alone():
    target, draft = _pair()
    prompts = [[3, 1, 4, 1, 5], [9], [2, 6]]
    out = speculative_sample(
        target, draft, prompts, key=jax.random.key(0), max_new_tokens=5, temperature=0.0, pad_token_id=VOCAB - 1
    )
    for i, prompt in enumerate(prompts):
        # Each row alone, in a batch of one; padded to one width (pad content 33, never read) so the
        # three runs share one compiled loop.
        padded = [prompt + [33] * (5 - len(prompt))]
        alone = autoregressive_sample(
            target, padded, prompt_lengths=[len(prompt)], key=jax.random.key(0), max_new_tokens=5, temperature=0.0
        )
        np.testing.assert_array_equal(np.asarray(out.tokens)[i], np.asarray(alone.tokens)[0])
