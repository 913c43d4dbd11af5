"""Generation loops: the autoregressive baseline and speculative sampling."""

from jaxspec.generation.autoregressive import AutoregressiveResult, autoregressive_sample
from jaxspec.generation.drafters import Drafter, ModelDrafter, NgramDrafter
from jaxspec.generation.provenance import PROVENANCE_NAMES
from jaxspec.generation.self_drafter import SelfDrafter
from jaxspec.generation.speculative import SpeculativeResult, speculative_sample
from jaxspec.generation.tree_speculative import tree_speculative_sample

__all__ = [
    "PROVENANCE_NAMES",
    "AutoregressiveResult",
    "Drafter",
    "ModelDrafter",
    "NgramDrafter",
    "SelfDrafter",
    "SpeculativeResult",
    "autoregressive_sample",
    "speculative_sample",
    "tree_speculative_sample",
]
