"""The distillation loop (a pool of on-policy data, calibrate-then-schedule) and the speed evaluation."""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxspec.benchmarking.metrics import acceptance_summary
from jaxspec.benchmarking.timing import time_interleaved
from jaxspec.distillation.data import Pool, PromptSource, make_generator
from jaxspec.distillation.losses import distill_loss, divergence, sequence_logprobs
from jaxspec.generation import autoregressive_sample, speculative_sample
from jaxspec.models.model import Model
from jaxspec.sampling.processing import SamplingConfig
from jaxspec.training.trainer import adamw_cosine, make_step, seconds_per_step, steps_for_budget


@dataclasses.dataclass(frozen=True)
class DistillConfig:
    """A distillation run (the flags of experiments/distill_draft.py).

    Attributes:
      target_model: the target (teacher) folder or hub id; frozen.
      draft_model: the draft folder or hub id distillation starts from.
      out_dir: where the distilled draft goes.
      divergence: "fkl" = KL(p||q), "rkl" = KL(q||p), "tv" = 0.5 sum |p - q| (p target, q draft).
      temperature: of the on-policy samples and of p and q in the loss; > 0.
      minutes: time budget of the training loop (steps + pool refreshes).
      min_steps: steps trained whatever the budget.
      batch_size: sequences per step, drawn from the pool.
      prompt_tokens: prompt length (tokens) cut from files.
      gen_tokens: tokens the target generates per sequence.
      pool_size: sequences in the on-policy pool.
      gen_batch: sequences generated per call (one pool chunk).
      refresh_every: regenerate the oldest chunk every this many steps; 0 = never.
      lr: peak learning rate (AdamW, warmup + cosine).
      seed: seed of prompts, sampling keys and batches.
      eval_prompts: held-out prompts of the evaluation.
      eval_temperatures: temperatures of the evaluation (0 = greedy).
      eval_K, eval_N: draft tokens per round and new tokens per evaluation call.
      corpus: a saved corpus (`jaxspec.training.data.save_corpus`) whose tokens replace this interpreter's
        standard library for the prompts and the held-out loss (for a host with another Python).
    """

    target_model: str
    draft_model: str
    out_dir: str
    divergence: str = "fkl"
    temperature: float = 1.0
    minutes: float = 10
    min_steps: int = 50
    batch_size: int = 16
    prompt_tokens: int = 32
    gen_tokens: int = 64
    pool_size: int = 256
    gen_batch: int = 32
    refresh_every: int = 8
    lr: float = 1e-3
    seed: int = 0
    eval_prompts: int = 16
    eval_temperatures: tuple[float, ...] = (0.6, 1.0)
    eval_K: int = 4
    eval_N: int = 64
    corpus: str | None = None


def distill(
    target: Model,
    draft: Model,
    prompts: PromptSource,
    heldout: tuple,
    key: jax.Array,
    config: DistillConfig,
    log: Callable[[str], None],
) -> tuple[Model, dict]:
    """Trains `draft` towards `target` on the target's own samples; returns the distilled draft and a report.

    Args:
      target, draft: models of one vocabulary; the target is frozen.
      prompts: where the pool's prompts come from (training files).
      heldout: (prompts [B, P], key) of the held-out on-policy chunk the
        divergence is reported on before and after.
      key: PRNG key of the pool's generations.
      config: the run's settings.
      log: one line per event.
    """
    sampling = SamplingConfig(temperature=config.temperature)
    kind, batch_size, prompt_len = config.divergence, config.batch_size, config.prompt_tokens
    rng = np.random.default_rng(config.seed)
    chunk = make_generator(target, prompt_len, config.gen_tokens, sampling)

    def loss_fn(params, tokens_BxL, p_BxGxV, mask_BxG):
        return distill_loss(
            params, draft, tokens_BxL, p_BxGxV, mask_BxG, prompt_len=prompt_len, config=sampling, kind=kind
        )

    @jax.jit
    def evaluate(params, tokens_BxL, p_BxGxV, mask_BxG):
        q = sequence_logprobs(draft.replace(params=params), tokens_BxL, prompt_len, sampling)
        return divergence(p_BxGxV, q, kind, mask_BxG), divergence(p_BxGxV, q, "tv", mask_BxG)

    # The held-out chunk goes first: its call compiles the generator, so the pool chunks time warm.
    start = time.perf_counter()
    heldout_chunk = chunk(heldout[0], heldout[1])
    log(f"held-out on-policy chunk: {len(heldout[0])} sequences in {time.perf_counter() - start:.1f} s (compile incl.)")
    num_chunks = max(1, math.ceil(config.pool_size / config.gen_batch))
    chunks, times = [], []
    for _ in range(num_chunks):
        key, sub = jax.random.split(key)
        start = time.perf_counter()
        chunks.append(chunk(prompts.sample(config.gen_batch), sub))
        times.append(time.perf_counter() - start)
    pool = Pool(chunks)
    if len(pool) < batch_size:
        raise ValueError(f"--pool_size={len(pool)} is smaller than --batch_size={batch_size}")
    per_chunk = float(np.median(times))
    log(
        f"pool: {len(pool)} sequences ({num_chunks} chunks of {config.gen_batch}, {pool.p_logprobs.nbytes / 2**20:.0f} "
        f"MiB of target log-probs); {per_chunk:.2f} s per chunk"
    )

    # Calibrate, then schedule (as `jaxspec.training.train`): the refreshes' cost is spread over the steps.
    per_step = seconds_per_step(loss_fn, draft.params, lambda: pool.batch(rng, batch_size))
    refresh = config.refresh_every
    amortised = per_step + (per_chunk / refresh if refresh else 0.0)
    total_steps = steps_for_budget(config.minutes, amortised, config.min_steps)
    warmup = max(1, min(100, total_steps // 20))
    log(
        f"draft {draft.num_params() / 1e6:.2f}M params; {per_step * 1000:.0f} ms/step + {per_chunk:.2f} s refresh "
        f"every {refresh or 'never'} steps -> {total_steps} steps in {config.minutes:g} min"
    )
    # Fine-tuning from trained weights: a light weight decay (`train` uses 0.1 from scratch).
    schedule, optimizer = adamw_cosine(config.lr, total_steps, warmup, end_ratio=20, weight_decay=0.01)
    step = make_step(loss_fn, optimizer)
    params, opt_state = draft.params, optimizer.init(draft.params)
    before = [float(x) for x in evaluate(params, *map(jnp.asarray, heldout_chunk))]
    log(f"held-out before: {kind} {before[0]:.4f}, tv {before[1]:.4f} (1 - tv = {1 - before[1]:.3f})")

    start = time.perf_counter()
    losses, refreshes, fresh = [], 0, 0
    log_every = 20
    for i in range(1, total_steps + 1):
        params, opt_state, loss = step(params, opt_state, *pool.batch(rng, batch_size))
        if refresh and i % refresh == 0 and i < total_steps:
            key, sub = jax.random.split(key)
            pool.replace_oldest(chunk(prompts.sample(config.gen_batch), sub))
            refreshes += 1
            fresh += config.gen_batch
        if i % log_every == 0 or i == total_steps:
            losses.append(float(loss))
            elapsed = time.perf_counter() - start
            log(
                f"step {i}/{total_steps} {kind} {losses[-1]:.4f} lr {float(schedule(i)):.2e} "
                f"{fresh} fresh sequences ETA {elapsed / i * (total_steps - i) / 60:.1f} min"
            )
    seconds = time.perf_counter() - start
    after = [float(x) for x in evaluate(params, *map(jnp.asarray, heldout_chunk))]
    log(f"held-out after: {kind} {after[0]:.4f}, tv {after[1]:.4f} (1 - tv = {1 - after[1]:.3f})")
    report = dict(
        steps=total_steps,
        warmup_steps=warmup,
        seconds=seconds,
        ms_per_step_probe=1000 * per_step,
        seconds_per_chunk=per_chunk,
        distilled_tokens=total_steps * batch_size * config.gen_tokens,
        generated_sequences=len(pool) + fresh,
        pool_refreshes=refreshes,
        train_loss=float(np.mean(losses[-5:])) if losses else math.nan,
        heldout=dict(
            sequences=len(heldout[0]),
            divergence_before=before[0],
            divergence_after=after[0],
            tv_before=before[1],
            tv_after=after[1],
        ),
    )
    return draft.replace(params=params), report


def evaluate_speed(
    target: Model, drafts: dict[str, Model], prompts_NxP: np.ndarray, config: DistillConfig, log: Callable[[str], None]
) -> list[dict]:
    """Acceptance and speedup over autoregressive per eval temperature, batch 1, one prompt per call.

    Every draft and the autoregressive baseline decode each prompt once, calls
    interleaved (`time_interleaved`), warm-up excluded.

    Returns:
      One row per temperature: ar_ms and, per draft name, acceptance_<name>
      (`acceptance_summary`'s acceptance_rate), speedup_<name>, spec_ms_<name>.
    """
    rows = []
    n, k = config.eval_N, config.eval_K
    for t in config.eval_temperatures:
        results = {name: [] for name in drafts}

        def prompt(seed):
            return prompts_NxP[seed % len(prompts_NxP)][None]

        def spec(seed, name, t=t, results=results):
            res = speculative_sample(
                target,
                drafts[name],
                prompt(seed),
                key=jax.random.key(seed),
                max_new_tokens=n,
                num_draft_tokens=k,
                temperature=t,
            )
            if seed < len(prompts_NxP):  # warm-up calls use seeds >= 10_000
                results[name].append(res)
            return res

        methods = {
            "autoregressive": lambda seed, t=t: autoregressive_sample(
                target, prompt(seed), key=jax.random.key(seed), max_new_tokens=n, temperature=t
            )
        }
        methods.update({name: functools.partial(spec, name=name) for name in drafts})
        timings = time_interleaved(methods, len(prompts_NxP))
        ar_s = float(np.mean(timings["autoregressive"]["times_s"]))
        row = dict(temperature=t, K=k, N=n, prompts=len(prompts_NxP), ar_ms=1000 * ar_s)
        for name in drafts:
            spec_s = float(np.mean(timings[name]["times_s"]))
            row[f"acceptance_{name}"] = acceptance_summary(results[name])["acceptance_rate"]
            row[f"speedup_{name}"] = ar_s / spec_s
            row[f"spec_ms_{name}"] = 1000 * spec_s
        rows.append(row)
        log(
            f"T={t:g}: acceptance {row['acceptance_before']:.3f} -> {row['acceptance_after']:.3f}, "
            f"speedup {row['speedup_before']:.2f}x -> {row['speedup_after']:.2f}x"
        )
    return rows
