"""Model parity with transformers (golden data) and KV-cache invariants."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from compile_report import count_compiles
from conftest import GOLDEN_MODELS, fixture_path, golden

import jaxspec


@functools.cache
def _model(name: str, dtype=jnp.float32):
    return jaxspec.load_model(fixture_path(name), dtype=dtype)


@jax.jit
def _forward(model, tokens, cache, num_new=None):
    return model(tokens, cache, num_new)


def _full_logits(model, tokens):
    cache = model.init_cache(tokens.shape[0], tokens.shape[1])
    return np.asarray(_forward(model, jnp.asarray(tokens), cache)[0])


@pytest.mark.parametrize("name", GOLDEN_MODELS)
def test_logits_match_transformers_fp32(name):
    tokens, expected = golden(name)
    got = _full_logits(_model(name), tokens)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)


@pytest.mark.parametrize("name", ("gpt2_tiny", "opt_350m_style"))
def test_bfloat16_runs_close_to_fp32(name):
    tokens, expected = golden(name)
    model = _model(name, jnp.bfloat16)
    assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(model.params))
    cache = model.init_cache(tokens.shape[0], tokens.shape[1])
    assert cache.keys.dtype == jnp.bfloat16
    got = np.asarray(_forward(model, jnp.asarray(tokens), cache)[0])
    assert got.dtype == np.float32
    # bf16 keeps ~3 significant digits; logits are O(1).
    np.testing.assert_allclose(got, expected, atol=0.1, rtol=0)


@pytest.mark.parametrize("name", GOLDEN_MODELS)
def test_one_token_decoding_equals_full_pass_and_compiles_once(name):
    model = _model(name)
    tokens, _ = golden(name)
    full = _full_logits(model, tokens)
    prefill = 5
    traces = []

    @jax.jit
    def step(model, token_Bx1, cache):
        traces.append(1)  # runs at trace time only
        return model(token_Bx1, cache)

    cache = model.init_cache(tokens.shape[0], tokens.shape[1])
    logits, cache = _forward(model, jnp.asarray(tokens[:, :prefill]), cache)
    pieces = [np.asarray(logits)]
    for t in range(prefill, tokens.shape[1]):
        logits, cache = step(model, jnp.asarray(tokens[:, t : t + 1]), cache)
        pieces.append(np.asarray(logits))
    np.testing.assert_allclose(np.concatenate(pieces, axis=1), full, atol=1e-5, rtol=0)
    np.testing.assert_array_equal(np.asarray(cache.lengths), [tokens.shape[1]] * tokens.shape[0])
    assert len(traces) == 1, f"decode step traced {len(traces)} times for {tokens.shape[1] - prefill} steps"


@pytest.mark.parametrize("name", GOLDEN_MODELS)
@pytest.mark.parametrize("chunk", (2, 3, 5))
def test_chunked_decoding_equals_full_pass(name, chunk):
    model = _model(name)
    tokens, _ = golden(name)
    full = _full_logits(model, tokens)
    cache = model.init_cache(tokens.shape[0], tokens.shape[1] + chunk)
    pieces = []
    for start in range(0, tokens.shape[1], chunk):
        logits, cache = _forward(model, jnp.asarray(tokens[:, start : start + chunk]), cache)
        pieces.append(np.asarray(logits))
    np.testing.assert_allclose(np.concatenate(pieces, axis=1), full, atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", GOLDEN_MODELS)
def test_rollback_discards_stale_entries(name):
    """Speculative rollback: write K+1 wrong tokens, lower lengths, continue."""
    model = _model(name)
    tokens, _ = golden(name)
    full = _full_logits(model, tokens)
    cache = model.init_cache(tokens.shape[0], tokens.shape[1] + 4)
    logits_a, cache = _forward(model, jnp.asarray(tokens[:, :6]), cache)
    junk = (tokens[:, 6:10] + 7) % model.vocab_size
    _, cache = _forward(model, jnp.asarray(junk), cache)
    # Row 0 keeps one junk-free slot less than row 1: per-row rollback.
    cache = cache.rollback(jnp.array([6, 6], jnp.int32))
    np.testing.assert_array_equal(np.asarray(cache.lengths), [6, 6])
    logits_b, cache = _forward(model, jnp.asarray(tokens[:, 6:]), cache)
    got = np.concatenate([np.asarray(logits_a), np.asarray(logits_b)], axis=1)
    np.testing.assert_allclose(got, full, atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", GOLDEN_MODELS)
def test_ragged_batch_rows_match_their_own_full_pass(name):
    """Right-padded rows of different lengths decode as if alone."""
    model = _model(name)
    tokens, _ = golden(name)
    rng = np.random.default_rng(1)
    lengths = np.array([3, 7], np.int32)
    padded = tokens[:, :7].copy()
    padded[0, 3:] = rng.integers(0, model.vocab_size, 4)  # garbage padding must not leak
    cache = model.init_cache(2, 16)
    prefill_logits, cache = _forward(model, jnp.asarray(padded), cache, jnp.asarray(lengths))
    np.testing.assert_array_equal(np.asarray(cache.lengths), lengths)
    # Decode 3 more tokens per row, each row continuing its own sequence.
    steps = [np.asarray(prefill_logits)]
    for i in range(3):
        nxt = np.array([[tokens[0, 3 + i]], [tokens[1, 7 + i]]], np.int32)
        logits, cache = _forward(model, jnp.asarray(nxt), cache)
        steps.append(np.asarray(logits))
    for row, length in enumerate(lengths):
        alone = _full_logits(model, tokens[row : row + 1, : length + 3])[0]
        got = np.concatenate([steps[0][row, :length]] + [s[row] for s in steps[1:]], axis=0)
        np.testing.assert_allclose(got, alone, atol=1e-5, rtol=0)


def test_eager_calls_run_one_compiled_program_and_match_jit():
    """Called outside jit, the layer scan used to be traced and compiled again at every call
    (~0.5 s per call on one core); now the second call of a shape compiles nothing."""
    model = _model("gpt2_tiny")
    tokens, _ = golden("gpt2_tiny")
    tokens = jnp.asarray(tokens[:, :5])
    cache = model.init_cache(tokens.shape[0], 8)
    first, _ = model(tokens, cache)
    other_tokens = (tokens + 1) % model.vocab_size
    assert count_compiles(lambda: jax.block_until_ready(model(other_tokens, cache))) == 0
    np.testing.assert_array_equal(np.asarray(first), np.asarray(_forward(model, tokens, cache)[0]))


def test_cache_longer_than_context_is_refused():
    model = _model("gpt2_tiny")
    with pytest.raises(ValueError, match="exceeds this model's context of 32"):
        model.init_cache(1, 33)


def test_model_is_a_pytree_with_static_config():
    model = _model("opt_tiny")
    leaves, treedef = jax.tree.flatten(model)
    rebuilt = jax.tree.unflatten(treedef, leaves)
    assert rebuilt.config == model.config
    chex.assert_trees_all_equal(rebuilt.params, model.params)
    assert hash(model.config) == hash(jaxspec.load_model(fixture_path("opt_tiny")).config)
