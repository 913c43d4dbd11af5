"""jaxspec side by side with Hugging Face transformers' (PyTorch) generate().

Same checkpoints, prompt, N, K, temperature and machine, runs interleaved:
  hf_plain     transformers generate()
  hf_assisted  transformers generate(assistant_model=draft), constant K drafts
  jax_ar       jaxspec.autoregressive_sample
  jax_spec     jaxspec.speculative_sample
In greedy mode (temperature 0, fp32) all four outputs must be identical token for
token; the script checks and says so. It then tries batch sizes > 1: transformers'
assisted generation refuses them, jaxspec runs them.

Needs torch: pip install -e ".[peers]" (torch==2.13.0, CPU).

    python experiments/vs_transformers.py --N 64 --K 4 --num_runs 5
"""

from __future__ import annotations

import json
import os
import sys
import time

import jax
import numpy as np
from absl import app, flags, logging

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

import jaxspec  # noqa: E402

TARGET = flags.DEFINE_string("target_model", harness.DEFAULT_TARGET, "Target folder or hub id.")
DRAFT = flags.DEFINE_string("draft_model", harness.DEFAULT_DRAFT, "Draft folder or hub id.")
INPUT = flags.DEFINE_string("input_str", harness.DEFAULT_PROMPT, "The prompt.")
N = flags.DEFINE_integer("N", 64, "New tokens.", lower_bound=1)
K = flags.DEFINE_integer("K", 4, "Draft tokens per round (constant for transformers too).", lower_bound=1)
TEMPERATURE = flags.DEFINE_float("temperature", 0.0, "0 = greedy (outputs compared token for token).", lower_bound=0)
NUM_RUNS = flags.DEFINE_integer("num_runs", 5, "Timed runs per method.", lower_bound=1)
BATCH_SIZES = flags.DEFINE_list("batch_sizes", ["1", "4", "16"], "Batch sizes tried for the batched comparison.")
OUTPUT_JSON = flags.DEFINE_string("output_json", None, "Write all figures here.")


def _log(message: str) -> None:
    print(time.strftime("%H:%M:%S"), message, flush=True)


def run() -> dict:
    import torch
    import transformers

    # One line per event: no weight-loading progress bars or deprecation chatter from transformers.
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    torch.manual_seed(0)
    tokenizer = jaxspec.load_tokenizer(TARGET.value)
    prompt = tokenizer(INPUT.value, add_special_tokens=False)["input_ids"]
    eos = tokenizer.eos_token_id
    greedy = TEMPERATURE.value == 0
    jt, jd = jaxspec.load_model(TARGET.value), jaxspec.load_model(DRAFT.value)
    ht = transformers.AutoModelForCausalLM.from_pretrained(TARGET.value, dtype=torch.float32).eval()
    hd = transformers.AutoModelForCausalLM.from_pretrained(DRAFT.value, dtype=torch.float32).eval()
    # Constant K: no heuristic schedule and no confidence-based early stop of drafting.
    hd.generation_config.num_assistant_tokens = K.value
    hd.generation_config.num_assistant_tokens_schedule = "constant"
    hd.generation_config.assistant_confidence_threshold = 0.0
    sampling = dict(do_sample=not greedy)
    if not greedy:
        sampling.update(temperature=TEMPERATURE.value, top_k=0)

    def hf(batch, assisted):
        ids = torch.tensor([prompt] * batch)
        kwargs = dict(assistant_model=hd) if assisted else {}
        with torch.no_grad():
            out = ht.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=N.value,
                pad_token_id=eos,
                eos_token_id=eos,
                **sampling,
                **kwargs,
            )
        return out[:, len(prompt) :].numpy()

    def jax_ar(batch, seed):
        return jaxspec.autoregressive_sample(
            jt,
            [prompt] * batch,
            key=jax.random.key(seed),
            max_new_tokens=N.value,
            temperature=TEMPERATURE.value,
            eos_token_id=eos,
        )

    def jax_spec(batch, seed):
        return jaxspec.speculative_sample(
            jt,
            jd,
            [prompt] * batch,
            key=jax.random.key(seed),
            max_new_tokens=N.value,
            num_draft_tokens=K.value,
            temperature=TEMPERATURE.value,
            eos_token_id=eos,
        )

    methods = {
        "hf_plain": lambda seed: hf(1, False),
        "hf_assisted": lambda seed: hf(1, True),
        "jax_ar": lambda seed: jax_ar(1, seed),
        "jax_spec": lambda seed: jax_spec(1, seed),
    }
    _log("warming up and timing (runs interleaved)")
    timings = harness.time_interleaved(methods, NUM_RUNS.value)

    def rows_of(name):
        r = timings[name]["result"]
        if name.startswith("hf"):
            toks = r[0].tolist()
            return toks[: toks.index(eos) + 1] if eos in toks else toks
        return np.asarray(r.tokens)[0, : int(r.lengths[0])].tolist()

    outputs = {name: rows_of(name) for name in methods}
    report = dict(
        target_model=TARGET.value,
        draft_model=DRAFT.value,
        prompt_tokens=len(prompt),
        N=N.value,
        K=K.value,
        temperature=TEMPERATURE.value,
        num_runs=NUM_RUNS.value,
        torch=torch.__version__,
        transformers=transformers.__version__,
        jax=jax.__version__,
        methods={},
        batched={},
    )
    for name in methods:
        mean, std = harness.mean_std(timings[name]["times_s"])
        report["methods"][name] = dict(
            mean_s=mean,
            std_s=std,
            tokens=len(outputs[name]),
            tokens_per_s=len(outputs[name]) / mean,
            compile_and_first_s=timings[name]["compile_and_first_s"],
        )
    if greedy:
        reference = outputs["hf_plain"]
        report["greedy_identical"] = all(outputs[n] == reference for n in methods)
        report["greedy_mismatches"] = [n for n in methods if outputs[n] != reference]
    for b in (int(x) for x in BATCH_SIZES.value):
        entry = {}
        try:
            hf(b, True)
            entry["hf_assisted"] = "ran"
        except ValueError as err:
            entry["hf_assisted"] = f"refused: {err}"
        res = jax.block_until_ready(jax_spec(b, 0))  # compile
        start = time.perf_counter()
        res = jax.block_until_ready(jax_spec(b, 1))
        seconds = time.perf_counter() - start
        entry["jax_spec_tokens_per_s"] = int(np.asarray(res.lengths).sum()) / seconds
        report["batched"][str(b)] = entry
        _log(
            f"batch {b}: transformers assisted {entry['hf_assisted'][:60]}; jaxspec "
            f"{entry['jax_spec_tokens_per_s']:.0f} tokens/s"
        )
    return report


def print_report(report: dict) -> None:
    m = report["methods"]
    rows = []
    for name, e in m.items():
        rows.append(
            dict(
                method=name,
                time=f"{e['mean_s'] * 1000:.1f} ± {e['std_s'] * 1000:.1f} ms",
                tokens=e["tokens"],
                tps=f"{e['tokens_per_s']:.1f}",
                vs=f"{e['tokens_per_s'] / m['hf_assisted']['tokens_per_s']:.2f}x",
            )
        )
    print(
        f"N={report['N']} K={report['K']} temperature={report['temperature']} batch 1, {report['num_runs']} runs; "
        f"torch {report['torch']}, transformers {report['transformers']}, jax {report['jax']}"
    )
    print(
        harness.format_table(
            rows,
            [
                ("method", "method"),
                ("time", "time (mean ± std)"),
                ("tokens", "tokens"),
                ("tps", "tokens/s"),
                ("vs", "vs hf_assisted"),
            ],
        )
    )
    if "greedy_identical" in report:
        verdict = (
            "identical token for token"
            if report["greedy_identical"]
            else (f"DIFFERENT: {', '.join(report['greedy_mismatches'])} differ from hf_plain")
        )
        print(f"greedy outputs of all four methods: {verdict}")
    for b, e in report["batched"].items():
        print(
            f"batch {b}: transformers assisted: {e['hf_assisted']}; jaxspec speculative: "
            f"{e['jax_spec_tokens_per_s']:.0f} tokens/s"
        )


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    try:
        report = run()
    except ImportError as err:
        print(f"error: {err}. Install the peers extra: pip install -e '.[peers]'", file=sys.stderr)
        sys.exit(2)
    except (ValueError, FileNotFoundError, jaxspec.CheckpointError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    print_report(report)
    if OUTPUT_JSON.value:
        with open(OUTPUT_JSON.value, "w") as f:
            json.dump(report, f, indent=2)
        print(f"wrote {OUTPUT_JSON.value}")
    if report.get("greedy_identical") is False:
        sys.exit(1)


if __name__ == "__main__":
    app.run(main)
