"""int8 weight-only quantization against float32 and bfloat16: bytes, per-call costs, speed, agreement.

For each precision (target and draft alike): the params' bytes, the target's
per-call costs (a 1-token decode step and a (K+1)-token verify, each timed as
`reps` calls inside one jitted loop at a fixed cache position), speculative
and autoregressive tokens/s at batch 1 on one fixed prompt (greedy), the
acceptance rate, and how far greedy decoding of each precision agrees with
float32 (`metrics.token_agreement`). Warm-up calls (compilation) are excluded
and the precisions' calls are interleaved run by run (`time_interleaved`).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

import jaxspec
from jaxspec.benchmarking.costs import call_loop
from jaxspec.benchmarking.metrics import acceptance_summary, token_agreement
from jaxspec.benchmarking.prompts import DEFAULT_PROMPT
from jaxspec.benchmarking.sizes import sized_config
from jaxspec.benchmarking.timing import mean_std, time_interleaved
from jaxspec.models.model import init_model

# name -> (compute dtype, quantize)
PRECISIONS = {
    "fp32": (jnp.float32, None),
    "bf16": (jnp.bfloat16, None),
    "int8": (jnp.float32, "int8"),
    "int8_bf16": (jnp.bfloat16, "int8"),
}


@dataclasses.dataclass(frozen=True)
class QuantizationConfig:
    """A quantization run (the flags of experiments/quantization.py).

    Attributes:
      target_model, draft_model: folders or hub ids (without `size`).
      size: a `sizes.HF_SIZES` name: a random-weight target of that architecture instead.
      draft_size: the random-weight draft's architecture (with `size`).
      precisions: names of `PRECISIONS`; fp32 (the reference) is always measured.
      K: draft tokens per round.
      N: new tokens per run.
      prompt: prompt text (tokenized with the target's tokenizer).
      prompt_tokens: prompt tokens kept (random ids of this length if there is no tokenizer).
      num_runs: timed runs per measurement (after one warm-up).
      reps: model calls per timed per-call-cost loop.
    """

    target_model: str
    draft_model: str
    size: str | None = None
    draft_size: str = "gpt2"
    precisions: tuple[str, ...] = ("fp32", "bf16", "int8")
    K: int = 4
    N: int = 64
    prompt: str = DEFAULT_PROMPT
    prompt_tokens: int = 32
    num_runs: int = 5
    reps: int = 10


def check_config(config: QuantizationConfig) -> None:
    """Raises ValueError (a usage error) for an unknown precision."""
    unknown = [p for p in config.precisions if p not in PRECISIONS]
    if unknown:
        raise ValueError(f"unknown --precisions {unknown}; allowed: {', '.join(PRECISIONS)}")


def _cast(model, dtype):
    return model.replace(params=jax.tree.map(lambda x: x.astype(dtype), model.params), dtype=jnp.dtype(dtype))


def _models(config: QuantizationConfig, precisions: list[str]) -> dict[str, tuple]:
    """{precision: (target, draft)}, every precision made from the same weights."""
    if config.size is None:
        return {
            p: tuple(
                jaxspec.load_model(path, PRECISIONS[p][0], quantize=PRECISIONS[p][1])
                for path in (config.target_model, config.draft_model)
            )
            for p in precisions
        }
    sizes = ((0, config.size), (1, config.draft_size))
    base = [init_model(sized_config(name), jax.random.key(seed)) for seed, name in sizes]
    out = {}
    for p in precisions:
        dtype, quantize = PRECISIONS[p]
        pair = [m if dtype == jnp.float32 else _cast(m, dtype) for m in base]
        out[p] = tuple(jaxspec.quantize_model(m) if quantize else m for m in pair)
    return out


def _prompt(config: QuantizationConfig, vocab_size: int, log: Callable[[str], None]) -> np.ndarray:
    if config.size is None:
        try:
            ids = jaxspec.load_tokenizer(config.target_model)(config.prompt, add_special_tokens=False)["input_ids"]
        except jaxspec.CheckpointError:
            ids = []
        if ids:
            return np.asarray(ids[: config.prompt_tokens], np.int32)
        log(f"no usable tokenizer in {config.target_model}: using {config.prompt_tokens} fixed random token ids")
    return np.random.default_rng(0).integers(0, vocab_size, config.prompt_tokens).astype(np.int32)


def measure(config: QuantizationConfig, *, command: str, log: Callable[[str], None]) -> dict:
    """Measures every precision; returns the report (its "rows": one per precision, fp32 first)."""
    check_config(config)
    precisions = list(dict.fromkeys(["fp32", *config.precisions]))  # fp32 is the reference
    models = _models(config, precisions)
    target_fp32 = models["fp32"][0]
    prompt = _prompt(config, target_fp32.vocab_size, log)
    n, k, reps = config.N, config.K, config.reps
    position = len(prompt) + n // 2
    log(f"prompt of {len(prompt)} tokens; N={n}, K={k}; costs at cache position {position}")

    cost_methods = {}
    for p, (target, _) in models.items():
        for kind, chunk in (("step", 1), ("verify", k + 1)):
            loop = call_loop(target, 1, chunk, position, reps)
            cost_methods[f"{p}/{kind}"] = lambda seed, loop=loop: loop()
    call_costs = time_interleaved(cost_methods, config.num_runs)

    gen_methods = {}
    for p, (target, draft) in models.items():
        gen_methods[f"{p}/spec"] = functools.partial(
            lambda seed, t, d: jaxspec.speculative_sample(
                t, d, prompt[None], key=jax.random.key(seed), max_new_tokens=n, num_draft_tokens=k, temperature=0
            ),
            t=target,
            d=draft,
        )
        gen_methods[f"{p}/ar"] = functools.partial(
            lambda seed, t: jaxspec.autoregressive_sample(
                t, prompt[None], key=jax.random.key(seed), max_new_tokens=n, temperature=0
            ),
            t=target,
        )
    gens = time_interleaved(gen_methods, config.num_runs)

    reference = np.asarray(gens["fp32/ar"]["result"].tokens)[0, :n]
    fp32_bytes = jaxspec.params_bytes(target_fp32)
    rows = []
    for p, (target, draft) in models.items():
        per_call = {}
        for kind in ("step", "verify"):
            mean, std = mean_std(call_costs[f"{p}/{kind}"]["times_s"])
            per_call[kind] = (1000 * mean / reps, 1000 * std / reps)
        spec_s, _ = mean_std(gens[f"{p}/spec"]["times_s"])
        ar_s, _ = mean_std(gens[f"{p}/ar"]["times_s"])
        spec, ar = gens[f"{p}/spec"]["result"], gens[f"{p}/ar"]["result"]
        ar_tokens = np.asarray(ar.tokens)[0, :n]
        agree, first = token_agreement(ar_tokens, reference)
        rows.append(
            dict(
                precision=p,
                target_MB=jaxspec.params_bytes(target) / 2**20,
                draft_MB=jaxspec.params_bytes(draft) / 2**20,
                target_bytes_vs_fp32=jaxspec.params_bytes(target) / fp32_bytes,
                step_ms=per_call["step"][0],
                step_std_ms=per_call["step"][1],
                verify_ms=per_call["verify"][0],
                verify_std_ms=per_call["verify"][1],
                spec_tok_s=n / spec_s,
                ar_tok_s=n / ar_s,
                speedup=ar_s / spec_s,
                acceptance=acceptance_summary([spec])["acceptance_rate"],
                agreement_vs_fp32=agree,
                first_mismatch_vs_fp32=first,
                spec_equals_ar=bool(np.array_equal(np.asarray(spec.tokens)[0, :n], ar_tokens)),
                compile_and_first_s=gens[f"{p}/spec"]["compile_and_first_s"],
            )
        )
        log(f"{p}: step {per_call['step'][0]:.2f} ms, spec {n / spec_s:.1f} tok/s, agreement {agree:.2f}")

    return dict(
        target=config.size or config.target_model,
        draft=config.draft_size if config.size else config.draft_model,
        random_weights=config.size is not None,
        K=k,
        N=n,
        prompt_tokens=len(prompt),
        cost_position=position,
        reps=reps,
        num_runs=config.num_runs,
        rows=rows,
        device=str(jax.devices()[0]),
        command=command,
    )


def format_cell(v: float) -> str:
    """Quantization tables: one decimal from 100 up, three significant digits below."""
    return f"{v:.1f}" if v >= 100 else f"{v:.3g}"


def table_columns(k: int) -> list[tuple[str, str]]:
    """The columns of the printed quantization table."""
    return [
        ("precision", "precision"),
        ("target_MB", "target MB"),
        ("target_bytes_vs_fp32", "vs fp32"),
        ("step_ms", "step ms"),
        ("verify_ms", f"verify(K+1={k + 1}) ms"),
        ("spec_tok_s", "spec tok/s"),
        ("ar_tok_s", "AR tok/s"),
        ("speedup", "speedup"),
        ("acceptance", "accept"),
        ("agreement_vs_fp32", "agree vs fp32"),
        ("first_mismatch_vs_fp32", "1st diff"),
    ]
