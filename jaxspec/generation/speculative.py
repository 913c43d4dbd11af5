"""`speculative_sample`: draft K tokens, verify them in one target pass, accept exactly.

Everything runs in one jitted `lax.while_loop`; each iteration is a *round*:

1. Draft: K draft tokens, one per step of a `lax.scan` on the draft's cache.
2. Verify: one target forward over [last token, d_1..d_K] (K + 1 positions).
3. Accept: the vectorised kernel (`sampling.kernel.verify_tokenwise`) keeps
   the first n drafts and appends one more token (resample or bonus).
4. Emit and roll back: rows append n + 1 tokens (fewer at max_new_tokens or
   EOS); both caches are rolled back by setting their lengths.

Cache invariants at the start of a round, for a row with L valid tokens:
- target: holds tokens[0 : L-1] (everything but the last token), so the
  verify chunk starts with the last token and its K + 1 logits are exactly
  p_1..p_{K+1}.
- draft: holds tokens[0 : D] with D in {L-2, L-1}. The first draft step feeds
  the 2-token chunk tokens[D : D+2] and reads the logits of the last real one.
  D = L-2 happens after a fully accepted block: d_K was sampled but never fed
  to the draft, so its key/value entry is missing (the bug of vLLM #4212);
  the 2-token chunk writes it before anything reads it. When D = L-1 the
  chunk's second token is padding: it is written past the length and
  overwritten by the next step.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp

from jaxspec.generation import common
from jaxspec.models.cache import KVCache
from jaxspec.models.model import Model
from jaxspec.sampling.kernel import verify_tokenwise
from jaxspec.sampling.processing import SamplingConfig, processed_probs, sample_from_probs


@flax.struct.dataclass
class SpeculativeResult:
    """Output of `speculative_sample` (all arrays on device).

    Attributes:
      tokens: int32 [B, N] generated ids; row b is valid in tokens[b, :lengths[b]]
        and padded with pad_token_id after.
      lengths: int32 [B] generated tokens per row (< N only if EOS came first).
      provenance: int8 [B, N] per generated token: `ACCEPTED_DRAFT`,
        `RESAMPLED` (target sample after a rejection) or `BONUS` (after all K
        were accepted); 0 after the row's end. See `common.PROVENANCE_NAMES`.
      num_rounds: int32 [B] target verification calls (rounds) per row.
      num_drafted: int32 [B] draft tokens proposed (K per round).
      num_accepted: int32 [B] draft tokens the rule accepted.
    """

    tokens: jax.Array
    lengths: jax.Array
    provenance: jax.Array
    num_rounds: jax.Array
    num_drafted: jax.Array
    num_accepted: jax.Array

    @property
    def acceptance_rate(self) -> jax.Array:
        """float32 [B]: accepted / drafted draft tokens."""
        return self.num_accepted / jnp.maximum(self.num_drafted, 1)

    @property
    def tokens_per_round(self) -> jax.Array:
        """float32 [B]: generated tokens per target call."""
        return self.lengths / jnp.maximum(self.num_rounds, 1)


@dataclasses.dataclass(frozen=True)
class _Spec:
    """Everything static about one compiled speculative loop."""

    max_new_tokens: int
    num_draft_tokens: int
    target_sampling: SamplingConfig
    draft_sampling: SamplingConfig
    eos_token_id: int | None
    pad_token_id: int
    vocab_size: int


@flax.struct.dataclass
class _State:
    seqs: common.Sequences
    target_cache: KVCache
    draft_cache: KVCache
    key: jax.Array
    num_rounds: jax.Array
    num_drafted: jax.Array
    num_accepted: jax.Array


def _draft_block(draft: Model, seqs: common.Sequences, cache: KVCache, key: jax.Array, spec: _Spec):
    """Samples K draft tokens per row.

    Returns:
      tokens int32 [B, K], q float32 [B, K, V] (exactly what each token was
      drawn from), and the draft cache holding tokens[0 : L-1+K-1].
    """
    k = spec.num_draft_tokens
    vocab = spec.vocab_size
    start_B = cache.lengths  # L-2 or L-1, see the module docstring
    chunk_Bx2 = jax.vmap(lambda row, s: jax.lax.dynamic_slice(row, (s,), (2,)))(seqs.tokens, start_B)
    logits_Bx2xV, cache = draft(chunk_Bx2, cache)
    last_B = seqs.lengths - 1 - start_B  # 1 if D = L-2, else 0
    logits_BxV = jnp.take_along_axis(logits_Bx2xV, last_B[:, None, None], axis=1)[:, 0, :vocab]
    cache = cache.with_lengths(seqs.lengths)
    keys = jax.random.split(key, k)
    q_BxV = processed_probs(logits_BxV, spec.draft_sampling)
    token_B = sample_from_probs(keys[0], q_BxV)

    def step(carry, step_key):
        cache, token_B = carry
        logits_Bx1xV, cache = draft(token_B[:, None], cache)
        q_BxV = processed_probs(logits_Bx1xV[:, 0, :vocab], spec.draft_sampling)
        next_B = sample_from_probs(step_key, q_BxV)
        return (cache, next_B), (next_B, q_BxV)

    (cache, _), (rest_tokens, rest_q) = jax.lax.scan(step, (cache, token_B), keys[1:])
    tokens_BxK = jnp.concatenate([token_B[:, None], jnp.moveaxis(rest_tokens, 0, 1)], axis=1)
    q_BxKxV = jnp.concatenate([q_BxV[:, None], jnp.moveaxis(rest_q, 0, 1)], axis=1)
    return tokens_BxK, q_BxKxV, cache


@functools.partial(jax.jit, static_argnames=("spec",))
def _generate(target: Model, draft: Model, prompt_ids_BxT, prompt_lengths_B, key, spec: _Spec):
    batch, width = prompt_ids_BxT.shape
    k = spec.num_draft_tokens
    cache_length = width + spec.max_new_tokens + k - 1
    target_cache = common.prefill(target, prompt_ids_BxT, prompt_lengths_B, target.init_cache(batch, cache_length))
    draft_cache = common.prefill(draft, prompt_ids_BxT, prompt_lengths_B, draft.init_cache(batch, cache_length))
    zeros_B = jnp.zeros((batch,), jnp.int32)
    state = _State(
        seqs=common.init_sequences(prompt_ids_BxT, prompt_lengths_B, width + spec.max_new_tokens + k + 1),
        target_cache=target_cache,
        draft_cache=draft_cache,
        key=key,
        num_rounds=zeros_B,
        num_drafted=zeros_B,
        num_accepted=zeros_B,
    )
    slot_E = jnp.arange(k + 1, dtype=jnp.int32)

    def round_(state: _State) -> _State:
        key, draft_key, verify_key = jax.random.split(state.key, 3)
        seqs = state.seqs
        active_B = ~seqs.done
        drafts_BxK, q_BxKxV, draft_cache = _draft_block(draft, seqs, state.draft_cache, draft_key, spec)

        chunk_BxK1 = jnp.concatenate([common.last_tokens(seqs)[:, None], drafts_BxK], axis=1)
        logits_BxK1xV, target_cache = target(chunk_BxK1, state.target_cache)
        p_BxK1xV = processed_probs(logits_BxK1xV[..., : spec.vocab_size], spec.target_sampling)
        verdict = verify_tokenwise(verify_key, drafts_BxK, q_BxKxV, p_BxK1xV)
        n_B = verdict.num_accepted

        # Emitted block: d_1..d_n then the resample/bonus token at slot n.
        at_n_BxE = slot_E[None, :] == n_B[:, None]
        block_BxE = jnp.where(at_n_BxE, verdict.next_token[:, None], jnp.pad(drafts_BxK, ((0, 0), (0, 1))))
        last_kind_B = jnp.where(n_B == k, common.BONUS, common.RESAMPLED)
        provenance_BxE = jnp.where(at_n_BxE, last_kind_B[:, None], common.ACCEPTED_DRAFT).astype(jnp.int8)
        new_seqs, count_B = common.emit(
            seqs,
            block_BxE,
            n_B + 1,
            provenance_BxE,
            max_new_tokens=spec.max_new_tokens,
            eos_token_id=spec.eos_token_id,
        )

        # Roll back by length. Target: all but the new last token. Draft: it
        # holds tokens[0:L] plus d_1..d_{K-1}; keep what is still valid.
        old_len_B = seqs.lengths
        new_len_B = new_seqs.lengths
        target_len_B = jnp.where(active_B, new_len_B - 1, state.target_cache.lengths)
        draft_len_B = jnp.where(active_B, jnp.minimum(old_len_B + k - 1, new_len_B - 1), state.draft_cache.lengths)
        return _State(
            seqs=new_seqs,
            target_cache=target_cache.with_lengths(target_len_B),
            draft_cache=draft_cache.with_lengths(draft_len_B),
            key=key,
            num_rounds=state.num_rounds + active_B,
            num_drafted=state.num_drafted + active_B * k,
            num_accepted=state.num_accepted + jnp.where(active_B, n_B, 0),
        )

    state = jax.lax.while_loop(lambda s: ~jnp.all(s.seqs.done), round_, state)
    tokens, provenance = common.generated_tokens(state.seqs, prompt_lengths_B, spec.max_new_tokens, spec.pad_token_id)
    return SpeculativeResult(
        tokens=tokens,
        lengths=state.seqs.num_generated,
        provenance=provenance,
        num_rounds=state.num_rounds,
        num_drafted=state.num_drafted,
        num_accepted=state.num_accepted,
    )


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
        shared = common.check_positive_int("shared_vocab_size", shared_vocab_size)
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


def speculative_sample(
    target: Model,
    draft: Model,
    prompt_ids: Any,
    *,
    key: jax.Array,
    max_new_tokens: int,
    num_draft_tokens: int = 4,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    eos_token_id: int | None = None,
    prompt_lengths: Any = None,
    pad_token_id: int = 0,
    draft_temperature: float | None = None,
    draft_top_k: int | None = None,
    draft_top_p: float | None = None,
    shared_vocab_size: int | None = None,
) -> SpeculativeResult:
    """Speculative sampling whose output distribution is exactly the target's.

    The preserved distribution is the target's *processed* distribution: its
    logits after temperature -> top-k -> top-p, exactly what
    `autoregressive_sample(target, ...)` with the same settings samples from
    (temperature 0: the target's greedy argmax sequence). The draft's q is the
    distribution each draft token was actually drawn from (one-hot when the
    draft is greedy), so the accept/resample rule is exact for any draft
    settings; they default to the target's.

    Args:
      target: the large `Model`.
      draft: the small `Model`, on the same tokenizer.
      prompt_ids: int [B, T] right-padded ids, or a list of B id lists.
      key: a PRNG key.
      max_new_tokens: N >= 1 tokens to generate per row.
      num_draft_tokens: K >= 1 draft tokens per round.
      temperature, top_k, top_p: target sampling settings (temperature 0 = greedy).
      eos_token_id: a row stops after emitting it (nothing after EOS is emitted).
      prompt_lengths: int [B] real lengths of right-padded `prompt_ids`.
      pad_token_id: fills `tokens` after each row's end.
      draft_temperature, draft_top_k, draft_top_p: optional draft settings.
      shared_vocab_size: ids both models sample over, when their vocab sizes
        differ only by padding rows.

    Returns:
      A `SpeculativeResult` (tokens, lengths, provenance and per-row counts).

    Raises:
      ValueError: before any compute, for K < 1, N < 1, temperature < 0, top_k < 0,
        top_p outside (0, 1], a vocabulary mismatch, out-of-vocabulary prompt
        ids, or prompt + N + K - 1 beyond either model's context.
    """
    k = common.check_positive_int("num_draft_tokens", num_draft_tokens)
    n = common.check_positive_int("max_new_tokens", max_new_tokens)
    target_sampling = common.sampling_config(temperature, top_k, top_p)
    draft_sampling = common.sampling_config(
        temperature if draft_temperature is None else draft_temperature,
        top_k if draft_top_k is None else draft_top_k,
        top_p if draft_top_p is None else draft_top_p,
    )
    vocab = shared_vocabulary(target, draft, shared_vocab_size)
    prompts = common.prepare_prompts(prompt_ids, prompt_lengths, vocab, pad_token_id)
    needed = prompts.max_length + n + k - 1
    detail = "longest prompt + max_new_tokens + num_draft_tokens - 1"
    common.check_context(target, "target", needed, detail)
    common.check_context(draft, "draft", needed, detail)
    spec = _Spec(
        max_new_tokens=n,
        num_draft_tokens=k,
        target_sampling=target_sampling,
        draft_sampling=draft_sampling,
        eos_token_id=common.check_eos(eos_token_id, vocab),
        pad_token_id=int(pad_token_id),
        vocab_size=vocab,
    )
    return _generate(target, draft, jnp.asarray(prompts.ids), jnp.asarray(prompts.lengths), key, spec)
