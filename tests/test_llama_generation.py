"""Llama-family models in the generation loops: greedy equality for both loops, both
verification rules and the n-gram drafter; the exact target law (chi-square harness
of tests/test_exactness.py); int8 weights."""

import functools

import exact_law
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import fixture_path, golden

import jaxspec
from jaxspec import NgramDrafter, autoregressive_sample, quantize_model, speculative_sample
from jaxspec.sampling.processing import SamplingConfig
from jaxspec.testing import random_model, tiny_config

VOCAB = 24
PROMPTS = [[1, 2, 3, 1, 2, 3, 1], [7, 7], [4, 5, 6, 4, 5]]  # ragged, with repeats for the lookup


@functools.cache
def _pair():
    """Llama target (GQA 4/2, llama3 RoPE) and a Qwen2 draft (MQA, q/k/v biases) that disagree often."""
    rope = dict(
        rope_type="llama3",
        rope_theta=100.0,
        factor=8.0,
        low_freq_factor=1.0,
        high_freq_factor=4.0,
        original_max_position_embeddings=16,
    )
    target = random_model(
        tiny_config("llama", vocab_size=VOCAB, num_heads=4, num_key_value_heads=2, rope_parameters=rope),
        seed=0,
        scale=8.0,
    )
    draft = random_model(tiny_config("qwen2", vocab_size=VOCAB, num_key_value_heads=1), seed=1, scale=8.0)
    return target, draft


@functools.cache
def _greedy_reference():
    target, _ = _pair()
    return autoregressive_sample(target, PROMPTS, key=jax.random.key(0), max_new_tokens=12, temperature=0.0)


@pytest.mark.parametrize("drafter, verify", [("model", "tokenwise"), ("model", "block"), ("ngram", "block")])
def test_greedy_speculative_equals_greedy_autoregressive(drafter, verify):
    target, _ = _pair()
    expected = _greedy_reference()
    assert len(set(np.asarray(expected.tokens).ravel().tolist())) > 5  # not one repeated token
    # A random Qwen2 draft agrees with this target on no greedy token; a noisy copy of the target does
    # on some (the Qwen2 draft still runs in the int8 test below).
    leaves, treedef = jax.tree.flatten(target.params)
    keys = jax.random.split(jax.random.key(2), len(leaves))
    noisy = target.replace(
        params=jax.tree.unflatten(treedef, [x + 0.05 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)])
    )
    proposer = noisy if drafter == "model" else NgramDrafter(max_ngram=2)
    out = speculative_sample(
        target,
        proposer,
        PROMPTS,
        key=jax.random.key(1),
        max_new_tokens=12,
        num_draft_tokens=3,
        temperature=0.0,
        verify=verify,
    )
    np.testing.assert_array_equal(out.tokens, expected.tokens)
    # Some drafts accepted and some rejected: the comparison is not vacuous.
    assert 0 < int(np.sum(out.num_accepted)) < int(np.sum(out.num_drafted))


# --- exactness: tests/test_exactness.py's harness on a Llama-family pair -----------------


@functools.cache
def _exactness_pair():
    """Vocabulary 8 (the harness's). Target: Llama, GQA, linear RoPE. Draft: Mistral
    with a sliding window of 2, shorter than prompt + 3 new tokens, so the window
    is in force during drafting."""
    rope = dict(rope_type="linear", factor=2.0, rope_theta=10000.0)
    target = random_model(
        tiny_config("llama", vocab_size=8, num_heads=4, num_key_value_heads=2, rope_parameters=rope),
        seed=0,
        scale=10.0,
    )
    draft = random_model(tiny_config("mistral", vocab_size=8, sliding_window=2), seed=1, scale=10.0)
    return target, draft


@pytest.mark.parametrize("verify", ["tokenwise", "block"])
def test_speculative_matches_exact_target_law(verify):
    """The joint law of the first 3 tokens, enumerated with full passes, against 40,000
    rows of one call; chi-square at alpha = 1e-3 with power >= 0.99 against 5% draft mass."""
    target, draft = _exactness_pair()
    sampling = SamplingConfig()
    law = exact_law.sequence_law(target, sampling)
    out = speculative_sample(
        target,
        draft,
        np.tile(exact_law.PROMPT, (exact_law.ROWS, 1)),
        key=jax.random.key(21),
        max_new_tokens=exact_law.NUM_TOKENS,
        num_draft_tokens=2,
        verify=verify,
    )
    exact_law.check(out.tokens, law, exact_law.sequence_law(draft, sampling), f"llama {verify}")
    if verify == "tokenwise":
        exact_law.check_first_acceptance(out, target, draft, sampling)


# --- int8 weights -----------------------------------------------------------------------


def _logits(model, tokens):
    cache = model.init_cache(*tokens.shape)
    return np.asarray(jax.jit(lambda m, t, c: m(t, c)[0])(model, jnp.asarray(tokens), cache))


@pytest.mark.parametrize("name", ["llama_gqa", "qwen2_tiny"])
def test_int8_logits_are_close_to_float32(name):
    """Every projection (q, k, v, attn_out, fc_gate, fc_in, fc_out, an untied lm_head) int8;
    embeddings, RMSNorm scales and biases float. Logits within exact_law.INT8_LOGIT_RTOL * max|logit|."""
    tokens, reference = golden(name)
    q = jaxspec.load_model(fixture_path(name), quantize="int8")
    kernels = {m for m, p in q.params["blocks"].items() if isinstance(p.get("kernel"), jaxspec.QuantizedKernel)}
    assert kernels == {"q", "k", "v", "attn_out", "fc_gate", "fc_in", "fc_out"}
    assert isinstance(q.params.get("lm_head", {}).get("kernel"), jaxspec.QuantizedKernel) == (name == "llama_gqa")
    assert q.params["blocks"]["ln_attn"]["scale"].dtype == jnp.float32
    err = float(np.max(np.abs(_logits(q, tokens) - reference)))
    assert 0 < err <= exact_law.INT8_LOGIT_RTOL * float(np.max(np.abs(reference))), err


def test_greedy_speculative_equals_autoregressive_int8():
    target, draft = (quantize_model(m) for m in _pair())
    kwargs = dict(max_new_tokens=10, temperature=0.0)
    expected = autoregressive_sample(target, PROMPTS, key=jax.random.key(0), **kwargs)
    out = speculative_sample(target, draft, PROMPTS, key=jax.random.key(1), num_draft_tokens=3, **kwargs)
    np.testing.assert_array_equal(out.tokens, expected.tokens)


# --- the server engine ------------------------------------------------------------------


def test_engine_serves_a_llama_pair_greedy_as_autoregressive():
    from jaxspec import serving

    target, draft = _pair()
    engine = serving.Engine(
        target,
        draft,
        num_draft_tokens=3,
        buckets=serving.Buckets(prompt=(8,), batch=(4,), tokens=(12,)),
        batch_window_s=0.1,
    )
    engine.start()
    try:
        futures = [engine.submit(p, max_tokens=12, temperature=0) for p in PROMPTS]
        completions = [f.result(timeout=300) for f in futures]
    finally:
        engine.close()
    expected = _greedy_reference()
    for completion, row, n in zip(completions, np.asarray(expected.tokens), np.asarray(expected.lengths)):
        assert completion.choices[0].token_ids == tuple(int(t) for t in row[:n])
