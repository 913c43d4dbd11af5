"""Host-side checks of the loops' inputs, before any compute.

Prompt normalisation (`prepare_prompts`: ragged lists or a padded array),
id and count validation with messages that name the bad value and the fix,
context-length checks, and per-row sampling settings as device arrays.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from jaxspec.models.model import Model
from jaxspec.sampling.processing import SamplingParams, sampling_params


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


def check_probability(name: str, value: Any) -> jnp.ndarray:
    """float32 scalar `value`, after checking it is a finite number in [0, 1] (ValueError naming it otherwise)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number in [0, 1], got {value!r}.") from None
    if not 0.0 <= number <= 1.0:  # NaN fails too
        raise ValueError(f"{name} must be in [0, 1], got {value!r}; 0 never stops early, 1 stops unless certain.")
    return jnp.float32(number)


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


@flax.struct.dataclass
class SpecialIds:
    """The EOS and pad ids of one call, traced: another id runs on the same compiled loop.

    Attributes:
      eos: int32 scalar, the id that ends a row; -1 when there is none (no id equals it).
      pad: int32 scalar, fills `tokens` after each row's end.
    """

    eos: jax.Array
    pad: jax.Array


def special_ids(eos_token_id: Any, pad_token_id: int, vocab_size: int) -> SpecialIds:
    """Checked ids (`check_eos`; the pad id is checked by `prepare_prompts`) as int32 scalars."""
    eos = check_eos(eos_token_id, vocab_size)
    return SpecialIds(eos=np.int32(-1 if eos is None else eos), pad=np.int32(pad_token_id))


def row_settings(temperature: Any, top_k: Any, top_p: Any, batch_size: int) -> SamplingParams:
    """Validated per-row settings (scalars broadcast to every row) as device arrays."""
    params = sampling_params(temperature, top_k, top_p, batch_size)
    return SamplingParams(
        temperature=jnp.asarray(params.temperature), top_k=jnp.asarray(params.top_k), top_p=jnp.asarray(params.top_p)
    )
