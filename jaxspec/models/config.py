"""Architecture description shared by the GPT-2 / OPT and Llama-family decoders.

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

# The Llama family (RoPE, RMSNorm, SwiGLU, grouped-query attention) runs on
# `jaxspec.models.llama`; GPT-2 and OPT on `jaxspec.models.decoder`.
LLAMA_FAMILY = ("llama", "mistral", "qwen2")
SUPPORTED_MODEL_TYPES = ("gpt2", "opt", *LLAMA_FAMILY)
ROPE_TYPES = ("default", "linear", "llama3")

# Hugging Face activation names -> our names (see `layers.ACTIVATIONS`).
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
      model_type: one of `SUPPORTED_MODEL_TYPES`.
      vocab_size: rows of the token embedding (V).
      hidden_size: residual stream width (D).
      num_layers: number of transformer blocks (L).
      num_heads: attention (query) heads (H).
      ffn_size: MLP inner width (F).
      max_positions: positions the model takes (0..P-1): the learned position
        table of GPT-2 / OPT, ``max_position_embeddings`` of a RoPE model.
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
      use_bias: whether the MLP projections have biases, and the attention
        projections too unless `qkv_bias` / `attn_out_bias` say otherwise.
      tie_word_embeddings: LM head shares the token embedding.
      num_kv_heads: key/value heads (K, dividing H; default H). The cache
        stores K heads; query heads h*H/K .. (h+1)*H/K - 1 read KV head h.
      head_dim: width of one head (default D // H; Llama-family configs may
        set it explicitly, then H * head_dim need not equal D).
      qkv_bias, attn_out_bias: biases of the q/k/v and output projections
        (default `use_bias`; Qwen2 has q/k/v biases and no output bias).
      rope_theta: RoPE base (Llama family).
      rope_scaling: RoPE scaling as sorted ``(key, value)`` pairs (hashable):
        empty for plain RoPE, else with ``rope_type`` ``"linear"`` (``factor``)
        or ``"llama3"`` (``factor``, ``low_freq_factor``, ``high_freq_factor``,
        ``original_max_position_embeddings``); see `jaxspec.models.rope`.
      sliding_window: W, or None: a query at position p sees only positions
        p - W + 1 .. p (Mistral v0.1).
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
    num_kv_heads: int | None = None
    head_dim: int | None = None
    qkv_bias: bool | None = None
    attn_out_bias: bool | None = None
    rope_theta: float = 10000.0
    rope_scaling: tuple[tuple[str, Any], ...] = ()
    sliding_window: int | None = None
    hf_config_json: str = dataclasses.field(default="{}", compare=False)

    def __post_init__(self):
        if self.model_type not in SUPPORTED_MODEL_TYPES:
            raise UnsupportedModelError(
                f"model_type={self.model_type!r} is not supported; jaxspec implements "
                f"{', '.join(SUPPORTED_MODEL_TYPES)}."
            )
        if self.head_dim is None:
            if self.hidden_size % self.num_heads:
                raise ValueError(f"hidden_size={self.hidden_size} is not divisible by num_heads={self.num_heads}.")
            object.__setattr__(self, "head_dim", self.hidden_size // self.num_heads)
        elif not self.is_llama_family and self.head_dim * self.num_heads != self.hidden_size:
            raise ValueError(
                f"{self.model_type} needs head_dim * num_heads == hidden_size, got head_dim={self.head_dim}."
            )
        if self.num_kv_heads is None:
            object.__setattr__(self, "num_kv_heads", self.num_heads)
        if self.num_heads % self.num_kv_heads or (self.num_kv_heads != self.num_heads and not self.is_llama_family):
            raise ValueError(
                f"num_key_value_heads={self.num_kv_heads} must divide num_attention_heads={self.num_heads} "
                "(and equal it for GPT-2 / OPT)."
            )
        for name in ("qkv_bias", "attn_out_bias"):
            if getattr(self, name) is None:
                object.__setattr__(self, name, self.use_bias)
        if self.embed_size is None:
            object.__setattr__(self, "embed_size", self.hidden_size)

    @property
    def is_llama_family(self) -> bool:
        """RoPE / RMSNorm / SwiGLU decoder (`jaxspec.models.llama`) rather than GPT-2 / OPT."""
        return self.model_type in LLAMA_FAMILY

    @property
    def rope_type(self) -> str:
        return dict(self.rope_scaling).get("rope_type", "default")

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
        if model_type in LLAMA_FAMILY:
            return _from_llama_family(hf)
        raise UnsupportedModelError(
            f"config.json has model_type={model_type!r}; jaxspec supports "
            f"{', '.join(SUPPORTED_MODEL_TYPES)} (GPT-2, OPT and the Llama family)."
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


# Defaults of the transformers config classes, for keys a hand-written config.json may omit.
_LLAMA_DEFAULTS = {
    "llama": dict(
        vocab_size=32000, intermediate_size=11008, max_position_embeddings=2048, bos_token_id=1, eos_token_id=2
    ),
    "mistral": dict(
        vocab_size=32000,
        intermediate_size=14336,
        max_position_embeddings=4096 * 32,
        num_key_value_heads=8,
        sliding_window=4096,
        bos_token_id=1,
        eos_token_id=2,
    ),
    "qwen2": dict(vocab_size=151936, intermediate_size=22016, max_position_embeddings=32768, num_key_value_heads=32),
}


def _rope(hf: dict[str, Any], max_positions: int) -> tuple[float, tuple[tuple[str, Any], ...]]:
    """(rope_theta, normalized rope_scaling) from either config.json layout.

    transformers < 5 writes ``rope_theta`` and ``rope_scaling`` at the top
    level; transformers >= 5 writes one ``rope_parameters`` dict. As
    transformers does, ``rope_scaling`` wins over ``rope_parameters``, a theta
    inside the dict over a top-level one, and ``type`` is an old name of
    ``rope_type``.
    """
    params = dict(hf.get("rope_scaling") or hf.get("rope_parameters") or {})
    theta = float(params.get("rope_theta", hf.get("rope_theta", 10000.0)))
    partial = params.get("partial_rotary_factor", hf.get("partial_rotary_factor", 1.0))
    if partial not in (None, 1, 1.0):
        raise UnsupportedModelError(f"config.json sets partial_rotary_factor={partial!r}; jaxspec rotates whole heads.")
    rope_type = params.get("rope_type", params.get("type", "default"))
    if rope_type not in ROPE_TYPES:
        raise UnsupportedModelError(
            f"config.json sets rope_type={rope_type!r}; jaxspec implements RoPE types {', '.join(ROPE_TYPES)}."
        )
    if rope_type == "default":
        return theta, ()
    if "factor" not in params:
        raise UnsupportedModelError(f"rope_type={rope_type!r} needs a 'factor' in config.json's RoPE settings.")
    scaling = {"rope_type": rope_type, "factor": float(params["factor"])}
    if rope_type == "llama3":
        for key in ("low_freq_factor", "high_freq_factor"):
            if key not in params:
                raise UnsupportedModelError(f"rope_type='llama3' needs {key!r} in config.json's RoPE settings.")
            scaling[key] = float(params[key])
        original = params.get("original_max_position_embeddings", hf.get("original_max_position_embeddings"))
        scaling["original_max_position_embeddings"] = int(original or max_positions)
    return theta, tuple(sorted(scaling.items()))


def _sliding_window(hf: dict[str, Any], model_type: str) -> int | None:
    if model_type == "qwen2":
        if hf.get("use_sliding_window", False):
            raise UnsupportedModelError(
                "config.json sets use_sliding_window=true (Qwen2 sliding-window attention on the layers from "
                "max_window_layers on); jaxspec implements Qwen2 with full attention only (use_sliding_window=false)."
            )
        return None
    if model_type == "mistral":
        window = hf.get("sliding_window", _LLAMA_DEFAULTS["mistral"]["sliding_window"])
        if window is not None and (isinstance(window, bool) or not isinstance(window, int) or window < 1):
            raise UnsupportedModelError(f"config.json sets sliding_window={window!r}; expected null or an int >= 1.")
        return window
    return None


def _from_llama_family(hf: dict[str, Any]) -> DecoderConfig:
    """Llama, Mistral and Qwen2: one architecture with different biases and attention windows."""
    model_type = hf["model_type"]
    get = lambda key, default=None: hf.get(key, _LLAMA_DEFAULTS[model_type].get(key, default))  # noqa: E731
    heads = get("num_attention_heads", 32)
    max_positions = get("max_position_embeddings")
    theta, scaling = _rope(hf, max_positions)
    if model_type == "qwen2":  # transformers' Qwen2 hard-codes its biases
        use_bias, qkv_bias, out_bias = False, True, False
    elif model_type == "mistral":
        use_bias = qkv_bias = out_bias = False
    else:
        use_bias, qkv_bias = bool(hf.get("mlp_bias", False)), bool(hf.get("attention_bias", False))
        out_bias = qkv_bias
    return DecoderConfig(
        model_type=model_type,
        vocab_size=get("vocab_size"),
        hidden_size=get("hidden_size", 4096),
        num_layers=get("num_hidden_layers", 32),
        num_heads=heads,
        ffn_size=get("intermediate_size"),
        max_positions=max_positions,
        activation=_activation(get("hidden_act", "silu")),
        layer_norm_eps=get("rms_norm_eps", 1e-6),
        layer_norm_affine=True,
        use_bias=use_bias,
        tie_word_embeddings=get("tie_word_embeddings", False),
        bos_token_id=get("bos_token_id"),
        eos_token_id=_first_eos(get("eos_token_id")),
        pad_token_id=get("pad_token_id"),
        num_kv_heads=get("num_key_value_heads") or heads,
        head_dim=get("head_dim"),
        qkv_bias=qkv_bias,
        attn_out_bias=out_bias,
        rope_theta=theta,
        rope_scaling=scaling,
        sliding_window=_sliding_window(hf, model_type),
        hf_config_json=json.dumps(hf, sort_keys=True),
    )
