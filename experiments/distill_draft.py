"""Distils the draft towards the target on the target's own samples (DistillSpec).

After Zhou et al., "DistillSpec: Improving Speculative Decoding via Knowledge
Distillation" (arXiv 2310.08461): the draft is trained to match the target's
processed next-token distribution at --temperature on sequences the target
itself generates (on-policy data), with the --divergence chosen. The method,
the data pool (--pool_size, --gen_batch, --refresh_every) and the evaluation
are described in `jaxspec.distillation`, which does the work; this script reads
the flags, runs `jaxspec.distillation.distill_draft` (which writes --out_dir:
weights, tokenizer, README.md model card, distill.json) and prints the
evaluation's table.

    python experiments/distill_draft.py --minutes 10                # the shipped pair
    python experiments/distill_draft.py --divergence tv --temperature 0.6 --out_dir /tmp/d
"""

from __future__ import annotations

import math
import os
import sys

from absl import app, flags

import jaxspec
from jaxspec import benchmarking, distillation

CHECKPOINTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "checkpoints")

flags.DEFINE_string(
    "target_model", os.path.join(CHECKPOINTS, "gpt2-target"), "Target (teacher) folder or hub id; frozen."
)
flags.DEFINE_string(
    "draft_model", os.path.join(CHECKPOINTS, "gpt2-draft"), "Draft folder or hub id; distillation starts here."
)
OUT_DIR = flags.DEFINE_string(
    "out_dir", os.path.join(CHECKPOINTS, "gpt2-draft-distilled"), "Where the distilled draft goes."
)
flags.DEFINE_enum(
    "divergence",
    "fkl",
    list(distillation.DIVERGENCES),
    "fkl = KL(p||q), rkl = KL(q||p), tv = 0.5 sum |p - q| (p target, q draft).",
)
flags.DEFINE_float("temperature", 1.0, "Temperature of the on-policy samples and of p and q in the loss; must be > 0.")
flags.DEFINE_float("minutes", 10, "Time budget of the training loop (steps + pool refreshes).")
flags.DEFINE_integer("min_steps", 50, "Train at least this many steps, whatever the budget.", lower_bound=1)
flags.DEFINE_integer("batch_size", 16, "Sequences per step, drawn from the pool.", lower_bound=1)
flags.DEFINE_integer("prompt_tokens", 32, "Prompt length (tokens) cut from files.", lower_bound=1)
flags.DEFINE_integer("gen_tokens", 64, "Tokens the target generates per sequence.", lower_bound=1)
flags.DEFINE_integer("pool_size", 256, "Sequences in the on-policy pool.", lower_bound=1)
flags.DEFINE_integer("gen_batch", 32, "Sequences generated per call (one pool chunk).", lower_bound=1)
flags.DEFINE_integer(
    "refresh_every", 8, "Regenerate the oldest pool chunk every this many steps; 0 = never.", lower_bound=0
)
flags.DEFINE_float("lr", 1e-3, "Peak learning rate (AdamW, warmup + cosine).", lower_bound=0.0)
flags.DEFINE_integer("seed", 0, "Seed for prompts, sampling keys and batches.")
flags.DEFINE_integer("eval_prompts", 16, "Held-out prompts for the evaluation.", lower_bound=1)
flags.DEFINE_list("eval_temperatures", ["0.6", "1.0"], "Temperatures of the evaluation.")
flags.DEFINE_integer("eval_K", 4, "Draft tokens per round in the evaluation.", lower_bound=1)
flags.DEFINE_integer("eval_N", 64, "New tokens per evaluation call.", lower_bound=1)
flags.DEFINE_string(
    "corpus",
    None,
    "A corpus saved by train_pair.py --save_corpus: its tokens replace this interpreter's standard library for "
    "prompts and held-out loss (on a host with another Python).",
)

flags.register_validator(
    "temperature",
    lambda t: math.isfinite(t) and t > 0,
    message="--temperature must be a finite number > 0: distillation matches the target's sampling distribution "
    "at that temperature, and temperature 0 (greedy) has none",
)


def _is_temperature_list(values) -> bool:
    try:
        return all(math.isfinite(float(v)) and float(v) >= 0 for v in values)
    except ValueError:
        return False


flags.register_validator(
    "eval_temperatures", _is_temperature_list, message="--eval_temperatures must be numbers >= 0 (0 = greedy)"
)


COLUMNS = [
    ("temperature", "T"),
    ("K", "K"),
    ("acceptance_before", "accept before"),
    ("acceptance_after", "accept after"),
    ("speedup_before", "speedup before"),
    ("speedup_after", "speedup after"),
    ("ar_ms", "AR ms"),
    ("spec_ms_before", "spec ms before"),
    ("spec_ms_after", "spec ms after"),
]


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    benchmarking.quiet_logs()  # one line per event: ours, not JAX's INFO chatter
    config = benchmarking.from_flags(distillation.DistillConfig, flags.FLAGS)
    try:
        report = distillation.distill_draft(config, command="python " + " ".join(sys.argv), log=benchmarking.log)
    except (ValueError, FileNotFoundError, jaxspec.CheckpointError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    print(benchmarking.format_table(benchmarking.format_floats(report["eval"]), COLUMNS))
    print(f"wrote {os.path.join(OUT_DIR.value, 'distill.json')}")


if __name__ == "__main__":
    app.run(main)
