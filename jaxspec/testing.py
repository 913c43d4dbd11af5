"""Small random models for tests and examples (no checkpoint needed)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxspec.models.config import DecoderConfig
from jaxspec.models.model import Model, init_model


def tiny_config(
    model_type: str = "gpt2",
    *,
    vocab_size: int = 16,
    hidden_size: int = 16,
    num_layers: int = 2,
    num_heads: int = 2,
    max_positions: int = 64,
    **hf_overrides,
) -> DecoderConfig:
    """A tiny GPT-2 or OPT config built through the same path as a config.json."""
    if model_type == "gpt2":
        hf = dict(
            model_type="gpt2",
            vocab_size=vocab_size,
            n_embd=hidden_size,
            n_layer=num_layers,
            n_head=num_heads,
            n_positions=max_positions,
        )
    else:
        hf = dict(
            model_type="opt",
            vocab_size=vocab_size,
            hidden_size=hidden_size,
            num_hidden_layers=num_layers,
            num_attention_heads=num_heads,
            ffn_dim=2 * hidden_size,
            max_position_embeddings=max_positions,
            word_embed_proj_dim=hidden_size,
        )
    hf.update(hf_overrides)
    return DecoderConfig.from_hf_config(hf)


def random_model(config: DecoderConfig, seed: int, *, scale: float = 1.0, dtype=jnp.float32) -> Model:
    """A model with N(0, 0.02 * scale) weights (LayerNorms keep scale 1, bias 0).

    `scale` > 1 makes the next-token distributions peakier, so tiny random
    models have varied, non-uniform distributions that make tests meaningful.
    """
    model = init_model(config, jax.random.key(seed), dtype)
    params = jax.tree_util.tree_map_with_path(
        lambda path, x: x if any(getattr(k, "key", None) in ("scale", "bias") for k in path) else x * scale,
        model.params,
    )
    return model.replace(params=params)
