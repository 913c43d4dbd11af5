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

Size mode (--mode=size) times the per-call costs of Hugging Face-sized configs
with random weights (gpt2 vs gpt2-medium/large/xl, opt-125m vs opt-1.3b).
Acceptance is meaningless for random weights, so only costs are reported.

    python experiments/benchmark.py --out_dir results/benchmark
    python experiments/benchmark.py --mode=size --out_dir results/size
"""

from __future__ import annotations

import csv
import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags, logging

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
import training  # noqa: E402

import jaxspec  # noqa: E402
from jaxspec.models.config import DecoderConfig  # noqa: E402
from jaxspec.models.model import init_model  # noqa: E402

MODE = flags.DEFINE_enum("mode", "sweep", ["sweep", "size"], "What to benchmark.")
TARGET = flags.DEFINE_string("target_model", harness.DEFAULT_TARGET, "Target folder or hub id (sweep).")
DRAFT = flags.DEFINE_string("draft_model", harness.DEFAULT_DRAFT, "Draft folder or hub id (sweep).")
KS = flags.DEFINE_list("K", ["1", "2", "3", "4", "6", "8"], "Draft lengths to sweep.")
TEMPERATURES = flags.DEFINE_list("temperatures", ["0", "0.6", "1.0"], "Temperatures to sweep.")
BATCHES = flags.DEFINE_list("batch_sizes", ["1", "4", "16"], "Batch sizes to sweep.")
N = flags.DEFINE_integer("N", 64, "New tokens per row.", lower_bound=1)
PROMPT_TOKENS = flags.DEFINE_integer("prompt_tokens", 32, "Prompt length (tokens) cut from held-out files.")
NUM_RUNS = flags.DEFINE_integer("num_runs", 3, "Timed runs per cell (each with another prompt).", lower_bound=1)
SIZE_PAIRS = flags.DEFINE_list(
    "size_pairs",
    ["gpt2:gpt2-medium", "gpt2:gpt2-large", "opt-125m:opt-1.3b"],
    "draft:target HF configs (size).",
)
OUT_DIR = flags.DEFINE_string("out_dir", "results/benchmark", "Where JSON, CSV and PNG go.")

# Architectures of the Hugging Face checkpoints (config.json fields), for size mode.
HF_SIZES = {
    "gpt2": dict(model_type="gpt2", n_embd=768, n_layer=12, n_head=12),
    "gpt2-medium": dict(model_type="gpt2", n_embd=1024, n_layer=24, n_head=16),
    "gpt2-large": dict(model_type="gpt2", n_embd=1280, n_layer=36, n_head=20),
    "gpt2-xl": dict(model_type="gpt2", n_embd=1600, n_layer=48, n_head=25),
    "opt-125m": dict(
        model_type="opt",
        hidden_size=768,
        num_hidden_layers=12,
        num_attention_heads=12,
        ffn_dim=3072,
        word_embed_proj_dim=768,
        vocab_size=50272,
    ),
    "opt-1.3b": dict(
        model_type="opt",
        hidden_size=2048,
        num_hidden_layers=24,
        num_attention_heads=32,
        ffn_dim=8192,
        word_embed_proj_dim=2048,
        vocab_size=50272,
    ),
}


def _log(message: str) -> None:
    print(time.strftime("%H:%M:%S"), message, flush=True)


def call_cost_ms(model, batch: int, chunk: int, position: int, reps: int = 20) -> float:
    """Milliseconds of one forward of `chunk` tokens per row at cache `position`.

    Timed as `reps` calls inside one jitted fori_loop (the way the generation
    loops call the model), so Python dispatch is not counted.
    """
    cache = model.init_cache(batch, position + chunk + 1).with_lengths(jnp.full((batch,), position, jnp.int32))
    tokens = jnp.ones((batch, chunk), jnp.int32)

    @jax.jit
    def loop(model, cache):
        def body(_, carry):
            cache, acc = carry
            logits, new_cache = model(tokens, cache)
            # Reset the length so every call runs at the same position.
            return new_cache.with_lengths(cache.lengths), acc + logits[0, -1, 0]

        return jax.lax.fori_loop(0, reps, body, (cache, jnp.float32(0)))

    jax.block_until_ready(loop(model, cache))
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        jax.block_until_ready(loop(model, cache))
        best = min(best, time.perf_counter() - start)
    return 1000 * best / reps


def predicted_speedup(alpha: float, k: int, c_target: float, c_verify: float, c_draft: float) -> float:
    tokens_per_round = (k + 1) if alpha >= 1 else (1 - alpha ** (k + 1)) / (1 - alpha)
    return tokens_per_round * c_target / (k * c_draft + c_verify)


def heldout_prompts(tokenizer, count: int, length: int) -> np.ndarray:
    """`count` prompts of exactly `length` tokens from distinct held-out files."""
    _, heldout = training.split_files(training.python_files())
    prompts = []
    for text in training.read_texts(heldout):
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(ids) >= length:
            prompts.append(ids[:length])
        if len(prompts) == count:
            break
    return np.asarray(prompts, np.int32)


def sweep():
    target = jaxspec.load_model(TARGET.value)
    draft = jaxspec.load_model(DRAFT.value)
    tokenizer = jaxspec.load_tokenizer(TARGET.value)
    ks = [int(k) for k in KS.value]
    temps = [float(t) for t in TEMPERATURES.value]
    batches = [int(b) for b in BATCHES.value]
    prompts = heldout_prompts(tokenizer, NUM_RUNS.value + 1, PROMPT_TOKENS.value)
    position = PROMPT_TOKENS.value + N.value // 2
    costs = {}
    for b in batches:
        costs[b] = dict(
            target_step_ms=call_cost_ms(target, b, 1, position),
            draft_step_ms=call_cost_ms(draft, b, 1, position),
            verify_ms={k: call_cost_ms(target, b, k + 1, position) for k in ks},
        )
        _log(
            f"costs at batch {b}: target step {costs[b]['target_step_ms']:.2f} ms, draft step "
            f"{costs[b]['draft_step_ms']:.2f} ms, verify "
            + ", ".join(f"K={k}: {v:.2f}" for k, v in costs[b]["verify_ms"].items())
        )
    rows = []
    total = len(batches) * len(temps)
    done = 0
    start = time.perf_counter()
    for b in batches:
        for t in temps:

            def batch_of(seed, b=b):
                return np.repeat(prompts[seed % len(prompts)][None], b, axis=0)

            methods = {
                "autoregressive": lambda seed, t=t: jaxspec.autoregressive_sample(
                    target, batch_of(seed), key=jax.random.key(seed), max_new_tokens=N.value, temperature=t
                )
            }
            for k in ks:
                methods[f"K={k}"] = lambda seed, k=k, t=t: jaxspec.speculative_sample(
                    target,
                    draft,
                    batch_of(seed),
                    key=jax.random.key(seed),
                    max_new_tokens=N.value,
                    num_draft_tokens=k,
                    temperature=t,
                )
            timings = harness.time_interleaved(methods, NUM_RUNS.value)
            ar_mean, ar_std = harness.mean_std(timings["autoregressive"]["times_s"])
            c = costs[b]
            for k in ks:
                res = timings[f"K={k}"]["result"]
                mean, std = harness.mean_std(timings[f"K={k}"]["times_s"])
                alpha = float(np.sum(np.asarray(res.num_accepted)) / np.sum(np.asarray(res.num_drafted)))
                predicted = predicted_speedup(alpha, k, c["target_step_ms"], c["verify_ms"][k], c["draft_step_ms"])
                measured = ar_mean / mean
                rows.append(
                    dict(
                        batch_size=b,
                        temperature=t,
                        K=k,
                        alpha=alpha,
                        tokens_per_round=float(np.mean(np.asarray(res.tokens_per_round))),
                        spec_ms=1000 * mean,
                        spec_std_ms=1000 * std,
                        ar_ms=1000 * ar_mean,
                        ar_std_ms=1000 * ar_std,
                        speedup=measured,
                        predicted_speedup=predicted,
                        efficiency=measured / predicted,
                        target_step_ms=c["target_step_ms"],
                        verify_ms=c["verify_ms"][k],
                        draft_step_ms=c["draft_step_ms"],
                        verify_ratio=c["verify_ms"][k] / c["target_step_ms"],
                        c=c["draft_step_ms"] / c["target_step_ms"],
                    )
                )
            done += 1
            elapsed = time.perf_counter() - start
            best = max(
                (r for r in rows if r["batch_size"] == b and r["temperature"] == t),
                key=lambda r: r["speedup"],
            )
            _log(
                f"[{done}/{total}] batch {b} T={t}: best K={best['K']} speedup {best['speedup']:.2f}x "
                f"(alpha {best['alpha']:.2f}); ETA {elapsed / done * (total - done) / 60:.1f} min"
            )
    return dict(
        mode="sweep",
        target=TARGET.value,
        draft=DRAFT.value,
        N=N.value,
        costs=costs,
        rows=rows,
        device=str(jax.devices()[0]),
        command="python " + " ".join(sys.argv),
    )


def size_mode():
    rows = []
    for pair in SIZE_PAIRS.value:
        draft_name, target_name = pair.split(":")
        entry = dict(draft=draft_name, target=target_name)
        for role, name in (("draft", draft_name), ("target", target_name)):
            hf = dict(HF_SIZES[name])
            config = DecoderConfig.from_hf_config(hf)
            model = init_model(config, jax.random.key(0))
            entry[f"{role}_params_M"] = model.num_params() / 1e6
            entry[f"{role}_step_ms"] = call_cost_ms(model, 1, 1, 128, reps=5)
            if role == "target":
                for k in (2, 4, 8):
                    entry[f"verify_K{k}_ms"] = call_cost_ms(model, 1, k + 1, 128, reps=5)
            del model
            _log(f"{name}: {entry[f'{role}_params_M']:.0f}M params, 1-token step {entry[f'{role}_step_ms']:.1f} ms")
        entry["c"] = entry["draft_step_ms"] / entry["target_step_ms"]
        for k in (2, 4, 8):
            entry[f"verify_ratio_K{k}"] = entry[f"verify_K{k}_ms"] / entry["target_step_ms"]
        rows.append(entry)
    return dict(mode="size", rows=rows, device=str(jax.devices()[0]), command="python " + " ".join(sys.argv))


def plot(report: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report["rows"]
    batches = sorted({r["batch_size"] for r in rows})
    fig, axes = plt.subplots(1, len(batches), figsize=(5 * len(batches), 4), sharey=True, squeeze=False)
    for ax, b in zip(axes[0], batches):
        for t in sorted({r["temperature"] for r in rows}):
            sel = sorted((r for r in rows if r["batch_size"] == b and r["temperature"] == t), key=lambda r: r["K"])
            ks = [r["K"] for r in sel]
            line = ax.plot(ks, [r["speedup"] for r in sel], "o-", label=f"T={t} measured")[0]
            ax.plot(
                ks,
                [r["predicted_speedup"] for r in sel],
                "--",
                color=line.get_color(),
                label=f"T={t} predicted",
            )
        ax.axhline(1.0, color="gray", lw=0.8)
        ax.set_title(f"batch {b}")
        ax.set_xlabel("K (draft tokens per round)")
    axes[0][0].set_ylabel("speedup over autoregressive")
    axes[0][-1].legend(fontsize=7)
    fig.suptitle("jaxspec speculative sampling on the shipped pair (2-core CPU)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    os.makedirs(OUT_DIR.value, exist_ok=True)
    report = sweep() if MODE.value == "sweep" else size_mode()
    with open(os.path.join(OUT_DIR.value, f"{MODE.value}.json"), "w") as f:
        json.dump(report, f, indent=2)
    with open(os.path.join(OUT_DIR.value, f"{MODE.value}.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(report["rows"][0]))
        writer.writeheader()
        writer.writerows(report["rows"])
    if MODE.value == "sweep":
        plot(report, os.path.join(OUT_DIR.value, "speedup.png"))
        columns = [
            ("batch_size", "batch"),
            ("temperature", "T"),
            ("K", "K"),
            ("alpha", "alpha"),
            ("tokens_per_round", "tok/round"),
            ("speedup", "speedup"),
            ("predicted_speedup", "predicted"),
            ("efficiency", "efficiency"),
        ]
        fmt = [{k: (f"{v:.3f}" if isinstance(v, float) else v) for k, v in r.items()} for r in report["rows"]]
    else:
        columns = [(k, k) for k in report["rows"][0]]
        fmt = [{k: (f"{v:.2f}" if isinstance(v, float) else v) for k, v in r.items()} for r in report["rows"]]
    print(harness.format_table(fmt, columns))
    print(f"wrote {OUT_DIR.value}/{MODE.value}.json/.csv")


if __name__ == "__main__":
    app.run(main)
