"""Architecture description shared by the GPT-2 and OPT decoders.

`DecoderConfig` is a frozen, hashable dataclass: it is a static part of every
jitted function, so two models with equal configs share compiled code.
It is built from a Hugging Face ``config.json`` dict by `from_hf_config` and
keeps that dict (as JSON text, to stay hashable) so `save_model` can write it
back unchanged.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

SUPPORTED_MODEL_TYPES = ("gpt2", "opt")

# Hugging Face activation names -> our names (see `decoder._ACTIVATIONS`).
_HF_ACTIVATIONS = {
    "gelu_new": "gelu_tanh",
    "gelu_pytorch_tanh": "gelu_tanh",
    "gelu_fast": "gelu_tanh",
    "gelu": "gelu",
    "relu": "relu",
    "silu": "silu",
    "swish": "silu",
}


class UnsupportedModelError(ValueError):
    """The checkpoint's architecture or one of its options is not implemented."""


@dataclasses.dataclass(frozen=True)
class DecoderConfig:
    """Static description of a decoder-only transformer.

    Attributes:
      model_type: ``"gpt2"`` or ``"opt"``.
      vocab_size: rows of the token embedding (V).
      hidden_size: residual stream width (D).
      num_layers: number of transformer blocks (L).
      num_heads: attention heads (H); head_dim = D // H.
      ffn_size: MLP inner width (F).
      max_positions: learned position embeddings available (positions 0..P-1).
      position_offset: rows skipped at the start of the position table
        (2 for OPT, 0 for GPT-2).
      embed_size: token embedding width (E); differs from D only for OPT models
        with ``word_embed_proj_dim`` (project_in / project_out).
      activation: ``"gelu_tanh"``, ``"gelu"``, ``"relu"`` or ``"silu"``.
      pre_layer_norm: LayerNorm before attention/MLP (GPT-2, most OPT) or after
        the residual add (OPT-350m, ``do_layer_norm_before=false``).
      final_layer_norm: whether a LayerNorm follows the last block.
      layer_norm_eps: LayerNorm epsilon.
      layer_norm_affine: whether LayerNorms have scale and bias.
      use_bias: whether attention and MLP projections have biases.
      tie_word_embeddings: LM head shares the token embedding.
      bos_token_id, eos_token_id, pad_token_id: from the HF config (may be None).
      hf_config_json: the source ``config.json`` as sorted JSON text.
    """

    model_type: str
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    ffn_size: int
    max_positions: int
    position_offset: int = 0
    embed_size: int | None = None
    activation: str = "gelu_tanh"
    pre_layer_norm: bool = True
    final_layer_norm: bool = True
    layer_norm_eps: float = 1e-5
    layer_norm_affine: bool = True
    use_bias: bool = True
    tie_word_embeddings: bool = True
    bos_token_id: int | None = None
    eos_token_id: int | None = None
    pad_token_id: int | None = None
    hf_config_json: str = dataclasses.field(default="{}", compare=False)

    def __post_init__(self):
        if self.model_type not in SUPPORTED_MODEL_TYPES:
            raise UnsupportedModelError(
                f"model_type={self.model_type!r} is not supported; jaxspec implements "
                f"{', '.join(SUPPORTED_MODEL_TYPES)}."
            )
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size={self.hidden_size} is not divisible by num_heads={self.num_heads}.")
        if self.embed_size is None:
            object.__setattr__(self, "embed_size", self.hidden_size)

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def hf_config(self) -> dict[str, Any]:
        """The Hugging Face config dict this config was made from (a copy)."""
        return json.loads(self.hf_config_json)

    @classmethod
    def from_hf_config(cls, hf: dict[str, Any]) -> DecoderConfig:
        """Builds a config from a Hugging Face ``config.json`` dict.

        Raises:
          UnsupportedModelError: unknown ``model_type`` or an option jaxspec does
            not implement (the message names it).
        """
        model_type = hf.get("model_type")
        if model_type == "gpt2":
            return _from_gpt2(hf)
        if model_type == "opt":
            return _from_opt(hf)
        raise UnsupportedModelError(
            f"config.json has model_type={model_type!r}; jaxspec supports "
            f"{', '.join(SUPPORTED_MODEL_TYPES)} (GPT-2 and OPT families)."
        )


def _activation(name: str) -> str:
    if name not in _HF_ACTIVATIONS:
        raise UnsupportedModelError(
            f"activation {name!r} is not supported; known: {', '.join(sorted(_HF_ACTIVATIONS))}."
        )
    return _HF_ACTIVATIONS[name]


def _reject(hf: dict[str, Any], key: str, ok_value: Any) -> None:
    if hf.get(key, ok_value) != ok_value:
        raise UnsupportedModelError(f"config.json sets {key}={hf[key]!r}; jaxspec only implements {key}={ok_value!r}.")


def _first_eos(value: Any) -> int | None:
    if isinstance(value, list):
        return value[0] if value else None
    return value


def _from_gpt2(hf: dict[str, Any]) -> DecoderConfig:
    _reject(hf, "scale_attn_weights", True)
    _reject(hf, "scale_attn_by_inverse_layer_idx", False)
    _reject(hf, "add_cross_attention", False)
    hidden = hf.get("n_embd", 768)
    return DecoderConfig(
        model_type="gpt2",
        vocab_size=hf.get("vocab_size", 50257),
        hidden_size=hidden,
        num_layers=hf.get("n_layer", 12),
        num_heads=hf.get("n_head", 12),
        ffn_size=hf.get("n_inner") or 4 * hidden,
        max_positions=hf.get("n_positions", 1024),
        position_offset=0,
        embed_size=hidden,
        activation=_activation(hf.get("activation_function", "gelu_new")),
        pre_layer_norm=True,
        final_layer_norm=True,
        layer_norm_eps=hf.get("layer_norm_epsilon", 1e-5),
        tie_word_embeddings=hf.get("tie_word_embeddings", True),
        bos_token_id=hf.get("bos_token_id"),
        eos_token_id=_first_eos(hf.get("eos_token_id")),
        pad_token_id=hf.get("pad_token_id"),
        hf_config_json=json.dumps(hf, sort_keys=True),
    )


def _from_opt(hf: dict[str, Any]) -> DecoderConfig:
    hidden = hf.get("hidden_size", 768)
    pre_ln = hf.get("do_layer_norm_before", True)
    return DecoderConfig(
        model_type="opt",
        vocab_size=hf.get("vocab_size", 50272),
        hidden_size=hidden,
        num_layers=hf.get("num_hidden_layers", 12),
        num_heads=hf.get("num_attention_heads", 12),
        ffn_size=hf.get("ffn_dim", 3072),
        max_positions=hf.get("max_position_embeddings", 2048),
        position_offset=2,
        embed_size=hf.get("word_embed_proj_dim") or hidden,
        activation=_activation(hf.get("activation_function", "relu")),
        pre_layer_norm=pre_ln,
        final_layer_norm=pre_ln and not hf.get("_remove_final_layer_norm", False),
        layer_norm_eps=1e-5,
        layer_norm_affine=hf.get("layer_norm_elementwise_affine", True),
        use_bias=hf.get("enable_bias", True),
        tie_word_embeddings=hf.get("tie_word_embeddings", True),
        bos_token_id=hf.get("bos_token_id"),
        eos_token_id=_first_eos(hf.get("eos_token_id")),
        pad_token_id=hf.get("pad_token_id"),
        hf_config_json=json.dumps(hf, sort_keys=True),
    )
