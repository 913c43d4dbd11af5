"""`speculative_sample`: draft K tokens, verify them in one target pass, accept exactly.

Everything runs in one jitted `lax.while_loop`; each iteration is a *round*:

1. Draft: a drafter (`drafters.py`, `self_drafter.py`) proposes K tokens per row and the exact
   distributions q they were drawn from: a draft model (one `lax.scan` step
   per token on its cache) or prompt lookup (one-hot q).
2. Verify: one target forward over [last token, d_1..d_K] (K + 1 positions)
   (`verify.py`).
3. Accept: one vectorised kernel over [B, K] (`sampling/accept.py`, token-wise
   or block verification, registered in `VERIFICATION_RULES`) keeps the first n drafts and appends one more
   token (resample or bonus).
4. Emit and roll back (`emit.py`): rows append n + 1 tokens (fewer at max_new_tokens or
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
import numpy as np

from jaxspec.generation.drafters import Drafter, ModelDrafter, confident_length, shared_vocabulary
from jaxspec.generation.emit import (
    Sequences,
    emit,
    generated_tokens,
    init_sequences,
    round_provenance,
    stop_at_first_invalid,
    target_lengths_after,
)
from jaxspec.generation.inputs import (
    SpecialIds,
    check_context,
    check_positive_int,
    check_probability,
    prepare_prompts,
    row_settings,
    special_ids,
)
from jaxspec.generation.self_drafter import SelfDrafter
from jaxspec.generation.verify import prefill, score_drafts
from jaxspec.models.cache import KVCache
from jaxspec.models.model import Model
from jaxspec.sampling import accept
from jaxspec.sampling.processing import SamplingConfig, SamplingParams, valid_rows

# Kept for callers of the old name: the registry is `jaxspec.sampling.accept.VERIFICATION_RULES`.
VERIFIERS = accept.VERIFICATION_RULES


@flax.struct.dataclass
class SpeculativeResult:
    """Output of `speculative_sample` (all arrays on device).

    Attributes:
      tokens: int32 [B, N] generated ids; row b is valid in tokens[b, :lengths[b]]
        and padded with pad_token_id after.
      lengths: int32 [B] generated tokens per row (< N only if EOS came first).
      provenance: int8 [B, N] per generated token: `ACCEPTED_DRAFT`,
        `RESAMPLED` (target sample after a rejection) or `BONUS` (after all K
        were accepted); 0 after the row's end. See `PROVENANCE_NAMES`.
      num_rounds: int32 [B] target verification calls (rounds) per row.
      num_drafted: int32 [B] draft tokens proposed (K per round).
      num_accepted: int32 [B] draft tokens the rule accepted.
      round_histogram: int32 [B, K + 1], rounds that kept exactly j drafts
        (column j); column K counts the rounds that ended with a bonus token,
        the others ended with a rejection. (A round stopped by
        `nonfinite_logits` is in neither.) See `acceptance_per_draft` and
        `acceptance_by_position`.
      nonfinite_logits: bool [B], the row stopped early because the target's
        logits at a position it needed had no distribution (NaN, +inf or all
        -inf: e.g. a broken checkpoint); its tokens up to `lengths` are valid.
        (A draft whose logits have none proposes from the uniform law instead:
        q stays truthful, so the output stays exact, only slower.)
    """

    tokens: jax.Array
    lengths: jax.Array
    provenance: jax.Array
    num_rounds: jax.Array
    num_drafted: jax.Array
    num_accepted: jax.Array
    round_histogram: jax.Array
    nonfinite_logits: jax.Array

    @property
    def acceptance_rate(self) -> jax.Array:
        """float32 [B]: accepted / drafted draft tokens (drafts after a rejection count as not accepted)."""
        return self.num_accepted / jnp.maximum(self.num_drafted, 1)

    @property
    def num_rejections(self) -> jax.Array:
        """int32 [B]: rounds that ended with a rejection (kept fewer than K drafts)."""
        return jnp.sum(self.round_histogram[:, :-1], axis=1)

    @property
    def acceptance_per_draft(self) -> jax.Array:
        """float32 [B]: accepted / (accepted + rejections), the per-draft alpha of Leviathan et al.

        Unlike `acceptance_rate` it ignores the drafts never judged because an
        earlier one was rejected; under token-wise verification it estimates
        E[min(1, p/q)], the alpha in (1 - alpha^(K+1)) / (1 - alpha).
        """
        return self.num_accepted / jnp.maximum(self.num_accepted + self.num_rejections, 1)

    @property
    def acceptance_by_position(self) -> jax.Array:
        """float32 [B, K]: for draft position i, the fraction of the rounds that
        judged it (all earlier drafts kept) in which it was kept too."""
        kept_at_least = jnp.cumsum(self.round_histogram[:, ::-1], axis=1)[:, ::-1]  # [B, K+1]: rounds with n >= j
        return kept_at_least[:, 1:] / jnp.maximum(kept_at_least[:, :-1], 1)

    @property
    def tokens_per_round(self) -> jax.Array:
        """float32 [B]: generated tokens per target call."""
        return self.lengths / jnp.maximum(self.num_rounds, 1)


@flax.struct.dataclass
class RoundCounts:
    """The per-row counters a speculative loop carries from round to round (chains and trees).

    Attributes:
      num_rounds, num_drafted, num_accepted: int32 [B], as in `SpeculativeResult`.
      round_histogram: int32 [B, D + 1], rounds that kept exactly j drafts, D
        the most a round can keep (K for a chain, the depth for a tree).
    """

    num_rounds: jax.Array
    num_drafted: jax.Array
    num_accepted: jax.Array
    round_histogram: jax.Array

    @classmethod
    def zeros(cls, batch: int, max_kept: int) -> RoundCounts:
        zeros_B = jnp.zeros((batch,), jnp.int32)
        return cls(zeros_B, zeros_B, zeros_B, jnp.zeros((batch, max_kept + 1), jnp.int32))

    def after_round(self, active_B, drafted, num_accepted_B, kept_BxE, nonfinite_B) -> RoundCounts:
        """Adds one round of the active rows.

        Args:
          active_B: bool [B], rows that took part in the round.
          drafted: int32 [B] or a Python int, drafts each row proposed.
          num_accepted_B: int32 [B], drafts the rule kept.
          kept_BxE: bool [B, D + 1], one-hot of the number kept (`round_provenance`).
          nonfinite_B: bool [B], rows the round stopped on invalid target logits: such a
            round ended with neither a rejection nor a bonus, so the histogram leaves it out.
        """
        return RoundCounts(
            num_rounds=self.num_rounds + active_B,
            num_drafted=self.num_drafted + active_B * drafted,
            num_accepted=self.num_accepted + jnp.where(active_B, num_accepted_B, 0),
            round_histogram=self.round_histogram
            + (active_B[:, None] & ~nonfinite_B[:, None] & kept_BxE).astype(jnp.int32),
        )


def speculative_result(
    seqs: Sequences, counts: RoundCounts, prompt_lengths_B: jax.Array, max_new_tokens: int, pad_token_id
) -> SpeculativeResult:
    """The `SpeculativeResult` of a finished loop: its generated tokens and its counters."""
    tokens, provenance = generated_tokens(seqs, prompt_lengths_B, max_new_tokens, pad_token_id)
    return SpeculativeResult(
        tokens=tokens,
        lengths=seqs.num_generated,
        provenance=provenance,
        num_rounds=counts.num_rounds,
        num_drafted=counts.num_drafted,
        num_accepted=counts.num_accepted,
        round_histogram=counts.round_histogram,
        nonfinite_logits=seqs.nonfinite,
    )


@dataclasses.dataclass(frozen=True)
class _Spec:
    """Everything static about one compiled speculative loop."""

    max_new_tokens: int
    num_draft_tokens: int
    verify: str
    vocab_size: int


@flax.struct.dataclass
class _State:
    seqs: Sequences
    target_cache: KVCache
    draft_state: Any
    key: jax.Array
    counts: RoundCounts


@functools.partial(jax.jit, static_argnames=("spec",))
def _generate(
    target: Model,
    drafter: Drafter,
    prompt_ids_BxT,
    prompt_lengths_B,
    key,
    target_sampling: SamplingParams,
    min_confidence,
    ids: SpecialIds,
    spec: _Spec,
):
    batch, width = prompt_ids_BxT.shape
    k = spec.num_draft_tokens
    cache_length = width + spec.max_new_tokens + k - 1
    target_cache = prefill(target, prompt_ids_BxT, prompt_lengths_B, target.init_cache(batch, cache_length))
    draft_state = drafter.init(prompt_ids_BxT, prompt_lengths_B, cache_length)
    state = _State(
        seqs=init_sequences(prompt_ids_BxT, prompt_lengths_B, width + spec.max_new_tokens + k + 1),
        target_cache=target_cache,
        draft_state=draft_state,
        key=key,
        counts=RoundCounts.zeros(batch, k),
    )

    def round_(state: _State) -> _State:
        key, draft_key, verify_key = jax.random.split(state.key, 3)
        seqs = state.seqs
        active_B = ~seqs.done
        # 1. Draft (drafters.py). 2. Verify: one target pass (verify.py).
        drafts_BxK, q_BxKxV, draft_state = drafter.propose(state.draft_state, seqs, draft_key, k)
        p_BxK1xV, logits_BxK1xV, target_cache = score_drafts(
            target, state.target_cache, seqs, drafts_BxK, target_sampling, spec.vocab_size
        )
        # 3. Accept (sampling/accept.py); with dynamic length, past each row's own number of drafts.
        # min_confidence is None (fixed K) or a traced scalar: which one is known when tracing.
        num_drafts_B = None if min_confidence is None else confident_length(q_BxKxV, min_confidence)
        verdict = accept.verification_rule(spec.verify)(verify_key, drafts_BxK, q_BxKxV, p_BxK1xV, num_drafts_B)
        n_B = verdict.num_accepted
        # The round used p_0..p_n. If one of them had no distribution (see
        # valid_rows), keep only the drafts accepted before it and stop the row.
        n_B, nonfinite_B = stop_at_first_invalid(~valid_rows(logits_BxK1xV), n_B)

        # 4. Emit (emit.py): d_1..d_n then the resample/bonus token at slot n.
        at_n_BxE, provenance_BxE = round_provenance(n_B, k + 1)
        block_BxE = jnp.where(at_n_BxE, verdict.next_token[:, None], jnp.pad(drafts_BxK, ((0, 0), (0, 1))))
        new_seqs, count_B = emit(
            seqs,
            block_BxE,
            jnp.where(nonfinite_B, n_B, n_B + 1),
            provenance_BxE,
            max_new_tokens=spec.max_new_tokens,
            eos_token_id=ids.eos,
            nonfinite_B=nonfinite_B,
        )

        # 5. Roll back by length: the target keeps all but the new last token.
        target_len_B = target_lengths_after(state.target_cache.lengths, new_seqs, active_B)
        return _State(
            seqs=new_seqs,
            target_cache=target_cache.with_lengths(target_len_B),
            draft_state=drafter.commit(draft_state, seqs.lengths, new_seqs.lengths, active_B, k),
            key=key,
            counts=state.counts.after_round(
                active_B, k if num_drafts_B is None else num_drafts_B, n_B, at_n_BxE, nonfinite_B
            ),
        )

    state = jax.lax.while_loop(lambda s: ~jnp.all(s.seqs.done), round_, state)
    return speculative_result(state.seqs, state.counts, prompt_lengths_B, spec.max_new_tokens, ids.pad)


def speculative_sample(
    target: Model,
    draft: Model | Drafter,
    prompt_ids: Any,
    *,
    key: jax.Array,
    max_new_tokens: int,
    num_draft_tokens: int | None = None,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    eos_token_id: int | None = None,
    prompt_lengths: Any = None,
    pad_token_id: int = 0,
    verify: str | None = None,
    draft_temperature: float | None = None,
    draft_top_k: int | None = None,
    draft_top_p: float | None = None,
    shared_vocab_size: int | None = None,
    min_draft_confidence: float | None = None,
    tree: tuple[int, ...] | None = None,
) -> SpeculativeResult:
    """Speculative sampling whose output distribution is exactly the target's.

    The preserved distribution is the target's *processed* distribution: its
    logits after temperature -> top-k -> top-p, exactly what
    `autoregressive_sample(target, ...)` with the same settings samples from
    (temperature 0: the target's greedy argmax sequence). The draft's q is the
    distribution each draft token was actually drawn from (one-hot when the
    draft is greedy or a lookup), so the accept/resample rule is exact for any
    draft settings; they default to the target's.

    Example (tiny random models; real ones come from `load_model`). Greedy
    speculative decoding returns the target's own greedy tokens:

    >>> import jax
    >>> from jaxspec import autoregressive_sample, speculative_sample
    >>> from jaxspec.testing import random_model, tiny_config
    >>> target = random_model(tiny_config("gpt2", vocab_size=32), seed=0, scale=4.0)
    >>> draft = random_model(tiny_config("opt", vocab_size=32), seed=1, scale=4.0)
    >>> prompts = [[1, 2, 3], [4, 5]]  # ragged rows are fine
    >>> out = speculative_sample(target, draft, prompts, key=jax.random.key(0), max_new_tokens=8,
    ...                          num_draft_tokens=3, temperature=0.0, verify="block")
    >>> out.tokens.shape, out.lengths.tolist()
    ((2, 8), [8, 8])
    >>> plain = autoregressive_sample(target, prompts, key=jax.random.key(1), max_new_tokens=8, temperature=0.0)
    >>> bool((out.tokens == plain.tokens).all())
    True

    Args:
      target: the large `Model`.
      draft: the small `Model`, on the same tokenizer, or any `Drafter`
        (`ModelDrafter`, `NgramDrafter` for draft-free prompt lookup,
        `SelfDrafter` for the target's own first layers).
      prompt_ids: int [B, T] right-padded ids, or a list of B id lists.
      key: a PRNG key.
      max_new_tokens: N >= 1 tokens to generate per row.
      num_draft_tokens: K >= 1 draft tokens per round (default 4; with `tree`,
        its depth D, and another value is refused).
      temperature, top_k, top_p: target sampling settings (temperature 0 =
        greedy), each a number or an array of shape [B] (one per row). They
        are traced: any new value, and any mix of greedy and sampled rows,
        runs on the same compiled program.
      eos_token_id: a row stops after emitting it (nothing after EOS is emitted).
      prompt_lengths: int [B] real lengths of right-padded `prompt_ids`.
      pad_token_id: fills ragged prompts and `tokens` after each row's end;
        must be an id of the vocabulary (it is fed to the models).
      verify: "tokenwise" (the default for a chain; Leviathan et al.: accept
        each draft with min(1, p/q), stop at the first rejection) or "block"
        (Sun et al. 2024: decides the K drafts jointly; never fewer accepted
        tokens in expectation, equally exact, same cost); with `tree`,
        "traversal" (the default) or "recursive".
      draft_temperature, draft_top_k, draft_top_p: optional settings of a draft
        `Model`, numbers or [B] arrays. Default: the target's temperature and
        top-k, and no top-p (`draft_settings`).
      shared_vocab_size: ids both models sample over, when their vocab sizes
        differ only by padding rows.
      min_draft_confidence: dynamic draft length. None (default): every round
        drafts K tokens. A number in [0, 1]: each row stops drafting before
        draft i >= 1 once the draft's largest probability for it is below
        this (`drafters.confident_length`), and a model draft skips its
        remaining steps once every row stopped. Verification treats the stop
        as a draft of a token the target never emits, so the output law is
        unchanged (`jaxspec.sampling.accept`); K is the upper bound. The
        value is traced: any threshold runs on the same compiled program.
      tree: (b_1, ..., b_D) drafts a token tree instead of a chain (every node
        at depth d - 1 gets b_d children) and verifies all of it in one
        target pass: `tree_speculative_sample` with branching=tree, verify
        "traversal" or "recursive" (default "traversal"). None: a chain.

    Returns:
      A `SpeculativeResult` (tokens, lengths, provenance and per-row counts).

    Raises:
      ValueError: before any compute, for K < 1, N < 1, a bad temperature (< 0,
        not finite, or below float32's smallest normal 1.18e-38 but not 0),
        top_k < 0, top_p outside (0, 1], settings arrays of the wrong shape, an
        unknown `verify`, min_draft_confidence outside [0, 1], a vocabulary mismatch, prompt ids or pad_token_id
        outside the vocabulary, or prompt + N + K - 1 beyond either model's
        context.
    """
    if tree is not None:
        return _tree_call(
            target,
            draft,
            prompt_ids,
            tree,
            num_draft_tokens,
            verify,
            min_draft_confidence,
            key=key,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            eos_token_id=eos_token_id,
            prompt_lengths=prompt_lengths,
            pad_token_id=pad_token_id,
            draft_temperature=draft_temperature,
            draft_top_k=draft_top_k,
            draft_top_p=draft_top_p,
            shared_vocab_size=shared_vocab_size,
        )
    verify = "tokenwise" if verify is None else verify
    k = check_positive_int("num_draft_tokens", 4 if num_draft_tokens is None else num_draft_tokens)
    n = check_positive_int("max_new_tokens", max_new_tokens)
    accept.verification_rule(verify)  # an unknown name fails here, before any compute
    if isinstance(draft, Model):
        vocab = shared_vocabulary(target, draft, shared_vocab_size)
    else:
        _check_drafter(draft, draft_temperature, draft_top_k, draft_top_p, shared_vocab_size)
        vocab = draft.vocab_size_for(target)
    prompts = prepare_prompts(prompt_ids, prompt_lengths, vocab, pad_token_id)
    batch = prompts.batch_size
    target_sampling = row_settings(temperature, top_k, top_p, batch)
    if isinstance(draft, Model):
        draft_sampling = draft_settings(temperature, top_k, batch, draft_temperature, draft_top_k, draft_top_p)
        drafter = ModelDrafter(model=draft, sampling=draft_sampling, shared_vocab_size=shared_vocab_size)
    else:
        drafter = draft
        if isinstance(drafter, (ModelDrafter, SelfDrafter)):  # a sampling setting of its own
            default = draft_settings(temperature, top_k, batch)
            sampling = default if drafter.sampling is None else drafter.sampling
            if isinstance(sampling, (SamplingConfig, SamplingParams)):  # validated like the call's own settings
                sampling = row_settings(
                    *(np.asarray(getattr(sampling, f)) for f in ("temperature", "top_k", "top_p")), batch
                )
            drafter = drafter.replace(sampling=sampling)
    drafter = drafter.replace(vocab_size=vocab)
    min_confidence = None
    if min_draft_confidence is not None:
        min_confidence = check_probability("min_draft_confidence", min_draft_confidence)
        if isinstance(drafter, (ModelDrafter, SelfDrafter)):
            drafter = drafter.replace(stop_below=min_confidence)
    needed = prompts.max_length + n + k - 1
    detail = "longest prompt + max_new_tokens + num_draft_tokens - 1"
    check_context(target, "target", needed, detail)
    drafter.check_context(needed, detail)
    spec = _Spec(
        max_new_tokens=n,
        num_draft_tokens=k,
        verify=verify,
        vocab_size=vocab,
    )
    return _generate(
        target,
        drafter,
        jnp.asarray(prompts.ids),
        jnp.asarray(prompts.lengths),
        key,
        target_sampling,
        min_confidence,
        special_ids(eos_token_id, pad_token_id, vocab),
        spec,
    )


def _tree_call(target, draft, prompt_ids, tree, num_draft_tokens, verify, min_draft_confidence, **kwargs):
    """`speculative_sample(tree=...)`: the chain-only arguments checked, then `tree_speculative_sample`
    (which checks the branching and the rule)."""
    from jaxspec.generation.tree_speculative import tree_speculative_sample
    from jaxspec.sampling.tree import TreeSpec

    try:
        shape = TreeSpec(tuple(tree))
    except (TypeError, ValueError) as err:
        raise ValueError(
            f"tree={tree!r} must be a tuple of branchings >= 1, one per depth, e.g. (2, 2, 1): {err}"
        ) from None
    if num_draft_tokens is not None and num_draft_tokens != shape.depth:
        raise ValueError(
            f"num_draft_tokens={num_draft_tokens} disagrees with tree={shape.branching} (depth {shape.depth}): "
            "a tree's depth is its number of draft tokens per round; leave num_draft_tokens out."
        )
    if min_draft_confidence is not None:
        raise ValueError("min_draft_confidence applies to chains; a tree's shape is fixed by tree=...")
    verify = "traversal" if verify is None else verify
    return tree_speculative_sample(target, draft, prompt_ids, branching=shape.branching, verify=verify, **kwargs)


def draft_settings(
    temperature: Any,
    top_k: Any,
    batch_size: int,
    draft_temperature: Any = None,
    draft_top_k: Any = None,
    draft_top_p: Any = None,
) -> SamplingParams:
    """The draft's per-row settings: those given, else the target's temperature and top-k, and top-p off.

    Any draft setting is exact (q is what the draft sampled from); the default
    is chosen for speed. The target's top-p is not copied: measured on the
    shipped pair (BUILD_NOTES, issue 12), the draft's own nucleus costs 5% of a
    speculative round and changes the accepted tokens per round by nothing
    measurable (2.87 vs 2.88), because the target's nucleus, not the draft's,
    decides what is kept.
    """
    return row_settings(
        temperature if draft_temperature is None else draft_temperature,
        top_k if draft_top_k is None else draft_top_k,
        1.0 if draft_top_p is None else draft_top_p,
        batch_size,
    )


def _check_drafter(draft, draft_temperature, draft_top_k, draft_top_p, shared_vocab_size) -> None:
    """A drafter given as such must implement the interface and takes no draft settings here."""
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
