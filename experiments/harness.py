"""Shared helpers of the experiment scripts: defaults, timing, tables, rendering."""

from __future__ import annotations

import os
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

# Logs are for people: transformers' import-time advisories (e.g. "PyTorch was not found", which
# is expected: jaxspec only uses its tokenizers) are not events of these scripts.
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

import jax
import numpy as np

from jaxspec.generation.common import ACCEPTED_DRAFT, BONUS, RESAMPLED

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_TARGET = os.path.join(REPO, "checkpoints", "gpt2-target")
DEFAULT_DRAFT = os.path.join(REPO, "checkpoints", "gpt2-draft-distilled")
PLAIN_DRAFT = os.path.join(REPO, "checkpoints", "gpt2-draft")
DEFAULT_PROMPT = "import os\nimport sys\n\n\ndef main(argv):\n    "

# Architectures of the Hugging Face checkpoints (config.json fields), for size modes
# (benchmark.py, quantization.py): random weights, real shapes.
HF_SIZES = {
    "gpt2": dict(model_type="gpt2", n_embd=768, n_layer=12, n_head=12),
    "gpt2-medium": dict(model_type="gpt2", n_embd=1024, n_layer=24, n_head=16),
    "gpt2-large": dict(model_type="gpt2", n_embd=1280, n_layer=36, n_head=20),
    "gpt2-xl": dict(model_type="gpt2", n_embd=1600, n_layer=48, n_head=25),
    "opt-125m": dict(
        model_type="opt",
        hidden_size=768,
        num_hidden_layers=12,
        num_attention_heads=12,
        ffn_dim=3072,
        word_embed_proj_dim=768,
        vocab_size=50272,
    ),
    "opt-350m": dict(
        model_type="opt",
        hidden_size=1024,
        num_hidden_layers=24,
        num_attention_heads=16,
        ffn_dim=4096,
        word_embed_proj_dim=512,
        do_layer_norm_before=False,
        vocab_size=50272,
    ),
    "opt-1.3b": dict(
        model_type="opt",
        hidden_size=2048,
        num_hidden_layers=24,
        num_attention_heads=32,
        ffn_dim=8192,
        word_embed_proj_dim=2048,
        vocab_size=50272,
    ),
}


def heldout_prompts(tokenizer, count: int, length: int) -> np.ndarray:
    """int32 [count, length]: the first `length` tokens of `count` distinct held-out files.

    The held-out files are those `train_pair.py` never trained on (the
    interpreter's standard library, split by path hash).
    """
    import training  # experiments/training.py; kept lazy (it imports optax)

    _, heldout = training.split_files(training.python_files())
    prompts = []
    for text in training.read_texts(heldout):
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(ids) >= length:
            prompts.append(ids[:length])
        if len(prompts) == count:
            break
    if len(prompts) < count:
        raise ValueError(f"only {len(prompts)} held-out files have {length} tokens; ask for fewer or shorter prompts.")
    return np.asarray(prompts, np.int32)


def block(tree):
    return jax.block_until_ready(tree)


def time_interleaved(
    methods: dict[str, Callable[[int], Any]], num_runs: int, warmup: int = 1, keep_results: bool = False
):
    """Times each method `num_runs` times, interleaving methods run by run.

    Each call gets its own seed (fresh PRNG key; every call also builds fresh
    caches inside), so no run reuses another's state. The first `warmup`
    calls of each method (compilation included) are timed separately, with
    seeds 10_000, 10_001, ...; timed run i uses seed i.

    Returns:
      {name: {"compile_and_first_s", "times_s": [...], "result": last result}},
      and with keep_results also {name: [result of each timed run]}.
    """
    out = {name: {"times_s": []} for name in methods}
    for name, fn in methods.items():
        start = time.perf_counter()
        for w in range(warmup):
            out[name]["result"] = block(fn(10_000 + w))
        out[name]["compile_and_first_s"] = time.perf_counter() - start
    results = {name: [] for name in methods}
    for run in range(num_runs):
        for name, fn in methods.items():
            start = time.perf_counter()
            out[name]["result"] = block(fn(run))
            out[name]["times_s"].append(time.perf_counter() - start)
            if keep_results:
                results[name].append(out[name]["result"])
    return (out, results) if keep_results else out


def mean_std(xs: list[float]) -> tuple[float, float]:
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def format_table(rows: list[dict[str, Any]], columns: list[tuple[str, str]]) -> str:
    """A plain-text table; `columns` are (key, header)."""
    cells = [[h for _, h in columns]] + [[str(r.get(k, "")) for k, _ in columns] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


_COLORS = {ACCEPTED_DRAFT: "\033[32m", RESAMPLED: "\033[31m", BONUS: "\033[34m"}
_MARKERS = {ACCEPTED_DRAFT: ("", ""), RESAMPLED: ("[", "]"), BONUS: ("{", "}")}
LEGEND_COLOR = (
    "legend: \033[32maccepted draft token\033[0m \033[31mtarget resample after a rejection\033[0m "
    "\033[34mbonus token after a full acceptance\033[0m"
)
LEGEND_PLAIN = (
    "legend: plain = accepted draft token, [x] = target resample after a rejection, "
    "{x} = bonus token after a full acceptance"
)


def render_provenance(tokenizer, tokens: np.ndarray, provenance: np.ndarray, color: bool | None = None) -> str:
    """Decoded text with each token marked by where it came from.

    Colours on a terminal; plain-text markers otherwise (or when color=False).
    """
    if color is None:
        color = sys.stdout.isatty()
    pieces = []
    for token, kind in zip(tokens.tolist(), provenance.tolist()):
        text = tokenizer.decode([token])
        if color and kind in _COLORS:
            pieces.append(f"{_COLORS[kind]}{text}\033[0m")
        elif kind in _MARKERS:
            left, right = _MARKERS[kind]
            pieces.append(f"{left}{text}{right}")
        else:
            pieces.append(text)
    return "".join(pieces)
