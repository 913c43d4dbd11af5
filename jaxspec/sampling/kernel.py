"""Token-wise speculative accept/resample kernel (Leviathan et al.; Chen et al.).

For draft tokens x_0..x_{K-1}, drawn from q_0..q_{K-1}, and target
distributions p_0..p_K (p_K for the bonus token), draft token i is accepted
with probability min(1, p_i(x_i) / q_i(x_i)); at the first rejection n one
token is drawn from norm(max(0, p_n - q_n)); if all K are accepted the bonus
token is drawn from p_K. The emitted tokens are then distributed exactly as
plain sampling from the p_i, and a draft token is accepted with probability
sum_x min(p_i(x), q_i(x)) = 1 - TV(p_i, q_i).

Both p and q must be the *processed* distributions (`processing.processed_probs`)
and q must be exactly the array each draft token was drawn from: a greedy draft
has a one-hot q, not its softmax. Greedy verification falls out of the same
kernel: with one-hot p and q it accepts while draft == argmax p and emits the
argmax at the first mismatch.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxspec.sampling.processing import sample_from_probs

__all__ = [
    "VerifyResult",
    "acceptance_probability",
    "residual_distribution",
    "verify_tokenwise",
]


class VerifyResult(NamedTuple):
    """Outcome of one verification round for each batch row.

    Attributes:
      num_accepted: int32 [B], the number n of leading draft tokens accepted,
        in 0..K. The row emits draft_tokens[:n] followed by next_token.
      next_token: int32 [B], a sample of norm(max(0, p_n - q_n)) if n < K,
        else the bonus sample from p_K.
    """

    num_accepted: jax.Array
    next_token: jax.Array


def _probs_at(probs: jax.Array, tokens: jax.Array) -> jax.Array:
    """probs [..., V] float, tokens [...] int -> probs[..., tokens] as [...]."""
    return jnp.take_along_axis(probs, tokens[..., None], axis=-1)[..., 0]


def acceptance_probability(p: jax.Array, q: jax.Array, x: jax.Array) -> jax.Array:
    """Probability that the kernel accepts draft token x: min(1, p(x) / q(x)).

    This is the exact probability of the kernel's event u * q(x) < p(x) with
    u ~ U[0, 1). For q(x) == 0 (a token the draft cannot have drawn) that event
    is p(x) > 0, so the value is 1 if p(x) > 0 else 0.

    Args:
      p: float [..., V] target probabilities.
      q: float [..., V] draft probabilities (what x was drawn from).
      x: int [...] draft tokens.

    Returns:
      float32 [...] acceptance probabilities in [0, 1].
    """
    px = _probs_at(jnp.asarray(p, jnp.float32), x)
    qx = _probs_at(jnp.asarray(q, jnp.float32), x)
    # Guard the division so the unused branch never produces inf / NaN.
    ratio = px / jnp.where(qx > 0, qx, 1.0)
    return jnp.where(qx > 0, jnp.minimum(1.0, ratio), (px > 0).astype(jnp.float32))


def residual_distribution(p: jax.Array, q: jax.Array) -> jax.Array:
    """norm(max(0, p - q)), the distribution to resample from after a rejection.

    When the residual mass is exactly 0 (p <= q everywhere, i.e. p == q up to
    rounding) the result falls back to p. A rejection then has probability
    ~0 anyway, and p keeps the output a valid distribution over p's support.

    Args:
      p: float [..., V] target probabilities.
      q: float [..., V] draft probabilities; an all-zero q gives norm(p).

    Returns:
      float32 [..., V], non-negative, each row summing to 1 (up to rounding).
    """
    p = jnp.asarray(p, jnp.float32)
    q = jnp.asarray(q, jnp.float32)
    residual = jnp.maximum(p - q, 0.0)
    mass = jnp.sum(residual, axis=-1, keepdims=True)
    weights = jnp.where(mass > 0, residual, p)
    return weights / jnp.sum(weights, axis=-1, keepdims=True)


def _check_shapes(draft_tokens, draft_probs, target_probs) -> None:
    # Shapes are static under jit, so these checks cost nothing at run time.
    if draft_tokens.ndim != 2:
        raise ValueError(f"draft_tokens must be [B, K], got shape {draft_tokens.shape}.")
    b, k = draft_tokens.shape
    if k < 1:
        raise ValueError(f"need at least one draft token (K >= 1), got K = {k}.")
    if draft_probs.ndim != 3 or draft_probs.shape[:2] != (b, k):
        raise ValueError(f"draft_probs must be [B, K, V] = [{b}, {k}, V], got shape {draft_probs.shape}.")
    v = draft_probs.shape[-1]
    if target_probs.shape != (b, k + 1, v):
        raise ValueError(
            f"target_probs must be [B, K + 1, V] = [{b}, {k + 1}, {v}] (one extra "
            f"position for the bonus token), got shape {target_probs.shape}."
        )
    if not jnp.issubdtype(draft_tokens.dtype, jnp.integer):
        raise ValueError(f"draft_tokens must be an integer array, got dtype {draft_tokens.dtype}.")


def verify_tokenwise(
    key: jax.Array,
    draft_tokens: jax.Array,
    draft_probs: jax.Array,
    target_probs: jax.Array,
) -> VerifyResult:
    """Token-wise speculative verification of K draft tokens for B rows at once.

    Args:
      key: a PRNG key, consumed here.
      draft_tokens: int [B, K] draft tokens x_0..x_{K-1}.
      draft_probs: float32 [B, K, V]; q_i, exactly what x_i was drawn from.
      target_probs: float32 [B, K + 1, V]; p_i, the processed target
        distribution for draft position i (p[:, K] is for the bonus token).

    Returns:
      A `VerifyResult` of int32 [B] arrays. With context-free or causally
      computed p_i, the emitted tokens draft_tokens[:n] + [next_token] have
      exactly the distribution of sampling from the p_i one token at a time.
    """
    draft_tokens = jnp.asarray(draft_tokens)
    draft_probs = jnp.asarray(draft_probs, jnp.float32)
    target_probs = jnp.asarray(target_probs, jnp.float32)
    _check_shapes(draft_tokens, draft_probs, target_probs)
    b, k = draft_tokens.shape
    draft_tokens = draft_tokens.astype(jnp.int32)
    key_accept, key_next = jax.random.split(key)

    # Accept x_i iff u_i * q_i(x_i) < p_i(x_i): probability min(1, p/q) with no
    # division, and a q_i(x_i) == 0 token is accepted iff p_i(x_i) > 0.
    p_x_BxK = _probs_at(target_probs[:, :k], draft_tokens)
    q_x_BxK = _probs_at(draft_probs, draft_tokens)
    # Flat draw + reshape: same values, faster compile (see sample_from_probs).
    u_BxK = jax.random.uniform(key_accept, (b * k,), jnp.float32).reshape(b, k)
    accept_BxK = u_BxK * q_x_BxK < p_x_BxK
    # Leading accepts: the cumulative product is 1 up to the first rejection.
    num_accepted_B = jnp.sum(jnp.cumprod(accept_BxK.astype(jnp.int32), axis=1), axis=1)

    # p_n, q_n at the stopping position. q has no row K; it is taken as zero
    # there, so the residual at n == K is p_K itself (the bonus distribution).
    # Masking a clamped gather avoids materialising a zero-padded [B, K+1, V].
    p_n_BxV = jnp.take_along_axis(target_probs, num_accepted_B[:, None, None], axis=1)[:, 0]
    q_n_BxV = jnp.take_along_axis(draft_probs, jnp.minimum(num_accepted_B, k - 1)[:, None, None], axis=1)[:, 0]
    q_n_BxV = jnp.where((num_accepted_B < k)[:, None], q_n_BxV, 0.0)
    next_token_B = sample_from_probs(key_next, residual_distribution(p_n_BxV, q_n_BxV))
    return VerifyResult(num_accepted=num_accepted_B.astype(jnp.int32), next_token=next_token_B)
