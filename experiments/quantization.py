"""Measures int8 weight-only quantization against float32 and bfloat16.

For each precision (target and draft alike) it reports the params' bytes, the
per-call costs of the target (a 1-token decode step and a (K+1)-token verify,
each timed as --reps calls inside one jitted loop at a fixed cache position),
speculative and autoregressive tokens/s at batch 1 on one fixed prompt
(greedy), the acceptance rate, and how far greedy decoding of each precision
agrees with float32 (fraction of identical tokens, and the index of the first
differing one; greedy runs that differ once usually go their own way after).
Warm-up calls (compilation) are excluded and the precisions' calls are
interleaved run by run (`harness.time_interleaved`), so drifting machine load
hits all of them alike.

Precisions: fp32, bf16 (params and compute), int8 (int8 kernels, float32
compute), int8_bf16 (int8 kernels, bfloat16 compute).

    python experiments/quantization.py                      # the shipped pair in checkpoints/
    python experiments/quantization.py --size=gpt2-medium   # HF-sized random weights, draft gpt2
    python experiments/quantization.py --target_model=tests/fixtures/opt_tiny \\
        --draft_model=tests/fixtures/gpt2_tiny --N=8 --prompt_tokens=6   # smoke run

With --size the weights are random (N(0, 0.02)): costs and bytes are real,
acceptance and agreement are not meaningful (near-uniform logits).
"""

from __future__ import annotations

import csv
import functools
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

import jaxspec  # noqa: E402
from jaxspec.models.config import DecoderConfig  # noqa: E402
from jaxspec.models.model import init_model  # noqa: E402

# name -> (compute dtype, quantize)
PRECISIONS = {
    "fp32": (jnp.float32, None),
    "bf16": (jnp.bfloat16, None),
    "int8": (jnp.float32, "int8"),
    "int8_bf16": (jnp.bfloat16, "int8"),
}

TARGET = flags.DEFINE_string("target_model", harness.DEFAULT_TARGET, "Target folder or hub id.")
DRAFT = flags.DEFINE_string("draft_model", harness.DEFAULT_DRAFT, "Draft folder or hub id.")
SIZE = flags.DEFINE_enum("size", None, list(harness.HF_SIZES), "Random-weight target of this HF architecture.")
DRAFT_SIZE = flags.DEFINE_enum("draft_size", "gpt2", list(harness.HF_SIZES), "Random-weight draft (with --size).")
PRECISION_LIST = flags.DEFINE_list("precisions", ["fp32", "bf16", "int8"], f"Any of {', '.join(PRECISIONS)}.")
K = flags.DEFINE_integer("K", 4, "Draft tokens per round.", lower_bound=1)
N = flags.DEFINE_integer("N", 64, "New tokens per run.", lower_bound=1)
PROMPT = flags.DEFINE_string("prompt", harness.DEFAULT_PROMPT, "Prompt text (tokenized with the target's tokenizer).")
PROMPT_TOKENS = flags.DEFINE_integer(
    "prompt_tokens", 32, "Prompt tokens kept (random ids of this length if there is no tokenizer).", lower_bound=1
)
NUM_RUNS = flags.DEFINE_integer("num_runs", 5, "Timed runs per measurement (after one warm-up).", lower_bound=1)
REPS = flags.DEFINE_integer("reps", 10, "Model calls per timed per-call-cost loop.", lower_bound=1)
OUT_DIR = flags.DEFINE_string("out_dir", "results/quantization", "Where quantization.json/.csv go.")


def _log(message: str) -> None:
    print(time.strftime("%H:%M:%S"), message, flush=True)


def _cast(model, dtype):
    return model.replace(params=jax.tree.map(lambda x: x.astype(dtype), model.params), dtype=jnp.dtype(dtype))


def _models(precisions: list[str]) -> dict[str, tuple]:
    """{precision: (target, draft)}, every precision made from the same weights."""
    if SIZE.value is None:
        return {
            p: tuple(
                jaxspec.load_model(path, PRECISIONS[p][0], quantize=PRECISIONS[p][1])
                for path in (TARGET.value, DRAFT.value)
            )
            for p in precisions
        }
    base = [
        init_model(DecoderConfig.from_hf_config(dict(harness.HF_SIZES[name])), jax.random.key(seed))
        for seed, name in ((0, SIZE.value), (1, DRAFT_SIZE.value))
    ]
    out = {}
    for p in precisions:
        dtype, quantize = PRECISIONS[p]
        pair = [m if dtype == jnp.float32 else _cast(m, dtype) for m in base]
        out[p] = tuple(jaxspec.quantize_model(m) if quantize else m for m in pair)
    return out


def _prompt(vocab_size: int) -> np.ndarray:
    if SIZE.value is None:
        try:
            ids = jaxspec.load_tokenizer(TARGET.value)(PROMPT.value, add_special_tokens=False)["input_ids"]
        except jaxspec.CheckpointError:
            ids = []
        if ids:
            return np.asarray(ids[: PROMPT_TOKENS.value], np.int32)
        _log(f"no usable tokenizer in {TARGET.value}: using {PROMPT_TOKENS.value} fixed random token ids")
    return np.random.default_rng(0).integers(0, vocab_size, PROMPT_TOKENS.value).astype(np.int32)


@functools.partial(jax.jit, static_argnames="reps")
def _call_loop(model, cache, tokens_1xT, reps: int):
    """`reps` forward calls of T tokens at the cache's position (reset each call)."""

    def body(_, carry):
        cache, acc = carry
        logits, new_cache = model(tokens_1xT, cache)
        return new_cache.with_lengths(cache.lengths), acc + logits[0, -1, 0]

    return jax.lax.fori_loop(0, reps, body, (cache, jnp.float32(0)))


def _cost_method(model, chunk: int, position: int):
    cache = model.init_cache(1, position + chunk).with_lengths(jnp.full((1,), position, jnp.int32))
    tokens = jnp.ones((1, chunk), jnp.int32)
    return lambda seed: _call_loop(model, cache, tokens, REPS.value)


def _agreement(tokens: np.ndarray, reference: np.ndarray) -> tuple[float, int]:
    same = tokens == reference
    return float(np.mean(same)), int(np.argmin(same)) if not same.all() else len(same)


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    unknown = [p for p in PRECISION_LIST.value if p not in PRECISIONS]
    if unknown:
        raise app.UsageError(f"unknown --precisions {unknown}; allowed: {', '.join(PRECISIONS)}")
    precisions = list(dict.fromkeys(["fp32", *PRECISION_LIST.value]))  # fp32 is the reference
    models = _models(precisions)
    target_fp32 = models["fp32"][0]
    prompt = _prompt(target_fp32.vocab_size)
    position = len(prompt) + N.value // 2
    _log(f"prompt of {len(prompt)} tokens; N={N.value}, K={K.value}; costs at cache position {position}")

    cost_methods = {}
    for p, (target, _) in models.items():
        cost_methods[f"{p}/step"] = _cost_method(target, 1, position)
        cost_methods[f"{p}/verify"] = _cost_method(target, K.value + 1, position)
    costs = harness.time_interleaved(cost_methods, NUM_RUNS.value)

    gen_methods = {}
    for p, (target, draft) in models.items():
        gen_methods[f"{p}/spec"] = functools.partial(
            lambda seed, t, d: jaxspec.speculative_sample(
                t,
                d,
                prompt[None],
                key=jax.random.key(seed),
                max_new_tokens=N.value,
                num_draft_tokens=K.value,
                temperature=0,
            ),
            t=target,
            d=draft,
        )
        gen_methods[f"{p}/ar"] = functools.partial(
            lambda seed, t: jaxspec.autoregressive_sample(
                t, prompt[None], key=jax.random.key(seed), max_new_tokens=N.value, temperature=0
            ),
            t=target,
        )
    gens = harness.time_interleaved(gen_methods, NUM_RUNS.value)

    reference = np.asarray(gens["fp32/ar"]["result"].tokens)[0, : N.value]
    fp32_bytes = jaxspec.params_bytes(target_fp32)
    rows = []
    for p, (target, draft) in models.items():
        per_call = {}
        for kind in ("step", "verify"):
            mean, std = harness.mean_std(costs[f"{p}/{kind}"]["times_s"])
            per_call[kind] = (1000 * mean / REPS.value, 1000 * std / REPS.value)
        spec_s, _ = harness.mean_std(gens[f"{p}/spec"]["times_s"])
        ar_s, _ = harness.mean_std(gens[f"{p}/ar"]["times_s"])
        spec, ar = gens[f"{p}/spec"]["result"], gens[f"{p}/ar"]["result"]
        ar_tokens = np.asarray(ar.tokens)[0, : N.value]
        agree, first = _agreement(ar_tokens, reference)
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
                spec_tok_s=N.value / spec_s,
                ar_tok_s=N.value / ar_s,
                speedup=ar_s / spec_s,
                acceptance=float(np.mean(spec.acceptance_rate)),
                agreement_vs_fp32=agree,
                first_mismatch_vs_fp32=first,
                spec_equals_ar=bool(np.array_equal(np.asarray(spec.tokens)[0, : N.value], ar_tokens)),
                compile_and_first_s=gens[f"{p}/spec"]["compile_and_first_s"],
            )
        )
        _log(f"{p}: step {per_call['step'][0]:.2f} ms, spec {N.value / spec_s:.1f} tok/s, agreement {agree:.2f}")

    report = dict(
        target=SIZE.value or TARGET.value,
        draft=DRAFT_SIZE.value if SIZE.value else DRAFT.value,
        random_weights=SIZE.value is not None,
        K=K.value,
        N=N.value,
        prompt_tokens=len(prompt),
        cost_position=position,
        reps=REPS.value,
        num_runs=NUM_RUNS.value,
        rows=rows,
        device=str(jax.devices()[0]),
        command="python " + " ".join(sys.argv),
    )
    os.makedirs(OUT_DIR.value, exist_ok=True)
    with open(os.path.join(OUT_DIR.value, "quantization.json"), "w") as f:
        json.dump(report, f, indent=2)
    with open(os.path.join(OUT_DIR.value, "quantization.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    fmt = [
        {
            k: (f"{v:.1f}" if isinstance(v, float) and v >= 100 else f"{v:.3g}" if isinstance(v, float) else v)
            for k, v in r.items()
        }
        for r in rows
    ]
    columns = [
        ("precision", "precision"),
        ("target_MB", "target MB"),
        ("target_bytes_vs_fp32", "vs fp32"),
        ("step_ms", "step ms"),
        ("verify_ms", f"verify(K+1={K.value + 1}) ms"),
        ("spec_tok_s", "spec tok/s"),
        ("ar_tok_s", "AR tok/s"),
        ("speedup", "speedup"),
        ("acceptance", "accept"),
        ("agreement_vs_fp32", "agree vs fp32"),
        ("first_mismatch_vs_fp32", "1st diff"),
    ]
    print(harness.format_table(fmt, columns))
    print(f"wrote {OUT_DIR.value}/quantization.json/.csv")


if __name__ == "__main__":
    app.run(main)
