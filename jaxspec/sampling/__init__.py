"""Exact speculative sampling primitives: logit processing and verification."""

from jaxspec.sampling.accept import (
    VerifyResult,
    acceptance_probability,
    residual_distribution,
    verify_block,
    verify_tokenwise,
)
from jaxspec.sampling.processing import SamplingConfig, processed_logprobs, processed_probs, sample_from_probs
from jaxspec.sampling.tree import TreeSpec, TreeVerifyResult, verify_tree_recursive, verify_tree_traversal

__all__ = [
    "SamplingConfig",
    "TreeSpec",
    "TreeVerifyResult",
    "VerifyResult",
    "acceptance_probability",
    "processed_logprobs",
    "processed_probs",
    "residual_distribution",
    "sample_from_probs",
    "verify_block",
    "verify_tokenwise",
    "verify_tree_recursive",
    "verify_tree_traversal",
]
