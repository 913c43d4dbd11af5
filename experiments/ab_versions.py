"""Before/after: this checkout's jaxspec against an earlier commit's, interleaved in one process.

Timing two versions in two processes mixes the change with process-to-process
noise (here +-20% between runs of the same code). This script checks out
--baseline_commit into a temporary git worktree, imports its `jaxspec`
package under another name (`jaxspec_baseline`, imports rewritten), loads the
same checkpoints with each version, and times autoregressive and speculative
decoding for every --settings entry with both versions, run by run
interleaved (each run another held-out prompt and key).

    python experiments/ab_versions.py --baseline_commit 2e73bfc --out_dir results/ab_sampler
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tempfile

import jax
import numpy as np
from absl import app, flags

import jaxspec
from jaxspec import benchmarking
from jaxspec.benchmarking import sweeps
from jaxspec.sampling.accept import VERIFICATION_RULES

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHECKPOINTS = os.path.join(REPO, "checkpoints")

BASELINE = flags.DEFINE_string("baseline_commit", None, "The earlier commit to compare with.", required=True)
TARGET = flags.DEFINE_string("target_model", os.path.join(CHECKPOINTS, "gpt2-target"), "Target folder.")
DRAFT = flags.DEFINE_string("draft_model", os.path.join(CHECKPOINTS, "gpt2-draft-distilled"), "Draft folder.")
SETTINGS = flags.DEFINE_list(
    "settings", ["0.6:0:1", "0:0:1", "0.6:50:1", "0.6:0:0.9", "0.6:50:0.9"], "temperature:top_k:top_p entries."
)
N = flags.DEFINE_integer("N", 128, "New tokens per run.", lower_bound=1)
K = flags.DEFINE_integer("K", 5, "Draft tokens per round.", lower_bound=1)
VERIFY = flags.DEFINE_enum("verify", "block", list(VERIFICATION_RULES), "Verification rule.")
NUM_RUNS = flags.DEFINE_integer("num_runs", 12, "Timed runs per method (each another prompt).", lower_bound=1)
PROMPT_TOKENS = flags.DEFINE_integer("prompt_tokens", 32, "Held-out prompt length.", lower_bound=1)
OUT_DIR = flags.DEFINE_string("out_dir", "results/ab_sampler", "Where the JSON goes.")


def import_baseline(commit: str, workdir: str):
    """The `jaxspec` package of `commit`, imported as `jaxspec_baseline`.

    Both versions must live in this one process (interleaved timing), so the
    old package cannot be imported as `jaxspec`: its files are copied out of a
    temporary worktree with every `jaxspec` import rewritten, and the copy is
    loaded from its path with `importlib.util.spec_from_file_location`. Once
    `jaxspec_baseline` is in `sys.modules` with that folder as its
    `submodule_search_locations`, its own absolute imports
    (`jaxspec_baseline.models`, ...) resolve inside the copy, so `sys.path` is
    never changed and nothing else can pick up the old code by accident.
    """
    tree = os.path.join(workdir, "tree")
    subprocess.run(["git", "-C", REPO, "worktree", "add", "--detach", tree, commit], check=True, capture_output=True)
    try:
        package = os.path.join(workdir, "pkg", "jaxspec_baseline")
        shutil.copytree(os.path.join(tree, "jaxspec"), package)
    finally:
        subprocess.run(["git", "-C", REPO, "worktree", "remove", "--force", tree], check=True, capture_output=True)
    for root, _, files in os.walk(package):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(root, name)
                with open(path) as fh:
                    text = fh.read()
                with open(path, "w") as fh:
                    fh.write(re.sub(r"\bjaxspec\b(?=[\.\s])", "jaxspec_baseline", text))
    spec = importlib.util.spec_from_file_location(
        "jaxspec_baseline", os.path.join(package, "__init__.py"), submodule_search_locations=[package]
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules["jaxspec_baseline"] = module
    spec.loader.exec_module(module)
    return module


def main(argv):
    del argv
    benchmarking.quiet_logs()
    with tempfile.TemporaryDirectory() as workdir:
        versions = {"baseline": import_baseline(BASELINE.value, workdir), "this": jaxspec}
        tokenizer = jaxspec.load_tokenizer(TARGET.value)
        prompts = benchmarking.heldout_prompts(tokenizer, NUM_RUNS.value + 1, PROMPT_TOKENS.value)
        methods = {}
        for version, lib in versions.items():
            target, draft = lib.load_model(TARGET.value), lib.load_model(DRAFT.value)
            methods.update(
                sweeps.settings_methods(
                    target,
                    draft,
                    prompts,
                    SETTINGS.value,
                    lib=lib,
                    prefix=f"{version} ",
                    max_new_tokens=N.value,
                    num_draft_tokens=K.value,
                    verify=VERIFY.value,
                )
            )
        benchmarking.log(f"timing {len(methods)} methods x {NUM_RUNS.value} runs, interleaved")
        timings = benchmarking.time_interleaved(methods, NUM_RUNS.value)
    rate = {name: N.value / float(np.median(t["times_s"])) for name, t in timings.items()}
    rows = []
    for entry in SETTINGS.value:
        for loop in ("autoregressive", "speculative"):
            base, this = rate[f"baseline {entry} {loop}"], rate[f"this {entry} {loop}"]
            rows.append(
                dict(setting=entry, loop=loop, baseline_tokens_per_s=base, this_tokens_per_s=this, ratio=this / base)
            )
    report = dict(
        baseline_commit=BASELINE.value,
        N=N.value,
        K=K.value,
        verify=VERIFY.value,
        num_runs=NUM_RUNS.value,
        rows=rows,
        device=str(jax.devices()[0]),
        command="python " + " ".join(sys.argv),
    )
    benchmarking.write_json(report, os.path.join(OUT_DIR.value, "ab.json"))
    print(benchmarking.format_table(benchmarking.format_floats(rows), [(c, c) for c in rows[0]]))
    print(f"wrote {OUT_DIR.value}/ab.json")


if __name__ == "__main__":
    app.run(main)
