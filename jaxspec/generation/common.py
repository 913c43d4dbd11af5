"""Pieces shared by `autoregressive_sample` and `speculative_sample`.

Host side (before any compute): prompt normalisation and validation.
Device side (inside the jitted loops): prefill and the emission step that
appends up to E tokens per row, applying the max_new_tokens limit and EOS.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from jaxspec.models.cache import KVCache
from jaxspec.models.model import Model
from jaxspec.sampling.processing import SamplingParams, sampling_params

# Provenance codes of generated tokens (`provenance` arrays, int8).
NOT_GENERATED = 0  # padding after a row's last token
FROM_TARGET = 1  # sampled from the target directly (autoregressive decoding)
ACCEPTED_DRAFT = 2  # a draft token the target accepted
RESAMPLED = 3  # sampled from norm(max(0, p - q)) after a rejection
BONUS = 4  # sampled from p_{K+1} after all K drafts were accepted
PROVENANCE_NAMES = {
    NOT_GENERATED: "none",
    FROM_TARGET: "target",
    ACCEPTED_DRAFT: "accepted",
    RESAMPLED: "resampled",
    BONUS: "bonus",
}


@dataclasses.dataclass(frozen=True)
class Prompts:
    """Right-padded prompts on the host.

    Attributes:
      ids: int32 [B, T] token ids, row b valid in ids[b, :lengths[b]].
      lengths: int32 [B], each in 1..T.
    """

    ids: np.ndarray
    lengths: np.ndarray

    @property
    def batch_size(self) -> int:
        return self.ids.shape[0]

    @property
    def max_length(self) -> int:
        return self.ids.shape[1]


def prepare_prompts(prompt_ids: Any, prompt_lengths: Any, vocab_size: int, pad_token_id: int) -> Prompts:
    """Normalises `prompt_ids` (a [B, T] array or a list of ragged id lists).

    Raises:
      ValueError: empty prompts, lengths out of range, ids outside the vocabulary,
        a pad_token_id outside the vocabulary.
    """
    if not is_integer(pad_token_id):
        raise ValueError(f"pad_token_id must be an int, got {pad_token_id!r}.")
    if not 0 <= pad_token_id < vocab_size:
        raise ValueError(
            f"pad_token_id={pad_token_id} is outside the vocabulary 0..{vocab_size - 1}; pass an id the model "
            "knows (e.g. the EOS id): the padding slots are fed to the model."
        )
    if isinstance(prompt_ids, Sequence) and prompt_ids and not np.isscalar(prompt_ids[0]):
        rows = [np.asarray(r, np.int64).reshape(-1) for r in prompt_ids]
        if prompt_lengths is None and len({len(r) for r in rows}) > 1:
            width = max(len(r) for r in rows)
            ids = np.full((len(rows), width), pad_token_id, np.int64)
            for i, r in enumerate(rows):
                ids[i, : len(r)] = r
            prompt_lengths = [len(r) for r in rows]
        else:
            ids = np.stack(rows)
    else:
        ids = np.asarray(prompt_ids)
        if ids.ndim == 1:
            ids = ids[None, :]
    if ids.ndim != 2 or ids.shape[0] == 0:
        raise ValueError(f"prompt_ids must be a [batch, length] array or a list of id lists; got shape {ids.shape}.")
    if not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"prompt_ids must hold integer token ids, got dtype {ids.dtype}.")
    batch, width = ids.shape
    lengths = np.full((batch,), width, np.int64) if prompt_lengths is None else np.asarray(prompt_lengths).reshape(-1)
    if lengths.shape != (batch,):
        raise ValueError(f"prompt_lengths has {lengths.shape[0]} entries for {batch} prompts.")
    if np.any(lengths < 1) or np.any(lengths > width):
        raise ValueError(
            f"prompt_lengths must lie in 1..{width} (every prompt needs at least one token); got {lengths.tolist()}."
        )
    valid = np.arange(width)[None, :] < lengths[:, None]
    bad = valid & ((ids < 0) | (ids >= vocab_size))
    if bad.any():
        row, col = np.argwhere(bad)[0]
        raise ValueError(
            f"prompt token id {int(ids[row, col])} (row {row}, position {col}) is outside the vocabulary "
            f"0..{vocab_size - 1}; was the prompt made with this model's tokenizer?"
        )
    ids = np.where(valid, ids, pad_token_id)
    return Prompts(ids=ids.astype(np.int32), lengths=lengths.astype(np.int32))


def is_integer(value: Any) -> bool:
    """A Python or numpy integer, not a bool (an id or count must not be True or 2.0)."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def check_int(name: str, value: Any, low: int, high: int, hint: str = "") -> int:
    """`value` as an int in low..high; `hint` (e.g. " (rows of one batch)") follows the range in messages.

    Raises:
      ValueError: not an integer (bools and floats refused), or out of range.
    """
    if not is_integer(value):
        raise ValueError(f"{name} must be an integer, got {value!r} ({type(value).__name__}).")
    if not low <= value <= high:
        raise ValueError(f"{name} must lie in {low}..{high}{hint}, got {value}.")
    return int(value)


def check_prompt(prompt_ids: Any, vocab_size: int | None, max_length: int | None = None) -> tuple[int, ...]:
    """One prompt as a tuple of ints: a non-empty 1-D sequence of integer ids in 0..vocab_size - 1.

    Stricter than `prepare_prompts` (which takes arrays): each id must itself be
    an integer, so a bool or a float is refused rather than converted.

    Args:
      prompt_ids: a sequence or a 1-D array of token ids.
      vocab_size: the ids allowed; None allows any int32 id >= 0.
      max_length: the most tokens allowed (None: no limit).

    Raises:
      ValueError: naming the bad token, its position and the fix.
    """
    if isinstance(prompt_ids, (str, bytes)) or not isinstance(prompt_ids, (Sequence, np.ndarray)):
        raise ValueError(
            f"the prompt must be a sequence of token ids, got {type(prompt_ids).__name__}; tokenize it first."
        )
    if isinstance(prompt_ids, np.ndarray) and prompt_ids.ndim != 1:
        raise ValueError(f"the prompt must be one sequence of token ids, got shape {prompt_ids.shape}.")
    if len(prompt_ids) < 1:
        raise ValueError("the prompt encodes to no tokens; give a non-empty prompt.")
    if max_length is not None and len(prompt_ids) > max_length:
        raise ValueError(f"the prompt is {len(prompt_ids)} tokens, more than the cap of {max_length}; shorten it.")
    high = np.iinfo(np.int32).max if vocab_size is None else vocab_size - 1
    for i, token in enumerate(prompt_ids):
        if not is_integer(token):
            raise ValueError(f"prompt token {i} is {token!r} ({type(token).__name__}); token ids must be integers.")
        if not 0 <= token <= high:
            raise ValueError(
                f"prompt token {i} is {int(token)}, outside the vocabulary 0..{high}; "
                "encode the prompt with the model's tokenizer."
            )
    return tuple(int(token) for token in prompt_ids)


def check_positive_int(name: str, value: Any) -> int:
    if not is_integer(value) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}.")
    return int(value)


def check_context(model: Model, role: str, needed: int, detail: str) -> None:
    """Raises if `needed` positions do not fit the model's position table."""
    if needed > model.max_positions:
        raise ValueError(
            f"{detail} = {needed} positions, more than the {role}'s context of {model.max_positions} "
            "(max_position_embeddings). Use a shorter prompt or fewer new tokens."
        )


def check_eos(eos_token_id: Any, vocab_size: int) -> int | None:
    if eos_token_id is None:
        return None
    if not is_integer(eos_token_id):
        raise ValueError(f"eos_token_id must be an int or None, got {eos_token_id!r}.")
    if not 0 <= eos_token_id < vocab_size:
        raise ValueError(f"eos_token_id={eos_token_id} is outside the vocabulary 0..{vocab_size - 1}.")
    return int(eos_token_id)


def row_settings(temperature: Any, top_k: Any, top_p: Any, batch_size: int) -> SamplingParams:
    """Validated per-row settings (scalars broadcast to every row) as device arrays."""
    params = sampling_params(temperature, top_k, top_p, batch_size)
    return SamplingParams(
        temperature=jnp.asarray(params.temperature), top_k=jnp.asarray(params.top_k), top_p=jnp.asarray(params.top_p)
    )


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
    eos_token_id: int | None,
    nonfinite_B: jax.Array | None = None,
) -> tuple[Sequences, jax.Array]:
    """Appends the first count_B[b] of new_BxE[b] to each active row.

    Truncates at max_new_tokens and after the first EOS (inclusive); rows that
    are already done do not change. A row with nonfinite_B set needs, after
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


def prefill(model: Model, prompt_ids_BxT: jax.Array, prompt_lengths_B: jax.Array, cache: KVCache) -> KVCache:
    """Writes all prompt tokens but each row's last into the cache.

    Afterwards cache.lengths == prompt_lengths - 1: the last prompt token is the
    first input of the decoding loop, which is what yields the first new token.
    """
    if prompt_ids_BxT.shape[1] == 1:
        return cache
    _, cache = model(prompt_ids_BxT[:, :-1], cache, prompt_lengths_B - 1)
    return cache


def generated_tokens(seqs: Sequences, prompt_lengths_B: jax.Array, max_new_tokens: int, pad_token_id: int):
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
