"""Compares speculative sampling with autoregressive sampling on one prompt.

    python experiments/compare.py                       # shipped pair, defaults
    python experiments/compare.py --K 3 --temperature 0 --N 128 -v
    python experiments/compare.py --verify block            # block verification (Sun et al. 2024)
    python experiments/compare.py --drafter ngram           # prompt lookup, no draft model
    python experiments/compare.py --target_model gpt2-large --draft_model gpt2   # hub ids (needs network)

Prints mean time ± std over --num_runs timed runs (after a warm-up run whose
time, compilation included, is reported separately), tokens/s, ms/token,
speedup over autoregressive, acceptance rate and tokens per target call; then
the generated text. -v colours each token by provenance.
"""

from __future__ import annotations

import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags, logging

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

import jaxspec  # noqa: E402

TARGET = flags.DEFINE_string("target_model", harness.DEFAULT_TARGET, "Target: a folder or hub id.")
DRAFT = flags.DEFINE_string("draft_model", harness.DEFAULT_DRAFT, "Draft: a folder or hub id.")
INPUT = flags.DEFINE_string("input_str", harness.DEFAULT_PROMPT, "The prompt.")
NUM_RUNS = flags.DEFINE_integer("num_runs", 5, "Timed runs per method (after one warm-up run).", lower_bound=1)
N = flags.DEFINE_integer("N", 64, "New tokens per row.", lower_bound=1)
K = flags.DEFINE_integer("K", 4, "Draft tokens per round.", lower_bound=1)
TEMPERATURE = flags.DEFINE_float("temperature", 0.6, "Sampling temperature; 0 = greedy.", lower_bound=0.0)
TOP_K = flags.DEFINE_integer("top_k", 0, "Top-k filter; 0 = off.", lower_bound=0)
TOP_P = flags.DEFINE_float("top_p", 1.0, "Nucleus mass in (0, 1]; 1 = off.")
BATCH = flags.DEFINE_integer("batch_size", 1, "Copies of the prompt decoded together.", lower_bound=1)
SEED = flags.DEFINE_integer("seed", 0, "Base seed; run i uses seed + i.")
DRAFTER = flags.DEFINE_enum(
    "drafter", "model", ["model", "ngram"], "model: --draft_model proposes; ngram: prompt lookup, no draft model."
)
NGRAM = flags.DEFINE_integer("max_ngram", 3, "Longest suffix prompt lookup matches (--drafter=ngram).", lower_bound=1)
VERIFY = flags.DEFINE_enum("verify", "tokenwise", ["tokenwise", "block"], "Verification rule.")
METHOD = flags.DEFINE_enum("method", "both", ["both", "speculative", "autoregressive"], "What to run.")
DTYPE = flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Parameter/compute dtype.")
VERBOSE = flags.DEFINE_bool("verbose", False, "Show each speculative token's provenance (colour or markers); -v too.")
OUTPUT_JSON = flags.DEFINE_string("output_json", None, "Also write every figure to this JSON file.")

flags.register_validator("top_p", lambda v: 0.0 < v <= 1.0, message="--top_p must lie in (0, 1]")


def run() -> dict:
    dtype = jnp.float32 if DTYPE.value == "float32" else jnp.bfloat16
    target = jaxspec.load_model(TARGET.value, dtype=dtype)
    tokenizer = jaxspec.load_tokenizer(TARGET.value)
    prompt = tokenizer(INPUT.value, add_special_tokens=False)["input_ids"]
    if not prompt:
        raise ValueError("--input_str encodes to no tokens; give a non-empty prompt.")
    prompts = np.tile(np.asarray(prompt, np.int32), (BATCH.value, 1))
    eos = tokenizer.eos_token_id
    settings = dict(temperature=TEMPERATURE.value, top_k=TOP_K.value, top_p=TOP_P.value)
    methods = {}
    if METHOD.value in ("both", "autoregressive"):
        methods["autoregressive"] = lambda seed: jaxspec.autoregressive_sample(
            target, prompts, key=jax.random.key(SEED.value + seed), max_new_tokens=N.value, **settings
        )
    draft = None
    if METHOD.value in ("both", "speculative"):
        if DRAFTER.value == "model":
            draft = jaxspec.load_model(DRAFT.value, dtype=dtype)
        else:
            draft = jaxspec.NgramDrafter(max_ngram=NGRAM.value)
        methods["speculative"] = lambda seed: jaxspec.speculative_sample(
            target,
            draft,
            prompts,
            key=jax.random.key(SEED.value + seed),
            max_new_tokens=N.value,
            num_draft_tokens=K.value,
            verify=VERIFY.value,
            **settings,
        )
    del eos  # generation runs to N tokens so every run does the same work
    timings = harness.time_interleaved(methods, NUM_RUNS.value)
    report = dict(
        target_model=TARGET.value,
        draft_model=(DRAFT.value if DRAFTER.value == "model" else f"prompt lookup (max_ngram {NGRAM.value})")
        if draft is not None
        else None,
        verify=VERIFY.value,
        prompt=INPUT.value,
        prompt_tokens=len(prompt),
        N=N.value,
        K=K.value,
        batch_size=BATCH.value,
        num_runs=NUM_RUNS.value,
        device=str(jax.devices()[0]),
        dtype=DTYPE.value,
        methods={},
        **settings,
    )
    ar_mean = None
    for name, t in timings.items():
        mean, std = harness.mean_std(t["times_s"])
        result = t["result"]
        generated = int(np.asarray(result.lengths).sum())
        entry = dict(
            mean_s=mean,
            std_s=std,
            times_s=t["times_s"],
            compile_and_first_s=t["compile_and_first_s"],
            generated_tokens=generated,
            tokens_per_s=generated / mean,
            ms_per_token=1000 * mean / generated * BATCH.value,
            text=tokenizer.decode(np.asarray(result.tokens)[0, : int(result.lengths[0])]),
        )
        if name == "autoregressive":
            ar_mean = mean
        else:
            entry.update(
                acceptance_rate=float(np.mean(np.asarray(result.acceptance_rate))),
                tokens_per_target_call=float(np.mean(np.asarray(result.tokens_per_round))),
            )
        report["methods"][name] = entry
    for entry in report["methods"].values():
        entry["speedup"] = ar_mean / entry["mean_s"] if ar_mean else None
    if VERBOSE.value and "speculative" in timings:
        result = timings["speculative"]["result"]
        n = int(result.lengths[0])
        report["verbose_text"] = harness.render_provenance(
            tokenizer, np.asarray(result.tokens)[0, :n], np.asarray(result.provenance)[0, :n], color=False
        )
        report["_verbose_render"] = harness.render_provenance(
            tokenizer, np.asarray(result.tokens)[0, :n], np.asarray(result.provenance)[0, :n]
        )
    return report


def print_report(report: dict) -> None:
    print(
        f"target {report['target_model']}  draft {report['draft_model']}  device {report['device']} ({report['dtype']})"
    )
    print(
        f"prompt {report['prompt_tokens']} tokens, N={report['N']}, K={report['K']}, batch {report['batch_size']}, "
        f"temperature {report['temperature']}, top_k {report['top_k']}, top_p {report['top_p']}, "
        f"{report['verify']} verification"
    )
    rows = []
    for name, e in report["methods"].items():
        rows.append(
            dict(
                method=name,
                runs=len(e["times_s"]),
                time=f"{e['mean_s'] * 1000:.1f} ± {e['std_s'] * 1000:.1f} ms",
                tps=f"{e['tokens_per_s']:.0f}",
                mspt=f"{e['ms_per_token']:.2f}",
                speedup=f"{e['speedup']:.2f}x" if e["speedup"] else "-",
                acc=f"{e['acceptance_rate']:.3f}" if "acceptance_rate" in e else "-",
                tpc=f"{e['tokens_per_target_call']:.2f}" if "tokens_per_target_call" in e else "1.00",
                compile=f"{e['compile_and_first_s']:.1f} s",
            )
        )
    print(
        harness.format_table(
            rows,
            [
                ("method", "method"),
                ("runs", "runs"),
                ("time", "time (mean ± std)"),
                ("tps", "tokens/s"),
                ("mspt", "ms/token"),
                ("speedup", "speedup"),
                ("acc", "acceptance"),
                ("tpc", "tokens/target call"),
                ("compile", "warm-up (compile)"),
            ],
        )
    )
    for name, e in report["methods"].items():
        print(f"\n--- {name} (row 0) ---\n{report['prompt']}{e['text']}")
    if "_verbose_render" in report:
        color = sys.stdout.isatty()
        print("\n--- speculative, by provenance ---")
        print(harness.LEGEND_COLOR if color else harness.LEGEND_PLAIN)
        print(report["prompt"] + (report["_verbose_render"] if color else report["verbose_text"]))


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    logging.set_verbosity(logging.WARNING)  # keep JAX's backend-probing INFO lines off the screen
    try:
        report = run()
    except (ValueError, FileNotFoundError, jaxspec.CheckpointError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    print_report(report)
    if OUTPUT_JSON.value:
        report.pop("_verbose_render", None)
        with open(OUTPUT_JSON.value, "w") as f:
            json.dump(report, f, indent=2)
        print(f"\nwrote {OUTPUT_JSON.value}")


if __name__ == "__main__":
    # absl owns -v (log verbosity, still available as --verbosity); here -v means --verbose.
    sys.argv = ["--verbose" if a == "-v" else a for a in sys.argv]
    app.run(main)
