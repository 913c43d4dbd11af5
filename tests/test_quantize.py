"""int8 weight-only quantization: round trip, logits vs float32, bytes, greedy
equality, the exact target law, no recompilation, load_model / save_model."""

import functools

import exact_law
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import fixture_path, golden
from hypothesis import given, settings

import jaxspec
from jaxspec import QuantizedKernel, dequantize_model, params_bytes, quantize_model
from jaxspec.generation import speculative
from jaxspec.models.quantize import quantize_kernel
from jaxspec.sampling.processing import SamplingConfig
from jaxspec.testing import random_model, tiny_config

_forward = jax.jit(lambda model, tokens, cache: model(tokens, cache)[0])


def _logits(model, tokens):
    return np.asarray(_forward(model, jnp.asarray(tokens), model.init_cache(*tokens.shape)))


@settings(deadline=None, max_examples=12, derandomize=True)
@given(
    layers=st.sampled_from([0, 2]),  # few shapes: each new one compiles the eager ops
    fan_in=st.sampled_from([1, 5]),
    fan_out=st.just(3),
    log_scale=st.floats(-6, 3),
    seed=st.integers(0, 2**16),
)
def test_round_trip_error_is_at_most_half_a_step(layers, fan_in, fan_out, log_scale, seed):
    """|w - values * scale| <= scale / 2 per output channel (up to float32 rounding
    of w / scale), the channel's absmax maps to +-127, an all-zero channel stays 0."""
    shape = (layers, fan_in, fan_out) if layers else (fan_in, fan_out)
    w = np.random.default_rng(seed).standard_normal(shape).astype(np.float32) * np.float32(10.0**log_scale)
    w[..., 0] = 0.0
    q = quantize_kernel(w)
    assert q.values.dtype == jnp.int8 and q.scale.dtype == jnp.float32
    assert q.values.shape == shape and q.scale.shape == shape[:-2] + (fan_out,)
    values, scale = np.asarray(q.values, np.int32), np.asarray(q.scale)
    err = np.abs(w - np.asarray(q.dequantize()))
    assert np.all(err <= scale[..., None, :] * (0.5 + 1e-5)), float(np.max(err / scale[..., None, :]))
    assert np.all(np.abs(values) <= 127)
    assert np.all(values[..., 0] == 0) and np.all(scale[..., 0] == 1.0)
    assert np.all(np.max(np.abs(values[..., 1:]), axis=-2) == 127)


def test_only_matmul_kernels_are_quantized():
    """qkv / attn_out / fc_in / fc_out / untied lm_head become int8; the embeddings
    (so also a tied head), LayerNorms and biases stay float; min_size is honoured.
    Kernel bytes drop to 1 per weight + 4 per output channel (~1/4 of float32)."""
    config = tiny_config("opt", hidden_size=64, vocab_size=16, tie_word_embeddings=False, word_embed_proj_dim=32)
    model = random_model(config, seed=0)
    q = quantize_model(model)
    is_kernel = lambda x: isinstance(x, QuantizedKernel)  # noqa: E731
    leaves, _ = jax.tree_util.tree_flatten_with_path(q.params, is_leaf=is_kernel)
    quantized = {jax.tree_util.keystr(path) for path, x in leaves if is_kernel(x)}
    top = {f"['{m}']['kernel']" for m in ("lm_head", "project_in", "project_out")}
    assert quantized == top | {f"['blocks']['{m}']['kernel']" for m in ("qkv", "attn_out", "fc_in", "fc_out")}
    assert q.params["blocks"]["qkv"]["kernel"].scale.shape == (2, 192)  # layer axis kept
    assert q.params["embed"]["embedding"].dtype == jnp.float32
    # project_in / project_out are 32 x 64 = 2048 entries; attn_out 64 x 64 = 4096.
    partial = quantize_model(model, min_size=3000)
    assert not isinstance(partial.params["project_in"]["kernel"], QuantizedKernel)
    assert isinstance(partial.params["blocks"]["attn_out"]["kernel"], QuantizedKernel)
    assert jaxspec.is_quantized(q) and not jaxspec.is_quantized(model)
    with pytest.raises(ValueError, match="already quantized"):
        quantize_model(q)
    with pytest.raises(ValueError, match="'int4'.*int8"):
        quantize_model(model, mode="int4")

    int8 = [x for x in jax.tree.leaves(q.params, is_leaf=is_kernel) if is_kernel(x)]
    fp32_bytes = sum(x.values.size * 4 for x in int8)
    int8_bytes = sum(x.values.size + 4 * x.scale.size for x in int8)
    assert params_bytes(model) - params_bytes(q) == fp32_bytes - int8_bytes  # nothing else changed size
    # The scales add 4 / fan_in bytes per weight; fan_in is 32..128 here.
    assert 0.25 < int8_bytes / fp32_bytes < 0.25 * (1 + 4 / 32)


# Measured on the golden fixtures (float32 compute, every kernel int8): max |d|
# 0.0076 (gpt2_tiny), 0.0061 (opt_tiny), 0.0094 (opt_350m_style), i.e. at most
# 1.2% of the largest |logit|. Tolerance: 3% of the largest |logit| (> 2.5x margin).
LOGIT_RTOL = exact_law.INT8_LOGIT_RTOL


@pytest.mark.parametrize("name", ["gpt2_tiny", "opt_tiny"])
def test_quantized_logits_are_close_to_float32(name):
    """load_model(quantize="int8") logits stay within LOGIT_RTOL * max|logit| of
    float32 (and differ: the kernels really are int8); dequantize_model gives a
    float model with the same logits up to float32 rounding."""
    tokens, reference = golden(name)
    model = jaxspec.load_model(fixture_path(name))
    q = jaxspec.load_model(fixture_path(name), quantize="int8")
    exact, approx = _logits(model, tokens), _logits(q, tokens)
    np.testing.assert_allclose(exact, reference, atol=1e-5)
    err = float(np.max(np.abs(approx - exact)))
    assert 0 < err <= LOGIT_RTOL * float(np.max(np.abs(exact))), err
    np.testing.assert_allclose(_logits(dequantize_model(q), tokens), approx, atol=1e-5)


def test_bfloat16_compute_with_int8_kernels():
    """bf16 activations x int8 kernels: within twice the float32 tolerance."""
    tokens, _ = golden("gpt2_tiny")
    exact = _logits(jaxspec.load_model(fixture_path("gpt2_tiny")), tokens)
    q = jaxspec.load_model(fixture_path("gpt2_tiny"), jnp.bfloat16, quantize="int8")
    assert q.params["blocks"]["fc_in"]["kernel"].values.dtype == jnp.int8
    assert q.params["blocks"]["fc_in"]["bias"].dtype == jnp.bfloat16
    err = float(np.max(np.abs(_logits(q, tokens) - exact)))
    assert err <= 2 * LOGIT_RTOL * float(np.max(np.abs(exact))), err


def test_load_and_save_reject_what_they_cannot_do(tmp_path):
    with pytest.raises(ValueError, match=r"quantize='int4'.*None, 'int8'"):
        jaxspec.load_model(fixture_path("gpt2_tiny"), quantize="int4")
    q = jaxspec.load_model(fixture_path("gpt2_tiny"), quantize="int8")
    with pytest.raises(ValueError, match="dequantize_model"):
        jaxspec.save_model(q, tmp_path / "q")


VOCAB = 48
PROMPTS = [[5, 17, 3, 9, 22], [8], [40, 2, 2]]


@functools.cache
def _quantized_pair():
    target = random_model(tiny_config("gpt2", vocab_size=VOCAB, max_positions=48), seed=3, scale=12.0)
    draft = random_model(tiny_config("opt", vocab_size=VOCAB, max_positions=48), seed=4, scale=12.0)
    return quantize_model(target), quantize_model(draft)


def test_greedy_speculative_equals_greedy_autoregressive_quantized():
    """Quantized target and draft: greedy speculative == greedy autoregressive of
    the quantized target, token for token; and a second call with the same
    shapes (other prompts, key) does not recompile."""
    target, draft = _quantized_pair()
    kwargs = dict(max_new_tokens=12, temperature=0)
    reference = jaxspec.autoregressive_sample(target, PROMPTS, key=jax.random.key(0), **kwargs)
    out = jaxspec.speculative_sample(target, draft, PROMPTS, key=jax.random.key(1), num_draft_tokens=3, **kwargs)
    np.testing.assert_array_equal(np.asarray(out.tokens), np.asarray(reference.tokens))
    assert np.all(np.asarray(out.acceptance_rate) < 1.0)  # rejections happened
    before = speculative._generate._cache_size()
    other = [[p + 1 for p in row] for row in PROMPTS]
    jaxspec.speculative_sample(target, draft, other, key=jax.random.key(2), num_draft_tokens=3, **kwargs)
    assert speculative._generate._cache_size() == before


def test_int8_kernels_reach_the_compiled_step():
    """The jitted decode step takes the int8 arrays as inputs and converts inside
    (no float copy of the weights is made before the call)."""
    target, _ = _quantized_pair()
    cache = target.init_cache(1, 8)
    text = _forward.lower(target, jnp.ones((1, 1), jnp.int32), cache).as_text()
    assert "tensor<2x16x48xi8>" in text and "convert" in text


def test_speculative_matches_exact_law_of_quantized_target():
    """tests/test_exactness.py's end-to-end check (exact law of the first 3 tokens
    by enumeration, 40,000 rows, chi-square at alpha = 1e-3 with power >= 0.99
    against 5% draft mass) with its target and draft both int8-quantized."""
    target, draft = (quantize_model(m) for m in exact_law.pair())
    sampling = SamplingConfig()
    law = exact_law.sequence_law(target, sampling)
    prompts = np.tile(exact_law.PROMPT, (exact_law.ROWS, 1))
    out = jaxspec.speculative_sample(
        target, draft, prompts, key=jax.random.key(13), max_new_tokens=exact_law.NUM_TOKENS, num_draft_tokens=2
    )
    exact_law.check(out.tokens, law, exact_law.sequence_law(draft, sampling), "int8 pair")
