"""Deprecated: split into `inputs` (host-side checks), `provenance` (codes), `emit`
(the token buffer, emit and roll back) and `verify` (prefill, the verification pass)."""

import warnings

from jaxspec.generation.emit import Sequences, emit, generated_tokens, init_sequences, last_tokens  # noqa: F401
from jaxspec.generation.inputs import (  # noqa: F401
    Prompts,
    check_context,
    check_eos,
    check_int,
    check_positive_int,
    check_prompt,
    is_integer,
    prepare_prompts,
    row_settings,
)
from jaxspec.generation.provenance import (  # noqa: F401
    ACCEPTED_DRAFT,
    BONUS,
    FROM_TARGET,
    NOT_GENERATED,
    PROVENANCE_NAMES,
    RESAMPLED,
)
from jaxspec.generation.verify import prefill  # noqa: F401

warnings.warn(
    "jaxspec.generation.common is deprecated; import from jaxspec.generation.inputs, .provenance, .emit "
    "or .verify instead.",
    DeprecationWarning,
    stacklevel=2,
)
