"""Flax decoders with a functional KV cache: GPT-2 / OPT and the Llama family (Llama, Mistral, Qwen2)."""

from jaxspec.models.cache import KVCache
from jaxspec.models.config import SUPPORTED_MODEL_TYPES, DecoderConfig, UnsupportedModelError
from jaxspec.models.decoder import Decoder
from jaxspec.models.llama import LlamaDecoder
from jaxspec.models.model import Model, abstract_params, init_model

__all__ = [
    "SUPPORTED_MODEL_TYPES",
    "Decoder",
    "DecoderConfig",
    "KVCache",
    "LlamaDecoder",
    "Model",
    "UnsupportedModelError",
    "abstract_params",
    "init_model",
]
