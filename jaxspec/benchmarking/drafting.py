"""Drafting strategies side by side: chains, trees and self-drafts against one autoregressive baseline.

For each temperature, every method decodes the same held-out prompts (batch
1), one timed run per prompt, all methods interleaved prompt by prompt after a
warm-up run (`time_interleaved`). Reported per method: the speedup over
autoregressive decoding (median of the per-prompt ratios, with the mean's
standard error), tokens per target call, mean accepted drafts per round and
the number of positions one verify pass scores (the verify budget: K + 1 for a
chain, N + 1 for a tree). Methods are named by a short spec:

  chain:tokenwise:K   chain:block:K       a chain of K drafts (the draft model)
  tree:traversal:B    tree:recursive:B    a tree of branching B, e.g. 2x2 (N = 6)
  self:L              the target's first L layers as the draft (block, K = `self_K`)
  dynamic:R:K:C       a chain of at most K drafts under rule R whose rows stop drafting once the
                      draft's top probability falls below C (`min_draft_confidence`)

Also reported, per temperature: Traversal's mean accepted length per round
minus recursive rejection's on the same tree shape (paired by prompt, with its
standard error and z score), the comparison Weng et al. 2025 make.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import numpy as np

import jaxspec
from jaxspec.benchmarking.metrics import (
    acceptance_summary,
    accepted_per_round_by_row,
    paired_difference,
    paired_speedup,
)
from jaxspec.benchmarking.prompts import heldout_prompts
from jaxspec.benchmarking.timing import mean_std, time_interleaved
from jaxspec.generation.tree_speculative import TREE_VERIFICATION_RULES
from jaxspec.sampling.accept import VERIFICATION_RULES


@dataclasses.dataclass(frozen=True)
class DraftingConfig:
    """A drafting comparison (the flags of experiments/drafting.py).

    Attributes:
      target_model, draft_model: folders or hub ids.
      methods: method specs (module docstring).
      temperatures: sampling temperatures (0 = greedy).
      num_prompts, prompt_tokens, N: held-out prompts, their length, new tokens per prompt.
      self_K: draft tokens per round of the self-drafts.
      seed: base seed; run i uses seed + i.
    """

    target_model: str
    draft_model: str
    methods: tuple[str, ...] = ("chain:block:6", "tree:traversal:2x2", "tree:recursive:2x2", "self:1", "self:2")
    temperatures: tuple[float, ...] = (0.0, 0.6, 1.0)
    num_prompts: int = 16
    prompt_tokens: int = 32
    N: int = 128
    self_K: int = 4
    seed: int = 0


class Method(NamedTuple):
    """A parsed method spec: kind ("chain" | "tree" | "self" | "dynamic"), rule, shape, confidence threshold."""

    kind: str
    rule: str
    shape: tuple[int, ...]
    min_confidence: float | None = None


def parse_method(spec: str) -> Method:
    """The `Method` of a spec.

    >>> [tuple(parse_method(s)[:3]) for s in ("tree:traversal:2x2", "chain:block:6", "self:2")]
    [('tree', 'traversal', (2, 2)), ('chain', 'block', (6,)), ('self', 'block', (2,))]
    >>> parse_method("dynamic:block:8:0.4")
    Method(kind='dynamic', rule='block', shape=(8,), min_confidence=0.4)

    Raises:
      ValueError: a spec of another form, or a rule that is not registered
        (`VERIFICATION_RULES` for chains, `TREE_VERIFICATION_RULES` for trees).
    """
    method = _parsed(spec)
    family, rules = ("tree", TREE_VERIFICATION_RULES) if method.kind == "tree" else ("chain", VERIFICATION_RULES)
    if method.rule not in rules:
        raise ValueError(
            f"method {spec!r}: {method.rule!r} is not a {family} verification rule; use one of {list(rules)}."
        )
    return method


def _parsed(spec: str) -> Method:
    parts = spec.split(":")
    try:
        if parts[0] == "self" and len(parts) == 2:
            return Method("self", "block", (int(parts[1]),))
        if parts[0] == "dynamic" and len(parts) == 4 and 0 <= float(parts[3]) <= 1:
            return Method("dynamic", parts[1], (int(parts[2]),), float(parts[3]))
        if parts[0] in ("chain", "tree") and len(parts) == 3:
            shape = tuple(int(b) for b in parts[2].split("x"))
            if parts[0] == "chain" and len(shape) == 1:
                return Method("chain", parts[1], shape)
            if parts[0] == "tree":
                return Method("tree", parts[1], shape)
    except ValueError:
        pass
    raise ValueError(
        f"method {spec!r} is not chain:<rule>:<K>, tree:<rule>:<b1>x<b2>..., self:<layers> or "
        "dynamic:<rule>:<K>:<confidence in [0, 1]>; e.g. chain:block:6, tree:traversal:2x2, self:2, "
        "dynamic:block:8:0.4."
    )


def _runner(method: Method, target, draft, prompts, temperature, n, self_k, seed):
    kind, rule, shape = method.kind, method.rule, method.shape
    kwargs = dict(max_new_tokens=n, temperature=temperature)
    if kind in ("chain", "dynamic"):
        return lambda s: jaxspec.speculative_sample(
            target,
            draft,
            prompts(s),
            key=jax.random.key(seed + s),
            num_draft_tokens=shape[0],
            verify=rule,
            min_draft_confidence=method.min_confidence,
            **kwargs,
        )
    if kind == "tree":
        return lambda s: jaxspec.tree_speculative_sample(
            target, draft, prompts(s), key=jax.random.key(seed + s), branching=shape, verify=rule, **kwargs
        )
    drafter = jaxspec.SelfDrafter.first_layers(target, shape[0])
    return lambda s: jaxspec.speculative_sample(
        target, drafter, prompts(s), key=jax.random.key(seed + s), num_draft_tokens=self_k, verify="block", **kwargs
    )


def verify_positions(kind: str, shape: tuple[int, ...], self_k: int) -> int:
    """Positions one verify pass scores: K + 1 (chain, at most K for dynamic), N + 1 (tree)."""
    if kind in ("chain", "dynamic"):
        return shape[0] + 1
    if kind == "self":
        return self_k + 1
    return int(np.sum(np.cumprod(shape))) + 1


def compare_drafting(config: DraftingConfig, log=print) -> dict:
    """Runs every method at every temperature; returns the report (rows per method and temperature)."""
    parsed = {spec: parse_method(spec) for spec in config.methods}
    target = jaxspec.load_model(config.target_model)
    draft = jaxspec.load_model(config.draft_model)
    tokenizer = jaxspec.load_tokenizer(config.target_model)
    prompt_set = heldout_prompts(tokenizer, config.num_prompts, config.prompt_tokens)

    def prompts(seed: int) -> np.ndarray:
        return prompt_set[seed % len(prompt_set)][None] if seed < len(prompt_set) else prompt_set[:1]

    rows, comparisons = [], []
    for t in config.temperatures:
        methods = {
            "autoregressive": lambda s, t=t: jaxspec.autoregressive_sample(
                target, prompts(s), key=jax.random.key(config.seed + s), max_new_tokens=config.N, temperature=t
            )
        }
        for spec, method in parsed.items():
            methods[spec] = _runner(method, target, draft, prompts, t, config.N, config.self_K, config.seed)
        log(f"T = {t}: {len(methods)} methods x {config.num_prompts} prompts")
        timings, results = time_interleaved(methods, config.num_prompts, keep_results=True)
        ar_times = timings["autoregressive"]["times_s"]
        per_round = {}
        for spec, (kind, _, shape, _) in parsed.items():
            summary = acceptance_summary(results[spec])
            per_round[spec] = np.concatenate([accepted_per_round_by_row(r) for r in results[spec]])
            mean, std = mean_std(timings[spec]["times_s"])
            rows.append(
                dict(
                    temperature=t,
                    method=spec,
                    verify_positions=verify_positions(kind, shape, config.self_K),
                    time_ms=1000 * mean,
                    time_std_ms=1000 * std,
                    tokens_per_target_call=summary["tokens_per_target_call"],
                    drafted_per_round=summary["drafted_per_round"],
                    accepted_per_round=summary["accepted_per_round"],
                    accepted_per_round_se=float(np.std(per_round[spec], ddof=1) / np.sqrt(len(per_round[spec]))),
                    **paired_speedup(ar_times, timings[spec]["times_s"]),
                )
            )
            r = rows[-1]
            log(
                f"  {spec:22s} {r['speedup']:.2f}x ± {r['speedup_se']:.2f}  "
                f"{r['tokens_per_target_call']:.2f} tokens/call  {r['accepted_per_round']:.2f} accepted/round"
            )
        for spec, (kind, rule, shape, _) in parsed.items():
            other = f"tree:recursive:{'x'.join(map(str, shape))}"
            if kind == "tree" and rule == "traversal" and other in per_round:
                comparisons.append(
                    dict(
                        temperature=t,
                        tree="x".join(map(str, shape)),
                        **paired_difference(per_round[other], per_round[spec]),
                    )
                )
    return dict(
        target_model=config.target_model,
        draft_model=config.draft_model,
        num_prompts=config.num_prompts,
        prompt_tokens=config.prompt_tokens,
        N=config.N,
        self_K=config.self_K,
        device=str(jax.devices()[0]),
        rows=rows,
        traversal_minus_recursive=comparisons,
    )


def plot_drafting(report: dict, path: str) -> None:
    """Speedup (with its standard error) of every method, one group of bars per temperature."""
    from jaxspec.benchmarking.plots import _pyplot

    plt = _pyplot()
    temps = sorted({r["temperature"] for r in report["rows"]})
    methods = list(dict.fromkeys(r["method"] for r in report["rows"]))
    width = 0.8 / len(methods)
    fig, ax = plt.subplots(figsize=(2 + 1.6 * len(temps) * len(methods) / 3, 4))
    for i, m in enumerate(methods):
        cells = [next(r for r in report["rows"] if r["temperature"] == t and r["method"] == m) for t in temps]
        xs = np.arange(len(temps)) + (i - (len(methods) - 1) / 2) * width
        ax.bar(xs, [c["speedup"] for c in cells], width, yerr=[c["speedup_se"] for c in cells], label=m, capsize=2)
    ax.axhline(1.0, color="gray", lw=0.8)
    ax.set_xticks(np.arange(len(temps)), [f"T = {t}" for t in temps])
    ax.set_ylabel("speedup over autoregressive (median, ± se)")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
