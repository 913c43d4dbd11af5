"""jaxspec side by side with Hugging Face transformers' (PyTorch) generate(). Needs torch (the `peers` extra).

Same checkpoints, prompt, N, K, temperature and machine, runs interleaved:
  hf_plain     transformers generate()
  hf_assisted  transformers generate(assistant_model=draft), constant K drafts
  jax_ar       jaxspec.autoregressive_sample
  jax_spec     jaxspec.speculative_sample
In greedy mode (temperature 0, fp32) all four outputs must be identical token
for token; the report says whether they are. Then batch sizes > 1:
transformers' assisted generation refuses them, jaxspec runs them.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

import jax
import numpy as np

import jaxspec
from jaxspec.benchmarking.prompts import DEFAULT_PROMPT
from jaxspec.benchmarking.tables import format_table
from jaxspec.benchmarking.timing import mean_std, time_interleaved


@dataclasses.dataclass(frozen=True)
class PeersConfig:
    """A side-by-side run (the flags of experiments/vs_transformers.py).

    Attributes:
      target_model, draft_model: folders or hub ids both libraries load.
      input_str: the prompt.
      N: new tokens.
      K: draft tokens per round (constant for transformers too).
      temperature: 0 = greedy (outputs compared token for token).
      num_runs: timed runs per method.
      batch_sizes: batch sizes tried for the batched comparison.
    """

    target_model: str
    draft_model: str
    input_str: str = DEFAULT_PROMPT
    N: int = 64
    K: int = 4
    temperature: float = 0.0
    num_runs: int = 5
    batch_sizes: tuple[int, ...] = (1, 4, 16)


def run_peers(config: PeersConfig, log: Callable[[str], None]) -> dict:
    """Times the four methods; returns the report (methods, greedy agreement, batched).

    Raises:
      ImportError: torch is not installed.
    """
    import torch
    import transformers

    # One line per event: no weight-loading progress bars or deprecation chatter from transformers.
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    torch.manual_seed(0)
    tokenizer = jaxspec.load_tokenizer(config.target_model)
    prompt = tokenizer(config.input_str, add_special_tokens=False)["input_ids"]
    eos = tokenizer.eos_token_id
    greedy = config.temperature == 0
    jt, jd = jaxspec.load_model(config.target_model), jaxspec.load_model(config.draft_model)
    ht = transformers.AutoModelForCausalLM.from_pretrained(config.target_model, dtype=torch.float32).eval()
    hd = transformers.AutoModelForCausalLM.from_pretrained(config.draft_model, dtype=torch.float32).eval()
    # Constant K: no heuristic schedule and no confidence-based early stop of drafting.
    hd.generation_config.num_assistant_tokens = config.K
    hd.generation_config.num_assistant_tokens_schedule = "constant"
    hd.generation_config.assistant_confidence_threshold = 0.0
    sampling = dict(do_sample=not greedy)
    if not greedy:
        sampling.update(temperature=config.temperature, top_k=0)

    def hf(batch, assisted):
        ids = torch.tensor([prompt] * batch)
        kwargs = dict(assistant_model=hd) if assisted else {}
        with torch.no_grad():
            out = ht.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=config.N,
                pad_token_id=eos,
                eos_token_id=eos,
                **sampling,
                **kwargs,
            )
        return out[:, len(prompt) :].numpy()

    common = dict(max_new_tokens=config.N, temperature=config.temperature, eos_token_id=eos)

    def jax_ar(batch, seed):
        return jaxspec.autoregressive_sample(jt, [prompt] * batch, key=jax.random.key(seed), **common)

    def jax_spec(batch, seed):
        return jaxspec.speculative_sample(
            jt, jd, [prompt] * batch, key=jax.random.key(seed), num_draft_tokens=config.K, **common
        )

    methods = {
        "hf_plain": lambda seed: hf(1, False),
        "hf_assisted": lambda seed: hf(1, True),
        "jax_ar": lambda seed: jax_ar(1, seed),
        "jax_spec": lambda seed: jax_spec(1, seed),
    }
    log("warming up and timing (runs interleaved)")
    timings = time_interleaved(methods, config.num_runs)

    def rows_of(name):
        r = timings[name]["result"]
        if name.startswith("hf"):
            toks = r[0].tolist()
            return toks[: toks.index(eos) + 1] if eos in toks else toks
        return np.asarray(r.tokens)[0, : int(r.lengths[0])].tolist()

    outputs = {name: rows_of(name) for name in methods}
    report = dict(
        target_model=config.target_model,
        draft_model=config.draft_model,
        prompt_tokens=len(prompt),
        N=config.N,
        K=config.K,
        temperature=config.temperature,
        num_runs=config.num_runs,
        torch=torch.__version__,
        transformers=transformers.__version__,
        jax=jax.__version__,
        methods={},
        batched={},
    )
    for name in methods:
        mean, std = mean_std(timings[name]["times_s"])
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
    for b in config.batch_sizes:
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
        log(
            f"batch {b}: transformers assisted {entry['hf_assisted'][:60]}; jaxspec "
            f"{entry['jax_spec_tokens_per_s']:.0f} tokens/s"
        )
    return report


def format_report(report: dict) -> str:
    """The side-by-side as text: a table of the methods, the greedy verdict, the batched runs."""
    m = report["methods"]
    rows = [
        dict(
            method=name,
            time=f"{e['mean_s'] * 1000:.1f} ± {e['std_s'] * 1000:.1f} ms",
            tokens=e["tokens"],
            tps=f"{e['tokens_per_s']:.1f}",
            vs=f"{e['tokens_per_s'] / m['hf_assisted']['tokens_per_s']:.2f}x",
        )
        for name, e in m.items()
    ]
    columns = [
        ("method", "method"),
        ("time", "time (mean ± std)"),
        ("tokens", "tokens"),
        ("tps", "tokens/s"),
        ("vs", "vs hf_assisted"),
    ]
    lines = [
        f"N={report['N']} K={report['K']} temperature={report['temperature']} batch 1, {report['num_runs']} runs; "
        f"torch {report['torch']}, transformers {report['transformers']}, jax {report['jax']}",
        format_table(rows, columns),
    ]
    if "greedy_identical" in report:
        verdict = (
            "identical token for token"
            if report["greedy_identical"]
            else (f"DIFFERENT: {', '.join(report['greedy_mismatches'])} differ from hf_plain")
        )
        lines.append(f"greedy outputs of all four methods: {verdict}")
    for b, e in report["batched"].items():
        lines.append(
            f"batch {b}: transformers assisted: {e['hf_assisted']}; jaxspec speculative: "
            f"{e['jax_spec_tokens_per_s']:.0f} tokens/s"
        )
    return "\n".join(lines)
