"""Loading and saving Hugging Face checkpoints (GPT-2, OPT, Llama, Mistral, Qwen2).

Formats read: ``model.safetensors``, sharded safetensors
(``model.safetensors.index.json``) and Hugging Face Flax ``flax_model.msgpack``.
``pytorch_model.bin`` is a pickle and can run arbitrary code when loaded, so it
is refused unless the caller passes ``allow_pickle=True`` (and has torch).
`save_model` writes ``config.json`` + safetensors with Hugging Face names, which
``transformers``' PyTorch classes load unchanged.
"""

from __future__ import annotations

import json
import os
from typing import Any

import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
import safetensors
import safetensors.flax
from flax.traverse_util import flatten_dict

from jaxspec.models import hf_params
from jaxspec.models.config import DecoderConfig
from jaxspec.models.model import Model, abstract_params
from jaxspec.models.quantize import QUANTIZE_MODES, is_quantized, quantize_model

CONFIG_FILE = "config.json"
SAFETENSORS_FILE = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
FLAX_FILE = "flax_model.msgpack"
PICKLE_FILE = "pytorch_model.bin"
_HUB_PATTERNS = [CONFIG_FILE, "*.safetensors", SAFETENSORS_INDEX, FLAX_FILE, "*.json", "*.txt", "*.model"]


class CheckpointError(ValueError):
    """A checkpoint folder is missing, incomplete, corrupt or inconsistent."""


def _resolve_folder(name_or_path: str, allow_pickle: bool) -> str:
    """A local folder as is, else a Hugging Face hub id downloaded to the HF cache."""
    path = os.path.expanduser(str(name_or_path))
    if os.path.isdir(path):
        return path
    looks_local = os.path.isabs(path) or path.startswith(".") or os.path.exists(path) or path.count("/") > 1
    if looks_local:
        raise FileNotFoundError(
            f"no checkpoint folder at {name_or_path!r}; pass a folder holding config.json and "
            "model.safetensors, or a Hugging Face hub id such as 'gpt2' or 'facebook/opt-125m'."
        )
    try:
        import huggingface_hub
    except ImportError as err:  # transformers depends on it, so this is rare.
        raise CheckpointError(f"{name_or_path!r} is not a local folder and huggingface_hub is missing") from err
    patterns = _HUB_PATTERNS + ([PICKLE_FILE] if allow_pickle else [])
    try:
        return huggingface_hub.snapshot_download(repo_id=path, allow_patterns=patterns)
    except Exception as err:  # noqa: BLE001 - any hub failure gets the same advice.
        raise CheckpointError(
            f"{name_or_path!r} is not a local folder and could not be fetched from the Hugging Face hub "
            f"({type(err).__name__}: {err}). Check the id, your network, or pass a local folder."
        ) from err


def _read_config(folder: str) -> dict[str, Any]:
    path = os.path.join(folder, CONFIG_FILE)
    if not os.path.isfile(path):
        raise CheckpointError(f"{folder!r} has no {CONFIG_FILE}; a checkpoint folder needs one.")
    try:
        with open(path) as f:
            return json.load(f)
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{path} is not valid JSON ({err}).") from err


def _read_safetensors(path: str) -> dict[str, Any]:
    try:
        with safetensors.safe_open(path, framework="flax") as f:
            return {name: f.get_tensor(name) for name in f.keys()}
    except Exception as err:  # noqa: BLE001 - safetensors raises several types.
        raise CheckpointError(
            f"could not read {path}: the file is corrupt or truncated ({err}). Re-download or re-save it."
        ) from err


def _read_sharded(folder: str) -> dict[str, Any]:
    index_path = os.path.join(folder, SAFETENSORS_INDEX)
    try:
        with open(index_path) as f:
            weight_map = json.load(f)["weight_map"]
    except (json.JSONDecodeError, KeyError) as err:
        raise CheckpointError(f"{index_path} is not a valid safetensors index ({err}).") from err
    state: dict[str, Any] = {}
    for shard in sorted(set(weight_map.values())):
        shard_path = os.path.join(folder, shard)
        if not os.path.isfile(shard_path):
            raise CheckpointError(f"{index_path} lists shard {shard!r}, which is missing from {folder!r}.")
        state.update(_read_safetensors(shard_path))
    return state


def _read_flax_msgpack(path: str) -> dict[str, Any]:
    """Reads a Hugging Face Flax checkpoint into PyTorch layout and names."""
    try:
        with open(path, "rb") as f:
            tree = flax.serialization.msgpack_restore(f.read())
    except Exception as err:  # noqa: BLE001
        raise CheckpointError(f"could not read {path}: corrupt or truncated msgpack ({err}).") from err
    state = {}
    for keys, value in flatten_dict(tree).items():
        *prefix, leaf = keys
        value = np.asarray(value)
        # Flax Dense kernels are [in, out] and HF-Flax GPT-2 Conv1D kernels
        # [out, in]: both are the transpose of the PyTorch weight.
        if leaf == "kernel":
            leaf, value = "weight", value.T
        elif leaf in ("embedding", "scale"):
            leaf = "weight"
        state[".".join([*prefix, leaf])] = value
    return state


def _read_pickle(path: str) -> dict[str, Any]:
    try:
        import torch
    except ImportError as err:
        raise CheckpointError(f"reading {path} needs PyTorch: pip install torch") from err
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001
        raise CheckpointError(f"could not read {path}: corrupt or truncated ({err}).") from err
    return {k: v.float().numpy() for k, v in state.items()}


def _read_state(folder: str, allow_pickle: bool) -> dict[str, Any]:
    files = set(os.listdir(folder))
    if SAFETENSORS_FILE in files:
        return _read_safetensors(os.path.join(folder, SAFETENSORS_FILE))
    if SAFETENSORS_INDEX in files:
        return _read_sharded(folder)
    if FLAX_FILE in files:
        return _read_flax_msgpack(os.path.join(folder, FLAX_FILE))
    if PICKLE_FILE in files:
        if not allow_pickle:
            raise CheckpointError(
                f"{folder!r} holds only {PICKLE_FILE}, a pickle that can run arbitrary code when loaded. "
                "Convert it to safetensors, or pass allow_pickle=True if you trust its source."
            )
        return _read_pickle(os.path.join(folder, PICKLE_FILE))
    raise CheckpointError(
        f"{folder!r} has no weights: expected {SAFETENSORS_FILE}, {SAFETENSORS_INDEX} or {FLAX_FILE} "
        f"(found: {', '.join(sorted(files)) or 'nothing'})."
    )


def _check_state(state: dict[str, Any], expected: dict[str, tuple[int, ...]], where: str) -> None:
    missing = sorted(set(expected) - set(state))
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise CheckpointError(
            f"{where} is missing {len(missing)} weight(s) its config.json requires: {shown}. "
            "The weights do not belong to this config, or the file is incomplete."
        )
    for name, shape in expected.items():
        found = tuple(state[name].shape)
        if found != shape:
            raise CheckpointError(
                f"{where}: weight {name} has shape {found} but config.json implies {shape}; "
                "the weights and config.json do not match."
            )


def load_model(
    name_or_path: str | os.PathLike,
    dtype=jnp.float32,
    *,
    allow_pickle: bool = False,
    quantize: str | None = None,
    mesh: jax.sharding.Mesh | None = None,
    rules=None,
    model_axis: str = "model",
    data_axis: str | None = None,
) -> Model:
    """Loads a GPT-2, OPT, Llama, Mistral or Qwen2 checkpoint in Hugging Face format.

    Args:
      name_or_path: a local folder (works offline) or a Hugging Face hub id,
        downloaded with ``huggingface_hub``.
      dtype: parameter and computation dtype: ``jnp.float32`` or ``jnp.bfloat16``.
      allow_pickle: permit ``pytorch_model.bin`` (pickle; runs code on load).
      quantize: None, or ``"int8"`` for int8 weight-only matmul kernels with
        per-output-channel scales (see `jaxspec.quantize_model`); `dtype` stays
        the compute dtype.
      mesh: if given, the model comes back tensor-parallel over this mesh
        (`jaxspec.shard_model`, after any quantization); default one device.
      rules, model_axis, data_axis: passed to `jaxspec.shard_model` with `mesh`.

    Returns:
      A `Model` with params in `dtype` (int8 kernels if `quantize`).

    Raises:
      FileNotFoundError: the local folder does not exist.
      CheckpointError: missing ``config.json`` or weights, corrupt or truncated
        files, weights that do not match the config, a refused pickle.
      UnsupportedModelError: a ``model_type`` jaxspec does not implement (the
        message lists `SUPPORTED_MODEL_TYPES`), or an option it does not (e.g.
        a RoPE type other than default / linear / llama3).
      ValueError: `quantize` is not None or ``"int8"``; with `mesh`, a head
        count or MLP width that the model axis size does not divide.
    """
    if quantize is not None and quantize not in QUANTIZE_MODES:
        raise ValueError(
            f"quantize={quantize!r} is not supported; allowed: None, {', '.join(map(repr, QUANTIZE_MODES))}."
        )
    folder = _resolve_folder(os.fspath(name_or_path), allow_pickle)
    config = DecoderConfig.from_hf_config(_read_config(folder))
    raw = _read_state(folder, allow_pickle)
    state = {hf_params.canonical_name(k, config): v for k, v in raw.items() if not hf_params.is_ignored(k)}
    dtype = jnp.dtype(dtype)
    expected = hf_params.expected_shapes(config, abstract_params(config, dtype))
    _check_state(state, expected, folder)
    params = hf_params.from_hf(state, config, dtype, set(expected))
    model = Model(params=params, config=config, dtype=dtype)
    model = model if quantize is None else quantize_model(model, mode=quantize)
    if mesh is None:
        return model
    from jaxspec.sharding import shard_model  # jaxspec.sharding imports jaxspec.models, as this module does.

    return shard_model(model, mesh, rules, model_axis=model_axis, data_axis=data_axis)


def save_model(model: Model, folder: str | os.PathLike, *, dtype=None, max_shard_bytes: int | None = None) -> None:
    """Writes `model` as a Hugging Face folder: config.json + safetensors.

    ``transformers.AutoModelForCausalLM.from_pretrained(folder)`` loads it.

    Args:
      model: the model to save.
      folder: created if missing; existing weight files are replaced.
      dtype: storage dtype (default: the model's), e.g. ``jnp.float16``.
      max_shard_bytes: if set, split weights into shards of at most about this
        many bytes, with a ``model.safetensors.index.json``.
    """
    if is_quantized(model):
        raise ValueError("save_model writes float checkpoints; call jaxspec.dequantize_model(model) first.")
    folder = os.fspath(folder)
    os.makedirs(folder, exist_ok=True)
    dtype = jnp.dtype(dtype or model.dtype)
    state = {k: jnp.asarray(v, dtype) for k, v in hf_params.to_hf(model.params, model.config).items()}
    # Tensors that share storage cannot be saved to one safetensors file;
    # make each its own contiguous array.
    state = {k: jnp.array(v, copy=True) for k, v in state.items()}
    hf = model.config.hf_config
    # transformers >= 5 reads "dtype"; older releases read "torch_dtype".
    hf["dtype"] = dtype.name
    if "torch_dtype" in hf:
        hf["torch_dtype"] = dtype.name
    with open(os.path.join(folder, CONFIG_FILE), "w") as f:
        json.dump(hf, f, indent=2, sort_keys=True)
    for stale in (SAFETENSORS_FILE, SAFETENSORS_INDEX):
        if os.path.exists(os.path.join(folder, stale)):
            os.remove(os.path.join(folder, stale))
    metadata = {"format": "pt"}
    if max_shard_bytes is None:
        safetensors.flax.save_file(state, os.path.join(folder, SAFETENSORS_FILE), metadata=metadata)
        return
    shards: list[dict[str, Any]] = [{}]
    size = 0
    for name in sorted(state):
        nbytes = state[name].size * dtype.itemsize
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = state[name]
        size += nbytes
    weight_map = {}
    for i, shard in enumerate(shards):
        filename = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        safetensors.flax.save_file(shard, os.path.join(folder, filename), metadata=metadata)
        weight_map.update({name: filename for name in shard})
    total = sum(v.size * dtype.itemsize for v in state.values())
    with open(os.path.join(folder, SAFETENSORS_INDEX), "w") as f:
        json.dump({"metadata": {"total_size": int(total)}, "weight_map": weight_map}, f, indent=2)


def load_tokenizer(name_or_path: str | os.PathLike):
    """Loads the tokenizer of a checkpoint with ``transformers.AutoTokenizer``."""
    import transformers

    try:
        return transformers.AutoTokenizer.from_pretrained(os.fspath(name_or_path))
    except Exception as err:  # noqa: BLE001
        raise CheckpointError(f"could not load a tokenizer from {name_or_path!r} ({err}).") from err


def params_bytes(model: Model) -> int:
    """Bytes taken by the model's params (int8 values and their scales for a quantized model)."""
    return int(sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(model.params)))
