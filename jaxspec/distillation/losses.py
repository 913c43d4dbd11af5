"""The distillation loss: a divergence between the target's and the draft's processed distributions.

Small pure functions over log-probabilities; `distill_loss` applies them to
the positions a target generated (prompt positions never count).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxspec.models.model import Model
from jaxspec.sampling.processing import SamplingConfig, processed_logprobs
from jaxspec.training.trainer import next_token_logits

DIVERGENCES = ("fkl", "rkl", "tv")


def pointwise_divergence(p_logprobs: jax.Array, q_logprobs: jax.Array, kind: str) -> jax.Array:
    """D(p, q) over the last (vocabulary) axis.

    Args:
      p_logprobs: float [..., V] target log-probabilities (-inf allowed where p = 0).
      q_logprobs: float [..., V] draft log-probabilities, same shape.
      kind: "fkl" (KL(p||q)), "rkl" (KL(q||p)) or "tv" (0.5 * sum |p - q|).

    Returns:
      float32 [...].

    >>> import numpy as np
    >>> p, q = np.log([[0.5, 0.5]]), np.log([[0.75, 0.25]])
    >>> float(pointwise_divergence(p, q, "tv")[0])
    0.25
    """
    p_lp = jnp.asarray(p_logprobs, jnp.float32)
    q_lp = jnp.asarray(q_logprobs, jnp.float32)
    if kind == "tv":
        return 0.5 * jnp.sum(jnp.abs(jnp.exp(p_lp) - jnp.exp(q_lp)), axis=-1)
    if kind == "rkl":
        p_lp, q_lp = q_lp, p_lp
    elif kind != "fkl":
        raise ValueError(f"unknown divergence {kind!r}; expected one of {', '.join(DIVERGENCES)}")
    # KL(a||b) = sum_v a (log a - log b), with 0 log 0 = 0. The inner where keeps -inf out of both
    # branches, so no NaN reaches the gradient where a = 0.
    support = p_lp > -jnp.inf
    diff = jnp.where(support, p_lp - jnp.where(support, q_lp, 0.0), 0.0)
    return jnp.sum(jnp.where(support, jnp.exp(p_lp) * diff, 0.0), axis=-1)


def divergence(p_logprobs: jax.Array, q_logprobs: jax.Array, kind: str, mask: jax.Array | None = None) -> jax.Array:
    """Mean of `pointwise_divergence` over the positions where `mask` is true.

    Args:
      p_logprobs, q_logprobs: float [..., V].
      kind: "fkl", "rkl" or "tv".
      mask: bool [...] positions to average over (all when None).

    Returns:
      float32 scalar (0 when the mask is empty).
    """
    d = pointwise_divergence(p_logprobs, q_logprobs, kind)
    if mask is None:
        return jnp.mean(d)
    mask = jnp.asarray(mask, jnp.float32)
    return jnp.sum(d * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def sequence_logprobs(model: Model, tokens_BxL: jax.Array, prompt_len: int, config: SamplingConfig) -> jax.Array:
    """Processed log-probabilities of every token after the prompt, given its prefix.

    One full forward over tokens[:, :-1] with a fresh cache sized to it
    (`jaxspec.training.next_token_logits`, as the training loss); the outputs
    at positions prompt_len - 1 .. L - 2 are the distributions the generated
    tokens L - G .. L - 1 were (or would be) drawn from.

    Returns:
      float32 [B, L - prompt_len, V].
    """
    logits_BxTxV = next_token_logits(model, tokens_BxL)
    return processed_logprobs(logits_BxTxV[:, prompt_len - 1 :], config)


def distill_loss(
    params,
    draft: Model,
    tokens_BxL: jax.Array,
    p_logprobs_BxGxV: jax.Array,
    mask_BxG: jax.Array,
    *,
    prompt_len: int,
    config: SamplingConfig,
    kind: str,
) -> jax.Array:
    """Mean divergence between the frozen target's p and the draft's q over generated positions.

    Args:
      params: the draft's params (differentiated).
      draft: the draft `Model` (its own params are ignored).
      tokens_BxL: int32 prompt (prompt_len tokens) + generation (G tokens) per row.
      p_logprobs_BxGxV: the target's `sequence_logprobs` for these tokens (same config).
      mask_BxG: true at generated tokens that count (false at padding after a row's end).
      prompt_len: static prompt length; prompt positions are never in the loss.
      config: the processing of both p and q (what the draft will sample from).
      kind: "fkl", "rkl" or "tv".
    """
    q_logprobs_BxGxV = sequence_logprobs(draft.replace(params=params), tokens_BxL, prompt_len, config)
    return divergence(jax.lax.stop_gradient(p_logprobs_BxGxV), q_logprobs_BxGxV, kind, mask_BxG)
