"""Emit and roll back: the token buffer of the loops, and how a round's tokens enter it.

`Sequences` is the on-device buffer (prompt then generated tokens, with a
provenance code per slot). `emit` appends up to E tokens per row, applying
max_new_tokens and EOS. Rolling back is by length: a cache keeps its entries
and only its per-row lengths move (`KVCache.with_lengths`), so entries written
for rejected drafts are overwritten by the next round; `target_lengths_after`
gives the target cache's lengths after a round.
"""

from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp

from jaxspec.generation.provenance import ACCEPTED_DRAFT, BONUS, NOT_GENERATED, RESAMPLED


@flax.struct.dataclass
class Sequences:
    """Token buffer of the generation loops (device side).

    Attributes:
      tokens: int32 [B, S] prompt then generated tokens; slots past `lengths`
        hold garbage that is never read as a real token.
      provenance: int8 [B, S], a provenance code per generated slot.
      lengths: int32 [B], valid tokens per row (prompt + generated).
      num_generated: int32 [B].
      done: bool [B], row reached max_new_tokens, emitted EOS, or stopped on
        logits without a distribution (see `nonfinite`).
      nonfinite: bool [B], the row stopped because the target's logits at its
        next position had no distribution (NaN, +inf, or no finite entry).
    """

    tokens: jax.Array
    provenance: jax.Array
    lengths: jax.Array
    num_generated: jax.Array
    done: jax.Array
    nonfinite: jax.Array


def init_sequences(prompt_ids_BxT: jax.Array, prompt_lengths_B: jax.Array, buffer_length: int) -> Sequences:
    batch, width = prompt_ids_BxT.shape
    tokens = jnp.zeros((batch, buffer_length), jnp.int32).at[:, :width].set(prompt_ids_BxT)
    return Sequences(
        tokens=tokens,
        provenance=jnp.zeros((batch, buffer_length), jnp.int8),
        lengths=prompt_lengths_B,
        num_generated=jnp.zeros((batch,), jnp.int32),
        done=jnp.zeros((batch,), bool),
        nonfinite=jnp.zeros((batch,), bool),
    )


def _write_rows(buffer_BxS: jax.Array, new_BxE: jax.Array, start_B: jax.Array) -> jax.Array:
    return jax.vmap(lambda row, new, start: jax.lax.dynamic_update_slice(row, new, (start,)))(
        buffer_BxS, new_BxE.astype(buffer_BxS.dtype), start_B
    )


def emit(
    seqs: Sequences,
    new_BxE: jax.Array,
    count_B: jax.Array,
    provenance_BxE: jax.Array,
    *,
    max_new_tokens: int,
    eos_token_id: int | jax.Array | None,
    nonfinite_B: jax.Array | None = None,
) -> tuple[Sequences, jax.Array]:
    """Appends the first count_B[b] of new_BxE[b] to each active row.

    Truncates at max_new_tokens and after the first EOS (inclusive; an int or
    a traced int32 scalar; None or a negative id: no EOS); rows that are
    already done do not change. A row with nonfinite_B set needs, after
    these tokens, a distribution its logits do not give: unless it ended
    anyway (max_new_tokens, EOS), it is done and flagged `nonfinite`.

    Returns:
      (updated sequences, int32 [B] number of tokens actually appended).
    """
    width = new_BxE.shape[1]
    slot_E = jnp.arange(width, dtype=jnp.int32)
    count_B = jnp.minimum(count_B, max_new_tokens - seqs.num_generated)
    hit_eos_B = jnp.zeros_like(seqs.done)
    if eos_token_id is not None:
        is_eos_BxE = (new_BxE == eos_token_id) & (slot_E[None, :] < count_B[:, None])
        hit_eos_B = jnp.any(is_eos_BxE, axis=1)
        count_B = jnp.where(hit_eos_B, jnp.argmax(is_eos_BxE, axis=1) + 1, count_B)
    count_B = jnp.where(seqs.done, 0, count_B).astype(jnp.int32)
    kept_BxE = slot_E[None, :] < count_B[:, None]
    old_tokens_BxE = jax.vmap(lambda row, s: jax.lax.dynamic_slice(row, (s,), (width,)))(seqs.tokens, seqs.lengths)
    tokens = _write_rows(seqs.tokens, jnp.where(kept_BxE, new_BxE, old_tokens_BxE), seqs.lengths)
    old_prov_BxE = jax.vmap(lambda row, s: jax.lax.dynamic_slice(row, (s,), (width,)))(seqs.provenance, seqs.lengths)
    provenance = _write_rows(seqs.provenance, jnp.where(kept_BxE, provenance_BxE, old_prov_BxE), seqs.lengths)
    num_generated = seqs.num_generated + count_B
    done = seqs.done | (num_generated >= max_new_tokens) | hit_eos_B
    nonfinite = seqs.nonfinite
    if nonfinite_B is not None:
        nonfinite = nonfinite | (nonfinite_B & ~done)
        done = done | nonfinite
    return (
        Sequences(
            tokens=tokens,
            provenance=provenance,
            lengths=seqs.lengths + count_B,
            num_generated=num_generated,
            done=done,
            nonfinite=nonfinite,
        ),
        count_B,
    )


def generated_tokens(seqs: Sequences, prompt_lengths_B: jax.Array, max_new_tokens: int, pad_token_id: int | jax.Array):
    """Extracts ([B, N] tokens padded with pad_token_id, [B, N] provenance)."""
    take = lambda buf: jax.vmap(lambda row, s: jax.lax.dynamic_slice(row, (s,), (max_new_tokens,)))(
        buf, prompt_lengths_B
    )
    valid_BxN = jnp.arange(max_new_tokens)[None, :] < seqs.num_generated[:, None]
    tokens = jnp.where(valid_BxN, take(seqs.tokens), pad_token_id)
    provenance = jnp.where(valid_BxN, take(seqs.provenance), NOT_GENERATED).astype(jnp.int8)
    return tokens, provenance


def last_tokens(seqs: Sequences) -> jax.Array:
    """int32 [B]: each row's last valid token."""
    return jnp.take_along_axis(seqs.tokens, (seqs.lengths - 1)[:, None], axis=1)[:, 0]


def target_lengths_after(old_cache_lengths_B: jax.Array, new_seqs: Sequences, active_B: jax.Array) -> jax.Array:
    """int32 [B]: the target cache's lengths after a round: every token but the new last one.

    Rows that were already done keep their lengths. The cache entries of the
    rejected drafts stay in place, past the length, until overwritten.
    """
    return jnp.where(active_B, new_seqs.lengths - 1, old_cache_lengths_B)


def stop_at_first_invalid(invalid_BxE: jax.Array, num_accepted_B: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Truncates a round at the first target law it used that had no distribution.

    invalid_BxE[b, j] marks that the law after the round's first j drafts
    (column 0: after the committed tokens) had none (`valid_rows`). The round
    used columns 0..n; if one of them is invalid, only the drafts before it
    are kept and the row stops.

    Returns:
      (kept drafts int32 [B], nonfinite bool [B]).
    """
    width = invalid_BxE.shape[1]
    first_B = jnp.where(jnp.any(invalid_BxE, axis=1), jnp.argmax(invalid_BxE, axis=1), width)
    nonfinite_B = first_B <= num_accepted_B
    return jnp.where(nonfinite_B, first_B, num_accepted_B), nonfinite_B


def round_provenance(num_accepted_B: jax.Array, width: int) -> tuple[jax.Array, jax.Array]:
    """(bool [B, E] column n, int8 [B, E] provenance) of a round that kept n of E - 1 drafts.

    Columns before n are accepted drafts; column n is the bonus token when all
    E - 1 were kept, else the resample after the rejection.
    """
    at_n_BxE = jnp.arange(width, dtype=jnp.int32)[None, :] == num_accepted_B[:, None]
    last_kind_B = jnp.where(num_accepted_B == width - 1, BONUS, RESAMPLED)
    return at_n_BxE, jnp.where(at_n_BxE, last_kind_B[:, None], ACCEPTED_DRAFT).astype(jnp.int8)
