"""Pieces both decoders share: the int8-aware `Dense`, per-row cache writes, cached attention."""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxspec.models.quantize import QuantizedKernel, quantized_matmul

ACTIVATIONS = {
    "gelu_tanh": functools.partial(jax.nn.gelu, approximate=True),
    "gelu": functools.partial(jax.nn.gelu, approximate=False),
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
}

# Hugging Face initialises every projection and embedding with N(0, 0.02).
INIT = nn.initializers.normal(stddev=0.02)


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


def layer_cache(cache_LxBxSxHxD: jax.Array, layer: jax.Array) -> jax.Array:
    """The [B, S, H, Dh] keys (or values) of layer `layer` (an int32 scalar, traced inside the layer scan)."""
    return jax.lax.dynamic_index_in_dim(cache_LxBxSxHxD, layer, axis=0, keepdims=False)


def write_layer_rows(
    cache_LxBxSxHxD: jax.Array, layer: jax.Array, new_BxTxHxD: jax.Array, start_B: jax.Array
) -> jax.Array:
    """Writes layer `layer`'s T new entries of each row at the row's start slot; returns the whole cache.

    The layer scan carries the stacked [L, B, S, H, Dh] cache and writes only
    the new slots, which XLA does in place. (Scanning over the cache as input
    and stacking it again as output instead costs a zero-filled output buffer
    and full copies of every layer's keys and values on every call: time that
    grows with the cache's size, not with the tokens written.)
    """
    batch, length = new_BxTxHxD.shape[:2]
    rows_Bx1 = jnp.arange(batch)[:, None]
    slots_BxT = start_B[:, None] + jnp.arange(length)[None, :]
    return cache_LxBxSxHxD.at[layer, rows_Bx1, slots_BxT].set(new_BxTxHxD.astype(cache_LxBxSxHxD.dtype), mode="drop")


def attend(
    q_BxTxHxD: jax.Array,
    k_cache_BxSxKxD: jax.Array,
    v_cache_BxSxKxD: jax.Array,
    mask_Bx1xTxS: jax.Array,
    dtype,
) -> jax.Array:
    """Scaled dot-product attention of T queries over the S cache slots.

    Grouped-query: the H query heads form K groups of H / K consecutive heads,
    group k reading KV head k (as Hugging Face's ``repeat_kv``); K = H is
    multi-head attention. The KV heads are never repeated in memory.

    Returns:
      attn_BxTxHxD in `dtype`.
    """
    batch, length, num_heads, head_dim = q_BxTxHxD.shape
    num_kv = k_cache_BxSxKxD.shape[2]
    q_BxTxKxGxD = q_BxTxHxD.reshape(batch, length, num_kv, num_heads // num_kv, head_dim)
    # Scores and softmax in float32 whatever the model dtype: bf16 logits
    # over long contexts lose too much precision.
    scores_BxKxGxTxS = jnp.einsum(
        "btkgd,bskd->bkgts", q_BxTxKxGxD, k_cache_BxSxKxD, preferred_element_type=jnp.float32
    ) * (head_dim**-0.5)
    scores_BxKxGxTxS = jnp.where(mask_Bx1xTxS[:, :, None], scores_BxKxGxTxS, jnp.finfo(jnp.float32).min)
    probs_BxKxGxTxS = jax.nn.softmax(scores_BxKxGxTxS, axis=-1).astype(dtype)
    # A masked slot gets probability 0, but 0 * NaN = NaN: a non-finite value
    # in a slot a query must not see (padding of a ragged batch, a stale
    # slot, a later token of this chunk) would still reach it. Such values
    # are zeroed; a non-finite entry a query does see still propagates,
    # through its key (a NaN score makes the row's softmax NaN).
    values_BxSxKxD = jnp.where(jnp.isfinite(v_cache_BxSxKxD), v_cache_BxSxKxD, 0)
    attn_BxTxKxGxD = jnp.einsum("bkgts,bskd->btkgd", probs_BxKxGxTxS, values_BxSxKxD)
    return attn_BxTxKxGxD.reshape(batch, length, num_heads, head_dim)


def lm_logits(h_BxTxE: jax.Array, embed: nn.Embed, tie_word_embeddings: bool, vocab_size: int, dtype) -> jax.Array:
    """Next-token logits [B, T, V] in `dtype`: the token embedding transposed (tied) or an ``lm_head``.

    Call it inside the decoder's compact ``__call__``: the untied head is
    created there as its submodule ``lm_head`` (the name HF params map to).
    """
    if tie_word_embeddings:
        return embed.attend(h_BxTxE)
    return Dense(vocab_size, use_bias=False, dtype=dtype, param_dtype=dtype, kernel_init=INIT, name="lm_head")(h_BxTxE)
