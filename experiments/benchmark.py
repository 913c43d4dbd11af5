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

    python experiments/benchmark.py --out_dir results/benchmark
    python experiments/benchmark.py --mode=ngram --out_dir results/ngram
    python experiments/benchmark.py --mode=size --out_dir results/size
    python experiments/benchmark.py --mode=settings --N 64 --num_runs 7 --out_dir results/settings
"""

from __future__ import annotations

import csv
import json
import os
import sys
import time

import jax
import numpy as np
from absl import app, flags, logging

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import costs  # noqa: E402
import harness  # noqa: E402

import jaxspec  # noqa: E402
from jaxspec.models.config import DecoderConfig  # noqa: E402
from jaxspec.models.model import init_model  # noqa: E402

MODE = flags.DEFINE_enum("mode", "sweep", ["sweep", "ngram", "size", "acceptance", "settings"], "What to benchmark.")
SETTINGS = flags.DEFINE_list(
    "settings",
    ["0.6:0:1", "0.6:50:1", "0.6:0:0.9", "0.6:50:0.9"],
    "temperature:top_k:top_p entries (settings mode); the first is the baseline.",
)
SETTINGS_K = flags.DEFINE_integer("settings_K", 4, "Draft tokens per round in settings mode.", lower_bound=1)
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


call_cost_ms = costs.call_cost_ms


def _sweep_row(timing: dict, results: list, ar: dict, loop: costs.LoopCosts, b: int, t: float, k: int, v: str) -> dict:
    """One sweep cell: acceptance, measured speedup (paired per prompt) and the speedup the costs predict."""
    counts = costs.acceptance_summary(results)
    alpha, tokens_per_round = counts["alpha_per_draft"], counts["tokens_per_target_call"]
    # The loop runs until its slowest row ends: that is the number of rounds it pays for.
    loop_rounds = float(np.mean([np.max(np.asarray(r.num_rounds)) for r in results]))
    n = int(np.max(np.asarray(results[0].lengths)))
    ratios = np.asarray(ar["times_s"]) / np.asarray(timing["times_s"])
    mean, std = harness.mean_std(timing["times_s"])
    ar_mean, ar_std = harness.mean_std(ar["times_s"])
    predicted = loop.predicted_speedup(n, k, n / loop_rounds)
    return dict(
        batch_size=b,
        temperature=t,
        K=k,
        verify=v,
        alpha=alpha,
        acceptance_rate=counts["acceptance_rate"],
        acceptance_by_position=counts["acceptance_by_position"],
        accepted_per_round=counts["accepted"] / counts["rounds"],
        tokens_per_round=tokens_per_round,
        spec_ms=1000 * mean,
        spec_std_ms=1000 * std,
        ar_ms=1000 * ar_mean,
        ar_std_ms=1000 * ar_std,
        speedup=float(np.median(ratios)),
        speedup_mean=float(np.mean(ratios)),
        speedup_se=float(np.std(ratios, ddof=1) / np.sqrt(len(ratios))) if len(ratios) > 1 else 0.0,
        predicted_speedup=predicted,
        predicted_from_alpha=loop.predicted_speedup(n, k, costs.tokens_per_round_tokenwise(alpha, k))
        if v == "tokenwise"
        else None,
        efficiency=float(np.mean(ratios)) / predicted,
        round_overhead_ms=loop.round_overhead_ms,
        ar_overhead_ms=loop.ar_overhead_ms,
    )


heldout_prompts = harness.heldout_prompts


def sweep():
    target = jaxspec.load_model(TARGET.value)
    draft = jaxspec.load_model(DRAFT.value)
    tokenizer = jaxspec.load_tokenizer(TARGET.value)
    ks = [int(k) for k in KS.value]
    temps = [float(t) for t in TEMPERATURES.value]
    batches = [int(b) for b in BATCHES.value]
    prompts = heldout_prompts(tokenizer, NUM_RUNS.value + 1, PROMPT_TOKENS.value)
    model_costs, overheads = {}, {}
    for b in batches:
        model_costs[b] = costs.model_costs(target, draft, b, PROMPT_TOKENS.value, N.value, ks)
        c = model_costs[b]
        for k in ks:
            for v in VERIFY.value:
                overheads[b, k, v] = costs.loop_overheads(
                    target,
                    draft,
                    np.repeat(prompts[:1], b, axis=0),
                    max_new_tokens=N.value,
                    num_draft_tokens=k,
                    verify=v,
                    temperature=1.0,
                )
        _log(
            f"costs at batch {b}: target step {c['target_step_ms']:.2f} ms, draft step {c['draft_step_ms']:.2f} ms "
            f"(2-token {c['draft_first_ms']:.2f}), verify "
            + ", ".join(f"K={k}: {ms:.2f}" for k, ms in c["verify_ms"].items())
            + "; loop work per round "
            + ", ".join(f"K={k}: {overheads[b, k, VERIFY.value[0]]['round_overhead_ms']:.2f}" for k in ks)
            + f" ms, per AR token {overheads[b, ks[0], VERIFY.value[0]]['ar_overhead_ms']:.3f} ms"
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
            timings, results = harness.time_interleaved(methods, NUM_RUNS.value, keep_results=True)
            for k in ks:
                for v in VERIFY.value:
                    loop = costs.loop_costs(model_costs[b], overheads[b, k, v], k)
                    name = f"K={k} {v}"
                    rows.append(_sweep_row(timings[name], results[name], timings["autoregressive"], loop, b, t, k, v))
            # Each cell compiles 2 * len(K) loops that no later cell reuses. XLA:CPU keeps every
            # executable's code mapped, and the full sweep once ran out of memory maps (vm.max_map_count)
            # in its last cell: drop them.
            del timings, results, methods
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
        costs={
            str(b): dict(c, verify_ms={str(k): v for k, v in c["verify_ms"].items()}) for b, c in model_costs.items()
        },
        overheads={f"{b}/{k}/{v}": o for (b, k, v), o in overheads.items()},
        rows=rows,
        device=str(jax.devices()[0]),
        command="python " + " ".join(sys.argv),
    )


def settings_mode():
    target = jaxspec.load_model(TARGET.value)
    draft = jaxspec.load_model(DRAFT.value)
    tokenizer = jaxspec.load_tokenizer(TARGET.value)
    prompts = heldout_prompts(tokenizer, NUM_RUNS.value + 1, PROMPT_TOKENS.value)
    parsed = []
    for entry in SETTINGS.value:
        t, k, p = entry.split(":")
        parsed.append((entry, dict(temperature=float(t), top_k=int(k), top_p=float(p))))
    methods = {}
    for entry, kwargs in parsed:
        methods[f"{entry} autoregressive"] = lambda seed, kw=kwargs: jaxspec.autoregressive_sample(
            target, prompts[seed % len(prompts)][None], key=jax.random.key(seed), max_new_tokens=N.value, **kw
        )
        methods[f"{entry} speculative"] = lambda seed, kw=kwargs: jaxspec.speculative_sample(
            target,
            draft,
            prompts[seed % len(prompts)][None],
            key=jax.random.key(seed),
            max_new_tokens=N.value,
            num_draft_tokens=SETTINGS_K.value,
            verify=VERIFY.value[0],
            **kw,
        )
    _log(f"timing {len(methods)} methods x {NUM_RUNS.value} runs, interleaved")
    timings, results = harness.time_interleaved(methods, NUM_RUNS.value, keep_results=True)
    rate = {name: N.value / float(np.median(t["times_s"])) for name, t in timings.items()}
    base = parsed[0][0]
    rows = []
    for entry, _ in parsed:
        ar, spec = rate[f"{entry} autoregressive"], rate[f"{entry} speculative"]
        rows.append(
            dict(
                setting=entry,
                ar_tokens_per_s=ar,
                spec_tokens_per_s=spec,
                ar_vs_baseline=ar / rate[f"{base} autoregressive"],
                spec_vs_baseline=spec / rate[f"{base} speculative"],
                spec_over_ar=spec / ar,
                # Settings change acceptance too: tokens per round separates that from processing cost.
                spec_tokens_per_round=sum(float(np.sum(r.lengths)) for r in results[f"{entry} speculative"])
                / sum(float(np.sum(r.num_rounds)) for r in results[f"{entry} speculative"]),
                # Time per round (loop iterations: the slowest row's rounds), run by run: the per-round
                # cost, apart from how many rounds the setting's acceptance needs.
                spec_ms_per_round=1000
                * float(
                    np.median(
                        [
                            t / np.max(np.asarray(r.num_rounds))
                            for t, r in zip(timings[f"{entry} speculative"]["times_s"], results[f"{entry} speculative"])
                        ]
                    )
                ),
            )
        )
    return dict(
        mode="settings",
        target=TARGET.value,
        draft=DRAFT.value,
        N=N.value,
        K=SETTINGS_K.value,
        verify=VERIFY.value[0],
        num_runs=NUM_RUNS.value,
        jaxspec_file=jaxspec.__file__,
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
    modes = {
        "sweep": sweep,
        "ngram": ngram_mode,
        "size": size_mode,
        "acceptance": acceptance_mode,
        "settings": settings_mode,
    }
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
