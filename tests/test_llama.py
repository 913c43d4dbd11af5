"""Llama family (Llama, Mistral, Qwen2): parity with transformers, KV-cache invariants,
config parsing, loading and saving.

Parity runs against golden fixtures that transformers made (tests/make_golden.py),
so it needs no torch; the tests marked by `importorskip("torch")` also build fresh
checkpoints with transformers and load our saved folders back into it.
"""

import functools
import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import LLAMA_GOLDEN_MODELS, fixture_path, golden
from safetensors.numpy import load_file, save_file

import jaxspec
from jaxspec import CheckpointError, DecoderConfig, UnsupportedModelError
from jaxspec.models import abstract_params
from jaxspec.models.rope import inverse_frequencies


@functools.cache
def _model(name: str, dtype=jnp.float32):
    return jaxspec.load_model(fixture_path(name), dtype=dtype)


@jax.jit
def _forward(model, tokens, cache, num_new=None):
    return model(tokens, cache, num_new)


def _full_logits(model, tokens):
    cache = model.init_cache(tokens.shape[0], tokens.shape[1])
    return np.asarray(_forward(model, jnp.asarray(tokens), cache)[0])


def _copy_fixture(name, tmp_path):
    dst = tmp_path / name
    shutil.copytree(fixture_path(name), dst)
    return dst


# --- parity ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", LLAMA_GOLDEN_MODELS)
def test_logits_match_transformers_fp32(name):
    tokens, expected = golden(name)
    got = _full_logits(_model(name), tokens)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)


@pytest.mark.parametrize("name", ("llama3_rope", "qwen2_tiny"))
def test_bfloat16_runs_close_to_fp32(name):
    tokens, expected = golden(name)
    model = _model(name, jnp.bfloat16)
    assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(model.params))
    cache = model.init_cache(tokens.shape[0], tokens.shape[1])
    assert cache.keys.dtype == jnp.bfloat16
    got = np.asarray(_forward(model, jnp.asarray(tokens), cache)[0])
    assert got.dtype == np.float32
    # Measured 0.013 (logits of at most 1.6): bf16 keeps ~3 significant digits.
    np.testing.assert_allclose(got, expected, atol=0.05, rtol=0)


def test_cache_holds_only_the_kv_heads():
    """llama3_rope: 4 query heads read 1 KV head (multi-query) of an explicit head_dim 8 (width 16)."""
    model = _model("llama3_rope")
    assert (model.config.num_heads, model.config.num_kv_heads, model.config.head_dim) == (4, 1, 8)
    cache = model.init_cache(3, 10)
    assert cache.keys.shape == cache.values.shape == (2, 3, 10, 1, 8)
    assert model.params["blocks"]["q"]["kernel"].shape == (2, 16, 32)
    assert model.params["blocks"]["k"]["kernel"].shape == (2, 16, 8)


# --- incremental decoding equals a full pass -----------------------------------------


@pytest.mark.parametrize("name", LLAMA_GOLDEN_MODELS)
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
    assert len(traces) == 1, f"decode step traced {len(traces)} times"


@pytest.mark.parametrize("name", LLAMA_GOLDEN_MODELS)
def test_verification_chunks_with_rollback_equal_full_pass(name):
    """Rounds of K + 1 = 3 tokens, each first written as junk, rolled back per row, then
    rewritten: what a rejected speculative round does (the sliding window of
    mistral_tiny spans chunk boundaries)."""
    model = _model(name)
    tokens, _ = golden(name)
    full = _full_logits(model, tokens)
    cache = model.init_cache(tokens.shape[0], tokens.shape[1] + 3)
    pieces = []
    for start in range(0, tokens.shape[1], 3):
        chunk = tokens[:, start : start + 3]
        _, cache = _forward(model, jnp.asarray((chunk + 7) % model.vocab_size), cache)
        cache = cache.rollback(jnp.full((tokens.shape[0],), start, jnp.int32))
        logits, cache = _forward(model, jnp.asarray(chunk), cache)
        pieces.append(np.asarray(logits))
    np.testing.assert_allclose(np.concatenate(pieces, axis=1), full, atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", LLAMA_GOLDEN_MODELS)
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
    steps = [np.asarray(prefill_logits)]
    for i in range(3):
        nxt = np.array([[tokens[0, 3 + i]], [tokens[1, 7 + i]]], np.int32)
        logits, cache = _forward(model, jnp.asarray(nxt), cache)
        steps.append(np.asarray(logits))
    # Causal: the first n logits of a longer pass are those of a pass of n tokens,
    # so one shape serves both rows (one compile).
    for row, length in enumerate(lengths):
        alone = _full_logits(model, tokens[row : row + 1, :10])[0, : length + 3]
        got = np.concatenate([steps[0][row, :length]] + [s[row] for s in steps[1:]], axis=0)
        np.testing.assert_allclose(got, alone, atol=1e-5, rtol=0)


# --- config.json ----------------------------------------------------------------------

# meta-llama/Llama-3.2-1B's config.json (transformers 4.45 layout: rope_theta and
# rope_scaling at the top level).
LLAMA_32_1B = {
    "architectures": ["LlamaForCausalLM"],
    "attention_bias": False,
    "attention_dropout": 0.0,
    "bos_token_id": 128000,
    "eos_token_id": 128001,
    "head_dim": 64,
    "hidden_act": "silu",
    "hidden_size": 2048,
    "initializer_range": 0.02,
    "intermediate_size": 8192,
    "max_position_embeddings": 131072,
    "mlp_bias": False,
    "model_type": "llama",
    "num_attention_heads": 32,
    "num_hidden_layers": 16,
    "num_key_value_heads": 8,
    "pretraining_tp": 1,
    "rms_norm_eps": 1e-05,
    "rope_scaling": {
        "factor": 32.0,
        "high_freq_factor": 4.0,
        "low_freq_factor": 1.0,
        "original_max_position_embeddings": 8192,
        "rope_type": "llama3",
    },
    "rope_theta": 500000.0,
    "tie_word_embeddings": True,
    "torch_dtype": "bfloat16",
    "transformers_version": "4.45.0.dev0",
    "use_cache": True,
    "vocab_size": 128256,
}


def test_hub_config_of_llama_3_2_1b():
    config = DecoderConfig.from_hf_config(LLAMA_32_1B)
    assert (config.num_heads, config.num_kv_heads, config.head_dim, config.num_layers) == (32, 8, 64, 16)
    assert config.tie_word_embeddings and config.max_positions == 131072 and config.eos_token_id == 128001
    assert config.rope_theta == 500000.0 and config.rope_type == "llama3"
    assert dict(config.rope_scaling)["original_max_position_embeddings"] == 8192
    assert not (config.qkv_bias or config.attn_out_bias or config.use_bias) and config.sliding_window is None
    abstract = abstract_params(config, jnp.bfloat16)
    assert sum(int(np.prod(x.shape)) for x in jax.tree.leaves(abstract)) == 1_235_814_400  # Llama 3.2 1B


def _old_layout(config: dict) -> dict:
    """A transformers-5 config.json rewritten the way transformers 4 wrote it."""
    config = dict(config)
    rope = dict(config.pop("rope_parameters"))
    config["rope_theta"] = rope.pop("rope_theta")
    if rope.get("rope_type", "default") != "default":
        rope["type"] = rope.pop("rope_type")  # the oldest spelling
        config["rope_scaling"] = rope
    return config


@pytest.mark.parametrize("name", ("llama3_rope", "llama_mha_linear"))
def test_transformers_4_config_layout_gives_the_same_model(name, tmp_path):
    folder = _copy_fixture(name, tmp_path)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(_old_layout(config)))
    old = jaxspec.load_model(folder)
    assert old.config == _model(name).config
    tokens, expected = golden(name)
    np.testing.assert_allclose(_full_logits(old, tokens), expected, atol=1e-4, rtol=0)


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(rope_parameters=dict(rope_type="yarn", factor=4.0)), "rope_type='yarn'.*default, linear, llama3"),
        (dict(rope_parameters=dict(rope_type="dynamic", factor=2.0)), "rope_type='dynamic'"),
        (dict(rope_parameters=dict(rope_type="llama3", factor=8.0)), "llama3.*low_freq_factor"),
        (dict(rope_parameters=dict(rope_type="linear")), "needs a 'factor'"),
        (dict(partial_rotary_factor=0.5), "partial_rotary_factor=0.5"),
        (dict(model_type="qwen2", use_sliding_window=True), "use_sliding_window=true"),
        (dict(model_type="mistral", sliding_window=0), "sliding_window=0"),
        (dict(hidden_act="gelu_quick"), "activation 'gelu_quick'"),
    ],
)
def test_unsupported_options_are_named(change, message):
    config = {**json.loads(open(os.path.join(fixture_path("llama_gqa"), "config.json")).read()), **change}
    with pytest.raises(UnsupportedModelError, match=message):
        DecoderConfig.from_hf_config(config)


def test_bad_head_counts_are_refused():
    config = json.loads(open(os.path.join(fixture_path("llama_gqa"), "config.json")).read())
    with pytest.raises(ValueError, match="num_key_value_heads=3 must divide num_attention_heads=4"):
        DecoderConfig.from_hf_config({**config, "num_key_value_heads": 3})


def test_unknown_model_type_lists_the_supported_ones(tmp_path):
    folder = _copy_fixture("llama_gqa", tmp_path)
    (folder / "config.json").write_text(json.dumps({"model_type": "gemma"}))
    with pytest.raises(UnsupportedModelError, match="model_type='gemma'.*gpt2, opt, llama, mistral, qwen2"):
        jaxspec.load_model(folder)


def test_mistral_window_default_and_null():
    """A Mistral config.json without sliding_window gets transformers' default of 4096; null means none."""
    config = json.loads(open(os.path.join(fixture_path("mistral_tiny"), "config.json")).read())
    del config["sliding_window"]
    assert DecoderConfig.from_hf_config(config).sliding_window == 4096
    assert DecoderConfig.from_hf_config({**config, "sliding_window": None}).sliding_window is None


# --- loading and saving ---------------------------------------------------------------


@pytest.mark.parametrize("name", LLAMA_GOLDEN_MODELS)
def test_save_writes_the_same_tensors_transformers_wrote(name, tmp_path):
    """Golden round trip: our saved folder holds exactly HF's names and values
    (no lm_head.weight for a tied model, as transformers writes it)."""
    model = _model(name)
    jaxspec.save_model(model, tmp_path / "out")
    original = load_file(os.path.join(fixture_path(name), "model.safetensors"))
    saved = load_file(str(tmp_path / "out" / "model.safetensors"))
    assert set(saved) == set(original)
    for key, value in original.items():
        np.testing.assert_array_equal(saved[key], value, err_msg=key)
    with open(tmp_path / "out" / "config.json") as f:
        assert json.load(f) == {**model.config.hf_config, "dtype": "float32"}


def test_sharded_safetensors_round_trip(tmp_path):
    jaxspec.save_model(_model("llama3_rope"), tmp_path, max_shard_bytes=4096)
    shards = [f for f in os.listdir(tmp_path) if f.endswith(".safetensors")]
    assert len(shards) > 2 and "model.safetensors" not in shards
    tokens, expected = golden("llama3_rope")
    np.testing.assert_allclose(_full_logits(jaxspec.load_model(tmp_path), tokens), expected, atol=1e-4, rtol=0)


def test_base_model_names_and_rotary_buffers_load(tmp_path):
    """A ``LlamaModel`` checkpoint (no ``model.`` prefix) with the rotary inv_freq
    buffers older transformers saved loads as the CausalLM one (tied head)."""
    folder = _copy_fixture("qwen2_tiny", tmp_path)
    state = load_file(str(folder / "model.safetensors"))
    state = {k.removeprefix("model."): v for k, v in state.items()}
    state["layers.0.self_attn.rotary_emb.inv_freq"] = np.ones(2, np.float32)
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    tokens, expected = golden("qwen2_tiny")
    np.testing.assert_allclose(_full_logits(jaxspec.load_model(folder), tokens), expected, atol=1e-4, rtol=0)


def test_missing_untied_head_is_named(tmp_path):
    folder = _copy_fixture("llama_gqa", tmp_path)
    state = load_file(str(folder / "model.safetensors"))
    del state["lm_head.weight"]
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="missing 1 weight.*lm_head.weight"):
        jaxspec.load_model(folder)


def test_bfloat16_save_and_load(tmp_path):
    model = _model("mistral_tiny", jnp.bfloat16)
    jaxspec.save_model(model, tmp_path)
    with open(tmp_path / "config.json") as f:
        config = json.load(f)
    assert config["dtype"] == "bfloat16" and config["sliding_window"] == 5
    again = jaxspec.load_model(tmp_path, dtype=jnp.bfloat16)
    jax.tree.map(np.testing.assert_array_equal, again.params, model.params)


# --- against transformers itself (torch) ----------------------------------------------


@pytest.mark.parametrize("name", LLAMA_GOLDEN_MODELS)
def test_transformers_loads_saved_folder(name, tmp_path):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    jaxspec.save_model(_model(name), tmp_path)
    model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    tokens, expected = golden(name)
    with torch.no_grad():
        got = model(torch.from_numpy(tokens).long()).logits.numpy()
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)


@pytest.mark.parametrize("name", LLAMA_GOLDEN_MODELS)
def test_fresh_transformers_checkpoint_parity(name, tmp_path):
    """A new random checkpoint of each variant, made by transformers now (another
    seed, 3 rows of 20 tokens): logits within 1e-4 in float32."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    import make_golden

    torch.manual_seed(1234)
    model = transformers.AutoModelForCausalLM.from_config(make_golden.LLAMA_CONFIGS[name]).eval()
    with torch.no_grad():
        for param in model.parameters():
            param.normal_(0.0, 0.3)
    model.save_pretrained(tmp_path, safe_serialization=True)
    tokens = np.random.default_rng(5).integers(0, 64, size=(3, 20)).astype(np.int32)
    with torch.no_grad():
        expected = model(torch.from_numpy(tokens).long()).logits.numpy()
    np.testing.assert_allclose(_full_logits(jaxspec.load_model(tmp_path), tokens), expected, atol=1e-4, rtol=0)


@pytest.mark.parametrize("name", ("llama3_rope", "llama_mha_linear", "llama_gqa"))
def test_transformers_reads_the_old_layout_as_we_do(name, tmp_path):
    """The transformers-4 rewrite used above means the same model to transformers."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    folder = _copy_fixture(name, tmp_path)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(_old_layout(config)))
    model = transformers.AutoModelForCausalLM.from_pretrained(folder).eval()
    tokens, expected = golden(name)
    with torch.no_grad():
        got = model(torch.from_numpy(tokens).long()).logits.numpy()
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", ("llama_3_2_1b", *LLAMA_GOLDEN_MODELS))
def test_inverse_frequencies_match_transformers(name):
    pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    if name == "llama_3_2_1b":
        hf = LLAMA_32_1B
    else:
        hf = json.loads(open(os.path.join(fixture_path(name), "config.json")).read())
    expected = LlamaRotaryEmbedding(transformers.AutoConfig.for_model(**hf)).inv_freq.numpy()
    np.testing.assert_allclose(inverse_frequencies(DecoderConfig.from_hf_config(hf)), expected, rtol=1e-6)
