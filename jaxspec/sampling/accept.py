"""Accept: the rules that decide which drafts to keep, token-wise and block verification.

(This module was `jaxspec.sampling.kernel`; that name still imports, with a
DeprecationWarning.) `VERIFICATION_RULES` registers the chain rules by name:
the loops, the server and every script take their choices from it. Rules for
token *trees* are in `tree.py`.

Both kernels take draft tokens x_0..x_{K-1}, drawn from q_0..q_{K-1}, and the
target distributions p_0..p_K, where p_n is the target's distribution for the
token that follows the first n drafts (p_K for the bonus token). Both return
the number n of leading drafts kept and one more token, and both emit tokens
distributed exactly as plain sampling from the p_i.

Token-wise (Leviathan et al.; Chen et al.), `verify_tokenwise`: draft token i
is accepted with probability min(1, p_i(x_i) / q_i(x_i)); at the first
rejection n one token is drawn from norm(max(0, p_n - q_n)); if all K are
accepted the bonus token is drawn from p_K. A draft token is accepted with
probability sum_x min(p_i(x), q_i(x)) = 1 - TV(p_i, q_i).

Block (Sun et al. 2024, "Block Verification Accelerates Speculative Decoding",
Algorithm 2), `verify_block`: the drafts are judged as a block through the
running weight of each prefix,

    w_0 = 1,   w_n = min(1, w_{n-1} * p_{n-1}(x_{n-1}) / q_{n-1}(x_{n-1})),

the residual after n drafts, r_n = max(0, w_n p_n - q_n) with mass Z_n, and
the stop probabilities h_n = Z_n / (Z_n + 1 - w_n) for 1 <= n < K, h_K = w_K.
With independent uniforms eta_1..eta_K, n is the largest index with
eta_n < h_n (0 if none); the kernel emits x_0..x_{n-1} and then a draw from
norm(r_n) if n < K, else from p_K. For K = 1 this is the token-wise rule (and
the kernel's output is bit-identical to `verify_tokenwise`'s); for K > 1 it
keeps at least as many drafts in expectation over the drafts, and Sun et al.
prove it optimal in that sense among all valid verifiers. For one fixed block
of drafts it can keep fewer: the gain holds only in expectation.

Dynamic draft length: both kernels take an optional `num_drafts` [B], the
drafts each row actually proposed (1 <= num_drafts <= K; drafts past it are
ignored). A row that stops after m drafts is treated as a draft that proposed,
at position m and after, a virtual STOP token outside the vocabulary with
probability 1: q_i = one-hot(STOP) for i >= m, and p_i(STOP) = 0. That is an
ordinary autoregressive draft (its next-token law is a function of the prefix,
however the stopping rule decided), so both rules stay exact by their own
theorems, and no special case is needed: STOP is rejected surely (ratio 0,
weight 0 from then on), the residual max(0, w p_m - 0) is p_m itself (the bonus
token of a chain of m), and for block verification h_m = Z_m / (Z_m + 1 - w_m)
= w_m, the rule's last test for a chain of m. The kernels apply this as masks
(p_i(x_i) -> 0, q_i(x_i) -> 1, q_i -> 0 over the real vocabulary for i >= m).

Both p and q must be the *processed* distributions (`processing.processed_probs`)
and q must be exactly the array each draft token was drawn from: a greedy draft
has a one-hot q, not its softmax. Greedy verification falls out of both
kernels: with one-hot p and q they accept while draft == argmax p and emit the
argmax at the first mismatch.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxspec.sampling import draws
from jaxspec.sampling.processing import sample_from_probs
from jaxspec.tracers import jit_when_eager

__all__ = [
    "VERIFICATION_RULES",
    "VerifyResult",
    "acceptance_probability",
    "residual_distribution",
    "verify_block",
    "verify_tokenwise",
    "verification_rule",
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

    This is the probability the kernel's Bernoulli test is given (see
    `draws.bernoulli`, exact to float32 rounding of the ratio). For q(x) == 0
    (a token the draft cannot have drawn) the value is 1 if p(x) > 0 else 0.

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


def _ratio(p_x: jax.Array, q_x: jax.Array) -> jax.Array:
    """p / q, with q == 0 mapped to 1 (p > 0) or 0 (p == 0): the acceptance probability before clipping."""
    return jnp.where(q_x > 0, p_x / jnp.where(q_x > 0, q_x, 1.0), (p_x > 0).astype(jnp.float32))


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


def _checked_arrays(draft_tokens, draft_probs, target_probs) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(int32 tokens, float32 q, float32 p) after `_check_shapes`."""
    draft_tokens = jnp.asarray(draft_tokens)
    draft_probs = jnp.asarray(draft_probs, jnp.float32)
    target_probs = jnp.asarray(target_probs, jnp.float32)
    _check_shapes(draft_tokens, draft_probs, target_probs)
    return draft_tokens.astype(jnp.int32), draft_probs, target_probs


def _live_drafts(num_drafts, batch: int, k: int) -> jax.Array | None:
    """bool [B, K]: position i < num_drafts[b] (None when every row proposed all K)."""
    if num_drafts is None:
        return None
    num_drafts_B = jnp.broadcast_to(jnp.asarray(num_drafts, jnp.int32), (batch,))
    return jax.lax.broadcasted_iota(jnp.int32, (batch, k), 1) < num_drafts_B[:, None]


def _draft_and_target_at_drafts(draft_tokens, draft_probs, target_probs, live_BxK):
    """(q [B, K, V], p_i(x_i) [B, K], q_i(x_i) [B, K]) with positions past a row's num_drafts
    turned into the virtual STOP draft (module docstring): q_i -> 0 over the vocabulary,
    p_i(x_i) -> 0, q_i(x_i) -> 1."""
    k = draft_tokens.shape[1]
    p_x_BxK = _probs_at(target_probs[:, :k], draft_tokens)
    q_x_BxK = _probs_at(draft_probs, draft_tokens)
    if live_BxK is None:
        return draft_probs, p_x_BxK, q_x_BxK
    return (
        jnp.where(live_BxK[:, :, None], draft_probs, 0.0),
        jnp.where(live_BxK, p_x_BxK, 0.0),
        jnp.where(live_BxK, q_x_BxK, 1.0),
    )


@jit_when_eager
def verify_tokenwise(
    key: jax.Array,
    draft_tokens: jax.Array,
    draft_probs: jax.Array,
    target_probs: jax.Array,
    num_drafts: jax.Array | None = None,
) -> VerifyResult:
    """Token-wise speculative verification of K draft tokens for B rows at once.

    Example: one-hot p and q (greedy) keep the drafts while they equal the
    target's argmax, then emit the argmax:

    >>> import jax, jax.numpy as jnp
    >>> p = jax.nn.one_hot(jnp.array([[1, 2, 0]]), 4)  # target argmax 1, 2, then 0 (bonus)
    >>> drafts = jnp.array([[1, 3]])  # the first agrees, the second does not
    >>> res = verify_tokenwise(jax.random.key(0), drafts, jax.nn.one_hot(drafts, 4), p)
    >>> res.num_accepted.tolist(), res.next_token.tolist()
    ([1], [2])

    Args:
      key: a PRNG key, consumed here.
      draft_tokens: int [B, K] draft tokens x_0..x_{K-1}.
      draft_probs: float32 [B, K, V]; q_i, exactly what x_i was drawn from.
      target_probs: float32 [B, K + 1, V]; p_i, the processed target
        distribution for draft position i (p[:, K] is for the bonus token).
      num_drafts: optional int [B] in [1, K]: drafts each row proposed (dynamic
        draft length, module docstring); None means K for every row.

    Returns:
      A `VerifyResult` of int32 [B] arrays. With context-free or causally
      computed p_i, the emitted tokens draft_tokens[:n] + [next_token] have
      exactly the distribution of sampling from the p_i one token at a time.
    """
    draft_tokens, draft_probs, target_probs = _checked_arrays(draft_tokens, draft_probs, target_probs)
    b, k = draft_tokens.shape
    key_accept, key_next = jax.random.split(key)

    # Accept x_i with probability min(1, p_i(x_i) / q_i(x_i)); a q_i(x_i) == 0
    # token is accepted iff p_i(x_i) > 0. The test resolves ratios far below
    # float32's uniform grid (`draws.bernoulli`): a ratio of 1e-9 is not 0.
    draft_probs, p_x_BxK, q_x_BxK = _draft_and_target_at_drafts(
        draft_tokens, draft_probs, target_probs, _live_drafts(num_drafts, b, k)
    )
    accept_BxK = draws.bernoulli(key_accept, _ratio(p_x_BxK, q_x_BxK))
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


def _running_weights(p_x_BxK: jax.Array, q_x_BxK: jax.Array) -> jax.Array:
    """w_1..w_K of block verification, float32 [B, K], from p_i(x_i) and q_i(x_i).

    w_n = min(1, w_{n-1} p / q) is a clipped product, not cumprod(min(1, p / q)):
    a ratio above 1 can lift a weight that an earlier ratio pushed below 1. In
    log space it is w_n = exp(S_n - max_{m <= n} S_m) with S_n the sum of the
    first n log-ratios (a cummax), but float32 S_n - max S_m loses precision for
    large log-ratios and needs care at log 0 and log inf, so the weights come
    from a `lax.scan` over the (small, static) K axis of [B] vectors instead:
    one multiply and one guarded divide per step, rounded like the recursion.

    Edge cases, NaN-free (the quotient is kept only where w_{n-1} p(x) < q(x),
    so it is finite and <= 1), matching `acceptance_probability`:
    q(x) = 0 < w_{n-1} p(x) gives w_n = 1 (ratio +inf); w_{n-1} p(x) = 0 gives
    w_n = 0 whatever q(x) is, so w = 0 is absorbing (0 * inf := 0): a prefix
    holding a token the target cannot produce keeps weight 0, and block
    verification never emits it.
    """

    def step(w_prev_B, pq_x):
        p_x_B, q_x_B = pq_x
        mass_B = w_prev_B * p_x_B
        clipped_B = (mass_B >= q_x_B) & (mass_B > 0)
        w_B = jnp.where(clipped_B, 1.0, mass_B / jnp.where(q_x_B > 0, q_x_B, 1.0))
        return w_B, w_B

    w0_B = jnp.ones(p_x_BxK.shape[:1], jnp.float32)
    _, w_KxB = jax.lax.scan(step, w0_B, (p_x_BxK.T, q_x_BxK.T))
    return w_KxB.T


def _block_weights(draft_tokens, draft_probs, target_probs, live_BxK=None) -> tuple[jax.Array, jax.Array]:
    """Running weights w_1..w_K and stop probabilities h_1..h_K, float32 [B, K] each.

    h_n = Z_n / (Z_n + 1 - w_n) for n < K, with Z_n the mass of
    max(0, w_n p_n - q_n), and h_K = w_K. The denominator is 0 only when
    w_n = 1 and Z_n = 0; h_n is then 1, its value all along w_n = 1 (any
    Z_n > 0 gives Z_n / Z_n = 1), so w_n = 1 always implies h_n = 1. For drafts
    drawn from q the choice never changes the output: Z_n = 0 at w_n = 1 means
    p_n = q_n, so x_n has ratio 1 and w_{n+1} = 1, and by induction a later
    index m has h_m = 1 (the first with Z_m > 0, or m = K with h_K = w_K = 1)
    and fires, so n is never the largest index that fires.
    """
    draft_tokens = jnp.asarray(draft_tokens).astype(jnp.int32)
    draft_probs = jnp.asarray(draft_probs, jnp.float32)
    target_probs = jnp.asarray(target_probs, jnp.float32)
    k = draft_tokens.shape[1]
    draft_probs, p_x_BxK, q_x_BxK = _draft_and_target_at_drafts(draft_tokens, draft_probs, target_probs, live_BxK)
    w_BxK = _running_weights(p_x_BxK, q_x_BxK)
    # Z_n for n = 1..K-1 uses p_n, q_n: the distributions after the first n drafts.
    residual_BxKm1xV = jnp.maximum(w_BxK[:, :-1, None] * target_probs[:, 1:k] - draft_probs[:, 1:], 0.0)
    z_BxKm1 = jnp.sum(residual_BxKm1xV, axis=-1)
    denom_BxKm1 = z_BxKm1 + (1.0 - w_BxK[:, :-1])
    h_BxKm1 = jnp.where(denom_BxKm1 > 0, z_BxKm1 / jnp.where(denom_BxKm1 > 0, denom_BxKm1, 1.0), 1.0)
    return w_BxK, jnp.concatenate([h_BxKm1, w_BxK[:, -1:]], axis=1)


@jit_when_eager
def verify_block(
    key: jax.Array,
    draft_tokens: jax.Array,
    draft_probs: jax.Array,
    target_probs: jax.Array,
    num_drafts: jax.Array | None = None,
) -> VerifyResult:
    """Block verification (Sun et al. 2024, Algorithm 2) of K draft tokens for B rows.

    Same contract as `verify_tokenwise`; the rule is in the module docstring
    (the paper's gamma is K, its weights p_i are w_i here, and its
    M_b(. | c, X^i) is target_probs[:, i]). The uniforms and the final draw use
    the key exactly as `verify_tokenwise` does, and the test at n = K is written
    as there, a Bernoulli of min(1, w_{K-1} p_{K-1}(x_{K-1}) / q_{K-1}(x_{K-1}))
    = w_K, so for K = 1 the two kernels return identical arrays. The stop
    tests are `draws.bernoulli` (h_n = 0 never fires, h_n = 1 always does, and
    small h_n are resolved far below float32's uniform grid).

    Args:
      key: a PRNG key, consumed here.
      draft_tokens: int [B, K] draft tokens x_0..x_{K-1}.
      draft_probs: float32 [B, K, V]; q_i, exactly what x_i was drawn from.
      target_probs: float32 [B, K + 1, V]; p_i, the processed target
        distribution for draft position i (p[:, K] is for the bonus token).
      num_drafts: optional int [B] in [1, K]: drafts each row proposed (dynamic
        draft length, module docstring); None means K for every row.

    Returns:
      A `VerifyResult` of int32 [B] arrays: num_accepted n, the largest index
      whose stop test fired, and next_token from norm(max(0, w_n p_n - q_n)) if
      n < K (falling back to p_n when that residual has no mass, as in
      `residual_distribution`), else from p_K. With context-free or causally
      computed p_i, the emitted tokens have exactly the distribution of
      sampling from the p_i one token at a time.
    """
    draft_tokens, draft_probs, target_probs = _checked_arrays(draft_tokens, draft_probs, target_probs)
    b, k = draft_tokens.shape
    key_stop, key_next = jax.random.split(key)

    live_BxK = _live_drafts(num_drafts, b, k)
    w_BxK, h_BxK = _block_weights(draft_tokens, draft_probs, target_probs, live_BxK)
    draft_probs, p_x_BxK, q_x_BxK = _draft_and_target_at_drafts(draft_tokens, draft_probs, target_probs, live_BxK)
    # w_{n} for n = 0..K, with w_0 = 1 exactly (so 1.0 * p below is p, bit for bit).
    w_BxK1 = jnp.concatenate([jnp.ones((b, 1), jnp.float32), w_BxK], axis=1)
    p_last_B, q_last_B = p_x_BxK[:, k - 1], q_x_BxK[:, k - 1]
    # The test at n = K has probability min(1, w_{K-1} p / q) = w_K, written
    # as token-wise's min(1, p / q) test (w_0 = 1 exactly) so that K = 1 matches it.
    last_ratio_B = _ratio(w_BxK1[:, k - 1] * p_last_B, q_last_B)
    stop_prob_BxK = jnp.concatenate([h_BxK[:, :-1], last_ratio_B[:, None]], axis=1)
    stop_BxK = draws.bernoulli(key_stop, stop_prob_BxK)
    # n = the largest index whose test fired: no early exit, every test is drawn.
    index_BxK = jax.lax.broadcasted_iota(jnp.int32, (b, k), 1) + 1
    num_accepted_B = jnp.max(jnp.where(stop_BxK, index_BxK, 0), axis=1)

    # Residual max(0, w_n p_n - q_n), with q_K taken as zero and the weight as 1
    # at n == K (the bonus draw from p_K), as in verify_tokenwise. w_n > 0 for
    # every n that can fire (w_n = 0 gives Z_n = 0 and h_n = 0), so w_n p_n is
    # never all zero and the zero-mass fallback stays a valid distribution.
    w_n_B = jnp.take_along_axis(w_BxK1, num_accepted_B[:, None], axis=1)[:, 0]
    scale_B = jnp.where(num_accepted_B < k, w_n_B, 1.0)
    p_n_BxV = jnp.take_along_axis(target_probs, num_accepted_B[:, None, None], axis=1)[:, 0]
    q_n_BxV = jnp.take_along_axis(draft_probs, jnp.minimum(num_accepted_B, k - 1)[:, None, None], axis=1)[:, 0]
    q_n_BxV = jnp.where((num_accepted_B < k)[:, None], q_n_BxV, 0.0)
    next_token_B = sample_from_probs(key_next, residual_distribution(scale_B[:, None] * p_n_BxV, q_n_BxV))
    return VerifyResult(num_accepted=num_accepted_B, next_token=next_token_B)


# The one registry of chain verification rules: name -> kernel(key, draft_tokens, draft_probs, target_probs).
VERIFICATION_RULES: Mapping[str, Callable[..., VerifyResult]] = MappingProxyType(
    {"tokenwise": verify_tokenwise, "block": verify_block}
)


def verification_rule(name: str) -> Callable[..., VerifyResult]:
    """The kernel registered as `name` in `VERIFICATION_RULES`.

    Raises:
      ValueError: `name` is not registered (the message lists the rules).
    """
    if name not in VERIFICATION_RULES:
        raise ValueError(f"verify={name!r} is not a verification rule; use one of {sorted(VERIFICATION_RULES)}.")
    return VERIFICATION_RULES[name]
