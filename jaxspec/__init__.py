"""jaxspec: exact speculative sampling in JAX/Flax.

Public API:
  load_model, save_model, load_tokenizer: Hugging Face checkpoints (GPT-2, OPT).
  Model, KVCache, DecoderConfig: the model pytree, its cache and architecture.
"""

from jaxspec.loading import CheckpointError, load_model, load_tokenizer, save_model
from jaxspec.models import (
    SUPPORTED_MODEL_TYPES,
    DecoderConfig,
    KVCache,
    Model,
    UnsupportedModelError,
    init_model,
)

__version__ = "0.1.0"

__all__ = [
    "SUPPORTED_MODEL_TYPES",
    "CheckpointError",
    "DecoderConfig",
    "KVCache",
    "Model",
    "UnsupportedModelError",
    "init_model",
    "load_model",
    "load_tokenizer",
    "save_model",
]
