"""Architectures of Hugging Face checkpoints (their config.json fields), for random-weight measurements.

Costs and bytes of a random-weight model are those of the real checkpoint;
acceptance and agreement are not (near-uniform logits).
"""

from __future__ import annotations

from jaxspec.models.config import DecoderConfig


def _gpt2(width: int, layers: int, heads: int, **extra) -> dict:
    return dict(model_type="gpt2", n_embd=width, n_layer=layers, n_head=heads, **extra)


def _opt(width: int, layers: int, heads: int, ffn: int, projection: int, **extra) -> dict:
    fields = dict(
        model_type="opt",
        hidden_size=width,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        ffn_dim=ffn,
        word_embed_proj_dim=projection,
        vocab_size=50272,
    )
    return fields | extra


HF_SIZES = {
    "gpt2": _gpt2(768, 12, 12),
    "gpt2-medium": _gpt2(1024, 24, 16),
    "gpt2-large": _gpt2(1280, 36, 20),
    "gpt2-xl": _gpt2(1600, 48, 25),
    "opt-125m": _opt(768, 12, 12, 3072, 768),
    "opt-350m": _opt(1024, 24, 16, 4096, 512, do_layer_norm_before=False),
    "opt-1.3b": _opt(2048, 24, 32, 8192, 2048),
}

# Tiny configs of both families, for tests of what takes a size name (e.g. `hlo.report`).
TINY_SIZES = {
    "tiny-gpt2": _gpt2(32, 2, 8, vocab_size=64, n_positions=64),
    "tiny-opt": _opt(32, 2, 8, 64, 32, vocab_size=64, max_position_embeddings=64),
}


def sized_config(name: str) -> DecoderConfig:
    """The `DecoderConfig` of a name in `HF_SIZES` or `TINY_SIZES`."""
    sizes = {**TINY_SIZES, **HF_SIZES}
    if name not in sizes:
        raise ValueError(f"unknown size {name!r}; known: {', '.join(sizes)}")
    return DecoderConfig.from_hf_config(dict(sizes[name]))
