"""Benchmarks speculative vs autoregressive sampling, against theory.

Sweep mode (default) on the shipped pair: K x temperature x batch size. For
each cell it measures the acceptance rate alpha, the per-call costs (target
1-token step, target (K+1)-token verify, draft 1-token step, each timed inside
a jitted loop at a fixed cache position), the walltime speedup of
`speculative_sample` over `autoregressive_sample`, the speedup theory predicts
from those measured alpha and costs (Leviathan et al.: tokens per round
(1 - alpha^(K+1)) / (1 - alpha), one round = K draft steps + one verify), and
the ratio measured / predicted ("efficiency"). Runs are interleaved and each
uses a different held-out prompt (same token length, so one compile).

Both verification rules are swept (--verify): token-wise and block
verification (Sun et al. 2024); the JSON/CSV rows carry the rule, and
acceptance.png compares their accepted drafts per round. For block
verification the alpha formula does not apply; its predicted speedup uses
the measured tokens per round instead.

N-gram mode (--mode=ngram) compares draft-free prompt lookup (`NgramDrafter`)
with the model draft and plain decoding on prompt sets where lookup should
shine (a snippet quoted back; real code that repeats its identifiers) and one
where it should not (the same code with its tokens shuffled).

Acceptance mode (--mode=acceptance) answers "does block verification accept
at least as many drafts per round as token-wise?" with statistical power instead
of timing: for each K x temperature both rules run once on --acceptance_rows
rows (held-out prompts, each row its own sample) with the same key, and the row
means of accepted drafts per round are compared as a paired difference with
its standard error and z score. The sweep's timing cells use too few tokens for
that question (their acceptance columns differ by noise of a few percent).

Settings mode (--mode=settings) prices the sampling settings users run: for
each temperature:top_k:top_p entry of --settings it times autoregressive and
speculative decoding (K = --settings_K, the first --verify rule) on the
shipped pair, all interleaved in one run, and reports tokens/s (median over
runs), the cost of each setting relative to the first, and speculative / AR.

Size mode (--mode=size) times the per-call costs of Hugging Face-sized configs
with random weights (gpt2 vs gpt2-medium/large/xl, opt-125m vs opt-1.3b).
Acceptance is meaningless for random weights, so only costs are reported.

The measurements are `jaxspec.benchmarking.sweeps`; this script reads flags,
writes <mode>.json/.csv (and the sweep's figures) and prints a table.

    python experiments/benchmark.py --out_dir results/benchmark
    python experiments/benchmark.py --mode=ngram --out_dir results/ngram
    python experiments/benchmark.py --mode=size --out_dir results/size
    python experiments/benchmark.py --mode=settings --N 64 --num_runs 7 --out_dir results/settings
"""

from __future__ import annotations

import os
import sys

from absl import app, flags

from jaxspec import benchmarking
from jaxspec.benchmarking import plots, sweeps
from jaxspec.sampling.accept import VERIFICATION_RULES

CHECKPOINTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "checkpoints")

MODE = flags.DEFINE_enum("mode", "sweep", list(sweeps.MODES), "What to benchmark.")
flags.DEFINE_list(
    "settings",
    ["0.6:0:1", "0.6:50:1", "0.6:0:0.9", "0.6:50:0.9"],
    "temperature:top_k:top_p entries (settings mode); the first is the baseline.",
)
flags.DEFINE_integer("settings_K", 4, "Draft tokens per round in settings mode.", lower_bound=1)
flags.DEFINE_integer(
    "acceptance_rows", 256, "Rows per call in acceptance mode (held-out prompts, repeated).", lower_bound=2
)
flags.DEFINE_string("target_model", os.path.join(CHECKPOINTS, "gpt2-target"), "Target folder or hub id (sweep).")
flags.DEFINE_string("draft_model", os.path.join(CHECKPOINTS, "gpt2-draft-distilled"), "Draft folder or hub id (sweep).")
flags.DEFINE_list("K", ["1", "2", "3", "4", "6", "8"], "Draft lengths to sweep.")
flags.DEFINE_list("temperatures", ["0", "0.6", "1.0"], "Temperatures to sweep.")
flags.DEFINE_list("batch_sizes", ["1", "4", "16"], "Batch sizes to sweep.")
flags.DEFINE_integer("ngram_K", 4, "Draft tokens per round in ngram mode.", lower_bound=1)
flags.DEFINE_list("verify", list(VERIFICATION_RULES), "Verification rules to sweep.")
flags.register_validator(
    "verify",
    lambda rules: all(r in VERIFICATION_RULES for r in rules),
    message=f"--verify takes rules of {list(VERIFICATION_RULES)}",
)
flags.DEFINE_integer("N", 64, "New tokens per row.", lower_bound=1)
flags.DEFINE_integer("prompt_tokens", 32, "Prompt length (tokens) cut from held-out files.")
flags.DEFINE_integer("num_runs", 3, "Timed runs per cell (each with another prompt).", lower_bound=1)
flags.DEFINE_integer(
    "repeats", 1, "Timed calls per run (same prompt and seed), the fastest kept (sweep mode).", lower_bound=1
)
flags.DEFINE_integer(
    "prompts_per_file",
    1,
    "Held-out prompts cut from each file (sweep mode; standard errors cluster them by file).",
    lower_bound=1,
)
flags.DEFINE_list(
    "size_pairs",
    ["gpt2:gpt2-medium", "gpt2:gpt2-large", "opt-125m:opt-1.3b"],
    "draft:target HF configs (size).",
)
OUT_DIR = flags.DEFINE_string("out_dir", "results/benchmark", "Where JSON, CSV and PNG go.")

SWEEP_COLUMNS = [
    ("batch_size", "batch"),
    ("temperature", "T"),
    ("K", "K"),
    ("verify", "verify"),
    ("alpha", "alpha"),
    ("tokens_per_round", "tok/round"),
    ("speedup", "speedup"),
    ("predicted_speedup", "predicted"),
    ("efficiency", "efficiency"),
]
NGRAM_COLUMNS = [(c, c) for c in ("prompts", "temperature", "method", "K", "alpha", "tokens_per_round", "speedup")]


def main(argv):
    del argv
    benchmarking.quiet_logs()
    config = benchmarking.from_flags(sweeps.BenchmarkConfig, flags.FLAGS, check=sweeps.check_config)
    os.makedirs(OUT_DIR.value, exist_ok=True)
    report = sweeps.run_benchmark(config, command="python " + " ".join(sys.argv), log=benchmarking.log)
    path = os.path.join(OUT_DIR.value, MODE.value)
    benchmarking.write_json(report, f"{path}.json")
    benchmarking.write_csv(report["rows"], f"{path}.csv")
    columns = {"sweep": SWEEP_COLUMNS, "ngram": NGRAM_COLUMNS}.get(MODE.value, [(k, k) for k in report["rows"][0]])
    if MODE.value == "sweep":
        plots.plot_speedup(report, os.path.join(OUT_DIR.value, "speedup.png"))
        plots.plot_acceptance(report, os.path.join(OUT_DIR.value, "acceptance.png"))
    digits = 2 if MODE.value == "size" else 3
    print(benchmarking.format_table(benchmarking.format_floats(report["rows"], f".{digits}f"), columns))
    print(f"wrote {OUT_DIR.value}/{MODE.value}.json/.csv")


if __name__ == "__main__":
    app.run(main)
