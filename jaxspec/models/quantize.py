"""int8 weight-only quantization of a `Model`'s matmul kernels.

Each Dense kernel ``w`` [..., in, out] (layer-stacked kernels keep their
leading layer axis) becomes a `QuantizedKernel`: int8 ``values`` and one
float32 ``scale`` per output channel, symmetric absmax / 127, so that
``w ~= values * scale`` with an error of at most ``scale / 2`` per entry.
Embeddings (including a tied LM head, which *is* the token embedding),
LayerNorms and biases stay in the model's float dtype.

The matmul is done as ``(x @ values.astype(dtype)) * scale``: for a scale per
output channel this is the same algebra as ``x @ (values * scale)``, but the
multiply touches the [B, T, out] activations instead of the [in, out] weights,
and the only weight-sized op left is the int8 -> float convert feeding the dot.
`QuantizedKernel` is a registered pytree, so a quantized `Model` is still a
pytree that `jax.jit` takes as an argument, and the decoder's `Dense` layers
(see `layers.Dense`) dispatch on it inside the traced computation.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import flax.struct
import jax
import jax.numpy as jnp

if TYPE_CHECKING:
    from jaxspec.models.model import Model

QUANTIZE_MODES = ("int8",)

# By default every kernel is quantized: each kernel of a real GPT-2 / OPT
# checkpoint is at least 512 x 512, so a threshold would change nothing there,
# and on tiny test models it would silently quantize nothing. `min_size` lets a
# caller keep small kernels (e.g. OPT's project_in / project_out) in float.
DEFAULT_MIN_SIZE = 0


@flax.struct.dataclass
class QuantizedKernel:
    """An int8 Dense kernel with per-output-channel scales.

    Attributes:
      values: int8 [..., in, out], in [-127, 127].
      scale: float32 [..., out]; the kernel is ``values * scale[..., None, :]``.
    """

    values: jax.Array
    scale: jax.Array

    @property
    def shape(self) -> tuple[int, ...]:
        return self.values.shape

    def dequantize(self, dtype=jnp.float32) -> jax.Array:
        """The float kernel [..., in, out] these values approximate."""
        return (self.values.astype(jnp.float32) * self.scale[..., None, :]).astype(dtype)


def quantize_kernel(kernel: jax.Array) -> QuantizedKernel:
    """Symmetric absmax int8 quantization of `kernel` [..., in, out] per output channel.

    An all-zero channel gets scale 1 (its values are 0), so no scale is 0.
    """
    w = jnp.asarray(kernel, jnp.float32)
    absmax_out = jnp.max(jnp.abs(w), axis=-2)
    scale_out = jnp.where(absmax_out > 0, absmax_out / 127.0, 1.0)
    values = jnp.clip(jnp.round(w / scale_out[..., None, :]), -127, 127).astype(jnp.int8)
    return QuantizedKernel(values=values, scale=scale_out)


# Kernel by kernel, so no full-model float copy is ever made.
_quantize_kernel_jit = jax.jit(quantize_kernel)


def quantized_matmul(x_BxTxI: jax.Array, kernel: QuantizedKernel, dtype) -> jax.Array:
    """``x @ dequantize(kernel)`` computed as ``(x @ values) * scale``, in `dtype`.

    The dot accumulates in float32 and the scale is applied in float32 before
    the cast, so a bfloat16 model rounds once, as an unquantized one does.
    """
    x = jnp.asarray(x_BxTxI, dtype)
    y = jax.lax.dot_general(
        x,
        kernel.values.astype(dtype),
        (((x.ndim - 1,), (0,)), ((), ())),
        preferred_element_type=jnp.float32,
    )
    return (y * kernel.scale).astype(dtype)


def _map_kernels(params: Any, fn) -> Any:
    """Applies `fn` to every Dense kernel (a ``"kernel"`` entry) of a params tree."""
    if isinstance(params, dict) or hasattr(params, "items"):
        return {k: (fn(v) if k == "kernel" else _map_kernels(v, fn)) for k, v in params.items()}
    return params


def quantize_model(model: Model, *, mode: str = "int8", min_size: int = DEFAULT_MIN_SIZE) -> Model:
    """A copy of `model` whose matmul kernels are int8 with per-channel scales.

    Quantized: attention qkv (Llama family: q, k, v) and output projections,
    MLP in/out (and gate), OPT's project_in/out and an untied ``lm_head``. Kept float: embeddings (a tied LM
    head multiplies by the token embedding, so it stays float too),
    LayerNorms, biases. The compute dtype stays `model.dtype`.

    Args:
      model: a float `Model` (float32 or bfloat16 params).
      mode: only ``"int8"``.
      min_size: kernels with fewer than this many elements per layer
        (in * out) stay float; 0 quantizes every kernel.

    Raises:
      ValueError: an unknown `mode`, or `model` is already quantized.
    """
    if mode not in QUANTIZE_MODES:
        raise ValueError(f"quantize mode {mode!r} is not supported; allowed: {', '.join(QUANTIZE_MODES)}.")
    if is_quantized(model):
        raise ValueError("model is already quantized.")

    def quantize(kernel):
        in_features, out_features = kernel.shape[-2:]
        return _quantize_kernel_jit(kernel) if in_features * out_features >= min_size else kernel

    return model.replace(params=_map_kernels(model.params, quantize))


def dequantize_model(model: Model) -> Model:
    """The float model (in `model.dtype`) that a quantized model computes with."""
    unpack = lambda k: k.dequantize(model.dtype) if isinstance(k, QuantizedKernel) else k  # noqa: E731
    return model.replace(params=_map_kernels(model.params, unpack))


def is_quantized(model: Model) -> bool:
    """Whether any kernel of `model` is a `QuantizedKernel`."""
    leaves = jax.tree.leaves(model.params, is_leaf=lambda x: isinstance(x, QuantizedKernel))
    return any(isinstance(x, QuantizedKernel) for x in leaves)
