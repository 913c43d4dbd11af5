"""`speculative_sample`: draft K tokens, verify them in one target pass, accept exactly.

Everything runs in one jitted `lax.while_loop`; each iteration is a *round*:

1. Draft: a drafter (`drafters.py`) proposes K tokens per row and the exact
   distributions q they were drawn from: a draft model (one `lax.scan` step
   per token on its cache) or prompt lookup (one-hot q).
2. Verify: one target forward over [last token, d_1..d_K] (K + 1 positions).
3. Accept: one vectorised kernel over [B, K] (`sampling.kernel`, token-wise
   or block verification) keeps the first n drafts and appends one more
   token (resample or bonus).
4. Emit and roll back: rows append n + 1 tokens (fewer at max_new_tokens or
   EOS); the target cache and the drafter's state are rolled back by length.

Cache invariants at the start of a round, for a row with L valid tokens:
- target: holds tokens[0 : L-1] (everything but the last token), so the
  verify chunk starts with the last token and its K + 1 logits are exactly
  p_1..p_{K+1}.
- draft: see `drafters.ModelDrafter`.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp

from jaxspec.generation import common
from jaxspec.generation.drafters import Drafter, ModelDrafter
from jaxspec.models.cache import KVCache
from jaxspec.models.model import Model
from jaxspec.sampling import kernel
from jaxspec.sampling.processing import SamplingConfig, processed_probs

VERIFIERS = {"tokenwise": kernel.verify_tokenwise, "block": kernel.verify_block}


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
    verify: str
    eos_token_id: int | None
    pad_token_id: int
    vocab_size: int


@flax.struct.dataclass
class _State:
    seqs: common.Sequences
    target_cache: KVCache
    draft_state: Any
    key: jax.Array
    num_rounds: jax.Array
    num_drafted: jax.Array
    num_accepted: jax.Array


@functools.partial(jax.jit, static_argnames=("spec",))
def _generate(target: Model, drafter: Drafter, prompt_ids_BxT, prompt_lengths_B, key, spec: _Spec):
    batch, width = prompt_ids_BxT.shape
    k = spec.num_draft_tokens
    cache_length = width + spec.max_new_tokens + k - 1
    target_cache = common.prefill(target, prompt_ids_BxT, prompt_lengths_B, target.init_cache(batch, cache_length))
    draft_state = drafter.init(prompt_ids_BxT, prompt_lengths_B, cache_length)
    zeros_B = jnp.zeros((batch,), jnp.int32)
    state = _State(
        seqs=common.init_sequences(prompt_ids_BxT, prompt_lengths_B, width + spec.max_new_tokens + k + 1),
        target_cache=target_cache,
        draft_state=draft_state,
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
        drafts_BxK, q_BxKxV, draft_state = drafter.propose(state.draft_state, seqs, draft_key, k)

        chunk_BxK1 = jnp.concatenate([common.last_tokens(seqs)[:, None], drafts_BxK], axis=1)
        logits_BxK1xV, target_cache = target(chunk_BxK1, state.target_cache)
        p_BxK1xV = processed_probs(logits_BxK1xV[..., : spec.vocab_size], spec.target_sampling)
        verdict = VERIFIERS[spec.verify](verify_key, drafts_BxK, q_BxKxV, p_BxK1xV)
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

        # Roll back by length. Target: all but the new last token.
        target_len_B = jnp.where(active_B, new_seqs.lengths - 1, state.target_cache.lengths)
        return _State(
            seqs=new_seqs,
            target_cache=target_cache.with_lengths(target_len_B),
            draft_state=drafter.commit(draft_state, seqs.lengths, new_seqs.lengths, active_B, k),
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


def speculative_sample(
    target: Model,
    draft: Model | Drafter,
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
    verify: str = "tokenwise",
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
    draft is greedy or a lookup), so the accept/resample rule is exact for any
    draft settings; they default to the target's.

    Args:
      target: the large `Model`.
      draft: the small `Model`, on the same tokenizer, or any `Drafter`
        (`ModelDrafter`, `NgramDrafter` for draft-free prompt lookup).
      prompt_ids: int [B, T] right-padded ids, or a list of B id lists.
      key: a PRNG key.
      max_new_tokens: N >= 1 tokens to generate per row.
      num_draft_tokens: K >= 1 draft tokens per round.
      temperature, top_k, top_p: target sampling settings (temperature 0 = greedy).
      eos_token_id: a row stops after emitting it (nothing after EOS is emitted).
      prompt_lengths: int [B] real lengths of right-padded `prompt_ids`.
      pad_token_id: fills `tokens` after each row's end.
      verify: "tokenwise" (Leviathan et al.: accept each draft with
        min(1, p/q), stop at the first rejection) or "block" (Sun et al. 2024:
        decides the K drafts jointly; never fewer accepted tokens in
        expectation, equally exact, same cost).
      draft_temperature, draft_top_k, draft_top_p: optional settings of a draft
        `Model` (default: the target's).
      shared_vocab_size: ids both models sample over, when their vocab sizes
        differ only by padding rows.

    Returns:
      A `SpeculativeResult` (tokens, lengths, provenance and per-row counts).

    Raises:
      ValueError: before any compute, for K < 1, N < 1, temperature < 0, top_k < 0,
        top_p outside (0, 1], an unknown `verify`, a vocabulary mismatch,
        out-of-vocabulary prompt ids, or prompt + N + K - 1 beyond either
        model's context.
    """
    k = common.check_positive_int("num_draft_tokens", num_draft_tokens)
    n = common.check_positive_int("max_new_tokens", max_new_tokens)
    if verify not in VERIFIERS:
        raise ValueError(f"verify={verify!r} is not a verification rule; use one of {sorted(VERIFIERS)}.")
    target_sampling = common.sampling_config(temperature, top_k, top_p)
    drafter = _as_drafter(draft, target_sampling, draft_temperature, draft_top_k, draft_top_p, shared_vocab_size)
    vocab = drafter.vocab_size_for(target)
    drafter = drafter.replace(vocab_size=vocab)
    prompts = common.prepare_prompts(prompt_ids, prompt_lengths, vocab, pad_token_id)
    needed = prompts.max_length + n + k - 1
    detail = "longest prompt + max_new_tokens + num_draft_tokens - 1"
    common.check_context(target, "target", needed, detail)
    drafter.check_context(needed, detail)
    spec = _Spec(
        max_new_tokens=n,
        num_draft_tokens=k,
        target_sampling=target_sampling,
        verify=verify,
        eos_token_id=common.check_eos(eos_token_id, vocab),
        pad_token_id=int(pad_token_id),
        vocab_size=vocab,
    )
    return _generate(target, drafter, jnp.asarray(prompts.ids), jnp.asarray(prompts.lengths), key, spec)


def _as_drafter(draft, target_sampling, draft_temperature, draft_top_k, draft_top_p, shared_vocab_size) -> Drafter:
    """A `Model` becomes a `ModelDrafter` with the draft settings; a drafter passes through."""
    if isinstance(draft, Model):
        sampling = common.sampling_config(
            target_sampling.temperature if draft_temperature is None else draft_temperature,
            target_sampling.top_k if draft_top_k is None else draft_top_k,
            target_sampling.top_p if draft_top_p is None else draft_top_p,
        )
        return ModelDrafter(model=draft, sampling=sampling, shared_vocab_size=shared_vocab_size)
    if not all(hasattr(draft, f) for f in ("init", "propose", "commit", "vocab_size_for", "replace")):
        raise TypeError(
            f"draft must be a jaxspec Model or a Drafter (e.g. NgramDrafter()), got {type(draft).__name__}."
        )
    given = {"draft_temperature": draft_temperature, "draft_top_k": draft_top_k, "draft_top_p": draft_top_p}
    given = [name for name, value in given.items() if value is not None]
    if given or shared_vocab_size is not None:
        raise ValueError(
            f"{', '.join(given) or 'shared_vocab_size'} only applies when draft is a Model; "
            f"configure the {type(draft).__name__} itself instead."
        )
    return draft
