"""The measured results under results/ rendered as the Markdown tables of README.md.

Reads only what the experiment scripts wrote (nothing is typed in by hand):
one section per result file found; missing files are skipped.
"""

from __future__ import annotations

import glob
import json
import os

from jaxspec.benchmarking.costs import textbook_round_ms
from jaxspec.benchmarking.tables import markdown_table


def _load(results_dir: str, *parts: str):
    path = os.path.join(results_dir, *parts)
    if not os.path.exists(path):
        return None
    with open(path) as fh:
        return json.load(fh)


def _latest(results_dir: str, pattern: str):
    paths = sorted(glob.glob(os.path.join(results_dir, pattern)))
    if not paths:
        return None
    with open(paths[-1]) as fh:
        return json.load(fh)


def compare_section(results_dir: str) -> str | None:
    out = []
    for name in ("compare.json", "compare_greedy.json", "compare_tokenwise.json", "compare_block.json"):
        d = _load(results_dir, "compare", name)
        if d is None:
            continue
        rows = []
        for method, e in d["methods"].items():
            rows.append(
                [
                    method,
                    f"{1000 * e['mean_s']:.1f} ± {1000 * e['std_s']:.1f} ms",
                    f"{e['tokens_per_s']:.0f}",
                    f"{e['ms_per_token']:.2f}",
                    f"{e['speedup']:.2f}x" + (f" ± {e['speedup_se']:.2f}" if "speedup_se" in e else ""),
                    f"{e['acceptance_rate']:.3f}" if "acceptance_rate" in e else "-",
                    f"{e['alpha_per_draft']:.3f}" if "alpha_per_draft" in e else "-",
                    f"{e.get('tokens_per_target_call', 1.0):.2f}",
                ]
            )
        draft = os.path.basename(str(d.get("draft_model") or "-"))
        out.append(
            f"`{d['verify']}` verification, draft `{draft}`, N={d['N']}, K={d['K']}, T={d['temperature']:g}, "
            f"batch {d['batch_size']}, {d.get('prompts', 'one prompt')}, {d['num_runs']} runs per method after a "
            f"warm-up ({d['device']}, {d['dtype']}); speedup = median of per-run ratios ± standard error:\n\n"
            + markdown_table(
                [
                    "method",
                    "time",
                    "tokens/s",
                    "ms/token",
                    "speedup",
                    "accepted/drafted",
                    "alpha per draft",
                    "tokens/target call",
                ],
                rows,
            )
        )
    return "\n\n".join(out) or None


def vs_transformers_section(results_dir: str) -> str | None:
    d = _load(results_dir, "vs_transformers", "vs_transformers.json")
    if d is None:
        return None
    base = d["methods"]["hf_assisted"]["tokens_per_s"]
    rows = [
        [
            m,
            f"{1000 * e['mean_s']:.1f} ± {1000 * e['std_s']:.1f} ms",
            f"{e['tokens_per_s']:.0f}",
            f"{e['tokens_per_s'] / base:.2f}x",
        ]
        for m, e in d["methods"].items()
    ]
    batched = [[b, e["hf_assisted"], f"{e['jax_spec_tokens_per_s']:.0f}"] for b, e in d["batched"].items()]
    same = "identical token for token" if d["greedy_identical"] else f"DIFFERENT: {d['greedy_mismatches']}"
    return (
        f"N={d['N']}, K={d['K']}, T={d['temperature']:g}, batch 1, {d['num_runs']} interleaved runs; "
        f"torch {d['torch']}, transformers {d['transformers']}, jax {d['jax']}. "
        f"Greedy outputs of all four: **{same}**.\n\n"
        + markdown_table(["method", "time", "tokens/s", "vs transformers assisted"], rows)
        + "\n\n"
        + markdown_table(["batch", "transformers assisted generation", "jaxspec speculative tokens/s"], batched)
    )


def _with_se(row: dict, field: str) -> str:
    """'1.23x ± 0.045' (the standard error when the row has `field`_se), or '-' when the row lacks `field`."""
    if field not in row:
        return "-"
    return f"{row[field]:.2f}x" + (f" ± {row[field + '_se']:.3f}" if field + "_se" in row else "")


def sweep_section(results_dir: str, folder: str = "benchmark") -> str | None:
    """Batch 1 in full, then the best cell of every (batch, temperature); the CSV has all rows."""
    d = _load(results_dir, folder, "sweep.json")
    if d is None:
        return None

    def fmt(r):
        return [
            r["batch_size"],
            f"{r['temperature']:g}",
            r["K"],
            r["verify"],
            f"{r['alpha']:.3f}",
            f"{r['tokens_per_round']:.2f}",
            _with_se(r, "speedup"),
            _with_se(r, "speedup_of_means"),
            f"{r['predicted_speedup']:.2f}x",
            f"{r['efficiency']:.2f}",
        ]

    header = [
        "batch",
        "T",
        "K",
        "verify",
        "α per draft",
        "tokens/round",
        "speedup (median ± se)",
        "mean AR time / mean spec time",
        "predicted",
        "efficiency",
    ]
    ordered = sorted(d["rows"], key=lambda r: (r["batch_size"], r["temperature"], r["K"], r["verify"]))
    cells = {}
    for r in ordered:
        key = (r["batch_size"], r["temperature"])
        if key not in cells or r["speedup"] > cells[key]["speedup"]:
            cells[key] = r
    costs = "; ".join(
        f"batch {b}: target step {c['target_step_ms']:.2f} ms, draft step {c['draft_step_ms']:.2f} ms"
        + (f" (2-token first step {c['draft_first_ms']:.2f} ms)" if "draft_first_ms" in c else "")
        + f", verify K=4 {c['verify_ms']['4']:.2f} ms"
        + (
            f", a K=4 round's calls timed together {c['round_calls_ms']['4']:.2f} ms"
            " (timed one by one: "
            f"{textbook_round_ms(c['draft_first_ms'], c['draft_step_ms'], c['verify_ms']['4'], 4):.2f} ms)"
            if "round_calls_ms" in c
            else ""
        )
        for b, c in d["costs"].items()
        if "4" in c["verify_ms"]
    )
    among = "; ".join(
        f"batch {cell.split('/')[0]}, T={float(cell.split('/')[1]):g}: target step {c['target_step_ms']:.2f} ms, "
        + ", ".join(f"K={k} {ms:.2f}" for k, ms in c["round_calls_ms"].items())
        for cell, c in d.get("interleaved_costs", {}).items()
    )
    if among:
        costs += (
            f".\n\nThe costs the predictions use for the target step and a round's calls, timed among the runs "
            f"(medians): {among}"
        )
    return (
        f"Per-call costs before the runs: {costs}.\n\nBest cell per batch size and temperature:\n\n"
        + markdown_table(header, [fmt(r) for r in cells.values()])
        + "\n\nBatch 1, every cell (all batches: `results/benchmark/sweep.csv`):\n\n"
        + markdown_table(header, [fmt(r) for r in ordered if r["batch_size"] == ordered[0]["batch_size"]])
    )


def block_vs_tokenwise_section(results_dir: str) -> str | None:
    d = _load(results_dir, "benchmark", "sweep.json")
    if d is None:
        return None
    cells = {}
    for r in d["rows"]:
        cells.setdefault((r["temperature"], r["K"]), {}).setdefault(r["verify"], []).append(r)
    rows, worse = [], 0
    for (t, k), by_rule in sorted(cells.items()):
        if "tokenwise" not in by_rule or "block" not in by_rule:
            continue

        def pooled(rs):
            return sum(r["accepted_per_round"] for r in rs) / len(rs)

        tw, bl = pooled(by_rule["tokenwise"]), pooled(by_rule["block"])
        worse += bl < tw
        rows.append([f"{t:g}", k, f"{tw:.3f}", f"{bl:.3f}", f"{bl - tw:+.3f}"])
    note = f"block < token-wise in {worse} of {len(rows)} cells (mean over the batch sizes)."
    header = ["T", "K", "token-wise accepted/round", "block accepted/round", "block − token-wise"]
    return markdown_table(header, rows) + "\n\n" + note


def acceptance_section(results_dir: str) -> str | None:
    d = _load(results_dir, "acceptance", "acceptance.json")
    if d is None:
        return None
    rows = [
        [
            f"{r['temperature']:g}",
            r["K"],
            f"{r['tokenwise_accepted_per_round']:.3f}",
            f"{r['block_accepted_per_round']:.3f}",
            f"{r['difference']:+.3f} ± {r['difference_se']:.3f}",
            f"{r['z']:+.1f}",
        ]
        for r in d["rows"]
    ]
    worse = [r for r in d["rows"] if r["z"] < -2]
    note = (
        f"{d['rows'][0]['rows']} rows per call, N={d['N']}, same key for both rules; "
        f"cells where block is below token-wise by more than 2 standard errors: {len(worse)} of {len(rows)}."
    )
    header = ["T", "K", "token-wise accepted/round", "block accepted/round", "block − token-wise", "z"]
    return note + "\n\n" + markdown_table(header, rows)


def ngram_section(results_dir: str) -> str | None:
    d = _load(results_dir, "ngram", "ngram.json")
    if d is None:
        return None
    rows = [
        [
            r["prompts"],
            f"{r['temperature']:g}",
            r["method"],
            f"{r['alpha']:.3f}",
            f"{r['tokens_per_round']:.2f}",
            f"{r['spec_ms']:.1f}",
            f"{r['ar_ms']:.1f}",
            f"{r['speedup']:.2f}x",
        ]
        for r in d["rows"]
    ]
    return markdown_table(["prompts", "T", "method", "α", "tokens/round", "ms", "autoregressive ms", "speedup"], rows)


def distill_section(results_dir: str) -> str | None:
    d = _load(results_dir, os.pardir, "checkpoints", "gpt2-draft-distilled", "distill.json")
    if d is None:
        return None
    h = d["distillation"]["heldout"]
    rows = [
        [
            f"{r['temperature']:g}",
            f"{r['acceptance_before']:.3f}",
            f"{r['acceptance_after']:.3f}",
            f"{r['speedup_before']:.2f}x",
            f"{r['speedup_after']:.2f}x",
        ]
        for r in d["eval"]
    ]
    return (
        f"`{d['command']}`: {d['divergence']} at T={d['temperature']:g}, {d['distillation']['steps']} steps in "
        f"{d['distillation']['seconds'] / 60:.1f} min; held-out on-policy TV {h['tv_before']:.4f} → "
        f"{h['tv_after']:.4f}.\n\n"
        + markdown_table(["T", "acceptance before", "acceptance after", "speedup before", "speedup after"], rows)
    )


def size_section(results_dir: str) -> str | None:
    d = _load(results_dir, "size", "size.json")
    if d is None:
        return None
    rows = [
        [
            f"{r['draft']} → {r['target']}",
            f"{r['draft_params_M']:.0f}M / {r['target_params_M']:.0f}M",
            f"{r['draft_step_ms']:.1f}",
            f"{r['target_step_ms']:.1f}",
            f"{r['c']:.3f}",
            f"{r['verify_ratio_K2']:.2f}",
            f"{r['verify_ratio_K4']:.2f}",
            f"{r['verify_ratio_K8']:.2f}",
        ]
        for r in d["rows"]
    ]
    header = ["draft → target", "params", "draft step ms", "target step ms", "c = draft/target"]
    header += ["verify K=2 / step", "verify K=4 / step", "verify K=8 / step"]
    return f"({d['device']}, random weights, batch 1, cache position 128)\n\n" + markdown_table(header, rows)


def quantization_section(results_dir: str) -> str | None:
    out = []
    for folder in ("quantization", "quantization_size"):
        d = _load(results_dir, folder, "quantization.json")
        if d is None:
            continue
        rows = [
            [
                r["precision"],
                f"{r['target_MB']:.1f}",
                f"{r['target_bytes_vs_fp32']:.2f}",
                f"{r['step_ms']:.2f}",
                f"{r['verify_ms']:.2f}",
                f"{r['ar_tok_s']:.0f}",
                f"{r['spec_tok_s']:.0f}",
                f"{r['acceptance']:.3f}",
                f"{r['agreement_vs_fp32']:.2f}",
            ]
            for r in d["rows"]
        ]
        weights = "random weights" if d["random_weights"] else "trained weights"
        header = ["precision", "target MB", "bytes vs fp32", "target step ms", f"verify K={d['K']} ms"]
        header += ["autoregressive tok/s", "speculative tok/s", "acceptance", "greedy agreement vs fp32"]
        out.append(
            f"target `{os.path.basename(str(d['target']))}`, draft `{os.path.basename(str(d['draft']))}` ({weights}, "
            f"{d['device']}, N={d['N']}, batch 1):\n\n" + markdown_table(header, rows)
        )
    return "\n\n".join(out) or None


def load_test_section(results_dir: str) -> str | None:
    d = _latest(results_dir, os.path.join("serve", "load_test_*.json"))
    if d is None:
        return None
    rows = [
        [
            name,
            p["concurrency"],
            f"{p['ok']}/{p['sent'] + p['not_sent']}",
            p["failures"] + p["not_sent"],
            f"{p['p50_ms']:.0f}",
            f"{p['p99_ms']:.0f}",
            f"{p['requests_per_s']:.2f}",
            f"{p['tokens_per_s']:.0f}",
            f"{p['mean_batch_size']:.2f}",
        ]
        for name, p in d["phases"].items()
    ]
    header = ["phase", "clients", "ok", "failures", "p50 ms", "p99 ms", "requests/s", "tokens/s", "mean batch"]
    ratio = d.get("throughput_ratio")
    tail = f"Throughput concurrent / one at a time: **{ratio:.2f}x**. " if ratio else ""
    tail += f"XLA compilations during the test: {d['xla_compiles_during_test']}."
    return (
        f"{d['requests']} requests, max_tokens {d['max_tokens']}, temperature {d['temperature']}:\n\n"
        + markdown_table(header, rows)
        + "\n\n"
        + tail
    )


def settings_ab_section(results_dir: str) -> str | None:
    """Before/after of the sampler (ab_versions.py): tokens/s of both versions, interleaved in one process."""
    d = _load(results_dir, "ab_sampler", "ab.json")
    if d is None:
        return None
    rows = [
        [
            r["setting"],
            r["loop"],
            f"{r['baseline_tokens_per_s']:.0f}",
            f"{r['this_tokens_per_s']:.0f}",
            f"{r['ratio']:.2f}",
        ]
        for r in d["rows"]
    ]
    return (
        f"`{d['command']}`: baseline = commit {d['baseline_commit']}, N={d['N']}, K={d['K']}, {d['verify']} "
        f"verification, batch 1, median of {d['num_runs']} runs (each a held-out prompt), both versions interleaved "
        f"in one process ({d['device']}); settings are temperature:top_k:top_p.\n\n"
        + markdown_table(["setting", "loop", "before tokens/s", "after tokens/s", "after / before"], rows)
    )


def settings_section(results_dir: str) -> str | None:
    """What top-k / top-p cost (benchmark.py --mode settings)."""
    d = _load(results_dir, "settings", "settings.json")
    if d is None:
        return None
    rows = [
        [
            r["setting"],
            f"{r['ar_tokens_per_s']:.0f}",
            f"{r['spec_tokens_per_s']:.0f}",
            f"{r['ar_vs_baseline']:.2f}",
            f"{r['spec_vs_baseline']:.2f}",
            f"{r['spec_over_ar']:.2f}",
            f"{r.get('spec_tokens_per_round', float('nan')):.2f}",
            f"{r.get('spec_ms_per_round', float('nan')):.2f}",
        ]
        for r in d["rows"]
    ]
    header = ["setting", "AR tok/s", "spec tok/s", "AR vs first", "spec vs first", "spec/AR", "tok/round", "ms/round"]
    return (
        f"`{d['command']}` (N={d['N']}, K={d['K']}, {d['verify']}, batch 1, median of {d['num_runs']} runs):\n\n"
        + markdown_table(header, rows)
    )


def drafting_section(results_dir: str) -> str | None:
    """Chains, trees and self-drafts (drafting.py): speedup ± se and tokens per target call per temperature."""
    d = _load(results_dir, "drafting", "drafting.json")
    if d is None:
        return None
    temps = sorted({r["temperature"] for r in d["rows"]})
    methods = list(dict.fromkeys(r["method"] for r in d["rows"]))
    cell = {(r["method"], r["temperature"]): r for r in d["rows"]}
    rows = [
        [m, str(cell[(m, temps[0])]["verify_positions"])]
        + [
            f"{cell[(m, t)]['speedup']:.2f}× ± {cell[(m, t)]['speedup_se']:.2f}, "
            f"{cell[(m, t)]['tokens_per_target_call']:.2f}"
            for t in temps
        ]
        for m in methods
    ]
    header = ["method", "positions", *(f"T = {t:g}" for t in temps)]
    lines = [
        f"Batch 1, N = {d['N']}, {d['num_prompts']} held-out prompts, methods interleaved with autoregressive "
        "decoding; speedup (median ± se), tokens per target call; positions = what one target pass scores:",
        "",
        markdown_table(header, rows),
    ]
    for c in d.get("traversal_minus_recursive", []):
        lines.append(
            f"\nT = {c['temperature']:g}, tree {c['tree']}: Traversal − recursive accepted drafts per round "
            f"{c['difference']:+.3f} ± {c['difference_se']:.3f} (z = {c['z']:.1f})."
        )
    return "\n".join(lines)


SECTIONS = {
    "Comparison (compare.py)": compare_section,
    "Sweep at batch 1 (benchmark.py)": lambda d: sweep_section(d, "benchmark_b1"),
    "Sampler before/after (ab_versions.py) — previous pair": settings_ab_section,
    "Cost of top-k / top-p (benchmark.py --mode settings) — previous pair": settings_section,
    "Drafting strategies: chains, trees, dynamic length (drafting.py)": drafting_section,
    "Against transformers (vs_transformers.py)": vs_transformers_section,
    "Sweep over batch sizes (benchmark.py)": sweep_section,
    "Block vs token-wise in the sweep's timing cells (benchmark.py)": block_vs_tokenwise_section,
    "Block vs token-wise with power (benchmark.py --mode acceptance)": acceptance_section,
    "Prompt lookup (benchmark.py --mode ngram)": ngram_section,
    "Distillation (distill_draft.py)": distill_section,
    "Hugging Face sizes (benchmark.py --mode size) — random weights": size_section,
    "Quantization (quantization.py)": quantization_section,
    "Serving load test (load_test.py)": load_test_section,
}


def render(results_dir: str) -> str:
    """Every section whose results exist, as Markdown ("### title", the section, a blank line)."""
    out = []
    for title, section in SECTIONS.items():
        text = section(results_dir)
        if text:
            out.append(f"### {title}\n\n{text}\n\n")
    return "".join(out)
