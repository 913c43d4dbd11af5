"""Serving: a batching engine over `speculative_sample` and an HTTP API for it.

`Engine` (token ids in, token ids out) needs only jaxspec; it is a queue and a
worker thread over `validation` (requests checked before queueing), `batching`
(the pure batching policy) and `telemetry` (compile counting). `create_app` builds the FastAPI app
and needs the `serve` extra (fastapi, uvicorn); it is imported on first use so
that `import jaxspec.serving` works without them. Nothing in `import jaxspec`
imports this package.
"""

from jaxspec.serving.batching import Buckets, Choice, Completion
from jaxspec.serving.engine import Engine, GenerationError, Overloaded
from jaxspec.serving.telemetry import xla_compiles
from jaxspec.serving.validation import GREEDY, RequestError


def create_app(*args, **kwargs):
    """See `jaxspec.serving.app.create_app` (imports FastAPI)."""
    from jaxspec.serving.app import create_app as _create_app

    return _create_app(*args, **kwargs)


__all__ = [
    "GREEDY",
    "Buckets",
    "Choice",
    "Completion",
    "Engine",
    "GenerationError",
    "Overloaded",
    "RequestError",
    "create_app",
    "xla_compiles",
]
