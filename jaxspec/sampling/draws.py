"""Random draws fine enough for exact sampling at real vocabulary sizes.

Every random decision of the sampler goes through this module: the
categorical draw (an exponential race), and the Bernoulli tests of the
accept/stop rules. The obvious float32 constructions are not exact at
GPT-2's 50,257 ids, in two opposite ways:

- An Exp(1) built as ``-log1p(-u)`` from ``jax.random.uniform`` (u on a 2^-23
  grid) is exactly 0 with probability 2^-23 per entry; ``p / 0 = inf`` then
  wins the race for any token with p > 0: ~0.6% of all draws at V = 50,257.
- A race or a test built from a float32 uniform in (0, 1) cannot resolve a
  probability below the grid: a token with p below ~6e-8 of the top token's
  never wins, and ``u < r`` for r = 1e-6 is off by up to 12%.

Here each uniform is built from 64 random bits as U = v (lower half) or
U = 1 - v (upper half), where one bit picks the half and 63 bits give
v in (0, 1/2] with absolute resolution 2^-64 near 0 and float32's relative
precision (2^-24) everywhere. Consumers never lose 1 - v to rounding: Exp(1)
is ``-log1p(-v)`` in the lower half (computed as log(fl(1 - v)) plus the
exact rounding correction, one log per entry) and ``-log(v)`` in the upper
half, and the
event U < r is ``v < r`` or ``v > 1 - r`` (1 - r is exact in float32 for
r >= 1/2, and irrelevant below). So:

- E ~ Exp(1) lies in [2.7e-20, 45.1]: never 0, never inf; tokens down to
  ~1e-19 of the top token's probability can win, and the race is exact up
  to the float32 rounding of the probabilities and of log.
- P(bernoulli(r)) = r up to 2^-64 absolute and ~2^-24 relative in r and in
  1 - r: the rounding that r itself carries.

From 8,192 ids on, `categorical` races in two levels: over groups of B ids (B
the power of two >= sqrt(V), 256 at V = 50,257) weighted by their sums, then
among the B ids of the winning group. P(group) * P(id | group) = w / sum(w),
exact up to the float32 rounding of the group sums (~1e-7 relative, as the
processing's own normalising sum), with ~2 sqrt(V) Exp(1) draws per row
instead of V: at [512, 50,257] 103 -> 5.2 ms on CPU (BUILD_NOTES). A NaN
weight takes its whole group out of the race (such rows are invalid anyway:
`processing.valid_rows`).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

__all__ = [
    "TWO_LEVEL_MIN_VOCAB",
    "argmax_first",
    "bernoulli",
    "categorical",
    "exponential",
    "group_size",
    "group_sums",
    "race",
    "random_bits",
    "two_level_race",
]

_TWO_POW_M32 = 2.0**-32


def random_bits(key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """uint32 random bits of `shape`, from XLA's Threefry bit generator seeded by `key`.

    jax.random.bits expands Threefry into many small XLA ops; XLA's own
    RngBitGenerator (algorithm THREE_FRY, deterministic on every backend) is
    ~20x faster on CPU for the vocabulary-sized draws of the sampler. `key` is
    consumed (only 4 words are drawn from it, for the seed).
    """
    seed = jax.random.bits(key, (4,), jnp.uint32)
    _, bits = jax.lax.rng_bit_generator(seed, shape, dtype=jnp.uint32, algorithm=jax.lax.RandomAlgorithm.RNG_THREE_FRY)
    return bits


def argmax_first(x: jax.Array) -> jax.Array:
    """int32 [...]: index of the largest entry of x [..., V], the lowest on ties (as jnp.argmax, no NaN).

    `lax.top_k`'s winner is the lowest index among equal values, and on
    XLA:CPU it is ~2.7x faster than a max then a min over indices at [512,
    50,257] (36 vs 97 ms). It orders -0 below +0, so zeros are made +0 first.
    """
    x = jnp.where(x == 0, jnp.zeros_like(x), x)
    return jax.lax.top_k(x, 1)[1][..., 0]


def _half_uniform(key: jax.Array, size: int) -> tuple[jax.Array, jax.Array]:
    """(v float32 [size] in (0, 1/2], upper bool [size]) from 64 random bits each.

    The uniform they stand for is U = v if not upper else 1 - v. Drawn flat.
    """
    bits = random_bits(key, (2, size))
    hi, lo = bits[0], bits[1]
    upper = (hi >> 31) == 1
    hi31 = (hi & jnp.uint32(0x7FFFFFFF)).astype(jnp.float32)
    lo_fraction = (lo.astype(jnp.float32) + 0.5) * jnp.float32(_TWO_POW_M32)  # (0, 1]
    v = (hi31 + lo_fraction) * jnp.float32(_TWO_POW_M32)  # (0, 1/2]
    return v, upper


def exponential(key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """float32 Exp(1) draws of `shape`, each in [2.7e-20, 45.1] (never 0 or inf)."""
    size = 1
    for d in shape:
        size *= d
    v, upper = _half_uniform(key, size)
    # Lower half: -log1p(-v) = -log(1 - v), with one log per entry instead of log and log1p both
    # (a select computes both of its operands; the race's cost at V = 50,257 is these logs).
    # u = fl(1 - v) is off by delta = (u - 1) + v, computed exactly (Sterbenz: u - 1 is exact, and
    # so is adding v, as -(u - 1) lies within a factor 2 of v, or is 0 when u rounds to 1), and
    # log(1 - v) = log(u - delta) = log(u) - delta / u to float32 precision (delta / u < 2^-24).
    u = 1.0 - v
    e = -jnp.log(jnp.where(upper, v, u)) + jnp.where(upper, 0.0, ((u - 1.0) + v) / u)
    return e.reshape(shape)


def bernoulli(key: jax.Array, prob: jax.Array) -> jax.Array:
    """bool array shaped like `prob`, True with probability clip(prob, 0, 1).

    Exact up to 2^-64 absolute near 0 and float32 rounding of `prob` and of
    `1 - prob` (see the module docstring); prob <= 0 or NaN is never True,
    prob >= 1 always is.
    """
    prob = jnp.asarray(prob, jnp.float32)
    v, upper = _half_uniform(key, prob.size)
    v, upper = v.reshape(prob.shape), upper.reshape(prob.shape)
    return jnp.where(upper, v > 1.0 - prob, v < prob)


# From this many ids on, `categorical` races in two levels (below it the flat race is as fast).
TWO_LEVEL_MIN_VOCAB = 8192


def group_size(vocab_size: int) -> int:
    """The two-level race's group size: the smallest power of two >= sqrt(vocab_size)."""
    return 1 << math.ceil(math.log2(math.isqrt(vocab_size - 1) + 1))


def race(key: jax.Array, weights: jax.Array) -> jax.Array:
    """int32 [...]: argmax_v weights[v] / E[v] over the last axis, E i.i.d. Exp(1) (one draw per entry).

    Weight-0 (and NaN) entries never win; a row with no positive weight gives index 0.
    """
    race_ = exponential(key, weights.shape)
    scores = jnp.where(weights > 0, weights / race_, jnp.float32(-1.0))  # finite: no NaN, no inf
    # top_k's winner is the lowest index among equal scores, as argmax_first's, and on XLA:CPU it is
    # ~2.7x faster than argmax_first at [512, 50,257] (36 vs 97 ms: its compare-and-min pass after
    # the max is the slow part there).
    return jax.lax.top_k(scores, 1)[1][..., 0]


def group_sums(weights: jax.Array, size: int) -> jax.Array:
    """float32 [..., ceil(V / size)]: sums of consecutive groups of `size` ids (the last one partial).

    A `reduce_window`, not a slice and reshape: slicing the rows to a multiple of `size` copies
    them (42 against 7 ms at [512, 50,257] on CPU).
    """
    vocab = weights.shape[-1]
    groups = -(-vocab // size)
    ones = (1,) * (weights.ndim - 1)
    padding = [(0, 0)] * (weights.ndim - 1) + [(0, groups * size - vocab)]
    return jax.lax.reduce_window(weights, 0.0, jax.lax.add, ones + (size,), ones + (size,), padding)


def two_level_race(key: jax.Array, weights: jax.Array) -> jax.Array:
    """int32 [...]: a group by its summed weight, then an id in it by its weight (see module docstring)."""
    vocab = weights.shape[-1]
    size = group_size(vocab)
    sums = group_sums(weights, size)
    # Scaled to a largest sum of 1, so sum / E stays finite (weights up to 1e18, groups of <= 2^k of them).
    top = jnp.max(sums, axis=-1, keepdims=True)
    sums = sums / jnp.where(jnp.isfinite(top) & (top > 0), top, 1.0)
    group_key, id_key = jax.random.split(key)
    group = race(group_key, sums)
    ids = group[..., None] * size + jnp.arange(size, dtype=group.dtype)
    members = jnp.take_along_axis(weights, jnp.minimum(ids, vocab - 1), axis=-1)
    members = jnp.where(ids < vocab, members, 0.0)  # the last group's ids past V
    return group * size + race(id_key, members)


def categorical(key: jax.Array, weights: jax.Array) -> jax.Array:
    """One index per leading position, drawn from norm(weights) by an exponential race.

    argmax_v weights[v] / E[v] with E i.i.d. Exp(1) picks v with probability
    weights[v] / sum(weights), so rows need not be normalised. Indices with
    weight 0 never win. A row with no positive weight returns index 0 (callers
    check validity; see `processing.valid_rows`). From `TWO_LEVEL_MIN_VOCAB` ids
    on, the race runs over groups, then within the winning group (same law).

    Args:
      key: a PRNG key.
      weights: float [..., V], non-negative.

    Returns:
      int32 [...] indices.
    """
    weights = jnp.asarray(weights).astype(jnp.float32)
    if weights.shape[-1] >= TWO_LEVEL_MIN_VOCAB:
        return two_level_race(key, weights)
    return race(key, weights)
