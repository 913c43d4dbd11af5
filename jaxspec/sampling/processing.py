"""Logit processing and exact categorical sampling, shared by target and draft.

Speculative sampling is exact only if every distribution in the accept/resample
rule is *the* distribution that plain sampling would use: the target's p after
the request's processing, and the draft's q exactly as the draft token was
drawn from it. Both sides therefore go through this one module:

    logits --float32--> temperature --> top-k --> top-p --> log-probabilities

in that fixed order, and draws go through `sample_from_probs`, so the token
drawn from an array q always agrees with the q later used in p/q.

Settings are either a static `SamplingConfig` (one setting, hashable) or a
`SamplingParams` pytree of arrays (one setting per batch row, traced: a new
value never recompiles). Both take the same code path.

Tie rule (top-k and top-p alike): a token whose (temperature-scaled) logit
equals the logit of the last token kept is kept too. The kept set is therefore
a function of the logit values alone, not of token order; it can be larger
than k (or than the smallest top-p set) only when there are exact ties.

Cost: top-k and top-p never sort the vocabulary. Both thresholds are logit
values. Usually they are read off each row's 64 largest values
(`lax.top_k`): any k <= 64, and any nucleus that closes within those 64.
Otherwise they are found exactly by bisection over the 2^32 float32 bit
patterns (32 passes of a compare-and-count over the vocabulary). The filters
run only when some row of the batch uses them (a runtime `lax.cond`).

Degenerate rows: a row of logits with a NaN or +inf entry, or no finite entry
(all -inf), has no distribution. `valid_rows` flags it; processing treats it
as all-zero logits (uniform) so that nothing downstream sees NaN, and the
generation loops stop such a row and report it (`nonfinite_logits`).
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from typing import NamedTuple

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from jaxspec.sampling import draws
from jaxspec.tracers import traced

__all__ = [
    "SamplingConfig",
    "SamplingParams",
    "SettingError",
    "check_settings",
    "processed_logprobs",
    "processed_probs",
    "sample_from_probs",
    "sampling_params",
    "valid_rows",
]

# The smallest normal float32. A temperature below it (but > 0) is flushed to
# 0 by XLA on CPU and would divide 0 by 0; it is refused, not made greedy.
MIN_TEMPERATURE = float(np.finfo(np.float32).tiny)
MAX_TEMPERATURE = float(np.finfo(np.float32).max)

_TEMPERATURE_FIX = "use 0.0 for greedy or a positive float such as 1.0."


class SettingError(ValueError):
    """A sampling setting refused by `check_settings`; `name` is "temperature", "top_k" or "top_p"."""

    def __init__(self, name: str, message: str):
        super().__init__(message)
        self.name = name


def check_settings(temperature, top_k, top_p, *, prefix: str = "SamplingConfig.") -> tuple[float, int, float]:
    """The one validation of a (temperature, top_k, top_p) setting; see `SamplingConfig` for the ranges.

    `SamplingConfig`, and through it `sampling_params`, the generation loops and
    the serving engine, all check settings here.

    Args:
      temperature, top_k, top_p: one setting (Python or numpy scalars; bools refused).
      prefix: put before each field's name in messages ("" where the fields are
        the caller's own parameters, e.g. an HTTP request's).

    Returns:
      (temperature, top_k, top_p) as Python (float, int, float).

    Raises:
      SettingError: naming the field, the bad value and the fix.
    """
    t = temperature
    if isinstance(t, bool) or not isinstance(t, numbers.Real):
        raise SettingError(
            "temperature",
            f"{prefix}temperature must be a real number, got {t!r}; {_TEMPERATURE_FIX}",
        )
    if math.isnan(t) or math.isinf(t) or t < 0:
        raise SettingError("temperature", f"{prefix}temperature must be finite and >= 0, got {t!r}; {_TEMPERATURE_FIX}")
    if t > MAX_TEMPERATURE:
        raise SettingError(
            "temperature",
            f"{prefix}temperature={t!r} overflows float32 (largest {MAX_TEMPERATURE:.3g}); "
            "a temperature above ~1e4 is already uniform over the kept tokens: pass 1e4.",
        )
    if 0 < t < MIN_TEMPERATURE:
        raise SettingError(
            "temperature",
            f"{prefix}temperature={t!r} underflows float32 (smallest normal {MIN_TEMPERATURE:.3g}) and "
            f"would give NaN probabilities; {_TEMPERATURE_FIX}",
        )
    k = top_k
    if isinstance(k, bool) or not isinstance(k, numbers.Integral):
        raise SettingError(
            "top_k",
            f"{prefix}top_k must be an int, got {k!r} (type {type(k).__name__}); "
            "use 0 to turn top-k off or a positive int such as 50.",
        )
    if k < 0:
        raise SettingError(
            "top_k", f"{prefix}top_k must be >= 0, got {k!r}; use 0 to turn top-k off or a positive int such as 50."
        )
    p = top_p
    if isinstance(p, bool) or not isinstance(p, numbers.Real):
        raise SettingError(
            "top_p",
            f"{prefix}top_p must be a real number in (0, 1], got {p!r}; "
            "use 1.0 to turn top-p off or a value such as 0.9.",
        )
    if math.isnan(p) or not 0.0 < p <= 1.0:
        raise SettingError(
            "top_p", f"{prefix}top_p must lie in (0, 1], got {p!r}; use 1.0 to turn top-p off or a value such as 0.9."
        )
    return float(t), int(k), float(p)


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    """Static (hashable) sampling settings; safe as a `jax.jit` static argument.

    Attributes:
      temperature: Divides the logits. 0 means greedy (argmax, ties to the lowest
        index); must be finite and either 0 or in [1.18e-38, 3.4e38] (float32's
        normal range: a smaller one underflows, a larger one overflows).
      top_k: Keep the k highest logits (plus exact ties with the k-th); 0 = off.
        A value >= the vocabulary size is also a no-op.
      top_p: Keep the smallest set of most-probable tokens whose cumulative
        probability is >= top_p (plus exact ties with the last one kept),
        computed after temperature and top-k. Always keeps at least one token;
        1.0 = off. Must lie in (0, 1].

    Example: a bad value is refused when the config is built, naming it.

    >>> SamplingConfig(temperature=0.7, top_k=50, top_p=0.9).is_greedy
    False
    >>> SamplingConfig(top_p=1.5)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    jaxspec.sampling.processing.SettingError: SamplingConfig.top_p must lie in (0, 1], got 1.5; use 1.0 to...off...
    """

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0

    def __post_init__(self):
        # Validate eagerly: a bad value inside a jitted loop would otherwise show
        # up only as NaNs or a silently wrong distribution.
        t, k, p = check_settings(self.temperature, self.top_k, self.top_p)
        # Normalise numpy scalars to Python scalars so equal settings hash equal
        # and jit caches hit regardless of how the config was built.
        object.__setattr__(self, "temperature", t)
        object.__setattr__(self, "top_k", k)
        object.__setattr__(self, "top_p", p)

    @property
    def is_greedy(self) -> bool:
        """True when temperature == 0: the distribution is a one-hot at argmax."""
        return self.temperature == 0.0

    def as_params(self) -> SamplingParams:
        """The same setting as a `SamplingParams` of scalars (broadcasts over every row)."""
        return SamplingParams(
            temperature=jnp.float32(self.temperature),
            top_k=jnp.int32(min(self.top_k, np.iinfo(np.int32).max)),
            top_p=jnp.float32(self.top_p),
        )


@flax.struct.dataclass
class SamplingParams:
    """Per-row sampling settings as arrays: traced under jit, so new values never recompile.

    Build it with `sampling_params`, which validates on the host. Each field
    has shape [B] (one setting per batch row) or [] (one for all rows); the
    meaning of each value is that of the `SamplingConfig` field of that name.

    Attributes:
      temperature: float32 [B] or []; 0 = greedy for that row.
      top_k: int32 [B] or []; 0 (or >= vocabulary size) = off.
      top_p: float32 [B] or []; 1 = off.
    """

    temperature: jax.Array
    top_k: jax.Array
    top_p: jax.Array


def _as_row_array(name: str, value, batch_size: int) -> np.ndarray:
    array = np.asarray(value)
    if array.ndim == 0:
        array = np.broadcast_to(array, (batch_size,))
    if array.shape != (batch_size,):
        raise ValueError(
            f"{name} must be a scalar or have one entry per prompt row, shape ({batch_size},); got shape {array.shape}."
        )
    if array.dtype == bool or not np.issubdtype(array.dtype, np.number):
        raise ValueError(f"{name} must hold numbers, got {value!r} (dtype {array.dtype}).")
    return array


def sampling_params(temperature, top_k, top_p, batch_size: int) -> SamplingParams:
    """Validates per-row settings on the host and returns them as a `SamplingParams`.

    Args:
      temperature: a number or a [batch_size] array; each finite and 0 (greedy)
        or >= 1.18e-38.
      top_k: an int or a [batch_size] int array; each >= 0 (0 = off).
      top_p: a number or a [batch_size] array; each in (0, 1] (1 = off).
      batch_size: the number of rows B.

    Returns:
      A `SamplingParams` of numpy arrays of shape [B].

    Raises:
      ValueError: naming the first bad value, its row, and the fix.
    """
    t = _as_row_array("temperature", temperature, batch_size)
    k = _as_row_array("top_k", top_k, batch_size)
    p = _as_row_array("top_p", top_p, batch_size)
    per_row = any(np.ndim(v) > 0 for v in (temperature, top_k, top_p))
    # Each distinct setting goes through SamplingConfig's checks, so a value is
    # refused with the same message whether given alone or per row.
    seen = set()
    for row, (tr, kr, pr) in enumerate(zip(t.tolist(), k.tolist(), p.tolist())):
        if (tr, kr, pr) in seen:
            continue
        seen.add((tr, kr, pr))
        if isinstance(kr, float) and kr.is_integer():
            kr = int(kr)
        try:
            SamplingConfig(temperature=float(tr), top_k=kr, top_p=float(pr))
        except ValueError as err:
            raise ValueError(f"{err}{f' (row {row})' if per_row else ''}") from None
    return SamplingParams(
        temperature=t.astype(np.float32),
        top_k=np.minimum(k, np.iinfo(np.int32).max).astype(np.int32),
        top_p=p.astype(np.float32),
    )


def _params_of(settings: SamplingConfig | SamplingParams) -> SamplingParams:
    """Either kind of settings as a `SamplingParams` (a config's values as scalars)."""
    if isinstance(settings, SamplingConfig):
        return settings.as_params()
    if isinstance(settings, SamplingParams):
        return settings
    raise TypeError(f"sampling settings must be a SamplingConfig or SamplingParams, got {type(settings).__name__}.")


def _as_params(settings: SamplingConfig | SamplingParams) -> SamplingParams:
    params = _params_of(settings)
    if isinstance(settings, SamplingConfig):
        # A static setting would enter the program as constants, and XLA:CPU then rewrites the
        # 64-candidate `lax.top_k` of a constant top-k into a full sort of every [..., V] row
        # (4.3 s instead of 0.22 s at [512, 50,257], BUILD_NOTES). The barrier hands the
        # program the same values as opaque scalars: one compiled path for static and traced.
        return jax.lax.optimization_barrier(params)
    return params


def _per_row(value: jax.Array, ndim: int) -> jax.Array:
    """[B] or [] settings -> broadcastable against [B, ..., V] (ndim dims)."""
    value = jnp.asarray(value)
    return value.reshape(value.shape + (1,) * (ndim - value.ndim))


def valid_rows(logits: jax.Array) -> jax.Array:
    """bool [...]: the row has a distribution (no NaN, no +inf, some finite entry).

    Args:
      logits: float [..., V].
    """
    logits = jnp.asarray(logits)
    return _valid_given_max(logits, jnp.max(logits, axis=-1))


def _valid_given_max(logits: jax.Array, row_max: jax.Array) -> jax.Array:
    """`valid_rows` from the row max (any shape broadcasting against logits[..., 0]).

    Without NaN the max is +inf iff some entry is, -inf iff none is finite. A
    NaN is looked for on its own: XLA:CPU's vectorised max drops NaN in some
    lanes (a NaN at index 17 of 5,000 gave a max of 0).
    """
    return jnp.isfinite(row_max) & ~jnp.any(jnp.isnan(logits), axis=-1).reshape(row_max.shape)


def _order_keys(x: jax.Array) -> jax.Array:
    """uint32 keys with the order of the float32 values x (no NaN; -0 and +0 equal)."""
    bits = jax.lax.bitcast_convert_type(jnp.where(x == 0, 0.0, x).astype(jnp.float32), jnp.uint32)
    negative = (bits >> 31) == 1
    return jnp.where(negative, ~bits, bits | jnp.uint32(0x80000000))


def _bisect(predicate, shape) -> jax.Array:
    """Smallest uint32 t in (lo, hi] with predicate(t) True, given predicate(0) False and
    predicate(2^32 - 1) True and monotone predicate; 32 halvings, exact."""
    lo = jnp.zeros(shape, jnp.uint32)
    hi = jnp.full(shape, 0xFFFFFFFF, jnp.uint32)

    def step(_, bounds):
        lo, hi = bounds
        mid = lo + (hi - lo) // 2
        ok = predicate(mid)
        return jnp.where(ok, lo, mid), jnp.where(ok, mid, hi)

    _, hi = jax.lax.fori_loop(0, 32, step, (lo, hi))
    return hi


def _key_to_value(key: jax.Array) -> jax.Array:
    """Inverse of `_order_keys`: the float32 value of an order key."""
    positive = (key >> 31) == 1
    bits = jnp.where(positive, key & jnp.uint32(0x7FFFFFFF), ~key)
    return jax.lax.bitcast_convert_type(bits, jnp.float32)


def _top_k_threshold_by_bisection(x: jax.Array, top_k: jax.Array) -> jax.Array:
    """[..., 1] the k-th largest x per row (ties: every x >= it is kept); -inf where top-k is off."""
    vocab = x.shape[-1]
    keys = _order_keys(x)
    active = (top_k > 0) & (top_k < vocab)
    k = jnp.where(active, top_k, vocab)

    # The k-th largest key is the largest t with count(keys >= t) >= k, i.e.
    # one below the smallest t with count(keys >= t) < k.
    def fewer_than_k(t):
        return jnp.sum((keys >= t).astype(jnp.int32), axis=-1, keepdims=True) < k

    threshold = _key_to_value(_bisect(fewer_than_k, x.shape[:-1] + (1,)) - 1)
    return jnp.where(active, threshold, -jnp.inf)


def _top_p_threshold_by_bisection(x: jax.Array, top_p: jax.Array) -> jax.Array:
    """[..., 1] the smallest x of the smallest top group set of mass >= top_p; -inf where top-p is off."""
    keys = _order_keys(x)
    probs = jax.nn.softmax(x, axis=-1)
    active = top_p < 1.0
    # A top_p below float32's smallest normal (flushed to 0 on CPU) keeps the top group, as any tiny top_p does.
    p = jnp.where(active, jnp.maximum(top_p, jnp.float32(MIN_TEMPERATURE)), jnp.inf)

    # A value v is kept iff the mass strictly above it is < top_p; the kept
    # values are those >= the smallest such v (a logit value, found exactly).
    def mass_above_below_p(t):
        mass = jnp.sum(jnp.where(keys > t, probs, 0.0), axis=-1, keepdims=True)
        return mass < p

    threshold = _key_to_value(_bisect(mass_above_below_p, x.shape[:-1] + (1,)))
    return jnp.where(active, threshold, -jnp.inf)


# Candidates read by the fast path of the filters: the top-k threshold of any
# k <= 64 and every nucleus that closes within the 64 most likely tokens. 64
# beat 256 in the speculative loop on the shipped pair (per round, T = 0.6:
# top-p 0.9 +3% instead of +17% over no filter; T = 1: 7% less), although the
# exact fallback then runs more often (BUILD_NOTES, issue 12).
_CANDIDATES = 64


def _threshold_by_candidates(x: jax.Array, top_k: jax.Array, top_p: jax.Array):
    """top-k then top-p threshold from the sorted top `_CANDIDATES` values of each row.

    Returns:
      (threshold_k, threshold, k_ok, ok), each [..., 1]: the top-k threshold
      (-inf where top-k is off), the top-k-then-top-p threshold, and whether
      each is right: k_ok is False for rows whose k exceeds the candidates, ok
      also for rows whose nucleus does not close within them.
    """
    vocab = x.shape[-1]
    count = min(_CANDIDATES, vocab)
    top_desc = jax.lax.top_k(x, count)[0]  # [..., count], descending, ties adjacent
    k_active = (top_k > 0) & (top_k < vocab)
    kth = jnp.take_along_axis(top_desc, jnp.clip(top_k - 1, 0, count - 1), axis=-1)
    threshold_k = jnp.where(k_active, kth, -jnp.inf)
    # top-p sees the top-k law: mass of each candidate renormalised over x >= threshold_k.
    log_norm = jax.nn.logsumexp(jnp.where(x >= threshold_k, x, -jnp.inf), axis=-1, keepdims=True)
    probs_desc = jnp.where(top_desc >= threshold_k, jnp.exp(top_desc - log_norm), 0.0)
    cum_desc = jnp.cumsum(probs_desc, axis=-1)
    # Mass strictly before each sorted token; it is kept while that is < top_p
    # (rank 0 always). The smallest kept value is the threshold: ties kept.
    mass_before = jnp.concatenate([jnp.zeros_like(cum_desc[..., :1]), cum_desc[..., :-1]], axis=-1)
    p_active = top_p < 1.0
    p = jnp.maximum(top_p, jnp.float32(MIN_TEMPERATURE))
    smallest_kept = jnp.min(jnp.where(mass_before < p, top_desc, jnp.inf), axis=-1, keepdims=True)
    threshold_p = jnp.where(p_active, smallest_kept, -jnp.inf)
    k_ok = ~k_active | (top_k <= count)
    ok = k_ok & (~p_active | (cum_desc[..., -1:] >= p))
    return threshold_k, jnp.maximum(threshold_k, threshold_p), k_ok, ok


def _filter_threshold(x: jax.Array, top_k: jax.Array, top_p: jax.Array) -> jax.Array:
    """[..., 1] top-k then top-p threshold per row (x >= it is kept; -inf keeps all): from the
    candidates when they suffice, else by bisection.

    The fallback bisects only what the candidates could not settle: the
    top-k threshold only when some row's k exceeds them (32 passes), then the
    nucleus (32 passes), kept for the rows whose mass did not close within them.
    """
    threshold_k, threshold, k_ok, ok = _threshold_by_candidates(x, top_k, top_p)

    def beyond_candidates(x):
        exact_k = jax.lax.cond(
            jnp.all(k_ok),
            lambda x: threshold_k,
            lambda x: jnp.where(k_ok, threshold_k, _top_k_threshold_by_bisection(x, top_k)),
            x,
        )
        x_k = jnp.where(x >= exact_k, x, -jnp.inf)
        exact = jnp.maximum(exact_k, _top_p_threshold_by_bisection(x_k, top_p))
        return jnp.where(ok, threshold, exact)

    return jax.lax.cond(jnp.all(ok), lambda x: threshold, beyond_candidates, x)


class _Scores(NamedTuple):
    """Processed logits before normalisation (see `_filtered_scores`)."""

    x: jax.Array  # float32 [B, ..., V]: (logits - row max) / T, filtered to -inf; each row's max is +0
    greedy: jax.Array  # bool [B, ..., 1]: temperature 0
    best: jax.Array  # int32 [B, ..., 1]: the lowest-index argmax (only where some row is greedy)


def _filtered_scores(logits: jax.Array, settings: SamplingConfig | SamplingParams) -> _Scores:
    """Temperature, then top-k then top-p, of float logits [B, ..., V] (see `processed_logprobs`)."""
    logits = jnp.asarray(logits).astype(jnp.float32)
    params = _as_params(settings)
    ndim = logits.ndim
    temperature = _per_row(params.temperature, ndim)
    top_k = _per_row(params.top_k, ndim)
    top_p = _per_row(params.top_p, ndim)
    row_max = jnp.max(logits, axis=-1, keepdims=True)
    valid = _valid_given_max(logits, row_max)  # as `valid_rows`, sharing the max
    greedy = temperature == 0
    vocab = logits.shape[-1]

    def scaled(logits):
        # Subtracting the row max first (softmax-invariant) keeps x / T finite even
        # for tiny T: the max maps to +0 and everything else to <= 0 (or -inf).
        # Recomputed where it is read rather than passed through a cond: every
        # [..., V] array that crosses a cond is written out in full (BUILD_NOTES).
        logits = jnp.where(valid, logits, 0.0)
        return (logits - jnp.where(valid, row_max, 0.0)) / jnp.where(greedy, 1.0, temperature)

    # The filters run only when some row uses them (a runtime test, not a recompile);
    # the cond returns only the [..., 1] thresholds.
    uses_filters = jnp.any((((top_k > 0) & (top_k < vocab)) | (top_p < 1.0)) & ~greedy)
    threshold = jax.lax.cond(
        uses_filters,
        lambda logits: _filter_threshold(scaled(logits), top_k, top_p),
        lambda logits: jnp.full(row_max.shape, -jnp.inf, jnp.float32),
        logits,
    )
    x = scaled(logits)
    # Greedy rows: the argmax (a pass over the vocabulary) only when some row is greedy.
    best = jax.lax.cond(
        jnp.any(greedy),
        lambda logits: draws.argmax_first(jnp.where(valid, logits, 0.0))[..., None],  # no NaN: invalid rows zeroed
        lambda logits: jnp.zeros(row_max.shape, jnp.int32),
        logits,
    )
    return _Scores(jnp.where(x >= threshold, x, -jnp.inf), greedy, best)


def _greedy_rows(scores: _Scores, at_best, elsewhere, otherwise: jax.Array) -> jax.Array:
    """`otherwise` with greedy rows replaced by `at_best` at their argmax and `elsewhere` around it."""
    vocab_ids = jax.lax.broadcasted_iota(jnp.int32, otherwise.shape, otherwise.ndim - 1)
    one_hot = jnp.where(vocab_ids == scores.best, jnp.float32(at_best), jnp.float32(elsewhere))
    return jnp.where(scores.greedy, one_hot, otherwise)


def processed_logprobs(logits: jax.Array, settings: SamplingConfig | SamplingParams) -> jax.Array:
    """Log-probabilities after temperature -> top-k -> top-p, in float32.

    Args:
      logits: [B, ..., V] array of any float dtype; cast to float32 first.
      settings: a `SamplingConfig` (one static setting) or a `SamplingParams`
        whose fields are [] or [B] (one setting per leading row).

    Returns:
      float32 [B, ..., V] normalised log-probabilities, -inf for filtered tokens.
      Greedy rows (temperature 0): 0 at the argmax (lowest index on ties) and
      -inf elsewhere, whatever top_k / top_p say (the argmax survives both).
      A row without a distribution (see `valid_rows`) is processed as if its
      logits were all zero.

    Outside jit, a call runs one compiled program per input shape and dtype,
    whatever the settings; inside jit it is inlined.
    """
    if not traced(logits, settings):
        return _jitted_logprobs(logits, _params_of(settings))
    scores = _filtered_scores(logits, settings)
    # Every row's max is exactly +0 (the filters keep the max), so this is bit for bit
    # jax.nn.log_softmax(x) without its own max pass over the vocabulary.
    logprobs = scores.x - jnp.log(jnp.sum(jnp.exp(scores.x), axis=-1, keepdims=True))
    return _greedy_rows(scores, 0.0, -jnp.inf, logprobs)


def processed_probs(logits: jax.Array, settings: SamplingConfig | SamplingParams) -> jax.Array:
    """Probabilities after temperature -> top-k -> top-p: the law of `processed_logprobs`.

    Computed as exp(x) / sum(exp(x)) over the processed scores x (one exp per
    entry) rather than as exp(processed_logprobs): ~3x faster at [512, 3,
    50257] (BUILD_NOTES) and at least as accurate (within a few float32 ulp of it, closer to
    the float64 law for small probabilities).

    Args:
      logits: [B, ..., V] array of any float dtype.
      settings: a `SamplingConfig` or per-row `SamplingParams`.

    Returns:
      float32 [B, ..., V]; exactly 0 for filtered tokens and an exact one-hot for
      greedy rows. This is the array to use as q (draft) or p (target) in the
      accept/resample rule, and the one to pass to `sample_from_probs`.

    Outside jit, a call runs one compiled program per input shape and dtype,
    whatever the settings; inside jit it is inlined.
    """
    if not traced(logits, settings):
        return _jitted_probs(logits, _params_of(settings))
    scores = _filtered_scores(logits, settings)
    weights = jnp.exp(scores.x)  # each row's largest is exactly 1, so the sum is >= 1
    return _greedy_rows(scores, 1.0, 0.0, weights / jnp.sum(weights, axis=-1, keepdims=True))


# Called outside jit, the two functions above run as one compiled program per input shape and
# dtype (settings traced; `jaxspec.tracers`): op by op, each of their `lax.cond`s was traced and
# compiled again at every call (~1 s per call at [4, 100] on one core, BUILD_NOTES).
_jitted_logprobs = jax.jit(processed_logprobs)
_jitted_probs = jax.jit(processed_probs)


def sample_from_probs(key: jax.Array, probs: jax.Array) -> jax.Array:
    """Draws one token per leading index from exactly `probs` (exponential race).

    argmax_v probs[v] / E[v] with E[v] ~ Exp(1) i.i.d. picks v with probability
    probs[v] / sum(probs), so rows need not be normalised (a residual
    max(0, p - q) can be passed as is). Tokens with probs == 0 are never
    picked. The Exp(1) draws come from 64 random bits each (`draws`): never 0
    (which would let any token win) and fine enough that a token at 1e-19 of
    the top token's probability still wins at its rate.

    Args:
      key: a PRNG key.
      probs: float [..., V], non-negative, each row with positive mass, entries <= 1e18.

    Returns:
      int32 [...] token ids.
    """
    return draws.categorical(key, probs)
