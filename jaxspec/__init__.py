"""jaxspec: exact speculative sampling in JAX/Flax.

Public API:
  speculative_sample, autoregressive_sample: the on-device generation loops.
  ModelDrafter, NgramDrafter: what proposes draft tokens (a model or prompt lookup).
  load_model, save_model, load_tokenizer: Hugging Face checkpoints (GPT-2, OPT).
  Model, KVCache, DecoderConfig: the model pytree, its cache and architecture.
  SamplingConfig: temperature / top-k / top-p settings (validated).
"""

from jaxspec.generation import (
    PROVENANCE_NAMES,
    AutoregressiveResult,
    Drafter,
    ModelDrafter,
    NgramDrafter,
    SpeculativeResult,
    autoregressive_sample,
    speculative_sample,
)
from jaxspec.loading import CheckpointError, load_model, load_tokenizer, save_model
from jaxspec.models import (
    SUPPORTED_MODEL_TYPES,
    DecoderConfig,
    KVCache,
    Model,
    UnsupportedModelError,
    init_model,
)
from jaxspec.sampling import SamplingConfig

__version__ = "0.1.0"

__all__ = [
    "PROVENANCE_NAMES",
    "SUPPORTED_MODEL_TYPES",
    "AutoregressiveResult",
    "CheckpointError",
    "DecoderConfig",
    "Drafter",
    "KVCache",
    "Model",
    "ModelDrafter",
    "NgramDrafter",
    "SamplingConfig",
    "SpeculativeResult",
    "UnsupportedModelError",
    "autoregressive_sample",
    "init_model",
    "load_model",
    "load_tokenizer",
    "save_model",
    "speculative_sample",
]
