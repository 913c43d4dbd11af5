"""`tree_speculative_sample`: draft a token tree, verify all of it in ONE target pass, accept exactly.

A chain of K drafts wastes the verify pass once its first draft is rejected; a
tree offers several continuations at each depth (SpecInfer, Medusa, EAGLE-2).
Each round of the on-device `lax.while_loop`:

1. Draft (a draft `Model`): feed the tokens committed since the last round
   (one chunk of up to D + 1 tokens, so the draft's cache holds the root),
   then grow the tree level by level: the children of every node at depth
   d - 1 are drawn from the draft's processed law q at that node *without
   replacement* (sibling j from q with siblings 1..j-1 removed and
   renormalised; that renormalised law is recorded as sibling j's q), and
   the new level is fed as one tree-attention call (`TreeAttention.feeding`)
   so that the next level can be drawn. Greedy draft rows, and rows whose q
   has fewer than b tokens, take the next-best unused token by the draft's
   logits instead, with a one-hot q (deterministic, so truthful). The levels
   are a Python loop over the D static depths (each level has its own width,
   which a `lax.scan` cannot carry); D is small.
2. Verify: ONE target forward over all N + 1 nodes (node 0 = the last
   committed token) with tree attention: node i at position L - 1 + depth(i),
   seeing the prefix and its ancestors only (`models/tree_attention.py`).
3. Accept: `sampling.tree` (Traversal Verification, or recursive rejection
   sampling) picks one root-to-node path and one more token, exactly.
4. Emit and roll back: the path's tokens and the next token are emitted; the
   target cache keeps the accepted path's entries (`KVCache.keep_path`), the
   draft cache falls back to the round's committed tokens.

Why without replacement: it never wastes a branch on a duplicate, and it is
what Traversal Verification's paper assumes; both rules are exact for any
truthful q (see `sampling/tree.py`). The output law is the target's
processed law, as `speculative_sample`'s.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp

from jaxspec.generation.drafters import shared_vocabulary
from jaxspec.generation.emit import (
    Sequences,
    emit,
    init_sequences,
    last_tokens,
    round_provenance,
    stop_at_first_invalid,
    target_lengths_after,
)
from jaxspec.generation.inputs import (
    SpecialIds,
    check_context,
    check_positive_int,
    prepare_prompts,
    row_settings,
    special_ids,
)
from jaxspec.generation.speculative import RoundCounts, SpeculativeResult, draft_settings, speculative_result
from jaxspec.generation.verify import prefill
from jaxspec.models.cache import KVCache
from jaxspec.models.model import Model
from jaxspec.models.tree_attention import tree_attention
from jaxspec.sampling.processing import SamplingParams, processed_probs, sample_from_probs, valid_rows
from jaxspec.sampling.tree import TreeSpec, verify_tree_recursive, verify_tree_traversal

__all__ = ["TREE_VERIFICATION_RULES", "tree_speculative_sample"]

TREE_VERIFICATION_RULES = {"traversal": verify_tree_traversal, "recursive": verify_tree_recursive}


@dataclasses.dataclass(frozen=True)
class _Spec:
    tree: TreeSpec
    max_new_tokens: int
    verify: str
    vocab_size: int


@flax.struct.dataclass
class _State:
    seqs: Sequences
    target_cache: KVCache
    draft_cache: KVCache
    key: jax.Array
    counts: RoundCounts


def draw_children(
    key: jax.Array, q_BxPxV: jax.Array, logits_BxPxV: jax.Array, greedy_B: jax.Array, num_children: int
) -> tuple[jax.Array, jax.Array]:
    """`num_children` children of each of P nodes, drawn without replacement, with the law of each.

    Sibling j is drawn from q with siblings 1..j-1 removed, renormalised, and
    that law is returned as its q. A greedy row, or a row whose remaining q
    has no mass, takes the highest-logit unused token with a one-hot q.

    Returns:
      (tokens int32 [B, P, C], q float32 [B, P, C, V]).
    """
    vocab = q_BxPxV.shape[-1]
    used_BxPxV = jnp.zeros(q_BxPxV.shape, bool)
    tokens, laws = [], []
    for child_key in jax.random.split(key, num_children):
        remaining_BxPxV = jnp.where(used_BxPxV, 0.0, q_BxPxV)
        mass_BxP = jnp.sum(remaining_BxPxV, axis=-1)
        sampled_BxP = (mass_BxP > 0) & ~greedy_B[:, None]
        law_BxPxV = remaining_BxPxV / jnp.where(mass_BxP > 0, mass_BxP, 1.0)[..., None]
        drawn_BxP = sample_from_probs(child_key, jnp.where(sampled_BxP[..., None], remaining_BxPxV, 1.0))
        best_BxP = jnp.argmax(jnp.where(used_BxPxV, -jnp.inf, logits_BxPxV), axis=-1).astype(jnp.int32)
        token_BxP = jnp.where(sampled_BxP, drawn_BxP, best_BxP)
        one_hot_BxPxV = jax.nn.one_hot(token_BxP, vocab, dtype=jnp.float32)
        laws.append(jnp.where(sampled_BxP[..., None], law_BxPxV, one_hot_BxPxV))
        tokens.append(token_BxP)
        used_BxPxV |= one_hot_BxPxV > 0
    return jnp.stack(tokens, axis=-1), jnp.stack(laws, axis=-2)


@functools.partial(jax.jit, static_argnames=("spec",))
def _generate(
    target: Model,
    draft: Model,
    prompt_ids_BxT,
    prompt_lengths_B,
    key,
    target_sampling: SamplingParams,
    draft_sampling: SamplingParams,
    ids: SpecialIds,
    spec: _Spec,
) -> SpeculativeResult:
    tree, vocab = spec.tree, spec.vocab_size
    depth, num_nodes = tree.depth, tree.num_nodes
    attention = tree_attention(tree.parent)
    batch, width = prompt_ids_BxT.shape
    cache_length = width + spec.max_new_tokens + num_nodes + depth + 1
    target_cache = prefill(target, prompt_ids_BxT, prompt_lengths_B, target.init_cache(batch, cache_length))
    draft_cache = prefill(draft, prompt_ids_BxT, prompt_lengths_B, draft.init_cache(batch, cache_length))
    greedy_B = draft_sampling.temperature == 0
    state = _State(
        seqs=init_sequences(prompt_ids_BxT, prompt_lengths_B, width + spec.max_new_tokens + 2 * depth + 2),
        target_cache=target_cache,
        draft_cache=draft_cache,
        key=key,
        counts=RoundCounts.zeros(batch, depth),
    )

    def round_(state: _State) -> _State:
        key, draft_key, verify_key = jax.random.split(state.key, 3)
        seqs = state.seqs
        active_B = ~seqs.done
        length_B = seqs.lengths

        # 1. Draft. Catch up: the draft's cache holds tokens[0 : Ld], Ld <= L - 1;
        # feed tokens[Ld : L] (at most D + 1) and read the root's law.
        start_B = state.draft_cache.lengths
        chunk_BxC = jax.vmap(lambda row, s: jax.lax.dynamic_slice(row, (s,), (depth + 1,)))(seqs.tokens, start_B)
        logits_BxCxV, draft_cache = draft(chunk_BxC, state.draft_cache, length_B - start_B)
        last_B = jnp.maximum(length_B - start_B - 1, 0)
        logits_BxPxV = jnp.take_along_axis(logits_BxCxV, last_B[:, None, None], axis=1)[..., :vocab]
        level_keys = jax.random.split(draft_key, depth)
        drafts, laws = [], []
        for d in range(1, depth + 1):
            q_BxPxV = processed_probs(logits_BxPxV, draft_sampling)
            tokens_BxPxC, q_BxPxCxV = draw_children(
                level_keys[d - 1], q_BxPxV, logits_BxPxV, greedy_B, tree.branching[d - 1]
            )
            level_size = tree.level_sizes[d]
            drafts.append(tokens_BxPxC.reshape(batch, level_size))
            laws.append(q_BxPxCxV.reshape(batch, level_size, vocab))
            if d < depth:  # the leaves are never fed
                logits_BxPxV, draft_cache = draft(drafts[-1], draft_cache, tree=attention.feeding(tree.level_starts[d]))
                logits_BxPxV = logits_BxPxV[..., :vocab]
        drafts_BxN, q_BxNxV = jnp.concatenate(drafts, axis=1), jnp.concatenate(laws, axis=1)

        # 2. Verify: one target pass over the root and the N drafts.
        nodes_BxN1 = jnp.concatenate([last_tokens(seqs)[:, None], drafts_BxN], axis=1)
        logits_BxN1xV, target_cache = target(nodes_BxN1, state.target_cache, tree=attention)
        logits_BxN1xV = logits_BxN1xV[..., :vocab]
        p_BxN1xV = processed_probs(logits_BxN1xV, target_sampling)

        # 3. Accept.
        verdict = TREE_VERIFICATION_RULES[spec.verify](tree, verify_key, drafts_BxN, q_BxNxV, p_BxN1xV)
        n_B = verdict.num_accepted
        path_BxD1 = jnp.concatenate([jnp.zeros((batch, 1), jnp.int32), jnp.maximum(verdict.path, 0)], axis=1)
        # A node on the path whose logits give no distribution: keep the drafts before it, stop the row.
        n_B, nonfinite_B = stop_at_first_invalid(
            jnp.take_along_axis(~valid_rows(logits_BxN1xV), path_BxD1, axis=1), n_B
        )

        # 4. Emit the path and the next token; keep the path in the target's cache.
        at_n_BxD1, provenance_BxD1 = round_provenance(n_B, depth + 1)
        new_seqs, _ = emit(
            seqs,
            jnp.maximum(verdict.tokens, 0),
            jnp.where(nonfinite_B, n_B, n_B + 1),
            provenance_BxD1,
            max_new_tokens=spec.max_new_tokens,
            eos_token_id=ids.eos,
            nonfinite_B=nonfinite_B,
        )
        old_target_B = state.target_cache.lengths
        target_cache = target_cache.keep_path(old_target_B, path_BxD1, n_B + 1)
        target_cache = target_cache.with_lengths(target_lengths_after(old_target_B, new_seqs, active_B))
        # The draft keeps the round's committed tokens (the root included); the next
        # round's catch-up chunk feeds what was accepted.
        draft_cache = draft_cache.with_lengths(jnp.where(active_B, length_B, state.draft_cache.lengths))
        return _State(
            seqs=new_seqs,
            target_cache=target_cache,
            draft_cache=draft_cache,
            key=key,
            counts=state.counts.after_round(active_B, num_nodes, n_B, at_n_BxD1, nonfinite_B),
        )

    state = jax.lax.while_loop(lambda s: ~jnp.all(s.seqs.done), round_, state)
    return speculative_result(state.seqs, state.counts, prompt_lengths_B, spec.max_new_tokens, ids.pad)


def tree_speculative_sample(
    target: Model,
    draft: Model,
    prompt_ids: Any,
    *,
    key: jax.Array,
    max_new_tokens: int,
    branching: tuple[int, ...] = (2, 2, 1),
    verify: str = "traversal",
    temperature: Any = 1.0,
    top_k: Any = 0,
    top_p: Any = 1.0,
    eos_token_id: int | None = None,
    prompt_lengths: Any = None,
    pad_token_id: int = 0,
    draft_temperature: Any = None,
    draft_top_k: Any = None,
    draft_top_p: Any = None,
    shared_vocab_size: int | None = None,
) -> SpeculativeResult:
    """Speculative sampling with a draft *tree*, exactly the target's processed law.

    Arguments as `speculative_sample`, except:

    Args:
      draft: the draft `Model` (tree drafting needs a model's q at every node).
      branching: (b_1, ..., b_D): every node at depth d - 1 gets b_d children,
        so a round scores N = b_1 + b_1 b_2 + ... drafts in one target pass
        and keeps up to D of them. (1,) * K is a chain of K.
      verify: "traversal" (Traversal Verification, Weng et al. 2025) or
        "recursive" (recursive rejection sampling, SpecInfer).

    Returns:
      A `SpeculativeResult` whose `round_histogram` is [B, D + 1] (rounds that
      kept a path of depth j) and whose `num_drafted` counts tree nodes.

    Raises:
      ValueError: as `speculative_sample`, for a bad branching or rule, or when
        prompt + N + (tree nodes) + D + 1 exceeds a model's context (the cache
        holds every node of the tree during a round).
    """
    tree = TreeSpec(tuple(branching))
    if verify not in TREE_VERIFICATION_RULES:
        raise ValueError(f"verify={verify!r} is not a tree rule; use one of {sorted(TREE_VERIFICATION_RULES)}.")
    if not isinstance(draft, Model):
        raise TypeError(f"tree drafting needs a draft Model, got {type(draft).__name__}.")
    n = check_positive_int("max_new_tokens", max_new_tokens)
    vocab = shared_vocabulary(target, draft, shared_vocab_size)
    prompts = prepare_prompts(prompt_ids, prompt_lengths, vocab, pad_token_id)
    batch = prompts.batch_size
    target_sampling = row_settings(temperature, top_k, top_p, batch)
    draft_sampling = draft_settings(temperature, top_k, batch, draft_temperature, draft_top_k, draft_top_p)
    needed = prompts.max_length + n + tree.num_nodes + tree.depth + 1
    detail = "longest prompt + max_new_tokens + tree nodes + depth + 1"
    check_context(target, "target", needed, detail)
    check_context(draft, "draft", needed, detail)
    spec = _Spec(
        tree=tree,
        max_new_tokens=n,
        verify=verify,
        vocab_size=vocab,
    )
    return _generate(
        target,
        draft,
        jnp.asarray(prompts.ids),
        jnp.asarray(prompts.lengths),
        key,
        target_sampling,
        draft_sampling,
        special_ids(eos_token_id, pad_token_id, vocab),
        spec,
    )
