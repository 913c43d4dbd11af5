"""Generated text with each token marked by where it came from (accepted draft, resample, bonus)."""

from __future__ import annotations

import sys

import numpy as np

from jaxspec.generation.provenance import ACCEPTED_DRAFT, BONUS, RESAMPLED

_COLORS = {ACCEPTED_DRAFT: "\033[32m", RESAMPLED: "\033[31m", BONUS: "\033[34m"}
_MARKERS = {ACCEPTED_DRAFT: ("", ""), RESAMPLED: ("[", "]"), BONUS: ("{", "}")}
LEGEND_COLOR = (
    "legend: \033[32maccepted draft token\033[0m \033[31mtarget resample after a rejection\033[0m "
    "\033[34mbonus token after a full acceptance\033[0m"
)
LEGEND_PLAIN = (
    "legend: plain = accepted draft token, [x] = target resample after a rejection, "
    "{x} = bonus token after a full acceptance"
)


def render_provenance(tokenizer, tokens: np.ndarray, provenance: np.ndarray, color: bool | None = None) -> str:
    """Decoded text with each token marked by where it came from.

    Colours on a terminal; plain-text markers otherwise (or when color=False):
    accepted drafts plain, [resamples] in brackets, {bonus tokens} in braces.
    """
    if color is None:
        color = sys.stdout.isatty()
    pieces = []
    for token, kind in zip(tokens.tolist(), provenance.tolist()):
        text = tokenizer.decode([token])
        if color and kind in _COLORS:
            pieces.append(f"{_COLORS[kind]}{text}\033[0m")
        elif kind in _MARKERS:
            left, right = _MARKERS[kind]
            pieces.append(f"{left}{text}{right}")
        else:
            pieces.append(text)
    return "".join(pieces)
