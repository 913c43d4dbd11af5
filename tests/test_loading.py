"""Loading, saving and the errors a user sees for bad checkpoints."""

import json
import os
import shutil

import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import GOLDEN_MODELS, fixture_path, golden
from flax.traverse_util import unflatten_dict
from safetensors.numpy import load_file

import jaxspec
from jaxspec import CheckpointError, UnsupportedModelError


def _logits(model, tokens):
    cache = model.init_cache(tokens.shape[0], tokens.shape[1])
    return np.asarray(jax.jit(lambda m, t, c: m(t, c))(model, jnp.asarray(tokens), cache)[0])


def _copy_fixture(name, tmp_path):
    dst = tmp_path / name
    shutil.copytree(fixture_path(name), dst)
    return dst


@pytest.mark.parametrize("name", GOLDEN_MODELS)
def test_save_writes_the_same_tensors_transformers_wrote(name, tmp_path):
    """Golden round trip: our saved folder holds exactly HF's names and values."""
    model = jaxspec.load_model(fixture_path(name))
    jaxspec.save_model(model, tmp_path / "out")
    original = load_file(os.path.join(fixture_path(name), "model.safetensors"))
    saved = load_file(str(tmp_path / "out" / "model.safetensors"))
    assert set(saved) == set(original)
    for key, value in original.items():
        np.testing.assert_array_equal(saved[key], value, err_msg=key)
    with open(tmp_path / "out" / "config.json") as f:
        config = json.load(f)
    assert config["model_type"] == model.config.model_type
    reloaded = jaxspec.load_model(tmp_path / "out")
    tokens, expected = golden(name)
    np.testing.assert_allclose(_logits(reloaded, tokens), expected, atol=1e-4, rtol=0)


@pytest.mark.parametrize("name", ("gpt2_tiny", "opt_350m_style"))
def test_transformers_loads_saved_folder(name, tmp_path):
    """In addition to the golden test above: the real PyTorch classes, if installed."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    jaxspec.save_model(jaxspec.load_model(fixture_path(name)), tmp_path)
    model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    tokens, expected = golden(name)
    with torch.no_grad():
        got = model(torch.from_numpy(tokens).long()).logits.numpy()
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)


def test_sharded_safetensors_round_trip(tmp_path):
    model = jaxspec.load_model(fixture_path("opt_350m_style"))
    jaxspec.save_model(model, tmp_path, max_shard_bytes=4096)
    shards = [f for f in os.listdir(tmp_path) if f.endswith(".safetensors")]
    assert len(shards) > 2 and "model.safetensors" not in shards
    assert os.path.exists(tmp_path / "model.safetensors.index.json")
    tokens, expected = golden("opt_350m_style")
    np.testing.assert_allclose(_logits(jaxspec.load_model(tmp_path), tokens), expected, atol=1e-4, rtol=0)


def test_bfloat16_save_and_load(tmp_path):
    model = jaxspec.load_model(fixture_path("gpt2_tiny"), dtype=jnp.bfloat16)
    jaxspec.save_model(model, tmp_path)
    with open(tmp_path / "config.json") as f:
        assert json.load(f)["dtype"] == "bfloat16"
    again = jaxspec.load_model(tmp_path, dtype=jnp.bfloat16)
    jax.tree.map(np.testing.assert_array_equal, again.params, model.params)


def _hf_flax_tree(state: dict) -> dict:
    """PyTorch-layout names -> the nested layout of HF's flax_model.msgpack."""
    flat = {}
    for name, value in state.items():
        *prefix, leaf = name.split(".")
        if leaf == "weight" and prefix[-1] in ("wte", "wpe", "embed_tokens", "embed_positions"):
            leaf = "embedding"
        elif leaf == "weight" and value.ndim == 1:
            leaf = "scale"
        elif leaf == "weight":
            leaf, value = "kernel", value.T
        flat[tuple(prefix + [leaf])] = value
    return unflatten_dict(flat)


@pytest.mark.parametrize("name", ("gpt2_tiny", "opt_proj_preln"))
def test_reads_hf_flax_msgpack(name, tmp_path):
    state = load_file(os.path.join(fixture_path(name), "model.safetensors"))
    if name == "gpt2_tiny":  # HF's Flax GPT-2 checkpoints have no 'transformer.' on GPT2Model
        state = {k.removeprefix("transformer."): v for k, v in state.items()}
    shutil.copy(os.path.join(fixture_path(name), "config.json"), tmp_path)
    with open(tmp_path / "flax_model.msgpack", "wb") as f:
        f.write(flax.serialization.msgpack_serialize(_hf_flax_tree(state)))
    tokens, expected = golden(name)
    np.testing.assert_allclose(_logits(jaxspec.load_model(tmp_path), tokens), expected, atol=1e-4, rtol=0)


def test_missing_folder():
    with pytest.raises(FileNotFoundError, match="no checkpoint folder at './does/not/exist'"):
        jaxspec.load_model("./does/not/exist")


def test_missing_config(tmp_path):
    with pytest.raises(CheckpointError, match="has no config.json"):
        jaxspec.load_model(tmp_path)


def test_missing_weights(tmp_path):
    shutil.copy(os.path.join(fixture_path("gpt2_tiny"), "config.json"), tmp_path)
    with pytest.raises(CheckpointError, match="has no weights: expected model.safetensors"):
        jaxspec.load_model(tmp_path)


def test_truncated_safetensors(tmp_path):
    folder = _copy_fixture("gpt2_tiny", tmp_path)
    path = folder / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        jaxspec.load_model(folder)


def test_garbage_safetensors(tmp_path):
    folder = _copy_fixture("opt_tiny", tmp_path)
    (folder / "model.safetensors").write_bytes(b"\x00" * 100)
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        jaxspec.load_model(folder)


def test_weight_shape_that_does_not_match_config(tmp_path):
    folder = _copy_fixture("gpt2_tiny", tmp_path)
    config = json.loads((folder / "config.json").read_text())
    config["vocab_size"] = 65
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(
        CheckpointError,
        match=r"transformer.wte.weight has shape \(64, 16\) but config.json implies \(65, 16\)",
    ):
        jaxspec.load_model(folder)


def test_missing_tensor(tmp_path):
    from safetensors.numpy import save_file

    folder = _copy_fixture("opt_tiny", tmp_path)
    state = load_file(str(folder / "model.safetensors"))
    del state["model.decoder.layers.1.fc2.weight"]
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="missing 1 weight.*layers.1.fc2.weight"):
        jaxspec.load_model(folder)


def test_unsupported_model_type(tmp_path):
    folder = _copy_fixture("gpt2_tiny", tmp_path)
    (folder / "config.json").write_text(json.dumps({"model_type": "mamba"}))
    with pytest.raises(UnsupportedModelError, match="model_type='mamba'.*gpt2, opt"):
        jaxspec.load_model(folder)


def test_unsupported_gpt2_option_is_named(tmp_path):
    folder = _copy_fixture("gpt2_tiny", tmp_path)
    config = json.loads((folder / "config.json").read_text())
    config["scale_attn_by_inverse_layer_idx"] = True
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(UnsupportedModelError, match="scale_attn_by_inverse_layer_idx"):
        jaxspec.load_model(folder)


def _pickle_folder(tmp_path):
    torch = pytest.importorskip("torch")
    from safetensors.torch import load_file as torch_load_file

    folder = _copy_fixture("gpt2_tiny", tmp_path)
    state = torch_load_file(str(folder / "model.safetensors"))
    os.remove(folder / "model.safetensors")
    torch.save(state, folder / "pytorch_model.bin")
    return folder


def test_pickle_is_refused_without_opt_in(tmp_path):
    folder = _copy_fixture("gpt2_tiny", tmp_path)
    os.remove(folder / "model.safetensors")
    (folder / "pytorch_model.bin").write_bytes(b"not even opened")
    with pytest.raises(CheckpointError, match="pickle.*allow_pickle=True"):
        jaxspec.load_model(folder)


def test_pickle_loads_with_opt_in(tmp_path):
    folder = _pickle_folder(tmp_path)
    tokens, expected = golden("gpt2_tiny")
    model = jaxspec.load_model(folder, allow_pickle=True)
    np.testing.assert_allclose(_logits(model, tokens), expected, atol=1e-4, rtol=0)
