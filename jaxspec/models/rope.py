"""Rotary position embeddings (RoPE) as transformers computes them for the Llama family.

Inverse frequencies, for head dim Dh and base theta (``rope_theta``)::

    inv_freq[i] = 1 / theta ** (2i / Dh),   i = 0 .. Dh/2 - 1

then, by ``rope_type``:

- ``"default"``: unchanged.
- ``"linear"``: ``inv_freq / factor`` (position interpolation; the same as
  dividing positions by ``factor``).
- ``"llama3"`` (Llama 3.1+): with wavelength ``w = 2 pi / inv_freq``, the
  original context ``C`` and ``low = C / low_freq_factor``,
  ``high = C / high_freq_factor``: frequencies with ``w < high`` are kept,
  those with ``w > low`` divided by ``factor``, and those in between
  interpolated with ``s = (C / w - low_freq_factor) / (high_freq_factor -
  low_freq_factor)`` as ``(1 - s) * inv_freq / factor + s * inv_freq``.

All of it in float32, in transformers' order of operations (the frequencies
are a trace-time numpy constant). A token at position p rotates the pair
(x[j], x[j + Dh/2]) of each head by the angle ``p * inv_freq[j]``
(transformers' ``rotate_half`` layout, not interleaved pairs); cos and sin
are computed in float32 and cast to the model dtype before the rotation.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from jaxspec.models.config import DecoderConfig


def inverse_frequencies(config: DecoderConfig) -> np.ndarray:
    """float32 [Dh / 2]: the rotation speed of each pair of head dimensions."""
    dim = config.head_dim
    exponents = np.arange(0, dim, 2, dtype=np.int64).astype(np.float32) / np.float32(dim)
    inv_freq = np.float32(1.0) / (np.float32(config.rope_theta) ** exponents)
    scaling = dict(config.rope_scaling)
    rope_type = scaling.get("rope_type", "default")
    if rope_type == "linear":
        return (inv_freq / np.float32(scaling["factor"])).astype(np.float32)
    if rope_type == "llama3":
        factor = np.float32(scaling["factor"])
        low_factor, high_factor = scaling["low_freq_factor"], scaling["high_freq_factor"]
        context = scaling["original_max_position_embeddings"]
        low_wavelen, high_wavelen = context / low_factor, context / high_factor
        wavelen = np.float32(2 * math.pi) / inv_freq
        scaled = np.where(wavelen > low_wavelen, inv_freq / factor, inv_freq)
        smooth = (np.float32(context) / wavelen - np.float32(low_factor)) / np.float32(high_factor - low_factor)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
        return np.where(medium, smoothed, scaled).astype(np.float32)
    return inv_freq


def rotary_tables(config: DecoderConfig, positions_BxT: jax.Array, dtype) -> tuple[jax.Array, jax.Array]:
    """(cos, sin), each [B, T, 1, Dh] in `dtype`, for the given positions."""
    inv_freq = jnp.asarray(inverse_frequencies(config))
    freqs_BxTxF = positions_BxT.astype(jnp.float32)[..., None] * inv_freq
    angles_BxTxD = jnp.concatenate([freqs_BxTxF, freqs_BxTxF], axis=-1)
    return jnp.cos(angles_BxTxD)[:, :, None].astype(dtype), jnp.sin(angles_BxTxD)[:, :, None].astype(dtype)


def apply_rope(x_BxTxHxD: jax.Array, cos_BxTx1xD: jax.Array, sin_BxTx1xD: jax.Array) -> jax.Array:
    """Rotates each head of `x` by its position's angles (``rotate_half`` layout)."""
    half = x_BxTxHxD.shape[-1] // 2
    rotated = jnp.concatenate([-x_BxTxHxD[..., half:], x_BxTxHxD[..., :half]], axis=-1)
    return x_BxTxHxD * cos_BxTx1xD + rotated * sin_BxTx1xD
