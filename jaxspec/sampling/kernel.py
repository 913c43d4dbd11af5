"""Deprecated: renamed `jaxspec.sampling.accept` (the file list now names the algorithm's stages)."""

import warnings

from jaxspec.sampling.accept import *  # noqa: F403
from jaxspec.sampling.accept import (  # noqa: F401  # noqa: F401
    VerifyResult,
    acceptance_probability,
    residual_distribution,
    verify_block,
    verify_tokenwise,
)

warnings.warn(
    "jaxspec.sampling.kernel is deprecated; import jaxspec.sampling.accept instead.", DeprecationWarning, stacklevel=2
)
