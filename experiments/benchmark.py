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

Size mode (--mode=size) times the per-call costs of Hugging Face-sized configs
with random weights (gpt2 vs gpt2-medium/large/xl, opt-125m vs opt-1.3b).
Acceptance is meaningless for random weights, so only costs are reported.

    python experiments/benchmark.py --out_dir results/benchmark
    python experiments/benchmark.py --mode=ngram --out_dir results/ngram
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

MODE = flags.DEFINE_enum("mode", "sweep", ["sweep", "ngram", "size", "acceptance"], "What to benchmark.")
ACCEPTANCE_ROWS = flags.DEFINE_integer(
    "acceptance_rows", 256, "Rows per call in acceptance mode (held-out prompts, repeated).", lower_bound=2
)
TARGET = flags.DEFINE_string("target_model", harness.DEFAULT_TARGET, "Target folder or hub id (sweep).")
DRAFT = flags.DEFINE_string("draft_model", harness.DEFAULT_DRAFT, "Draft folder or hub id (sweep).")
KS = flags.DEFINE_list("K", ["1", "2", "3", "4", "6", "8"], "Draft lengths to sweep.")
TEMPERATURES = flags.DEFINE_list("temperatures", ["0", "0.6", "1.0"], "Temperatures to sweep.")
BATCHES = flags.DEFINE_list("batch_sizes", ["1", "4", "16"], "Batch sizes to sweep.")
NGRAM_K = flags.DEFINE_integer("ngram_K", 4, "Draft tokens per round in ngram mode.", lower_bound=1)
VERIFY = flags.DEFINE_list("verify", ["tokenwise", "block"], "Verification rules to sweep.")
N = flags.DEFINE_integer("N", 64, "New tokens per row.", lower_bound=1)
PROMPT_TOKENS = flags.DEFINE_integer("prompt_tokens", 32, "Prompt length (tokens) cut from held-out files.")
NUM_RUNS = flags.DEFINE_integer("num_runs", 3, "Timed runs per cell (each with another prompt).", lower_bound=1)
SIZE_PAIRS = flags.DEFINE_list(
    "size_pairs",
    ["gpt2:gpt2-medium", "gpt2:gpt2-large", "opt-125m:opt-1.3b"],
    "draft:target HF configs (size).",
)
OUT_DIR = flags.DEFINE_string("out_dir", "results/benchmark", "Where JSON, CSV and PNG go.")

HF_SIZES = harness.HF_SIZES  # Hugging Face architectures for size mode.


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


def _sweep_row(timing: dict, ar_mean: float, ar_std: float, c: dict, b: int, t: float, k: int, verify: str) -> dict:
    res = timing["result"]
    mean, std = harness.mean_std(timing["times_s"])
    alpha = float(np.sum(np.asarray(res.num_accepted)) / np.sum(np.asarray(res.num_drafted)))
    tokens_per_round = float(np.sum(np.asarray(res.lengths)) / np.sum(np.asarray(res.num_rounds)))
    if verify == "tokenwise":
        predicted = predicted_speedup(alpha, k, c["target_step_ms"], c["verify_ms"][k], c["draft_step_ms"])
    else:  # no closed form in alpha: use the measured tokens per round
        predicted = tokens_per_round * c["target_step_ms"] / (k * c["draft_step_ms"] + c["verify_ms"][k])
    measured = ar_mean / mean
    return dict(
        batch_size=b,
        temperature=t,
        K=k,
        verify=verify,
        alpha=alpha,
        accepted_per_round=float(np.sum(np.asarray(res.num_accepted)) / np.sum(np.asarray(res.num_rounds))),
        tokens_per_round=tokens_per_round,
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
                for v in VERIFY.value:
                    methods[f"K={k} {v}"] = lambda seed, k=k, t=t, v=v: jaxspec.speculative_sample(
                        target,
                        draft,
                        batch_of(seed),
                        key=jax.random.key(seed),
                        max_new_tokens=N.value,
                        num_draft_tokens=k,
                        temperature=t,
                        verify=v,
                    )
            timings = harness.time_interleaved(methods, NUM_RUNS.value)
            ar_mean, ar_std = harness.mean_std(timings["autoregressive"]["times_s"])
            for k in ks:
                for v in VERIFY.value:
                    rows.append(_sweep_row(timings[f"K={k} {v}"], ar_mean, ar_std, costs[b], b, t, k, v))
            # Each cell compiles 2 * len(K) loops that no later cell reuses. XLA:CPU keeps every
            # executable's code mapped, and the full sweep once ran out of memory maps (vm.max_map_count)
            # in its last cell: drop them.
            del timings, methods
            jax.clear_caches()
            done += 1
            elapsed = time.perf_counter() - start
            best = max(
                (r for r in rows if r["batch_size"] == b and r["temperature"] == t),
                key=lambda r: r["speedup"],
            )
            _log(
                f"[{done}/{total}] batch {b} T={t}: best K={best['K']} {best['verify']} speedup {best['speedup']:.2f}x "
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


def acceptance_mode():
    temps = [float(t) for t in TEMPERATURES.value if float(t) > 0]  # greedy: both rules are identical
    if not temps:
        raise app.UsageError("--mode=acceptance needs a --temperatures value > 0 (greedy: the rules coincide)")
    target = jaxspec.load_model(TARGET.value)
    draft = jaxspec.load_model(DRAFT.value)
    tokenizer = jaxspec.load_tokenizer(TARGET.value)
    ks = [int(k) for k in KS.value]
    prompts = heldout_prompts(tokenizer, 64, PROMPT_TOKENS.value)
    rows_BxT = np.resize(prompts, (ACCEPTANCE_ROWS.value, prompts.shape[1]))
    rows, done, total, start = [], 0, len(temps) * len(ks), time.perf_counter()
    for t in temps:
        for k in ks:
            per_rule = {}
            for v in ("tokenwise", "block"):
                res = jaxspec.speculative_sample(
                    target,
                    draft,
                    rows_BxT,
                    key=jax.random.key(1000 * k + int(100 * t)),
                    max_new_tokens=N.value,
                    num_draft_tokens=k,
                    temperature=t,
                    verify=v,
                )
                per_rule[v] = np.asarray(res.num_accepted, np.float64) / np.asarray(res.num_rounds, np.float64)
            diff = per_rule["block"] - per_rule["tokenwise"]
            se = float(np.std(diff, ddof=1) / np.sqrt(len(diff)))
            rows.append(
                dict(
                    temperature=t,
                    K=k,
                    rows=len(diff),
                    tokenwise_accepted_per_round=float(np.mean(per_rule["tokenwise"])),
                    block_accepted_per_round=float(np.mean(per_rule["block"])),
                    difference=float(np.mean(diff)),
                    difference_se=se,
                    z=float(np.mean(diff)) / se if se > 0 else 0.0,
                )
            )
            done += 1
            elapsed = time.perf_counter() - start
            r = rows[-1]
            _log(
                f"[{done}/{total}] T={t} K={k}: token-wise {r['tokenwise_accepted_per_round']:.3f}, block "
                f"{r['block_accepted_per_round']:.3f} (diff {r['difference']:+.3f} ± {se:.3f}); "
                f"ETA {elapsed / done * (total - done) / 60:.1f} min"
            )
        jax.clear_caches()
    return dict(
        mode="acceptance",
        target=TARGET.value,
        draft=DRAFT.value,
        N=N.value,
        rows=rows,
        device=str(jax.devices()[0]),
        command="python " + " ".join(sys.argv),
    )


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot(report: dict, path: str) -> None:
    """speedup.png: measured (solid: token-wise, dotted: block) and predicted (dashed) speedup vs K."""
    plt = _pyplot()
    rows = report["rows"]
    batches = sorted({r["batch_size"] for r in rows})
    fig, axes = plt.subplots(1, len(batches), figsize=(5 * len(batches), 4), sharey=True, squeeze=False)
    for ax, b in zip(axes[0], batches):
        for t in sorted({r["temperature"] for r in rows}):
            cell = [r for r in rows if r["batch_size"] == b and r["temperature"] == t]
            tokenwise = sorted((r for r in cell if r["verify"] == "tokenwise"), key=lambda r: r["K"])
            block_rows = sorted((r for r in cell if r["verify"] == "block"), key=lambda r: r["K"])
            color = None
            if tokenwise:
                ks = [r["K"] for r in tokenwise]
                color = ax.plot(ks, [r["speedup"] for r in tokenwise], "o-", label=f"T={t} token-wise")[0].get_color()
                ax.plot(ks, [r["predicted_speedup"] for r in tokenwise], "--", color=color, label=f"T={t} predicted")
            if block_rows:
                ax.plot(
                    [r["K"] for r in block_rows],
                    [r["speedup"] for r in block_rows],
                    "x:",
                    color=color,
                    label=f"T={t} block",
                )
        ax.axhline(1.0, color="gray", lw=0.8)
        ax.set_title(f"batch {b}")
        ax.set_xlabel("K (draft tokens per round)")
    axes[0][0].set_ylabel("speedup over autoregressive")
    axes[0][-1].legend(fontsize=7)
    fig.suptitle(f"jaxspec speculative sampling on the shipped pair ({report['device']})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_acceptance(report: dict, path: str) -> None:
    """acceptance.png: accepted drafts per round, token-wise vs block, per temperature (all batches pooled)."""
    plt = _pyplot()
    rows = report["rows"]
    fig, ax = plt.subplots(figsize=(6, 4))
    for t in sorted({r["temperature"] for r in rows}):
        color = None
        for v, style in (("tokenwise", "o-"), ("block", "x:")):
            sel = [r for r in rows if r["temperature"] == t and r["verify"] == v]
            ks = sorted({r["K"] for r in sel})
            if not ks:
                continue
            mean = [np.mean([r["accepted_per_round"] for r in sel if r["K"] == k]) for k in ks]
            color = ax.plot(ks, mean, style, color=color, label=f"T={t} {v}")[0].get_color()
    ax.set_xlabel("K (draft tokens per round)")
    ax.set_ylabel("accepted draft tokens per round")
    ax.legend(fontsize=7)
    ax.set_title("token-wise vs block verification, shipped pair")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def ngram_prompt_sets(tokenizer, count: int, length: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Prompt sets of equal token length (one compile per set and method).

    quote: a held-out snippet, a comment asking for it again, and its first
      tokens (the continuation should copy the snippet: lookup's best case);
    code: real held-out code, which repeats its own identifiers;
    shuffled: the same code with its tokens permuted (no structure to look up).
    """
    snippet_len = length // 2
    cue = tokenizer("\n\n# The same code again:\n", add_special_tokens=False)["input_ids"]
    head = length - snippet_len - len(cue)
    code = heldout_prompts(tokenizer, count, length)
    quote = [list(row[:snippet_len]) + cue + list(row[:head]) for row in code]
    rng = np.random.default_rng(seed)
    shuffled = np.stack([rng.permutation(row) for row in code])
    return {"quote": np.asarray(quote, np.int32), "code": code, "shuffled": shuffled.astype(np.int32)}


def ngram_mode():
    target = jaxspec.load_model(TARGET.value)
    draft = jaxspec.load_model(DRAFT.value)
    tokenizer = jaxspec.load_tokenizer(TARGET.value)
    k = NGRAM_K.value
    temps = [float(t) for t in TEMPERATURES.value]
    sets = ngram_prompt_sets(tokenizer, NUM_RUNS.value + 1, PROMPT_TOKENS.value)
    proposers = {
        "ngram tokenwise": (jaxspec.NgramDrafter(max_ngram=3), "tokenwise"),
        "ngram block": (jaxspec.NgramDrafter(max_ngram=3), "block"),
        "draft model": (draft, "tokenwise"),
    }
    rows, done, total, start = [], 0, len(sets) * len(temps), time.perf_counter()
    for set_name, prompts in sets.items():
        for t in temps:
            methods = {
                "autoregressive": lambda seed, t=t, p=prompts: jaxspec.autoregressive_sample(
                    target, p[seed % len(p)][None], key=jax.random.key(seed), max_new_tokens=N.value, temperature=t
                )
            }
            for name, (proposer, verify) in proposers.items():
                methods[name] = lambda seed, t=t, p=prompts, d=proposer, v=verify: jaxspec.speculative_sample(
                    target,
                    d,
                    p[seed % len(p)][None],
                    key=jax.random.key(seed),
                    max_new_tokens=N.value,
                    num_draft_tokens=k,
                    temperature=t,
                    verify=v,
                )
            timings = harness.time_interleaved(methods, NUM_RUNS.value)
            ar_mean, _ = harness.mean_std(timings["autoregressive"]["times_s"])
            for name in proposers:
                res = timings[name]["result"]
                mean, std = harness.mean_std(timings[name]["times_s"])
                rows.append(
                    dict(
                        prompts=set_name,
                        temperature=t,
                        method=name,
                        K=k,
                        alpha=float(np.sum(np.asarray(res.num_accepted)) / np.sum(np.asarray(res.num_drafted))),
                        tokens_per_round=float(np.sum(np.asarray(res.lengths)) / np.sum(np.asarray(res.num_rounds))),
                        spec_ms=1000 * mean,
                        spec_std_ms=1000 * std,
                        ar_ms=1000 * ar_mean,
                        speedup=ar_mean / mean,
                    )
                )
            done += 1
            elapsed = time.perf_counter() - start
            _log(f"[{done}/{total}] {set_name} T={t}; ETA {elapsed / done * (total - done) / 60:.1f} min")
    return dict(
        mode="ngram",
        target=TARGET.value,
        draft=DRAFT.value,
        N=N.value,
        K=k,
        rows=rows,
        device=str(jax.devices()[0]),
        command="python " + " ".join(sys.argv),
    )


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    os.makedirs(OUT_DIR.value, exist_ok=True)
    modes = {"sweep": sweep, "ngram": ngram_mode, "size": size_mode, "acceptance": acceptance_mode}
    report = modes[MODE.value]()
    with open(os.path.join(OUT_DIR.value, f"{MODE.value}.json"), "w") as f:
        json.dump(report, f, indent=2)
    with open(os.path.join(OUT_DIR.value, f"{MODE.value}.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(report["rows"][0]))
        writer.writeheader()
        writer.writerows(report["rows"])
    if MODE.value == "sweep":
        plot(report, os.path.join(OUT_DIR.value, "speedup.png"))
        plot_acceptance(report, os.path.join(OUT_DIR.value, "acceptance.png"))
        columns = [
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
    elif MODE.value == "ngram":
        columns = [(c, c) for c in ("prompts", "temperature", "method", "K", "alpha", "tokens_per_round", "speedup")]
    else:
        columns = [(k, k) for k in report["rows"][0]]
    digits = 2 if MODE.value == "size" else 3
    fmt = [{k: (f"{v:.{digits}f}" if isinstance(v, float) else v) for k, v in r.items()} for r in report["rows"]]
    print(harness.format_table(fmt, columns))
    print(f"wrote {OUT_DIR.value}/{MODE.value}.json/.csv")


if __name__ == "__main__":
    app.run(main)
