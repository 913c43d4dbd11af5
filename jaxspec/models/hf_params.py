"""Hugging Face (PyTorch-layout) parameter names <-> jaxspec's Flax params.

A "state dict" here is a flat ``{hf_name: array}`` mapping in PyTorch layout,
as stored in ``model.safetensors`` by ``save_pretrained``: ``nn.Linear``
weights are ``[out, in]``; GPT-2's ``Conv1D`` weights are ``[in, out]``.
jaxspec's params are Flax layout (Dense kernels ``[in, out]``) with the
layers stacked on a leading axis, and OPT's separate q/k/v projections fused
into one ``qkv`` kernel. Llama-family checkpoints (``model.layers.*``) keep
separate q/k/v projections (grouped-query k and v are narrower than q), so
their names map one to one. Converters use jnp ops so `jax.eval_shape` can run
them on abstract params (that is how the loader learns the expected shapes).

The fused ``qkv`` kernel [L, D, 3D] (and bias [L, 3D]) is stored head-major,
its output features ordered (head, q/k/v, head dim) instead of Hugging Face's
(q/k/v, head, head dim), as Megatron-LM stores it: then any contiguous split
of the 3D axis into n equal blocks, n dividing the head count, hands each
block whole heads of q, k and v, which is what tensor parallelism over heads
needs (`jaxspec.sharding`). The loader and saver convert.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from jaxspec.models.config import DecoderConfig

StateDict = dict[str, Any]

# Per-layer tensors: (hf suffix, our module, our param, transpose?).
_GPT2_LAYER = (
    ("ln_1.weight", "ln_attn", "scale", False),
    ("ln_1.bias", "ln_attn", "bias", False),
    ("attn.c_attn.weight", "qkv", "kernel", False),
    ("attn.c_attn.bias", "qkv", "bias", False),
    ("attn.c_proj.weight", "attn_out", "kernel", False),
    ("attn.c_proj.bias", "attn_out", "bias", False),
    ("ln_2.weight", "ln_mlp", "scale", False),
    ("ln_2.bias", "ln_mlp", "bias", False),
    ("mlp.c_fc.weight", "fc_in", "kernel", False),
    ("mlp.c_fc.bias", "fc_in", "bias", False),
    ("mlp.c_proj.weight", "fc_out", "kernel", False),
    ("mlp.c_proj.bias", "fc_out", "bias", False),
)
_GPT2_TOP = (
    ("transformer.wte.weight", "embed", "embedding", False),
    ("transformer.wpe.weight", "pos_embed", "embedding", False),
    ("transformer.ln_f.weight", "ln_final", "scale", False),
    ("transformer.ln_f.bias", "ln_final", "bias", False),
    ("lm_head.weight", "lm_head", "kernel", True),
)
_OPT_LAYER = (
    ("self_attn_layer_norm.weight", "ln_attn", "scale", False),
    ("self_attn_layer_norm.bias", "ln_attn", "bias", False),
    ("self_attn.out_proj.weight", "attn_out", "kernel", True),
    ("self_attn.out_proj.bias", "attn_out", "bias", False),
    ("final_layer_norm.weight", "ln_mlp", "scale", False),
    ("final_layer_norm.bias", "ln_mlp", "bias", False),
    ("fc1.weight", "fc_in", "kernel", True),
    ("fc1.bias", "fc_in", "bias", False),
    ("fc2.weight", "fc_out", "kernel", True),
    ("fc2.bias", "fc_out", "bias", False),
)
_OPT_TOP = (
    ("model.decoder.embed_tokens.weight", "embed", "embedding", False),
    ("model.decoder.embed_positions.weight", "pos_embed", "embedding", False),
    ("model.decoder.project_in.weight", "project_in", "kernel", True),
    ("model.decoder.project_out.weight", "project_out", "kernel", True),
    ("model.decoder.final_layer_norm.weight", "ln_final", "scale", False),
    ("model.decoder.final_layer_norm.bias", "ln_final", "bias", False),
    ("lm_head.weight", "lm_head", "kernel", True),
)
_LLAMA_LAYER = (
    ("input_layernorm.weight", "ln_attn", "scale", False),
    *(
        (f"self_attn.{proj}_proj.{kind}", proj, param, kind == "weight")
        for proj in "qkv"
        for kind, param in (("weight", "kernel"), ("bias", "bias"))
    ),
    ("self_attn.o_proj.weight", "attn_out", "kernel", True),
    ("self_attn.o_proj.bias", "attn_out", "bias", False),
    ("post_attention_layernorm.weight", "ln_mlp", "scale", False),
    *(
        (f"mlp.{proj}.{kind}", module, param, kind == "weight")
        for proj, module in (("gate_proj", "fc_gate"), ("up_proj", "fc_in"), ("down_proj", "fc_out"))
        for kind, param in (("weight", "kernel"), ("bias", "bias"))
    ),
)
_LLAMA_TOP = (
    ("model.embed_tokens.weight", "embed", "embedding", False),
    ("model.norm.weight", "ln_final", "scale", False),
    ("lm_head.weight", "lm_head", "kernel", True),
)
_QKV = ("q_proj", "k_proj", "v_proj")

# Buffers some checkpoints carry that are not parameters.
_IGNORED_SUFFIXES = (".attn.bias", ".attn.masked_bias", ".rotary_emb.inv_freq")


def _layer_prefix(config: DecoderConfig) -> str:
    if config.is_llama_family:
        return "model.layers"
    return "transformer.h" if config.model_type == "gpt2" else "model.decoder.layers"


def _tables(config: DecoderConfig):
    if config.is_llama_family:
        return _LLAMA_TOP, _LLAMA_LAYER
    if config.model_type == "gpt2":
        return _GPT2_TOP, _GPT2_LAYER
    return _OPT_TOP, _OPT_LAYER


def canonical_name(name: str, config: DecoderConfig) -> str:
    """Maps the prefixes older checkpoints use to the ``*ForCausalLM`` names.

    ``GPT2Model`` checkpoints (e.g. the hub's ``gpt2``) omit ``transformer.``;
    some OPT checkpoints use ``decoder.`` instead of ``model.decoder.``;
    ``LlamaModel`` (base model) checkpoints omit ``model.``.
    """
    if config.is_llama_family:
        return name if name.startswith(("model.", "lm_head.")) else "model." + name
    if config.model_type == "gpt2":
        if not name.startswith(("transformer.", "lm_head.")):
            return "transformer." + name
        return name
    if name.startswith("decoder."):
        return "model." + name
    return name


def is_ignored(name: str) -> bool:
    return name.endswith(_IGNORED_SUFFIXES)


def _qkv_to_head_major(x: Any, num_heads: int) -> Any:
    """[..., 3D] ordered (q/k/v, head, dim) -> ordered (head, q/k/v, dim)."""
    lead = x.shape[:-1]
    return jnp.swapaxes(x.reshape(*lead, 3, num_heads, -1), -3, -2).reshape(*lead, -1)


def _qkv_from_head_major(x: Any, num_heads: int) -> Any:
    """Inverse of `_qkv_to_head_major`."""
    lead = x.shape[:-1]
    return jnp.swapaxes(x.reshape(*lead, num_heads, 3, -1), -3, -2).reshape(*lead, -1)


def from_hf(state: StateDict, config: DecoderConfig, dtype, needed: set[str]) -> dict[str, Any]:
    """Converts a canonical-named HF state dict to jaxspec params.

    Args:
      state: ``{hf_name: array}``, already checked against `expected_shapes`.
      config: the architecture.
      dtype: dtype of the returned params.
      needed: the names of `expected_shapes` (a tied checkpoint may still
        carry ``lm_head.weight``; only needed tensors are read).
    """
    top, layer = _tables(config)
    cast = lambda x: jnp.asarray(x, dtype)  # noqa: E731
    params: dict[str, Any] = {}
    for hf_name, module, param, transpose in top:
        if hf_name in needed:
            value = cast(state[hf_name])
            params.setdefault(module, {})[param] = value.T if transpose else value
    blocks: dict[str, Any] = {}
    prefix = _layer_prefix(config)
    for suffix, module, param, transpose in layer:
        names = [f"{prefix}.{i}.{suffix}" for i in range(config.num_layers)]
        if names[0] not in needed:
            continue
        stacked = jnp.stack([cast(state[n]).T if transpose else cast(state[n]) for n in names])
        blocks.setdefault(module, {})[param] = stacked
    if config.model_type == "opt":
        kinds = ("weight", "bias") if config.use_bias else ("weight",)
        for kind in kinds:
            per_layer = []
            for i in range(config.num_layers):
                parts = [cast(state[f"{prefix}.{i}.self_attn.{p}.{kind}"]) for p in _QKV]
                # torch Linear [out, in] -> Dense [in, out], then fuse along out.
                per_layer.append(jnp.concatenate([w.T if kind == "weight" else w for w in parts], -1))
            blocks.setdefault("qkv", {})["kernel" if kind == "weight" else "bias"] = jnp.stack(per_layer)
    if "qkv" in blocks:
        blocks["qkv"] = {k: _qkv_to_head_major(v, config.num_heads) for k, v in blocks["qkv"].items()}
    params["blocks"] = blocks
    return params


def to_hf(params: dict[str, Any], config: DecoderConfig) -> StateDict:
    """Converts jaxspec params to a canonical-named HF state dict (jnp arrays)."""
    top, layer = _tables(config)
    state: StateDict = {}
    for hf_name, module, param, transpose in top:
        if module in params and param in params[module]:
            value = params[module][param]
            state[hf_name] = value.T if transpose else value
    blocks = dict(params["blocks"])
    if "qkv" in blocks:
        blocks["qkv"] = {k: _qkv_from_head_major(v, config.num_heads) for k, v in blocks["qkv"].items()}
    prefix = _layer_prefix(config)
    for suffix, module, param, transpose in layer:
        if module not in blocks or param not in blocks[module]:
            continue
        for i in range(config.num_layers):
            value = blocks[module][param][i]
            state[f"{prefix}.{i}.{suffix}"] = value.T if transpose else value
    if config.model_type == "opt":
        for kind, param in (("weight", "kernel"), ("bias", "bias")):
            if param not in blocks["qkv"]:
                continue
            for i in range(config.num_layers):
                parts = jnp.split(blocks["qkv"][param][i], 3, axis=-1)
                for proj, part in zip(_QKV, parts, strict=False):
                    state[f"{prefix}.{i}.self_attn.{proj}.{kind}"] = part.T if kind == "weight" else part
    return state


def expected_shapes(config: DecoderConfig, abstract: Any) -> dict[str, tuple[int, ...]]:
    """``{hf_name: shape}`` that a checkpoint of `config` must match."""
    shapes = jax.eval_shape(lambda p: to_hf(p, config), abstract)
    return {name: tuple(s.shape) for name, s in shapes.items()}
