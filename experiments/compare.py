"""Compares speculative sampling with autoregressive sampling.

    python experiments/compare.py                       # shipped pair, 16 held-out prompts
    python experiments/compare.py --temperature 0 -v    # greedy; colour tokens by provenance
    python experiments/compare.py --input_str "def f(x):" --num_runs 5   # one prompt of yours
    python experiments/compare.py --verify tokenwise    # Leviathan et al.'s rule instead of block
    python experiments/compare.py --drafter ngram       # prompt lookup, no draft model
    python experiments/compare.py --drafter self --self_draft_layers 2  # the target's first 2 layers
    python experiments/compare.py --target_model gpt2-large --draft_model gpt2   # hub ids (needs network)

By default each method decodes --num_prompts held-out prompts (the first
--prompt_tokens tokens of files the shipped models never trained on), one
timed run per prompt, the methods interleaved prompt by prompt after a warm-up
run whose time (compilation included) is reported separately. The speedup is
measured per prompt (autoregressive time / speculative time on the same
prompt) and reported as the median with the mean's standard error. With
--input_str, that one prompt is decoded --num_runs times instead.

Also printed: time ± std, tokens/s, ms/token, the acceptance accepted/drafted
and the per-draft alpha = accepted / (accepted + rejections), the acceptance
at each draft position, tokens per target call, and the generated text of the
first prompt. -v marks each token by provenance. The measurement is
`jaxspec.benchmarking.comparison.compare`.
"""

from __future__ import annotations

import os
import sys

from absl import app, flags

import jaxspec
from jaxspec import benchmarking
from jaxspec.benchmarking import comparison
from jaxspec.sampling.accept import VERIFICATION_RULES

CHECKPOINTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "checkpoints")

flags.DEFINE_string("target_model", os.path.join(CHECKPOINTS, "gpt2-target"), "Target: a folder or hub id.")
flags.DEFINE_string("draft_model", os.path.join(CHECKPOINTS, "gpt2-draft-distilled"), "Draft: a folder or hub id.")
flags.DEFINE_string("input_str", None, "One prompt of yours (default: --num_prompts held-out prompts).")
flags.DEFINE_integer("num_runs", 5, "Timed runs per method with --input_str.", lower_bound=1)
flags.DEFINE_integer(
    "num_prompts", 16, "Held-out prompts, one timed run each per method (without --input_str).", lower_bound=1
)
flags.DEFINE_integer("prompt_tokens", 32, "Length of each held-out prompt (tokens).", lower_bound=1)
flags.DEFINE_integer("N", 128, "New tokens per row.", lower_bound=1)
flags.DEFINE_integer("K", 5, "Draft tokens per round (default: the best measured on the shipped pair).", lower_bound=1)
flags.DEFINE_float("temperature", 0.6, "Sampling temperature; 0 = greedy.", lower_bound=0.0)
flags.DEFINE_integer("top_k", 0, "Top-k filter; 0 = off.", lower_bound=0)
flags.DEFINE_float("top_p", 1.0, "Nucleus mass in (0, 1]; 1 = off.")
flags.DEFINE_integer("batch_size", 1, "Copies of the prompt decoded together.", lower_bound=1)
flags.DEFINE_integer("seed", 0, "Base seed; run i uses seed + i.")
flags.DEFINE_enum(
    "drafter",
    "model",
    ["model", "ngram", "self"],
    "model: --draft_model proposes; ngram: prompt lookup, no draft model; self: the target's first "
    "--self_draft_layers layers and its own head (LayerSkip-style early exit).",
)
flags.DEFINE_integer("max_ngram", 3, "Longest suffix prompt lookup matches (--drafter=ngram).", lower_bound=1)
flags.DEFINE_integer("self_draft_layers", 1, "Target layers a self-draft runs (--drafter=self).", lower_bound=1)
flags.DEFINE_enum("verify", "block", list(VERIFICATION_RULES), "Verification rule.")
flags.DEFINE_float(
    "min_draft_confidence",
    None,
    "Dynamic draft length: a row stops drafting once the draft's top probability is below this (K is the most); "
    "the output law is unchanged.",
    lower_bound=0.0,
    upper_bound=1.0,
)
flags.DEFINE_enum("method", "both", ["both", "speculative", "autoregressive"], "What to run.")
flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Parameter/compute dtype.")
flags.DEFINE_bool("verbose", False, "Show each speculative token's provenance (colour or markers); -v too.")
OUTPUT_JSON = flags.DEFINE_string("output_json", None, "Also write every figure to this JSON file.")

flags.register_validator("top_p", lambda v: 0.0 < v <= 1.0, message="--top_p must lie in (0, 1]")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    benchmarking.quiet_logs()  # keep JAX's backend-probing INFO lines off the screen
    config = benchmarking.from_flags(comparison.CompareConfig, flags.FLAGS)
    try:
        report = comparison.compare(config)
    except (ValueError, FileNotFoundError, jaxspec.CheckpointError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    print(comparison.format_report(report, color=sys.stdout.isatty()))
    if OUTPUT_JSON.value:
        report.pop("_verbose_render", None)
        benchmarking.write_json(report, OUTPUT_JSON.value)
        print(f"\nwrote {OUTPUT_JSON.value}")


if __name__ == "__main__":
    # absl owns -v (log verbosity, still available as --verbosity); here -v means --verbose.
    sys.argv = ["--verbose" if a == "-v" else a for a in sys.argv]
    app.run(main)
