"""Drafting strategies side by side: chains, token trees and self-drafts, at equal verify budgets.

    python experiments/drafting.py                          # shipped pair, T = 0, 0.6, 1; results/drafting/
    python experiments/drafting.py --methods chain:block:6,tree:traversal:2x2,tree:recursive:2x2
    python experiments/drafting.py --methods self:1,self:2,self:3,chain:block:4 --temperatures 0.6

Methods (see `jaxspec.benchmarking.drafting`): chain:<tokenwise|block>:<K> (the draft model, K drafts),
tree:<traversal|recursive>:<b1>x<b2>... (a tree of that branching, verified in one target pass),
self:<L> (the target's own first L layers, block verification, --self_K drafts). Each method decodes
the same --num_prompts held-out prompts at batch 1, interleaved with autoregressive decoding;
printed and written: speedup (median ± standard error), tokens per target call, accepted drafts
per round, the verify budget (positions per target pass), and Traversal minus recursive
accepted length per round on the same tree shape. A bar plot goes to --out_dir/drafting.png.
"""

from __future__ import annotations

import os
import sys

from absl import app, flags

import jaxspec
from jaxspec import benchmarking
from jaxspec.benchmarking import drafting

CHECKPOINTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "checkpoints")
flags.DEFINE_string("target_model", os.path.join(CHECKPOINTS, "gpt2-target"), "Target: a folder or hub id.")
flags.DEFINE_string("draft_model", os.path.join(CHECKPOINTS, "gpt2-draft-distilled"), "Draft: a folder or hub id.")
flags.DEFINE_list("methods", list(drafting.DraftingConfig.methods), "Method specs (see the module docstring).")
flags.DEFINE_list("temperatures", ["0", "0.6", "1"], "Sampling temperatures (0 = greedy).")
flags.DEFINE_integer("num_prompts", 16, "Held-out prompts (one timed run each per method).", lower_bound=2)
flags.DEFINE_integer("prompt_tokens", 32, "Length of each held-out prompt (tokens).", lower_bound=1)
flags.DEFINE_integer("N", 128, "New tokens per prompt.", lower_bound=1)
flags.DEFINE_integer("self_K", 4, "Draft tokens per round of the self-drafts.", lower_bound=1)
flags.DEFINE_integer("seed", 0, "Base seed; run i uses seed + i.")
OUT_DIR = flags.DEFINE_string("out_dir", "results/drafting", "Where drafting.json and drafting.png go.")


def _check(config: drafting.DraftingConfig) -> None:
    for spec in config.methods:
        drafting.parse_method(spec)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    benchmarking.quiet_logs()
    config = benchmarking.from_flags(drafting.DraftingConfig, flags.FLAGS, check=_check)
    try:
        report = drafting.compare_drafting(config, log=benchmarking.log)
    except (ValueError, FileNotFoundError, jaxspec.CheckpointError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    rows = benchmarking.format_floats(report["rows"], ".3f")
    columns = [
        ("temperature", "T"),
        ("method", "method"),
        ("verify_positions", "positions/pass"),
        ("speedup", "speedup"),
        ("speedup_se", "se"),
        ("tokens_per_target_call", "tokens/call"),
        ("accepted_per_round", "accepted/round"),
        ("accepted_per_round_se", "se"),
    ]
    print(benchmarking.format_table(rows, columns))
    for c in report["traversal_minus_recursive"]:
        print(
            f"T = {c['temperature']}, tree {c['tree']}: traversal - recursive accepted per round "
            f"{c['difference']:+.3f} ± {c['difference_se']:.3f} (z = {c['z']:.1f})"
        )
    os.makedirs(OUT_DIR.value, exist_ok=True)
    benchmarking.write_json(report, os.path.join(OUT_DIR.value, "drafting.json"))
    drafting.plot_drafting(report, os.path.join(OUT_DIR.value, "drafting.png"))
    print(f"wrote {OUT_DIR.value}/drafting.json and drafting.png")


if __name__ == "__main__":
    app.run(main)
