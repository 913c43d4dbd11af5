"""Flax decoder for the Llama family (Llama, Mistral, Qwen2), KV-cached like `decoder.Decoder`.

Per block: RMSNorm -> attention with rotary positions (`rope.py`) and
grouped-query heads (K KV heads shared by H query heads; the cache stores only
the K) -> residual -> RMSNorm -> SwiGLU MLP (``fc_out(act(fc_gate(x)) *
fc_in(x))``) -> residual; a final RMSNorm and a tied or untied head.
Qwen2 adds q/k/v biases; Mistral v0.1 a sliding attention window. Calls,
cache layout and padding convention are those of `decoder.Decoder` (see
`cache.py`); the param names of the projections (``q``, ``k``, ``v``,
``attn_out``, ``fc_gate``, ``fc_in``, ``fc_out``) are what `hf_params` and
the sharding rules match.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxspec.models.cache import KVCache
from jaxspec.models.config import DecoderConfig
from jaxspec.models.layers import ACTIVATIONS, INIT, Dense, attend, layer_cache, lm_logits, write_layer_rows
from jaxspec.models.rope import apply_rope, rotary_tables
from jaxspec.models.tree_attention import TreeAttention, positions_and_mask


class RMSNorm(nn.Module):
    """``scale * (x / rms(x))``, normalised in float32 and cast back before the scale (as transformers)."""

    epsilon: float
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x_BxTxD: jax.Array) -> jax.Array:
        scale = self.param("scale", nn.initializers.ones, (x_BxTxD.shape[-1],), self.dtype)
        x = x_BxTxD.astype(jnp.float32)
        normed = x * jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + self.epsilon)
        return scale * normed.astype(self.dtype)


class LlamaBlock(nn.Module):
    """One block; `nn.scan` turns it into the whole stack."""

    config: DecoderConfig
    dtype: jnp.dtype = jnp.float32

    def _dense(self, features: int, name: str, bias: bool) -> Dense:
        return Dense(features, use_bias=bias, dtype=self.dtype, param_dtype=self.dtype, kernel_init=INIT, name=name)

    @nn.compact
    def __call__(self, carry, layer, attn_inputs):
        """Args:
          carry: (h_BxTxD, keys, values): the residual stream of the new tokens
            and every layer's cache, each [L, B, S, K, Dh].
          layer: int32 scalar, this block's index into the cache.
          attn_inputs: (mask_Bx1xTxS, start_B, cos_BxTx1xD, sin_BxTx1xD) shared by all layers.

        Returns:
          ((h_BxTxD, keys, values), None) with this call's keys/values written at `layer`.
        """
        cfg = self.config
        mask_Bx1xTxS, start_B, cos, sin = attn_inputs
        h_BxTxD, keys, values = carry
        batch, length, _ = h_BxTxD.shape
        heads = lambda x, n: x.reshape(batch, length, n, cfg.head_dim)  # noqa: E731

        x = RMSNorm(cfg.layer_norm_eps, self.dtype, name="ln_attn")(h_BxTxD)
        q_BxTxHxD = heads(self._dense(cfg.num_heads * cfg.head_dim, "q", cfg.qkv_bias)(x), cfg.num_heads)
        k_BxTxKxD = heads(self._dense(cfg.num_kv_heads * cfg.head_dim, "k", cfg.qkv_bias)(x), cfg.num_kv_heads)
        v_BxTxKxD = heads(self._dense(cfg.num_kv_heads * cfg.head_dim, "v", cfg.qkv_bias)(x), cfg.num_kv_heads)
        q_BxTxHxD, k_BxTxKxD = apply_rope(q_BxTxHxD, cos, sin), apply_rope(k_BxTxKxD, cos, sin)
        keys = write_layer_rows(keys, layer, k_BxTxKxD, start_B)
        values = write_layer_rows(values, layer, v_BxTxKxD, start_B)
        attn_BxTxHxD = attend(q_BxTxHxD, layer_cache(keys, layer), layer_cache(values, layer), mask_Bx1xTxS, self.dtype)
        attn = self._dense(cfg.hidden_size, "attn_out", cfg.attn_out_bias)(attn_BxTxHxD.reshape(batch, length, -1))
        h = h_BxTxD + attn

        x = RMSNorm(cfg.layer_norm_eps, self.dtype, name="ln_mlp")(h)
        gate = ACTIVATIONS[cfg.activation](self._dense(cfg.ffn_size, "fc_gate", cfg.use_bias)(x))
        up = self._dense(cfg.ffn_size, "fc_in", cfg.use_bias)(x)
        h = h + self._dense(cfg.hidden_size, "fc_out", cfg.use_bias)(gate * up)
        return (h, keys, values), None


class LlamaDecoder(nn.Module):
    """Llama-family decoder with an explicit KV cache; called like `decoder.Decoder`.

    Attributes:
      config: the architecture (`config.is_llama_family`).
      dtype: parameter and computation dtype (float32 or bfloat16). Attention
        softmax, RMSNorm statistics and the returned logits are float32 either way.
    """

    config: DecoderConfig
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(
        self,
        tokens_BxT: jax.Array,
        cache: KVCache,
        num_new_B: jax.Array | None = None,
        tree: TreeAttention | None = None,
    ):
        """Runs T new tokens per row through the model; see `decoder.Decoder.__call__` (`tree` too).

        Returns:
          logits_BxTxV: float32 [B, T, V], next-token logits at each new position.
          cache: the cache with the new keys/values written and lengths advanced.
        """
        cfg = self.config
        _, length = tokens_BxT.shape
        start_B = cache.lengths
        # Query (b, t) sees slot j iff j <= its position (and, with a sliding
        # window W, the key's position > position - W); a tree query sees the
        # prefix and its ancestors. Slots past it (stale after a rollback, or
        # padding) are masked.
        positions_BxT, mask_Bx1xTxS = positions_and_mask(start_B, length, cache.max_length, tree, cfg.sliding_window)

        embed = nn.Embed(
            cfg.vocab_size, cfg.hidden_size, dtype=self.dtype, param_dtype=self.dtype, embedding_init=INIT, name="embed"
        )
        h = embed(tokens_BxT)
        cos, sin = rotary_tables(cfg, positions_BxT, self.dtype)

        blocks = nn.scan(
            LlamaBlock,
            variable_axes={"params": 0},
            split_rngs={"params": True},
            in_axes=(0, nn.broadcast),
            length=cfg.num_layers,
            # Nothing is broadcast out of the block, so flax's extra trace of the body (its
            # check that broadcast values stay loop-invariant) only doubles the layer's tracing.
            check_constancy_invariants=False,
        )(cfg, self.dtype, name="blocks")
        layers = jnp.arange(cfg.num_layers, dtype=jnp.int32)
        (h, keys, values), _ = blocks((h, cache.keys, cache.values), layers, (mask_Bx1xTxS, start_B, cos, sin))

        h = RMSNorm(cfg.layer_norm_eps, self.dtype, name="ln_final")(h)
        logits = lm_logits(h, embed, cfg.tie_word_embeddings, cfg.vocab_size, self.dtype)

        grown = length if num_new_B is None else num_new_B.astype(jnp.int32)
        return logits.astype(jnp.float32), KVCache(keys, values, start_B + grown)
