"""Exact speculative sampling primitives: logit processing and verification."""

from jaxspec.sampling.kernel import (
    VerifyResult,
    acceptance_probability,
    residual_distribution,
    verify_block,
    verify_tokenwise,
)
from jaxspec.sampling.processing import SamplingConfig, processed_logprobs, processed_probs, sample_from_probs

__all__ = [
    "SamplingConfig",
    "VerifyResult",
    "acceptance_probability",
    "processed_logprobs",
    "processed_probs",
    "residual_distribution",
    "sample_from_probs",
    "verify_block",
    "verify_tokenwise",
]
