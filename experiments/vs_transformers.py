"""jaxspec side by side with Hugging Face transformers' (PyTorch) generate().

Same checkpoints, prompt, N, K, temperature and machine, runs interleaved:
  hf_plain     transformers generate()
  hf_assisted  transformers generate(assistant_model=draft), constant K drafts
  jax_ar       jaxspec.autoregressive_sample
  jax_spec     jaxspec.speculative_sample
In greedy mode (temperature 0, fp32) all four outputs must be identical token for
token; the script checks and says so. It then tries batch sizes > 1: transformers'
assisted generation refuses them, jaxspec runs them.

The measurement is `jaxspec.benchmarking.peers.run_peers`.
Needs torch: pip install -e ".[peers]" (torch==2.13.0, CPU).

    python experiments/vs_transformers.py --N 64 --K 4 --num_runs 5
"""

from __future__ import annotations

import os
import sys

from absl import app, flags

import jaxspec
from jaxspec import benchmarking
from jaxspec.benchmarking import peers

CHECKPOINTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "checkpoints")

flags.DEFINE_string("target_model", os.path.join(CHECKPOINTS, "gpt2-target"), "Target folder or hub id.")
flags.DEFINE_string("draft_model", os.path.join(CHECKPOINTS, "gpt2-draft-distilled"), "Draft folder or hub id.")
flags.DEFINE_string("input_str", benchmarking.DEFAULT_PROMPT, "The prompt.")
flags.DEFINE_integer("N", 64, "New tokens.", lower_bound=1)
flags.DEFINE_integer("K", 4, "Draft tokens per round (constant for transformers too).", lower_bound=1)
flags.DEFINE_float("temperature", 0.0, "0 = greedy (outputs compared token for token).", lower_bound=0)
flags.DEFINE_integer("num_runs", 5, "Timed runs per method.", lower_bound=1)
flags.DEFINE_list("batch_sizes", ["1", "4", "16"], "Batch sizes tried for the batched comparison.")
OUTPUT_JSON = flags.DEFINE_string("output_json", None, "Write all figures here.")


def main(argv):
    del argv
    benchmarking.quiet_logs()
    config = benchmarking.from_flags(peers.PeersConfig, flags.FLAGS)
    try:
        report = peers.run_peers(config, log=benchmarking.log)
    except ImportError as err:
        print(f"error: {err}. Install the peers extra: pip install -e '.[peers]'", file=sys.stderr)
        sys.exit(2)
    except (ValueError, FileNotFoundError, jaxspec.CheckpointError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    print(peers.format_report(report))
    if OUTPUT_JSON.value:
        benchmarking.write_json(report, OUTPUT_JSON.value)
        print(f"wrote {OUTPUT_JSON.value}")
    if report.get("greedy_identical") is False:
        sys.exit(1)


if __name__ == "__main__":
    app.run(main)
