"""Measures int8 weight-only quantization against float32 and bfloat16.

For each precision (target and draft alike) it reports the params' bytes, the
per-call costs of the target (a 1-token decode step and a (K+1)-token verify,
each timed as --reps calls inside one jitted loop at a fixed cache position),
speculative and autoregressive tokens/s at batch 1 on one fixed prompt
(greedy), the acceptance rate, and how far greedy decoding of each precision
agrees with float32 (fraction of identical tokens, and the index of the first
differing one; greedy runs that differ once usually go their own way after).
Warm-up calls (compilation) are excluded and the precisions' calls are
interleaved run by run (`jaxspec.benchmarking.time_interleaved`), so drifting
machine load hits all of them alike. The measurement is
`jaxspec.benchmarking.quantization.measure`.

Precisions: fp32, bf16 (params and compute), int8 (int8 kernels, float32
compute), int8_bf16 (int8 kernels, bfloat16 compute).

    python experiments/quantization.py                      # the shipped pair in checkpoints/
    python experiments/quantization.py --size=gpt2-medium   # HF-sized random weights, draft gpt2
    python experiments/quantization.py --target_model=tests/fixtures/opt_tiny \\
        --draft_model=tests/fixtures/gpt2_tiny --N=8 --prompt_tokens=6   # smoke run

With --size the weights are random (N(0, 0.02)): costs and bytes are real,
acceptance and agreement are not meaningful (near-uniform logits).
"""

from __future__ import annotations

import os
import sys

from absl import app, flags

from jaxspec import benchmarking
from jaxspec.benchmarking import quantization

CHECKPOINTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "checkpoints")
PRECISIONS = quantization.PRECISIONS

flags.DEFINE_string("target_model", os.path.join(CHECKPOINTS, "gpt2-target"), "Target folder or hub id.")
flags.DEFINE_string("draft_model", os.path.join(CHECKPOINTS, "gpt2-draft-distilled"), "Draft folder or hub id.")
flags.DEFINE_enum("size", None, list(benchmarking.HF_SIZES), "Random-weight target of this HF architecture.")
flags.DEFINE_enum("draft_size", "gpt2", list(benchmarking.HF_SIZES), "Random-weight draft (with --size).")
flags.DEFINE_list("precisions", ["fp32", "bf16", "int8"], f"Any of {', '.join(PRECISIONS)}.")
K = flags.DEFINE_integer("K", 4, "Draft tokens per round.", lower_bound=1)
flags.DEFINE_integer("N", 64, "New tokens per run.", lower_bound=1)
flags.DEFINE_string("prompt", benchmarking.DEFAULT_PROMPT, "Prompt text (tokenized with the target's tokenizer).")
flags.DEFINE_integer(
    "prompt_tokens", 32, "Prompt tokens kept (random ids of this length if there is no tokenizer).", lower_bound=1
)
flags.DEFINE_integer("num_runs", 5, "Timed runs per measurement (after one warm-up).", lower_bound=1)
flags.DEFINE_integer("reps", 10, "Model calls per timed per-call-cost loop.", lower_bound=1)
OUT_DIR = flags.DEFINE_string("out_dir", "results/quantization", "Where quantization.json/.csv go.")


def main(argv):
    del argv
    benchmarking.quiet_logs()
    config = benchmarking.from_flags(quantization.QuantizationConfig, flags.FLAGS, check=quantization.check_config)
    report = quantization.measure(config, command="python " + " ".join(sys.argv), log=benchmarking.log)
    path = os.path.join(OUT_DIR.value, "quantization")
    benchmarking.write_json(report, f"{path}.json")
    benchmarking.write_csv(report["rows"], f"{path}.csv")
    rows = benchmarking.format_floats(report["rows"], quantization.format_cell)
    print(benchmarking.format_table(rows, quantization.table_columns(K.value)))
    print(f"wrote {OUT_DIR.value}/quantization.json/.csv")


if __name__ == "__main__":
    app.run(main)
