"""One Flax decoder for GPT-2 and OPT, written for KV-cached, per-row decoding.

The blocks are `nn.scan`-ned over layers (params stacked along a leading
layer axis), so compile time does not grow with depth and there is no Python
loop over layers at run time. Every call takes T new tokens per row; the same
code serves prefill (T = prompt length), decoding (T = 1) and verification of
K drafts (T = K + 1). See `cache.py` for the cache layout and padding
convention.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxspec.models.cache import KVCache
from jaxspec.models.config import DecoderConfig
from jaxspec.models.quantize import QuantizedKernel, quantized_matmul

_ACTIVATIONS = {
    "gelu_tanh": functools.partial(jax.nn.gelu, approximate=True),
    "gelu": functools.partial(jax.nn.gelu, approximate=False),
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
}

# Hugging Face initialises every projection and embedding with N(0, 0.02).
_INIT = nn.initializers.normal(stddev=0.02)


def _write_rows(cache_BxSxHxD: jax.Array, new_BxTxHxD: jax.Array, start_B: jax.Array) -> jax.Array:
    """Writes each row's T new entries at its own start slot."""

    def write_row(cache_SxHxD, new_TxHxD, start):
        return jax.lax.dynamic_update_slice(cache_SxHxD, new_TxHxD, (start, 0, 0))

    return jax.vmap(write_row)(cache_BxSxHxD, new_BxTxHxD.astype(cache_BxSxHxD.dtype), start_B)


class Dense(nn.Dense):
    """`nn.Dense` that also takes an int8 `QuantizedKernel` as its kernel.

    With a float kernel it is `nn.Dense` itself (bit-identical). With a
    quantized one it computes ``(x @ values) * scale + bias`` in the traced
    computation, so the int8 -> float convert sits right at the dot.
    """

    @nn.compact
    def __call__(self, inputs: jax.Array) -> jax.Array:
        kernel = self.get_variable("params", "kernel") if self.has_variable("params", "kernel") else None
        if not isinstance(kernel, QuantizedKernel):
            return super().__call__(inputs)
        dtype = self.dtype or inputs.dtype
        y = quantized_matmul(inputs, kernel, dtype)
        if self.use_bias:
            bias = self.param("bias", self.bias_init, (self.features,), self.param_dtype)
            y += jnp.reshape(bias.astype(dtype), (1,) * (y.ndim - 1) + (-1,))
        return y


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
            kernel_init=_INIT,
            name=name,
        )

    @nn.compact
    def __call__(self, h_BxTxD, kv, attn_inputs):
        """Args:
          h_BxTxD: residual stream of the new tokens.
          kv: (keys, values) of this layer, each [B, S, H, Dh].
          attn_inputs: (mask_Bx1xTxS bool, start_B int32) shared by all layers.

        Returns:
          (h_BxTxD, (keys, values)) with this call's keys/values written.
        """
        cfg = self.config
        mask_Bx1xTxS, start_B = attn_inputs
        k_cache, v_cache = kv
        batch, length, _ = h_BxTxD.shape

        residual = h_BxTxD
        x = self._layer_norm("ln_attn")(h_BxTxD) if cfg.pre_layer_norm else h_BxTxD
        # The fused kernel is head-major (see `hf_params`): a contiguous shard
        # of its 3D outputs holds whole heads of q, k and v.
        qkv_BxTxHx3xD = self._dense(3 * cfg.hidden_size, "qkv")(x).reshape(batch, length, cfg.num_heads, 3, -1)
        q_BxTxHxD, k_BxTxHxD, v_BxTxHxD = (qkv_BxTxHx3xD[:, :, :, i] for i in range(3))
        k_cache = _write_rows(k_cache, k_BxTxHxD, start_B)
        v_cache = _write_rows(v_cache, v_BxTxHxD, start_B)

        # Scores and softmax in float32 whatever the model dtype: bf16 logits
        # over long contexts lose too much precision.
        scores_BxHxTxS = jnp.einsum("bthd,bshd->bhts", q_BxTxHxD, k_cache, preferred_element_type=jnp.float32) * (
            cfg.head_dim**-0.5
        )
        scores_BxHxTxS = jnp.where(mask_Bx1xTxS, scores_BxHxTxS, jnp.finfo(jnp.float32).min)
        probs_BxHxTxS = jax.nn.softmax(scores_BxHxTxS, axis=-1).astype(self.dtype)
        # A masked slot gets probability 0, but 0 * NaN = NaN: a non-finite value
        # in a slot a query must not see (padding of a ragged batch, a stale
        # slot, a later token of this chunk) would still reach it. Such values
        # are zeroed; a non-finite entry a query does see still propagates,
        # through its key (a NaN score makes the row's softmax NaN).
        values_BxSxHxD = jnp.where(jnp.isfinite(v_cache), v_cache, 0)
        attn_BxTxHxD = jnp.einsum("bhts,bshd->bthd", probs_BxHxTxS, values_BxSxHxD)
        attn = self._dense(cfg.hidden_size, "attn_out")(attn_BxTxHxD.reshape(batch, length, -1))
        h = residual + attn
        if not cfg.pre_layer_norm:
            h = self._layer_norm("ln_attn")(h)

        residual = h
        x = self._layer_norm("ln_mlp")(h) if cfg.pre_layer_norm else h
        x = _ACTIVATIONS[cfg.activation](self._dense(cfg.ffn_size, "fc_in")(x))
        h = residual + self._dense(cfg.hidden_size, "fc_out")(x)
        if not cfg.pre_layer_norm:
            h = self._layer_norm("ln_mlp")(h)
        return h, (k_cache, v_cache)


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
    def __call__(self, tokens_BxT: jax.Array, cache: KVCache, num_new_B: jax.Array | None = None):
        """Runs T new tokens per row through the model.

        Args:
          tokens_BxT: int32 [B, T] token ids; row b's tokens take positions
            cache.lengths[b] .. cache.lengths[b] + T - 1.
          cache: the KV cache; must have room for cache.lengths + T slots.
          num_new_B: optional int32 [B], how many of the T tokens of each row are
            real (right padding); the cache length grows by this. Default T.

        Returns:
          logits_BxTxV: float32 [B, T, V], next-token logits at each new position.
          cache: the cache with the new keys/values written and lengths advanced.
        """
        cfg = self.config
        _, length = tokens_BxT.shape
        start_B = cache.lengths
        positions_BxT = start_B[:, None] + jnp.arange(length, dtype=jnp.int32)[None, :]

        embed = nn.Embed(
            cfg.vocab_size,
            cfg.embed_size,
            dtype=self.dtype,
            param_dtype=self.dtype,
            embedding_init=_INIT,
            name="embed",
        )
        h = embed(tokens_BxT)
        if cfg.embed_size != cfg.hidden_size:
            h = Dense(
                cfg.hidden_size,
                use_bias=False,
                dtype=self.dtype,
                param_dtype=self.dtype,
                kernel_init=_INIT,
                name="project_in",
            )(h)
        pos_embed = nn.Embed(
            cfg.max_positions + cfg.position_offset,
            cfg.hidden_size,
            dtype=self.dtype,
            param_dtype=self.dtype,
            embedding_init=_INIT,
            name="pos_embed",
        )
        h = h + pos_embed(positions_BxT + cfg.position_offset)

        # Query (b, t) sees slot j iff j <= its position: earlier tokens and
        # itself. Slots past it (stale after a rollback, or padding) are masked.
        slots_S = jnp.arange(cache.max_length, dtype=jnp.int32)
        mask_Bx1xTxS = (slots_S[None, None, :] <= positions_BxT[:, :, None])[:, None]

        blocks = nn.scan(
            Block,
            variable_axes={"params": 0},
            split_rngs={"params": True},
            in_axes=(0, nn.broadcast),
            length=cfg.num_layers,
        )(cfg, self.dtype, name="blocks")
        h, (keys, values) = blocks(h, (cache.keys, cache.values), (mask_Bx1xTxS, start_B))

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
                kernel_init=_INIT,
                name="project_out",
            )(h)
        if cfg.tie_word_embeddings:
            logits = embed.attend(h)
        else:
            logits = Dense(
                cfg.vocab_size,
                use_bias=False,
                dtype=self.dtype,
                param_dtype=self.dtype,
                kernel_init=_INIT,
                name="lm_head",
            )(h)

        grown = length if num_new_B is None else num_new_B.astype(jnp.int32)
        return logits.astype(jnp.float32), KVCache(keys, values, start_B + grown)
