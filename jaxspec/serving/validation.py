"""What a generation request is, and whether the engine takes it.

A request is validated completely before it is queued, so a bad one is
refused on its own and never reaches (or fails) a batch. The checks are the
library's own: the prompt through `generation.check_prompt`, the
sampling settings through `sampling.processing.check_settings` (the check
behind `SamplingConfig`); this module adds only what is the server's policy
(its caps, the seed range, a top_p floor) and names the offending field in a
`RequestError` for the HTTP layer.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

from jaxspec.generation.inputs import check_int, check_prompt
from jaxspec.sampling.processing import SamplingConfig, SettingError, check_settings

GREEDY = SamplingConfig(temperature=0.0, top_k=0, top_p=1.0)
MAX_SEED = 2**31 - 1
INT32_MAX = 2**31 - 1
# Settings travel to the device as float32: a positive value below the smallest
# normal float32 (1.1754944e-38) underflows there, one above its max overflows.
FLOAT32_TINY = float(np.finfo(np.float32).tiny)
FLOAT32_MAX = float(np.finfo(np.float32).max)


class RequestError(ValueError):
    """A request the engine refuses before queueing it; `param` names the field."""

    def __init__(self, param: str, message: str):
        super().__init__(message)
        self.param = param


@dataclasses.dataclass(frozen=True)
class Request:
    """A validated request (see `validate`).

    Attributes:
      prompt_ids: its token ids.
      n: rows (choices) to generate for it.
      max_tokens: the most tokens per row.
      sampling: its normalised settings (see `normalise`).
      seed: None, or the seed of the call it then runs alone in.
    """

    prompt_ids: tuple[int, ...]
    n: int
    max_tokens: int
    sampling: SamplingConfig
    seed: int | None = None


def _field(param: str, check, *args) -> Any:
    """check(*args), its ValueError re-raised as a RequestError naming `param`."""
    try:
        return check(*args)
    except ValueError as err:
        raise RequestError(param, str(err)) from None


def validate(
    prompt_ids: Sequence[int],
    *,
    max_tokens: Any,
    n: Any = 1,
    temperature: Any = 1.0,
    top_k: Any = 0,
    top_p: Any = 1.0,
    seed: Any = None,
    prompt_cap: int,
    tokens_cap: int,
    n_cap: int,
    vocab_size: int | None,
) -> Request:
    """The request, checked and normalised.

    Checks: the prompt is a non-empty sequence of at most `prompt_cap` integer
    token ids (not bools, not floats), each in 0..vocab_size - 1; max_tokens
    (1..tokens_cap), n (1..n_cap) and seed (0..MAX_SEED) are integers (not bools
    or floats); the sampling settings pass `normalise`.

    Raises:
      RequestError: naming the offending field.
    """
    prompt = _field("prompt", check_prompt, prompt_ids, vocab_size, prompt_cap)
    max_tokens = _field("max_tokens", check_int, "max_tokens", max_tokens, 1, tokens_cap)
    n = _field("n", check_int, "n", n, 1, n_cap, " (rows of one batch)")
    if seed is not None:
        seed = _field("seed", check_int, "seed", seed, 0, MAX_SEED)
    sampling = normalise(temperature, top_k, top_p, vocab_size)
    return Request(prompt_ids=prompt, n=n, max_tokens=max_tokens, sampling=sampling, seed=seed)


def normalise(t: Any, k: Any, p: Any, vocab_size: int | None = None) -> SamplingConfig:
    """Validated settings, normalised: greedy ignores top-k/top-p, and top_k >= vocab is off.

    The checks are `check_settings`'s (those of `SamplingConfig`), plus a floor
    on top_p: a value below the smallest normal float32 would reach the device
    as 0, so it is refused rather than silently raised.

    Raises:
      RequestError: naming the out-of-range field.
    """
    try:
        t, k, p = check_settings(t, k, p, prefix="")
    except SettingError as err:
        raise RequestError(err.name, str(err)) from None
    if p < FLOAT32_TINY:
        raise RequestError(
            "top_p", f"top_p {p!r} underflows float32 (smallest normal {FLOAT32_TINY:.8g}); use a larger value."
        )
    if t == 0:
        return GREEDY
    if k >= (INT32_MAX if vocab_size is None else vocab_size):
        k = 0
    return SamplingConfig(temperature=t, top_k=k, top_p=p)


def vocab_size(target, draft) -> int | None:
    """The ids both models sample over (None if unknown, e.g. models stubbed out in tests)."""
    if hasattr(draft, "vocab_size_for") and target is not None:
        return int(draft.vocab_size_for(target))  # a `Drafter`; raises for incompatible vocabularies
    sizes = [getattr(m, "vocab_size", None) for m in (target, draft)]
    sizes = [int(v) for v in sizes if v is not None]
    # A draft whose embedding pads the target's vocabulary samples only the target's ids.
    return min(sizes) if sizes else None
