"""jaxspec: exact speculative sampling in JAX/Flax.

Public API:
  speculative_sample, autoregressive_sample: the on-device generation loops;
    tree_speculative_sample: a draft tree verified in one target pass.
  ModelDrafter, NgramDrafter, SelfDrafter: what proposes draft tokens (a model, prompt
    lookup, or the target through a subset of its own layers).
  load_model, save_model, load_tokenizer: Hugging Face checkpoints (GPT-2, OPT, Llama, Mistral, Qwen2).
  Model, KVCache, DecoderConfig: the model pytree, its cache and architecture.
  quantize_model, dequantize_model, params_bytes: int8 weight-only kernels.
  SamplingConfig: temperature / top-k / top-p settings (validated).
  shard_model, ModelSharding, default_rules: tensor parallelism over a `jax.sharding.Mesh`.
"""

from jaxspec.generation import (
    PROVENANCE_NAMES,
    AutoregressiveResult,
    Drafter,
    ModelDrafter,
    NgramDrafter,
    SelfDrafter,
    SpeculativeResult,
    autoregressive_sample,
    speculative_sample,
    tree_speculative_sample,
)
from jaxspec.loading import CheckpointError, load_model, load_tokenizer, params_bytes, save_model
from jaxspec.models import (
    SUPPORTED_MODEL_TYPES,
    DecoderConfig,
    KVCache,
    Model,
    UnsupportedModelError,
    init_model,
)
from jaxspec.models.quantize import QuantizedKernel, dequantize_model, is_quantized, quantize_model
from jaxspec.sampling import SamplingConfig
from jaxspec.sharding import ModelSharding, default_rules, shard_model

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
    "ModelSharding",
    "NgramDrafter",
    "QuantizedKernel",
    "SamplingConfig",
    "SelfDrafter",
    "SpeculativeResult",
    "UnsupportedModelError",
    "autoregressive_sample",
    "default_rules",
    "dequantize_model",
    "init_model",
    "is_quantized",
    "load_model",
    "load_tokenizer",
    "params_bytes",
    "quantize_model",
    "save_model",
    "shard_model",
    "speculative_sample",
    "tree_speculative_sample",
]
