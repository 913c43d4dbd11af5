"""One line per event: what the experiment scripts print while they run."""

from __future__ import annotations

import os
import time


def log(message: str) -> None:
    """Prints `message` after the wall-clock time (HH:MM:SS), flushed at once."""
    print(time.strftime("%H:%M:%S"), message, flush=True)


def quiet_logs() -> None:
    """Keeps other libraries' chatter out of the scripts' one-line-per-event output.

    absl (and so JAX's INFO lines about backends) logs warnings only; transformers'
    import-time advisories (e.g. "PyTorch was not found", expected: jaxspec only
    uses its tokenizers) are off unless the environment asks for them. Call it
    before the first tokenizer is loaded: transformers reads these at import.
    """
    from absl import logging

    logging.set_verbosity(logging.WARNING)
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
