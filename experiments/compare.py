"""Compares speculative sampling with autoregressive sampling.

    python experiments/compare.py                       # shipped pair, 16 held-out prompts
    python experiments/compare.py --temperature 0 -v    # greedy; colour tokens by provenance
    python experiments/compare.py --input_str "def f(x):" --num_runs 5   # one prompt of yours
    python experiments/compare.py --verify tokenwise    # Leviathan et al.'s rule instead of block
    python experiments/compare.py --drafter ngram       # prompt lookup, no draft model
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
first prompt. -v marks each token by provenance.
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
import costs  # noqa: E402
import harness  # noqa: E402

import jaxspec  # noqa: E402

TARGET = flags.DEFINE_string("target_model", harness.DEFAULT_TARGET, "Target: a folder or hub id.")
DRAFT = flags.DEFINE_string("draft_model", harness.DEFAULT_DRAFT, "Draft: a folder or hub id.")
INPUT = flags.DEFINE_string("input_str", None, "One prompt of yours (default: --num_prompts held-out prompts).")
NUM_RUNS = flags.DEFINE_integer("num_runs", 5, "Timed runs per method with --input_str.", lower_bound=1)
NUM_PROMPTS = flags.DEFINE_integer(
    "num_prompts", 16, "Held-out prompts, one timed run each per method (without --input_str).", lower_bound=1
)
PROMPT_TOKENS = flags.DEFINE_integer("prompt_tokens", 32, "Length of each held-out prompt (tokens).", lower_bound=1)
N = flags.DEFINE_integer("N", 128, "New tokens per row.", lower_bound=1)
K = flags.DEFINE_integer(
    "K", 5, "Draft tokens per round (default: the best measured on the shipped pair).", lower_bound=1
)
TEMPERATURE = flags.DEFINE_float("temperature", 0.6, "Sampling temperature; 0 = greedy.", lower_bound=0.0)
TOP_K = flags.DEFINE_integer("top_k", 0, "Top-k filter; 0 = off.", lower_bound=0)
TOP_P = flags.DEFINE_float("top_p", 1.0, "Nucleus mass in (0, 1]; 1 = off.")
BATCH = flags.DEFINE_integer("batch_size", 1, "Copies of the prompt decoded together.", lower_bound=1)
SEED = flags.DEFINE_integer("seed", 0, "Base seed; run i uses seed + i.")
DRAFTER = flags.DEFINE_enum(
    "drafter", "model", ["model", "ngram"], "model: --draft_model proposes; ngram: prompt lookup, no draft model."
)
NGRAM = flags.DEFINE_integer("max_ngram", 3, "Longest suffix prompt lookup matches (--drafter=ngram).", lower_bound=1)
VERIFY = flags.DEFINE_enum("verify", "block", ["tokenwise", "block"], "Verification rule.")
METHOD = flags.DEFINE_enum("method", "both", ["both", "speculative", "autoregressive"], "What to run.")
DTYPE = flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Parameter/compute dtype.")
VERBOSE = flags.DEFINE_bool("verbose", False, "Show each speculative token's provenance (colour or markers); -v too.")
OUTPUT_JSON = flags.DEFINE_string("output_json", None, "Also write every figure to this JSON file.")

flags.register_validator("top_p", lambda v: 0.0 < v <= 1.0, message="--top_p must lie in (0, 1]")


def run() -> dict:
    dtype = jnp.float32 if DTYPE.value == "float32" else jnp.bfloat16
    target = jaxspec.load_model(TARGET.value, dtype=dtype)
    tokenizer = jaxspec.load_tokenizer(TARGET.value)
    if INPUT.value is not None:
        prompt = tokenizer(INPUT.value, add_special_tokens=False)["input_ids"]
        if not prompt:
            raise ValueError("--input_str encodes to no tokens; give a non-empty prompt.")
        prompt_set = np.asarray([prompt], np.int32)
        num_runs = NUM_RUNS.value
    else:
        prompt_set = harness.heldout_prompts(tokenizer, NUM_PROMPTS.value, PROMPT_TOKENS.value)
        num_runs = NUM_PROMPTS.value

    def prompts(seed: int) -> np.ndarray:
        """Run `seed`'s prompt (warm-up seeds reuse prompt 0) as a batch of copies."""
        row = prompt_set[seed % len(prompt_set)] if seed < num_runs else prompt_set[0]
        return np.tile(row, (BATCH.value, 1))

    settings = dict(temperature=TEMPERATURE.value, top_k=TOP_K.value, top_p=TOP_P.value)
    methods = {}
    if METHOD.value in ("both", "autoregressive"):
        methods["autoregressive"] = lambda seed: jaxspec.autoregressive_sample(
            target, prompts(seed), key=jax.random.key(SEED.value + seed), max_new_tokens=N.value, **settings
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
            prompts(seed),
            key=jax.random.key(SEED.value + seed),
            max_new_tokens=N.value,
            num_draft_tokens=K.value,
            verify=VERIFY.value,
            **settings,
        )
    # No EOS: generation runs to N tokens so every run does the same work.
    timings, results = harness.time_interleaved(methods, num_runs, keep_results=True)
    report = dict(
        target_model=TARGET.value,
        draft_model=(DRAFT.value if DRAFTER.value == "model" else f"prompt lookup (max_ngram {NGRAM.value})")
        if draft is not None
        else None,
        verify=VERIFY.value,
        prompt=tokenizer.decode(prompt_set[0]),
        prompts="input_str" if INPUT.value is not None else f"{len(prompt_set)} held-out prompts",
        prompt_tokens=int(prompt_set.shape[1]),
        N=N.value,
        K=K.value,
        batch_size=BATCH.value,
        num_runs=num_runs,
        device=str(jax.devices()[0]),
        dtype=DTYPE.value,
        methods={},
        **settings,
    )
    ar_mean = None
    for name, t in timings.items():
        mean, std = harness.mean_std(t["times_s"])
        result = results[name][0]  # the first prompt's run: its text is shown
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
            entry.update(costs.acceptance_summary(results[name]))
        report["methods"][name] = entry
    for name, entry in report["methods"].items():
        entry["speedup"] = None
        if ar_mean:
            # Paired per run: the same prompt (and batch) decoded by both methods.
            ratios = np.asarray(timings["autoregressive"]["times_s"]) / np.asarray(timings[name]["times_s"])
            entry.update(
                speedup=float(np.median(ratios)),
                speedup_mean=float(np.mean(ratios)),
                speedup_se=float(np.std(ratios, ddof=1) / np.sqrt(len(ratios))) if len(ratios) > 1 else 0.0,
                speedups=ratios.tolist(),
            )
    if VERBOSE.value and "speculative" in timings:
        result = results["speculative"][0]
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
        f"{report['prompts']} of {report['prompt_tokens']} tokens, N={report['N']}, K={report['K']}, "
        f"batch {report['batch_size']}, "
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
                speedup=f"{e['speedup']:.2f}x ± {e['speedup_se']:.2f}" if e["speedup"] else "-",
                acc=f"{e['acceptance_rate']:.3f}" if "acceptance_rate" in e else "-",
                alpha=f"{e['alpha_per_draft']:.3f}" if "alpha_per_draft" in e else "-",
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
                ("speedup", "speedup (median ± se)"),
                ("acc", "acceptance"),
                ("alpha", "alpha per draft"),
                ("tpc", "tokens/target call"),
                ("compile", "warm-up (compile)"),
            ],
        )
    )
    for name, e in report["methods"].items():
        if "acceptance_by_position" in e:
            by_position = ", ".join(f"{a:.2f}" for a in e["acceptance_by_position"])
            print(
                f"{name}: acceptance by draft position [{by_position}]; {e['accepted']} accepted, "
                f"{e['rejections']} rejections in {e['rounds']} rounds"
            )
    for name, e in report["methods"].items():
        print(f"\n--- {name} (first prompt, row 0) ---\n{report['prompt']}{e['text']}")
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
