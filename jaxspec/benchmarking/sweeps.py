"""The benchmark's measurements: speculative vs autoregressive sampling, against the cost model.

Modes (`BenchmarkConfig.mode`), each returning a report dict with "rows":

- sweep: K x temperature x batch size on a pair, both verification rules: the
  acceptance (alpha), the per-call costs, the speedup measured pairwise per
  prompt, the speedup the cost model predicts from the measured alpha and
  costs (`costs.LoopCosts`), and their ratio ("efficiency"). Runs are
  interleaved and each uses a different held-out prompt (same token length,
  so one compile). For block verification the alpha formula does not apply;
  its predicted speedup uses the measured tokens per round.
- ngram: draft-free prompt lookup (`NgramDrafter`) against the model draft and
  plain decoding on prompt sets where lookup should shine and one where it
  should not (`prompts.ngram_prompt_sets`).
- acceptance: does block verification accept at least as many drafts per round
  as token-wise? Both rules run once on `acceptance_rows` rows with the same
  key; the rows' accepted drafts per round are compared as a paired difference
  with its standard error and z score.
- settings: what the sampling settings cost: autoregressive and speculative
  tokens/s per temperature:top_k:top_p entry, all interleaved in one run.
- size: per-call costs of Hugging Face-sized configs with random weights.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

import jax
import numpy as np

import jaxspec
from jaxspec.benchmarking import costs
from jaxspec.benchmarking.metrics import (
    acceptance_summary,
    accepted_per_round_by_row,
    efficiency,
    paired_difference,
    paired_speedup,
    speedup_of_means,
)
from jaxspec.benchmarking.prompts import heldout_prompts, heldout_prompts_by_file, ngram_prompt_sets
from jaxspec.benchmarking.sizes import sized_config
from jaxspec.benchmarking.timing import mean_std, time_interleaved
from jaxspec.models.model import init_model
from jaxspec.sampling.accept import VERIFICATION_RULES

MODES = ("sweep", "ngram", "size", "acceptance", "settings")


@dataclasses.dataclass(frozen=True)
class BenchmarkConfig:
    """A benchmark run (the flags of experiments/benchmark.py).

    Attributes:
      mode: one of `MODES`.
      target_model, draft_model: folders or hub ids (all modes but size).
      settings: temperature:top_k:top_p entries (settings mode); the first is the baseline.
      settings_K: draft tokens per round in settings mode.
      acceptance_rows: rows per call in acceptance mode (held-out prompts, repeated).
      K: draft lengths to sweep.
      temperatures: temperatures to sweep.
      batch_sizes: batch sizes to sweep.
      ngram_K: draft tokens per round in ngram mode.
      verify: verification rules to sweep (settings mode uses the first).
      N: new tokens per row.
      prompt_tokens: prompt length (tokens) cut from held-out files.
      num_runs: timed runs per cell (each with another prompt).
      repeats: timed calls per run, the fastest kept (`timing.time_interleaved`).
      prompts_per_file: held-out prompts cut from each file at most (sweep mode;
        shorter files give fewer, `prompts.heldout_prompts_by_file`); the
        standard errors then treat one file's prompts as one cluster.
      size_pairs: draft:target names of `sizes.HF_SIZES` (size mode).
    """

    target_model: str
    draft_model: str
    mode: str = "sweep"
    settings: tuple[str, ...] = ("0.6:0:1", "0.6:50:1", "0.6:0:0.9", "0.6:50:0.9")
    settings_K: int = 4
    acceptance_rows: int = 256
    K: tuple[int, ...] = (1, 2, 3, 4, 6, 8)
    temperatures: tuple[float, ...] = (0.0, 0.6, 1.0)
    batch_sizes: tuple[int, ...] = (1, 4, 16)
    ngram_K: int = 4
    verify: tuple[str, ...] = tuple(VERIFICATION_RULES)
    N: int = 64
    prompt_tokens: int = 32
    num_runs: int = 3
    repeats: int = 1
    prompts_per_file: int = 1
    size_pairs: tuple[str, ...] = ("gpt2:gpt2-medium", "gpt2:gpt2-large", "opt-125m:opt-1.3b")


def check_config(config: BenchmarkConfig) -> None:
    """Raises ValueError (a usage error) for a run that cannot measure anything."""
    if config.mode not in MODES:
        raise ValueError(f"unknown mode {config.mode!r}; expected one of {', '.join(MODES)}")
    if config.mode == "acceptance" and not any(t > 0 for t in config.temperatures):
        raise ValueError("--mode=acceptance needs a --temperatures value > 0 (greedy: the rules coincide)")


def parse_settings(entries) -> list[tuple[str, dict]]:
    """ "temperature:top_k:top_p" entries -> [(entry, sampling keyword arguments)].

    >>> parse_settings(["0.6:50:0.9"])
    [('0.6:50:0.9', {'temperature': 0.6, 'top_k': 50, 'top_p': 0.9})]
    """
    parsed = []
    for entry in entries:
        t, k, p = entry.split(":")
        parsed.append((entry, dict(temperature=float(t), top_k=int(k), top_p=float(p))))
    return parsed


def settings_methods(
    target, draft, prompts: np.ndarray, entries, *, lib=jaxspec, prefix: str = "", **speculative
) -> dict[str, Callable[[int], object]]:
    """Methods for `time_interleaved`: "<prefix><entry> autoregressive" and "... speculative" per settings entry.

    Run `seed` decodes prompt `seed % len(prompts)` (batch 1) with key `seed`.

    Args:
      target, draft: models of `lib`.
      prompts: int32 [count, length].
      entries: temperature:top_k:top_p strings.
      lib: the module whose `autoregressive_sample` / `speculative_sample` run
        (`jaxspec`, or another version of it for before/after comparisons).
      prefix: put before every name.
      **speculative: max_new_tokens (both loops), num_draft_tokens and verify
        (speculative only).
    """
    n = speculative.pop("max_new_tokens")
    methods = {}
    for entry, kw in parse_settings(entries):
        methods[f"{prefix}{entry} autoregressive"] = lambda seed, kw=kw: lib.autoregressive_sample(
            target, prompts[seed % len(prompts)][None], key=jax.random.key(seed), max_new_tokens=n, **kw
        )
        methods[f"{prefix}{entry} speculative"] = lambda seed, kw=kw: lib.speculative_sample(
            target,
            draft,
            prompts[seed % len(prompts)][None],
            key=jax.random.key(seed),
            max_new_tokens=n,
            **speculative,
            **kw,
        )
    return methods


def decode_methods(
    target, prompt_of: Callable[[int], np.ndarray], proposals: dict, *, max_new_tokens: int, temperature: float
) -> dict[str, Callable[[int], object]]:
    """Methods for `time_interleaved`: "autoregressive", then one speculative method per proposal.

    Args:
      target: the target model.
      prompt_of: run seed -> int32 [B, P] prompts of that run (each run uses key `seed` too).
      proposals: name -> (drafter, K, verification rule).
      max_new_tokens, temperature: of every method.
    """
    methods = {
        "autoregressive": lambda seed: jaxspec.autoregressive_sample(
            target, prompt_of(seed), key=jax.random.key(seed), max_new_tokens=max_new_tokens, temperature=temperature
        )
    }
    for name, (drafter, k, verify) in proposals.items():
        methods[name] = lambda seed, d=drafter, k=k, v=verify: jaxspec.speculative_sample(
            target,
            d,
            prompt_of(seed),
            key=jax.random.key(seed),
            max_new_tokens=max_new_tokens,
            num_draft_tokens=k,
            temperature=temperature,
            verify=v,
        )
    return methods


def _load_pair(config: BenchmarkConfig):
    target = jaxspec.load_model(config.target_model)
    draft = jaxspec.load_model(config.draft_model)
    return target, draft, jaxspec.load_tokenizer(config.target_model)


def _eta(done: int, total: int, start: float) -> str:
    return f"ETA {(time.perf_counter() - start) / done * (total - done) / 60:.1f} min"


def sweep_row(
    timing: dict, results: list, ar: dict, loop: costs.LoopCosts, b: int, t: float, k: int, v: str, clusters=None
) -> dict:
    """One sweep cell: acceptance, measured speedup (paired per prompt) and the speedup the costs predict.

    `clusters` [num_runs]: the held-out file of each run's prompt (`prompts.heldout_prompts_by_file`).
    """
    counts = acceptance_summary(results)
    alpha, tokens_per_round = counts["alpha_per_draft"], counts["tokens_per_target_call"]
    # The loop runs until its slowest row ends: that is the number of rounds it pays for.
    loop_rounds = float(np.mean([np.max(np.asarray(r.num_rounds)) for r in results]))
    n = int(np.max(np.asarray(results[0].lengths)))
    speedup = paired_speedup(ar["times_s"], timing["times_s"], clusters)
    mean, std = mean_std(timing["times_s"])
    ar_mean, ar_std = mean_std(ar["times_s"])
    predicted = loop.predicted_speedup(n, k, n / loop_rounds)
    return dict(
        batch_size=b,
        temperature=t,
        K=k,
        verify=v,
        alpha=alpha,
        acceptance_rate=counts["acceptance_rate"],
        acceptance_by_position=counts["acceptance_by_position"],
        accepted_per_round=counts["accepted_per_round"],
        tokens_per_round=tokens_per_round,
        spec_ms=1000 * mean,
        spec_std_ms=1000 * std,
        ar_ms=1000 * ar_mean,
        ar_std_ms=1000 * ar_std,
        **speedup,
        predicted_speedup=predicted,
        predicted_from_alpha=loop.predicted_speedup(n, k, costs.tokens_per_round_tokenwise(alpha, k))
        if v == "tokenwise"
        else None,
        **speedup_of_means(ar["times_s"], timing["times_s"], clusters),
        efficiency=efficiency(ar_mean, mean, predicted),
        target_step_ms=loop.target_step_ms,
        round_calls_ms=loop.round_calls(k),
        isolated_round_calls_ms=loop.isolated_round_calls_ms(k),
        round_overhead_ms=loop.round_overhead_ms,
        ar_overhead_ms=loop.ar_overhead_ms,
    )


# Calls per timed cost loop among a sweep's runs (`costs.cost_loops`): short, as each runs once per run.
COST_REPS = 5


def _json_costs(c: dict) -> dict:
    """`costs.model_costs` output with string keys (JSON)."""
    return {f: {str(k): ms for k, ms in v.items()} if isinstance(v, dict) else v for f, v in c.items()}


def sweep(config: BenchmarkConfig, log: Callable[[str], None]) -> dict:
    target, draft, tokenizer = _load_pair(config)
    ks, temps, batches, rules, n = config.K, config.temperatures, config.batch_sizes, config.verify, config.N
    per_file = config.prompts_per_file
    # Run i decodes prompts[i]; clusters[i] is its file.
    prompts, clusters = heldout_prompts_by_file(
        tokenizer, config.num_runs, config.prompt_tokens, max_per_file=per_file, spacing=config.prompt_tokens + n
    )
    model_costs, overheads, interleaved = {}, {}, {}

    def measure_costs(b: int, t: float) -> None:
        # Measured right before the cell's runs, at its temperature: the machine's speed drifts
        # over a long sweep (a target step took 3.4 ms one hour and 4.3 ms another) and its
        # prediction should see the conditions its runs saw.
        model_costs[b, t] = c = costs.model_costs(target, draft, b, config.prompt_tokens, n, ks)
        for k in ks:
            for v in rules:
                overheads[b, t, k, v] = costs.loop_overheads(
                    target,
                    draft,
                    np.repeat(prompts[:1], b, axis=0),
                    max_new_tokens=n,
                    num_draft_tokens=k,
                    verify=v,
                    temperature=t,
                )
        log(
            f"costs at batch {b}, T={t}: target step {c['target_step_ms']:.2f} ms, draft step "
            f"{c['draft_step_ms']:.2f} ms (2-token {c['draft_first_ms']:.2f}), verify "
            + ", ".join(f"K={k}: {ms:.2f}" for k, ms in c["verify_ms"].items())
            + "; a round's calls together "
            + ", ".join(f"K={k}: {ms:.2f}" for k, ms in c["round_calls_ms"].items())
            + "; loop work per round "
            + ", ".join(f"K={k}: {overheads[b, t, k, rules[0]]['round_overhead_ms']:.2f}" for k in ks)
            + f" ms, per AR token {overheads[b, t, ks[0], rules[0]]['ar_overhead_ms']:.3f} ms"
        )

    rows = []
    total = len(batches) * len(temps)
    done = 0
    start = time.perf_counter()
    for b in batches:
        for t in temps:
            measure_costs(b, t)

            def batch_of(seed, b=b):
                return np.repeat(prompts[seed % len(prompts)][None], b, axis=0)

            proposals = {f"K={k} {v}": (draft, k, v) for k in ks for v in rules}
            methods = decode_methods(target, batch_of, proposals, max_new_tokens=n, temperature=t)
            # The prediction's largest costs are timed among the runs, so they see the runs' conditions.
            cost_loops = costs.cost_loops(target, draft, b, config.prompt_tokens, n, ks, reps=COST_REPS)
            methods.update({f"cost {name}": (lambda seed, f=f: f()) for name, f in cost_loops.items()})
            timings, results = time_interleaved(methods, config.num_runs, keep_results=True, repeats=config.repeats)
            interleaved[b, t] = costs.interleaved_costs(
                {name: timings[f"cost {name}"]["times_s"] for name in cost_loops}, reps=COST_REPS
            )
            c = interleaved[b, t]
            log(
                f"costs timed among the runs (median): target step {c['target_step_ms']:.2f} ms, a round's calls "
                + ", ".join(f"K={k}: {ms:.2f}" for k, ms in c["round_calls_ms"].items())
                + " ms"
            )
            cell_costs = dict(model_costs[b, t], **c)
            for k in ks:
                for v in rules:
                    loop = costs.loop_costs(cell_costs, overheads[b, t, k, v], k)
                    name = f"K={k} {v}"
                    ar = timings["autoregressive"]
                    rows.append(sweep_row(timings[name], results[name], ar, loop, b, t, k, v, clusters))
            # Each cell compiles 2 * len(K) loops that no later cell reuses. XLA:CPU keeps every
            # executable's code mapped, and the full sweep once ran out of memory maps (vm.max_map_count)
            # in its last cell: drop them.
            del timings, results, methods
            jax.clear_caches()
            done += 1
            best = max(
                (r for r in rows if r["batch_size"] == b and r["temperature"] == t),
                key=lambda r: r["speedup"],
            )
            log(
                f"[{done}/{total}] batch {b} T={t}: best K={best['K']} {best['verify']} speedup {best['speedup']:.2f}x "
                f"(alpha {best['alpha']:.2f}); {_eta(done, total, start)}"
            )
    return dict(
        mode="sweep",
        target=config.target_model,
        draft=config.draft_model,
        N=n,
        # Each batch size's costs at its first temperature (README); every cell's in cell_costs.
        costs={str(b): _json_costs(model_costs[b, temps[0]]) for b in batches},
        cell_costs={f"{b}/{t}": _json_costs(c) for (b, t), c in model_costs.items()},
        # The costs the predictions used for the target step and a round's calls: timed among the runs.
        interleaved_costs={f"{b}/{t}": _json_costs(c) for (b, t), c in interleaved.items()},
        overheads={f"{b}/{t}/{k}/{v}": o for (b, t, k, v), o in overheads.items()},
        rows=rows,
    )


def settings(config: BenchmarkConfig, log: Callable[[str], None]) -> dict:
    target, draft, tokenizer = _load_pair(config)
    prompts = heldout_prompts(tokenizer, config.num_runs + 1, config.prompt_tokens)
    entries = [entry for entry, _ in parse_settings(config.settings)]
    methods = settings_methods(
        target,
        draft,
        prompts,
        entries,
        max_new_tokens=config.N,
        num_draft_tokens=config.settings_K,
        verify=config.verify[0],
    )
    log(f"timing {len(methods)} methods x {config.num_runs} runs, interleaved")
    timings, results = time_interleaved(methods, config.num_runs, keep_results=True)
    rate = {name: config.N / float(np.median(t["times_s"])) for name, t in timings.items()}
    base = entries[0]
    rows = []
    for entry in entries:
        ar, spec = rate[f"{entry} autoregressive"], rate[f"{entry} speculative"]
        spec_results, spec_times = results[f"{entry} speculative"], timings[f"{entry} speculative"]["times_s"]
        rows.append(
            dict(
                setting=entry,
                ar_tokens_per_s=ar,
                spec_tokens_per_s=spec,
                ar_vs_baseline=ar / rate[f"{base} autoregressive"],
                spec_vs_baseline=spec / rate[f"{base} speculative"],
                spec_over_ar=spec / ar,
                # Settings change acceptance too: tokens per round separates that from processing cost.
                spec_tokens_per_round=acceptance_summary(spec_results)["tokens_per_target_call"],
                # Time per round (loop iterations: the slowest row's rounds), run by run: the per-round
                # cost, apart from how many rounds the setting's acceptance needs.
                spec_ms_per_round=1000
                * float(np.median([t / np.max(np.asarray(r.num_rounds)) for t, r in zip(spec_times, spec_results)])),
            )
        )
    return dict(
        mode="settings",
        target=config.target_model,
        draft=config.draft_model,
        N=config.N,
        K=config.settings_K,
        verify=config.verify[0],
        num_runs=config.num_runs,
        jaxspec_file=jaxspec.__file__,
        rows=rows,
    )


def size(config: BenchmarkConfig, log: Callable[[str], None]) -> dict:
    rows = []
    for pair in config.size_pairs:
        draft_name, target_name = pair.split(":")
        entry = dict(draft=draft_name, target=target_name)
        for role, name in (("draft", draft_name), ("target", target_name)):
            model = init_model(sized_config(name), jax.random.key(0))
            entry[f"{role}_params_M"] = model.num_params() / 1e6
            entry[f"{role}_step_ms"] = costs.call_cost_ms(model, 1, 1, 128, reps=5)
            if role == "target":
                for k in (2, 4, 8):
                    entry[f"verify_K{k}_ms"] = costs.call_cost_ms(model, 1, k + 1, 128, reps=5)
            del model
            log(f"{name}: {entry[f'{role}_params_M']:.0f}M params, 1-token step {entry[f'{role}_step_ms']:.1f} ms")
        entry["c"] = entry["draft_step_ms"] / entry["target_step_ms"]
        for k in (2, 4, 8):
            entry[f"verify_ratio_K{k}"] = entry[f"verify_K{k}_ms"] / entry["target_step_ms"]
        rows.append(entry)
    return dict(mode="size", rows=rows)


def acceptance(config: BenchmarkConfig, log: Callable[[str], None]) -> dict:
    temps = [t for t in config.temperatures if t > 0]  # greedy: both rules are identical
    target, draft, tokenizer = _load_pair(config)
    prompts = heldout_prompts(tokenizer, 64, config.prompt_tokens)
    rows_BxT = np.resize(prompts, (config.acceptance_rows, prompts.shape[1]))
    rows, done, total, start = [], 0, len(temps) * len(config.K), time.perf_counter()
    for t in temps:
        for k in config.K:
            per_rule = {}
            for v in ("tokenwise", "block"):
                res = jaxspec.speculative_sample(
                    target,
                    draft,
                    rows_BxT,
                    key=jax.random.key(1000 * k + int(100 * t)),
                    max_new_tokens=config.N,
                    num_draft_tokens=k,
                    temperature=t,
                    verify=v,
                )
                per_rule[v] = accepted_per_round_by_row(res)
            diff = paired_difference(per_rule["tokenwise"], per_rule["block"])
            rows.append(
                dict(
                    temperature=t,
                    K=k,
                    rows=len(per_rule["block"]),
                    tokenwise_accepted_per_round=float(np.mean(per_rule["tokenwise"])),
                    block_accepted_per_round=float(np.mean(per_rule["block"])),
                    **diff,
                )
            )
            done += 1
            r = rows[-1]
            log(
                f"[{done}/{total}] T={t} K={k}: token-wise {r['tokenwise_accepted_per_round']:.3f}, block "
                f"{r['block_accepted_per_round']:.3f} (diff {r['difference']:+.3f} ± {r['difference_se']:.3f}); "
                f"{_eta(done, total, start)}"
            )
        jax.clear_caches()
    return dict(mode="acceptance", target=config.target_model, draft=config.draft_model, N=config.N, rows=rows)


def ngram(config: BenchmarkConfig, log: Callable[[str], None]) -> dict:
    target, draft, tokenizer = _load_pair(config)
    k = config.ngram_K
    sets = ngram_prompt_sets(tokenizer, config.num_runs + 1, config.prompt_tokens)
    proposers = {
        "ngram tokenwise": (jaxspec.NgramDrafter(max_ngram=3), k, "tokenwise"),
        "ngram block": (jaxspec.NgramDrafter(max_ngram=3), k, "block"),
        "draft model": (draft, k, "tokenwise"),
    }
    rows, done, total, start = [], 0, len(sets) * len(config.temperatures), time.perf_counter()
    for set_name, prompts in sets.items():
        for t in config.temperatures:
            prompt_of = lambda seed, p=prompts: p[seed % len(p)][None]
            methods = decode_methods(target, prompt_of, proposers, max_new_tokens=config.N, temperature=t)
            timings = time_interleaved(methods, config.num_runs)
            ar_mean, _ = mean_std(timings["autoregressive"]["times_s"])
            for name in proposers:
                counts = acceptance_summary([timings[name]["result"]])  # the last run's
                mean, std = mean_std(timings[name]["times_s"])
                rows.append(
                    dict(
                        prompts=set_name,
                        temperature=t,
                        method=name,
                        K=k,
                        alpha=counts["acceptance_rate"],
                        tokens_per_round=counts["tokens_per_target_call"],
                        spec_ms=1000 * mean,
                        spec_std_ms=1000 * std,
                        ar_ms=1000 * ar_mean,
                        speedup=ar_mean / mean,
                    )
                )
            done += 1
            log(f"[{done}/{total}] {set_name} T={t}; {_eta(done, total, start)}")
    return dict(mode="ngram", target=config.target_model, draft=config.draft_model, N=config.N, K=k, rows=rows)


def run_benchmark(config: BenchmarkConfig, *, command: str, log: Callable[[str], None]) -> dict:
    """Runs `config.mode`; the report gains the device and `command`.

    Raises:
      ValueError: `check_config`'s usage errors.
    """
    check_config(config)
    modes = {"sweep": sweep, "ngram": ngram, "size": size, "acceptance": acceptance, "settings": settings}
    report = modes[config.mode](config, log)
    return dict(report, device=str(jax.devices()[0]), command=command)
