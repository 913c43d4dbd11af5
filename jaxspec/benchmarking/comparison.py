"""Speculative against autoregressive sampling on held-out prompts (or one prompt), paired run by run.

Each method decodes `num_prompts` held-out prompts, one timed run per prompt,
the methods interleaved prompt by prompt after a warm-up run whose time
(compilation included) is reported separately. The speedup is measured per
prompt (autoregressive time / speculative time on the same prompt) and
reported as the median with the mean's standard error (`paired_speedup`).
With `input_str`, that one prompt is decoded `num_runs` times instead.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

import jaxspec
from jaxspec.benchmarking.metrics import acceptance_summary, paired_speedup
from jaxspec.benchmarking.prompts import heldout_prompts
from jaxspec.benchmarking.provenance import LEGEND_COLOR, LEGEND_PLAIN, render_provenance
from jaxspec.benchmarking.tables import format_table
from jaxspec.benchmarking.timing import mean_std, time_interleaved


@dataclasses.dataclass(frozen=True)
class CompareConfig:
    """A comparison run (the flags of experiments/compare.py).

    Attributes:
      target_model, draft_model: folders or hub ids.
      input_str: one prompt of yours (None: `num_prompts` held-out prompts).
      num_runs: timed runs per method with `input_str`.
      num_prompts: held-out prompts, one timed run each per method (without `input_str`).
      prompt_tokens: length of each held-out prompt (tokens).
      N: new tokens per row.
      K: draft tokens per round.
      temperature, top_k, top_p: the sampling settings (0 = greedy, 0 = off, 1 = off).
      batch_size: copies of the prompt decoded together.
      seed: base seed; run i uses seed + i.
      drafter: "model" (`draft_model` proposes), "ngram" (prompt lookup, no draft
        model) or "self" (the target's first `self_draft_layers` layers, `SelfDrafter`).
      max_ngram: longest suffix prompt lookup matches.
      self_draft_layers: layers of the target a self-draft runs (drafter "self").
      verify: "tokenwise" or "block".
      min_draft_confidence: dynamic draft length (None: K drafts every round;
        see `speculative_sample`).
      method: "both", "speculative" or "autoregressive".
      dtype: "float32" or "bfloat16" (parameters and compute).
      verbose: also render the first speculative row by token provenance.
    """

    target_model: str
    draft_model: str
    input_str: str | None = None
    num_runs: int = 5
    num_prompts: int = 16
    prompt_tokens: int = 32
    N: int = 128
    K: int = 5
    temperature: float = 0.6
    top_k: int = 0
    top_p: float = 1.0
    batch_size: int = 1
    seed: int = 0
    drafter: str = "model"
    max_ngram: int = 3
    self_draft_layers: int = 1
    verify: str = "block"
    min_draft_confidence: float | None = None
    method: str = "both"
    dtype: str = "float32"
    verbose: bool = False


def compare(config: CompareConfig) -> dict:
    """Times the methods and returns every figure (see experiments/compare.py for the report's fields).

    Raises:
      ValueError: an empty `input_str`, too few held-out prompts, or a
        generation longer than a model's context (from the loops).
    """
    dtype = jnp.float32 if config.dtype == "float32" else jnp.bfloat16
    target = jaxspec.load_model(config.target_model, dtype=dtype)
    tokenizer = jaxspec.load_tokenizer(config.target_model)
    if config.input_str is not None:
        prompt = tokenizer(config.input_str, add_special_tokens=False)["input_ids"]
        if not prompt:
            raise ValueError("--input_str encodes to no tokens; give a non-empty prompt.")
        prompt_set = np.asarray([prompt], np.int32)
        num_runs = config.num_runs
    else:
        prompt_set = heldout_prompts(tokenizer, config.num_prompts, config.prompt_tokens)
        num_runs = config.num_prompts

    def prompts(seed: int) -> np.ndarray:
        """Run `seed`'s prompt (warm-up seeds reuse prompt 0) as a batch of copies."""
        row = prompt_set[seed % len(prompt_set)] if seed < num_runs else prompt_set[0]
        return np.tile(row, (config.batch_size, 1))

    settings = dict(temperature=config.temperature, top_k=config.top_k, top_p=config.top_p)
    methods = {}
    if config.method in ("both", "autoregressive"):
        methods["autoregressive"] = lambda seed: jaxspec.autoregressive_sample(
            target, prompts(seed), key=jax.random.key(config.seed + seed), max_new_tokens=config.N, **settings
        )
    draft = None
    if config.method in ("both", "speculative"):
        if config.drafter == "model":
            draft = jaxspec.load_model(config.draft_model, dtype=dtype)
        elif config.drafter == "self":
            draft = jaxspec.SelfDrafter.first_layers(target, config.self_draft_layers)
        else:
            draft = jaxspec.NgramDrafter(max_ngram=config.max_ngram)
        methods["speculative"] = lambda seed: jaxspec.speculative_sample(
            target,
            draft,
            prompts(seed),
            key=jax.random.key(config.seed + seed),
            max_new_tokens=config.N,
            num_draft_tokens=config.K,
            verify=config.verify,
            min_draft_confidence=config.min_draft_confidence,
            **settings,
        )
    # No EOS: generation runs to N tokens so every run does the same work.
    timings, results = time_interleaved(methods, num_runs, keep_results=True)
    drafter = {
        "model": config.draft_model,
        "ngram": f"prompt lookup (max_ngram {config.max_ngram})",
        "self": f"self-draft (the target's first {config.self_draft_layers} layers)",
    }[config.drafter]
    report = dict(
        target_model=config.target_model,
        draft_model=drafter if draft is not None else None,
        verify=config.verify,
        min_draft_confidence=config.min_draft_confidence,
        prompt=tokenizer.decode(prompt_set[0]),
        prompts="input_str" if config.input_str is not None else f"{len(prompt_set)} held-out prompts",
        prompt_tokens=int(prompt_set.shape[1]),
        N=config.N,
        K=config.K,
        batch_size=config.batch_size,
        num_runs=num_runs,
        device=str(jax.devices()[0]),
        dtype=config.dtype,
        methods={},
        **settings,
    )
    ar_times = None
    for name, t in timings.items():
        mean, std = mean_std(t["times_s"])
        result = results[name][0]  # the first prompt's run: its text is shown
        generated = int(np.asarray(result.lengths).sum())
        entry = dict(
            mean_s=mean,
            std_s=std,
            times_s=t["times_s"],
            compile_and_first_s=t["compile_and_first_s"],
            generated_tokens=generated,
            tokens_per_s=generated / mean,
            ms_per_token=1000 * mean / generated * config.batch_size,
            text=tokenizer.decode(np.asarray(result.tokens)[0, : int(result.lengths[0])]),
        )
        if name == "autoregressive":
            ar_times = t["times_s"]
        else:
            entry.update(acceptance_summary(results[name]))
        report["methods"][name] = entry
    for name, entry in report["methods"].items():
        entry["speedup"] = None
        if ar_times:
            # Paired per run: the same prompt (and batch) decoded by both methods.
            entry.update(paired_speedup(ar_times, timings[name]["times_s"]))
            entry["speedups"] = (np.asarray(ar_times) / np.asarray(timings[name]["times_s"])).tolist()
    if config.verbose and "speculative" in timings:
        result = results["speculative"][0]
        n = int(result.lengths[0])
        tokens, provenance = np.asarray(result.tokens)[0, :n], np.asarray(result.provenance)[0, :n]
        report["verbose_text"] = render_provenance(tokenizer, tokens, provenance, color=False)
        report["_verbose_render"] = render_provenance(tokenizer, tokens, provenance)
    return report


def format_report(report: dict, color: bool) -> str:
    """The comparison as text: settings, a table of the methods, acceptance by position, the generated texts."""
    lines = [
        f"target {report['target_model']}  draft {report['draft_model']}  "
        f"device {report['device']} ({report['dtype']})",
        f"{report['prompts']} of {report['prompt_tokens']} tokens, N={report['N']}, K={report['K']}, "
        f"batch {report['batch_size']}, "
        f"temperature {report['temperature']}, top_k {report['top_k']}, top_p {report['top_p']}, "
        f"{report['verify']} verification",
    ]
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
    columns = [
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
    ]
    lines.append(format_table(rows, columns))
    for name, e in report["methods"].items():
        if "acceptance_by_position" in e:
            by_position = ", ".join(f"{a:.2f}" for a in e["acceptance_by_position"])
            lines.append(
                f"{name}: acceptance by draft position [{by_position}]; {e['accepted']} accepted, "
                f"{e['rejections']} rejections in {e['rounds']} rounds"
            )
    for name, e in report["methods"].items():
        lines.append(f"\n--- {name} (first prompt, row 0) ---\n{report['prompt']}{e['text']}")
    if "_verbose_render" in report:
        lines.append("\n--- speculative, by provenance ---")
        lines.append(LEGEND_COLOR if color else LEGEND_PLAIN)
        lines.append(report["prompt"] + (report["_verbose_render"] if color else report["verbose_text"]))
    return "\n".join(lines)
