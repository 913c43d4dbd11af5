"""Generation loops: the autoregressive baseline and speculative sampling."""

from jaxspec.generation.autoregressive import AutoregressiveResult, autoregressive_sample
from jaxspec.generation.common import PROVENANCE_NAMES
from jaxspec.generation.drafters import Drafter, ModelDrafter, NgramDrafter
from jaxspec.generation.speculative import SpeculativeResult, speculative_sample

__all__ = [
    "PROVENANCE_NAMES",
    "AutoregressiveResult",
    "Drafter",
    "ModelDrafter",
    "NgramDrafter",
    "SpeculativeResult",
    "autoregressive_sample",
    "speculative_sample",
]
