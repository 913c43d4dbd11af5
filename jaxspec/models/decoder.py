"""One Flax decoder for GPT-2 and OPT, written for KV-cached, per-row decoding.

The blocks are `nn.scan`-ned over layers (params stacked along a leading
layer axis), so compile time does not grow with depth and there is no Python
loop over layers at run time. Every call takes T new tokens per row; the same
code serves prefill (T = prompt length), decoding (T = 1) and verification of
K drafts (T = K + 1). See `cache.py` for the cache layout and padding
convention.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxspec.models.cache import KVCache
from jaxspec.models.config import DecoderConfig
from jaxspec.models.layers import ACTIVATIONS, INIT, Dense, attend, layer_cache, lm_logits, write_layer_rows
from jaxspec.models.tree_attention import TreeAttention, positions_and_mask


class Block(nn.Module):
    """One transformer block; `nn.scan` turns it into the whole stack."""

    config: DecoderConfig
    dtype: jnp.dtype = jnp.float32

    def _layer_norm(self, name: str) -> nn.LayerNorm:
        cfg = self.config
        return nn.LayerNorm(
            epsilon=cfg.layer_norm_eps,
            use_scale=cfg.layer_norm_affine,
            use_bias=cfg.layer_norm_affine,
            dtype=self.dtype,
            param_dtype=self.dtype,
            name=name,
        )

    def _dense(self, features: int, name: str) -> Dense:
        return Dense(
            features,
            use_bias=self.config.use_bias,
            dtype=self.dtype,
            param_dtype=self.dtype,
            kernel_init=INIT,
            name=name,
        )

    @nn.compact
    def __call__(self, carry, layer, attn_inputs):
        """Args:
          carry: (h_BxTxD, keys, values): the residual stream of the new tokens
            and every layer's cache, each [L, B, S, H, Dh].
          layer: int32 scalar, this block's index into the cache.
          attn_inputs: (mask_Bx1xTxS bool, start_B int32) shared by all layers.

        Returns:
          ((h_BxTxD, keys, values), None) with this call's keys/values written at `layer`.
        """
        cfg = self.config
        mask_Bx1xTxS, start_B = attn_inputs
        h_BxTxD, keys, values = carry
        batch, length, _ = h_BxTxD.shape

        residual = h_BxTxD
        x = self._layer_norm("ln_attn")(h_BxTxD) if cfg.pre_layer_norm else h_BxTxD
        # The fused kernel is head-major (see `hf_params`): a contiguous shard
        # of its 3D outputs holds whole heads of q, k and v.
        qkv_BxTxHx3xD = self._dense(3 * cfg.hidden_size, "qkv")(x).reshape(batch, length, cfg.num_heads, 3, -1)
        q_BxTxHxD, k_BxTxHxD, v_BxTxHxD = (qkv_BxTxHx3xD[:, :, :, i] for i in range(3))
        keys = write_layer_rows(keys, layer, k_BxTxHxD, start_B)
        values = write_layer_rows(values, layer, v_BxTxHxD, start_B)
        attn_BxTxHxD = attend(q_BxTxHxD, layer_cache(keys, layer), layer_cache(values, layer), mask_Bx1xTxS, self.dtype)
        attn = self._dense(cfg.hidden_size, "attn_out")(attn_BxTxHxD.reshape(batch, length, -1))
        h = residual + attn
        if not cfg.pre_layer_norm:
            h = self._layer_norm("ln_attn")(h)

        residual = h
        x = self._layer_norm("ln_mlp")(h) if cfg.pre_layer_norm else h
        x = ACTIVATIONS[cfg.activation](self._dense(cfg.ffn_size, "fc_in")(x))
        h = residual + self._dense(cfg.hidden_size, "fc_out")(x)
        if not cfg.pre_layer_norm:
            h = self._layer_norm("ln_mlp")(h)
        return (h, keys, values), None


class Decoder(nn.Module):
    """GPT-2 / OPT decoder with an explicit KV cache.

    Attributes:
      config: the architecture.
      dtype: parameter and computation dtype (float32 or bfloat16). Attention
        softmax and the returned logits are float32 either way.
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
        """Runs T new tokens per row through the model.

        Args:
          tokens_BxT: int32 [B, T] token ids; row b's tokens take positions
            cache.lengths[b] .. cache.lengths[b] + T - 1.
          cache: the KV cache; must have room for cache.lengths + T slots.
          num_new_B: optional int32 [B], how many of the T tokens of each row are
            real (right padding); the cache length grows by this. Default T.
          tree: optional `TreeAttention` of T nodes: the tokens are a token tree
            (node t at position cache.lengths + depth[t], seeing the prefix and
            its ancestors only); see `tree_attention.py`.

        Returns:
          logits_BxTxV: float32 [B, T, V], next-token logits at each new position.
          cache: the cache with the new keys/values written and lengths advanced.
        """
        cfg = self.config
        _, length = tokens_BxT.shape
        start_B = cache.lengths
        # Query (b, t) sees slot j iff j <= its position (a chain: earlier tokens
        # and itself), or the prefix and its ancestors (a tree). Slots past it
        # (stale after a rollback, or padding) are masked.
        positions_BxT, mask_Bx1xTxS = positions_and_mask(start_B, length, cache.max_length, tree)

        embed = nn.Embed(
            cfg.vocab_size,
            cfg.embed_size,
            dtype=self.dtype,
            param_dtype=self.dtype,
            embedding_init=INIT,
            name="embed",
        )
        h = embed(tokens_BxT)
        if cfg.embed_size != cfg.hidden_size:
            h = Dense(
                cfg.hidden_size,
                use_bias=False,
                dtype=self.dtype,
                param_dtype=self.dtype,
                kernel_init=INIT,
                name="project_in",
            )(h)
        pos_embed = nn.Embed(
            cfg.max_positions + cfg.position_offset,
            cfg.hidden_size,
            dtype=self.dtype,
            param_dtype=self.dtype,
            embedding_init=INIT,
            name="pos_embed",
        )
        h = h + pos_embed(positions_BxT + cfg.position_offset)

        blocks = nn.scan(
            Block,
            variable_axes={"params": 0},
            split_rngs={"params": True},
            in_axes=(0, nn.broadcast),
            length=cfg.num_layers,
            # Nothing is broadcast out of the block, so flax's extra trace of the body (its
            # check that broadcast values stay loop-invariant) only doubles the layer's tracing.
            check_constancy_invariants=False,
        )(cfg, self.dtype, name="blocks")
        layers = jnp.arange(cfg.num_layers, dtype=jnp.int32)
        (h, keys, values), _ = blocks((h, cache.keys, cache.values), layers, (mask_Bx1xTxS, start_B))

        if cfg.final_layer_norm:
            h = nn.LayerNorm(
                epsilon=cfg.layer_norm_eps,
                use_scale=cfg.layer_norm_affine,
                use_bias=cfg.layer_norm_affine,
                dtype=self.dtype,
                param_dtype=self.dtype,
                name="ln_final",
            )(h)
        if cfg.embed_size != cfg.hidden_size:
            h = Dense(
                cfg.embed_size,
                use_bias=False,
                dtype=self.dtype,
                param_dtype=self.dtype,
                kernel_init=INIT,
                name="project_out",
            )(h)
        logits = lm_logits(h, embed, cfg.tie_word_embeddings, cfg.vocab_size, self.dtype)

        grown = length if num_new_B is None else num_new_B.astype(jnp.int32)
        return logits.astype(jnp.float32), KVCache(keys, values, start_B + grown)
