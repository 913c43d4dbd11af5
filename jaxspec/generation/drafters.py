"""Drafters: what proposes the K tokens that the target verifies.

A drafter is a pytree (a `flax.struct.dataclass`): its arrays (e.g. a draft
model's params) are traced by jit, its static fields (settings) are part of
the compiled loop's identity. `speculative_sample` drives any drafter through
three pure functions, all called inside the on-device loop:

- `init(prompt_ids_BxT, prompt_lengths_B, cache_length) -> state`: once,
  after the prompt is known (e.g. prefill a KV cache). `state` is a pytree.
- `propose(state, seqs, key, num_draft_tokens) -> (tokens_BxK, q_BxKxV, state)`:
  K tokens per row *and exactly the distributions they were drawn from*. A
  deterministic proposal (greedy, lookup) has a one-hot q. The accept/resample
  kernels are exact for any q that is truthful, so every drafter inherits the
  exactness of the loop.
- `commit(state, old_lengths_B, new_lengths_B, active_B, num_draft_tokens) -> state`:
  after verification, drop what the rejected drafts left behind (a cache is
  rolled back by length, never copied).

Host-side, before any compute: `vocab_size_for(target)` (the shared ids) and
`check_context(needed)`.

Three drafters ship: `ModelDrafter` (a small LM with its own KV cache),
`NgramDrafter` (prompt lookup: no model at all) and, in `self_drafter.py`,
`SelfDrafter` (the target through a subset of its own layers).
"""

from __future__ import annotations

from typing import Any, Protocol

import flax.struct
import jax
import jax.numpy as jnp

from jaxspec.generation.emit import Sequences
from jaxspec.generation.inputs import check_context, check_positive_int
from jaxspec.generation.verify import prefill
from jaxspec.models.cache import KVCache
from jaxspec.models.model import Model
from jaxspec.sampling.processing import SamplingConfig, SamplingParams, processed_probs, sample_from_probs

__all__ = ["Drafter", "ModelDrafter", "NgramDrafter"]


class Drafter(Protocol):
    """The interface `speculative_sample` drives (see the module docstring)."""

    def vocab_size_for(self, target: Model) -> int: ...

    def check_context(self, needed: int, detail: str) -> None: ...

    def init(self, prompt_ids_BxT: jax.Array, prompt_lengths_B: jax.Array, cache_length: int) -> Any: ...

    def propose(
        self, state: Any, seqs: Sequences, key: jax.Array, num_draft_tokens: int
    ) -> tuple[jax.Array, jax.Array, Any]: ...

    def commit(
        self,
        state: Any,
        old_lengths_B: jax.Array,
        new_lengths_B: jax.Array,
        active_B: jax.Array,
        num_draft_tokens: int,
    ) -> Any: ...


def confident_length(q_BxKxV: jax.Array, min_confidence: jax.Array) -> jax.Array:
    """int32 [B]: drafts a row keeps under the confidence rule of dynamic draft length.

    A row always keeps its first draft and stops before draft i (i >= 1) once
    the draft's largest probability max_v q_i(v) falls below `min_confidence`:
    1 + the number of leading positions i in 1..K-1 at or above it. The rule
    reads only the draft's own distributions, so verification stays exact
    (`jaxspec.sampling.accept`, dynamic draft length); a skipped draft step's
    q is all zeros and counts as below.

    >>> q = jnp.array([[[0.9, 0.1], [0.6, 0.4], [0.95, 0.05]], [[0.5, 0.5], [0.9, 0.1], [0.9, 0.1]]])
    >>> confident_length(q, 0.7).tolist()
    [1, 3]
    """
    confident_BxKm1 = jnp.max(q_BxKxV[:, 1:], axis=-1) >= min_confidence
    return 1 + jnp.sum(jnp.cumprod(confident_BxKm1.astype(jnp.int32), axis=1), axis=1)


def _padding_multiple(small: int, large: int) -> bool:
    """True if `large` is `small` rounded up to a multiple of a power of two <= 128."""
    return any(large == -(-small // m) * m for m in (8, 16, 32, 64, 128))


def shared_vocabulary(target: Model, draft: Model, shared_vocab_size: int | None) -> int:
    """The token ids both models sample over.

    Equal vocab sizes need nothing. A draft whose embedding only pads the
    target's (e.g. 50272 = 50257 rounded up to a multiple of 16) is accepted and
    its padding ids are masked out of q. Anything else is refused unless the
    caller states the shared vocabulary explicitly.
    """
    vt, vd = target.vocab_size, draft.vocab_size
    if shared_vocab_size is not None:
        shared = check_positive_int("shared_vocab_size", shared_vocab_size)
        if shared > min(vt, vd):
            raise ValueError(f"shared_vocab_size={shared} exceeds a model's vocab_size (target {vt}, draft {vd}).")
        return shared
    if vt == vd or (vd > vt and _padding_multiple(vt, vd)):
        return vt
    raise ValueError(
        f"draft vocab_size={vd} differs from target vocab_size={vt}: speculative sampling needs both "
        "models on one tokenizer. If one vocabulary only pads the other, pass shared_vocab_size=<the "
        "tokenizer's size>."
    )


@flax.struct.dataclass
class ModelDrafter:
    """A small language model that samples K tokens with its own KV cache.

    Attributes:
      model: the draft `Model` (traced: its params are jit arguments).
      sampling: how the draft samples; q is exactly this processed law. A
        `SamplingParams` (traced, one setting per row), a `SamplingConfig`
        (one setting for all rows), or None for the target's temperature and
        top-k without top-p (`speculative.draft_settings`); `speculative_sample`
        turns the last two into per-row arrays.
      shared_vocab_size: ids both models sample over, when they differ only by
        padding rows (None: decided by `shared_vocabulary`).
      stop_below: optional float32 scalar, dynamic draft length: once every
        row's draft confidence fell below it (`confident_length`), the
        remaining draft steps of the round are skipped (`lax.cond`). The
        loop sets it from `speculative_sample(min_draft_confidence=...)`.

    State: the draft's `KVCache`. Cache invariant at the start of a round, for
    a row with L valid tokens: it holds tokens[0 : D] with D in {L-2, L-1}.
    The first draft step feeds the 2-token chunk tokens[D : D+2] and reads the
    logits of the last real one. D = L-2 happens after a fully accepted block:
    d_K was sampled but never fed to the draft, so its key/value entry is
    missing (the bug of vLLM #4212); the 2-token chunk writes it before
    anything reads it. When D = L-1 the chunk's second token is padding: it is
    written past the length and overwritten by the next step.
    """

    model: Model
    sampling: SamplingParams | SamplingConfig | None = None
    shared_vocab_size: int | None = flax.struct.field(pytree_node=False, default=None)
    vocab_size: int | None = flax.struct.field(pytree_node=False, default=None)
    stop_below: jax.Array | None = None

    def vocab_size_for(self, target: Model) -> int:
        return shared_vocabulary(target, self.model, self.shared_vocab_size)

    def check_context(self, needed: int, detail: str) -> None:
        check_context(self.model, "draft", needed, detail)

    def init(self, prompt_ids_BxT, prompt_lengths_B, cache_length: int) -> KVCache:
        cache = self.model.init_cache(prompt_ids_BxT.shape[0], cache_length)
        return prefill(self.model, prompt_ids_BxT, prompt_lengths_B, cache)

    def propose(self, state: KVCache, seqs: Sequences, key: jax.Array, num_draft_tokens: int):
        """Returns tokens int32 [B, K], q float32 [B, K, V], and the cache
        holding tokens[0 : L-1+K-1] (d_K is never fed)."""
        vocab = self.vocab_size
        cache = state
        start_B = cache.lengths  # L-2 or L-1, see the class docstring
        chunk_Bx2 = jax.vmap(lambda row, s: jax.lax.dynamic_slice(row, (s,), (2,)))(seqs.tokens, start_B)
        logits_Bx2xV, cache = self.model(chunk_Bx2, cache)
        last_B = seqs.lengths - 1 - start_B  # 1 if D = L-2, else 0
        logits_BxV = jnp.take_along_axis(logits_Bx2xV, last_B[:, None, None], axis=1)[:, 0, :vocab]
        cache = cache.with_lengths(seqs.lengths)
        keys = jax.random.split(key, num_draft_tokens)
        q_BxV = processed_probs(logits_BxV, self.sampling)
        token_B = sample_from_probs(keys[0], q_BxV)

        def draft_step(cache, token_B, step_key):
            logits_Bx1xV, cache = self.model(token_B[:, None], cache)
            q_BxV = processed_probs(logits_Bx1xV[:, 0, :vocab], self.sampling)
            return cache, sample_from_probs(step_key, q_BxV), q_BxV

        def step(carry, step_key):
            cache, token_B, live_B = carry
            if self.stop_below is None:
                cache, next_B, q_BxV = draft_step(cache, token_B, step_key)
            else:  # every row stopped: skip the step; its outputs lie past each row's length and are ignored
                skipped = lambda cache, token_B, _: (cache, token_B, jnp.zeros((token_B.shape[0], vocab), jnp.float32))
                cache, next_B, q_BxV = jax.lax.cond(jnp.any(live_B), draft_step, skipped, cache, token_B, step_key)
                live_B = live_B & (jnp.max(q_BxV, axis=-1) >= self.stop_below)
            return (cache, next_B, live_B), (next_B, q_BxV)

        live_B = jnp.ones(token_B.shape, bool)
        (cache, _, _), (rest_tokens, rest_q) = jax.lax.scan(step, (cache, token_B, live_B), keys[1:])
        tokens_BxK = jnp.concatenate([token_B[:, None], jnp.moveaxis(rest_tokens, 0, 1)], axis=1)
        q_BxKxV = jnp.concatenate([q_BxV[:, None], jnp.moveaxis(rest_q, 0, 1)], axis=1)
        return tokens_BxK, q_BxKxV, cache

    def commit(self, state: KVCache, old_lengths_B, new_lengths_B, active_B, num_draft_tokens: int) -> KVCache:
        # The cache holds tokens[0:L] plus d_1..d_{K-1}; keep what is still valid.
        kept_B = jnp.minimum(old_lengths_B + num_draft_tokens - 1, new_lengths_B - 1)
        return state.with_lengths(jnp.where(active_B, kept_B, state.lengths))


@flax.struct.dataclass
class NgramDrafter:
    """Prompt lookup: propose what followed the last n tokens the last time.

    For each row, the longest n in max_ngram..min_ngram whose last-n-token
    suffix occurred earlier in prompt + generated text wins; its most recent
    earlier occurrence (the largest start j < L - n) gives the proposal
    tokens[j+n], tokens[j+n+1], ... continued periodically with period
    L - n - j once it reaches the present (so a repeating pattern keeps
    repeating). With no match at all, the row proposes its last token K times
    (the target simply rejects what it disagrees with). As in transformers'
    `prompt_lookup_num_tokens` and vLLM's n-gram speculator, but as a pure
    function of the on-device token buffer, O(B * S * n) compares per round.

    The proposal is deterministic, so q is one-hot: the same exact kernels apply.

    Example: after ``7 1 2 3 9 1 2`` the suffix ``1 2`` last occurred at the
    start, so the lookup proposes what followed it, ``3 9``, and then repeats
    the period ``3 9 1 2``:

    >>> import jax.numpy as jnp
    >>> NgramDrafter(max_ngram=2).lookup(jnp.array([[7, 1, 2, 3, 9, 1, 2, 0]]), jnp.array([7]), 5).tolist()
    [[3, 9, 1, 2, 3]]

    Attributes (all static):
      max_ngram: longest suffix tried (>= min_ngram).
      min_ngram: shortest suffix that counts as a match (>= 1).
      vocab_size: set by `speculative_sample` (the target's vocabulary).
    """

    max_ngram: int = flax.struct.field(pytree_node=False, default=3)
    min_ngram: int = flax.struct.field(pytree_node=False, default=1)
    vocab_size: int | None = flax.struct.field(pytree_node=False, default=None)

    def __post_init__(self):
        check_positive_int("min_ngram", self.min_ngram)
        check_positive_int("max_ngram", self.max_ngram)
        if self.max_ngram < self.min_ngram:
            raise ValueError(f"max_ngram={self.max_ngram} must be >= min_ngram={self.min_ngram}.")

    def vocab_size_for(self, target: Model) -> int:
        return target.vocab_size

    def check_context(self, needed: int, detail: str) -> None:
        del needed, detail  # no positions of its own

    def init(self, prompt_ids_BxT, prompt_lengths_B, cache_length: int) -> tuple:
        del prompt_ids_BxT, prompt_lengths_B, cache_length
        return ()

    def lookup(self, tokens_BxS: jax.Array, lengths_B: jax.Array, num_draft_tokens: int) -> jax.Array:
        """int32 [B, K] proposals for buffers tokens_BxS valid up to lengths_B."""
        width = tokens_BxS.shape[1]
        pos_S = jnp.arange(width, dtype=jnp.int32)
        best_start_B = jnp.full(lengths_B.shape, -1, jnp.int32)  # j of the chosen match
        best_n_B = jnp.zeros(lengths_B.shape, jnp.int32)
        for n in range(self.min_ngram, self.max_ngram + 1):  # static, a few sizes
            match_BxS = (pos_S[None, :] < (lengths_B - n)[:, None]) & (lengths_B >= n + 1)[:, None]
            for t in range(n):
                suffix_B = jnp.take_along_axis(tokens_BxS, jnp.maximum(lengths_B - n + t, 0)[:, None], axis=1)
                shifted_BxS = jnp.roll(tokens_BxS, -t, axis=1)  # shifted[j] = tokens[j + t]
                match_BxS &= shifted_BxS == suffix_B
            start_B = jnp.max(jnp.where(match_BxS, pos_S[None, :], -1), axis=1)
            found_B = start_B >= 0  # a longer n overrides a shorter one
            best_start_B = jnp.where(found_B, start_B, best_start_B)
            best_n_B = jnp.where(found_B, n, best_n_B)
        found_B = best_start_B >= 0
        period_B = jnp.maximum(lengths_B - best_n_B - best_start_B, 1)
        offset_K = jnp.arange(num_draft_tokens, dtype=jnp.int32)
        source_BxK = (best_start_B + best_n_B)[:, None] + offset_K[None, :] % period_B[:, None]
        source_BxK = jnp.where(found_B[:, None], source_BxK, (lengths_B - 1)[:, None])
        return jnp.take_along_axis(tokens_BxS, source_BxK, axis=1)

    def propose(self, state: tuple, seqs: Sequences, key: jax.Array, num_draft_tokens: int):
        del key  # deterministic
        tokens_BxK = self.lookup(seqs.tokens, seqs.lengths, num_draft_tokens)
        return tokens_BxK, jax.nn.one_hot(tokens_BxK, self.vocab_size, dtype=jnp.float32), state

    def commit(self, state: tuple, old_lengths_B, new_lengths_B, active_B, num_draft_tokens: int) -> tuple:
        return state
