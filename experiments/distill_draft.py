"""Distils the draft towards the target on the target's own samples (DistillSpec).

After Zhou et al., "DistillSpec: Improving Speculative Decoding via Knowledge
Distillation" (arXiv 2310.08461): the draft is trained to match the target's
*processed* next-token distribution p (temperature T, what speculative sampling
preserves) on sequences the target itself generates at T (on-policy data), with
a chosen divergence D(p, q) per generated position. The acceptance rate of
speculative sampling at a position is 1 - TV(p, q), so lowering the divergence
on the target's own samples is what raises acceptance where it is used.

Data pool. Generating with the target is the costly part on CPU, so sequences
are not generated per step. A pool of `--pool_size` sequences (prompt of
`--prompt_tokens` tokens cut at a random offset of a random training-split file,
plus `--gen_tokens` tokens from `autoregressive_sample(target, ...)` at T) is
generated up front in chunks of `--gen_batch`; each step draws `--batch_size`
sequences from it uniformly without replacement. Every `--refresh_every` steps
the oldest chunk is regenerated from fresh prompts with a fresh key (FIFO), so
the pool turns over every `refresh_every * pool_size / gen_batch` steps and each
sequence is used about `refresh_every * batch_size / gen_batch` times. The
target is frozen, so its processed log-probabilities over a sequence are
computed once, when the sequence enters the pool (one full forward with a fresh
cache, as `training._loss` does), and stored with it (float32
[pool, gen_tokens, vocab]: 268 MB for 256 x 64 x 4096); a step then costs one
draft forward and backward only. The time budget (`--minutes`) covers the
steps and the refreshes: the step count is fitted to the measured cost of both.

Evaluation (after training, original and distilled draft side by side): on
`--eval_prompts` prompts from the held-out split, per eval temperature, the
acceptance rate of `speculative_sample` (accepted / drafted, summed over
prompts) and its measured speedup over `autoregressive_sample` (batch 1, calls
interleaved, warm-up excluded); also the divergence and TV on target samples
from held-out prompts at the distillation temperature.

    python experiments/distill_draft.py --minutes 10                # the shipped pair
    python experiments/distill_draft.py --divergence tv --temperature 0.6 --out_dir /tmp/d
"""

from __future__ import annotations

import functools
import json
import math
import os
import shutil
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import app, flags, logging

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
import training  # noqa: E402

import jaxspec  # noqa: E402
from jaxspec.models.model import Model  # noqa: E402
from jaxspec.sampling.processing import SamplingConfig, processed_logprobs  # noqa: E402

DIVERGENCES = ("fkl", "rkl", "tv")

TARGET = flags.DEFINE_string("target_model", harness.DEFAULT_TARGET, "Target (teacher) folder or hub id; frozen.")
DRAFT = flags.DEFINE_string("draft_model", harness.PLAIN_DRAFT, "Draft folder or hub id; distillation starts here.")
OUT_DIR = flags.DEFINE_string(
    "out_dir", os.path.join(harness.REPO, "checkpoints", "gpt2-draft-distilled"), "Where the distilled draft goes."
)
DIVERGENCE = flags.DEFINE_enum(
    "divergence", "fkl", list(DIVERGENCES), "fkl = KL(p||q), rkl = KL(q||p), tv = 0.5 sum |p - q| (p target, q draft)."
)
TEMPERATURE = flags.DEFINE_float(
    "temperature", 1.0, "Temperature of the on-policy samples and of p and q in the loss; must be > 0."
)
MINUTES = flags.DEFINE_float("minutes", 10, "Time budget of the training loop (steps + pool refreshes).")
MIN_STEPS = flags.DEFINE_integer("min_steps", 50, "Train at least this many steps, whatever the budget.", lower_bound=1)
BATCH = flags.DEFINE_integer("batch_size", 16, "Sequences per step, drawn from the pool.", lower_bound=1)
PROMPT_TOKENS = flags.DEFINE_integer("prompt_tokens", 32, "Prompt length (tokens) cut from files.", lower_bound=1)
GEN_TOKENS = flags.DEFINE_integer("gen_tokens", 64, "Tokens the target generates per sequence.", lower_bound=1)
POOL_SIZE = flags.DEFINE_integer("pool_size", 256, "Sequences in the on-policy pool.", lower_bound=1)
GEN_BATCH = flags.DEFINE_integer("gen_batch", 32, "Sequences generated per call (one pool chunk).", lower_bound=1)
REFRESH_EVERY = flags.DEFINE_integer(
    "refresh_every", 8, "Regenerate the oldest pool chunk every this many steps; 0 = never.", lower_bound=0
)
LR = flags.DEFINE_float("lr", 1e-3, "Peak learning rate (AdamW, warmup + cosine).", lower_bound=0.0)
SEED = flags.DEFINE_integer("seed", 0, "Seed for prompts, sampling keys and batches.")
EVAL_PROMPTS = flags.DEFINE_integer("eval_prompts", 16, "Held-out prompts for the evaluation.", lower_bound=1)
EVAL_TEMPERATURES = flags.DEFINE_list("eval_temperatures", ["0.6", "1.0"], "Temperatures of the evaluation.")
EVAL_K = flags.DEFINE_integer("eval_K", 4, "Draft tokens per round in the evaluation.", lower_bound=1)
EVAL_N = flags.DEFINE_integer("eval_N", 64, "New tokens per evaluation call.", lower_bound=1)

flags.register_validator(
    "temperature",
    lambda t: math.isfinite(t) and t > 0,
    message="--temperature must be a finite number > 0: distillation matches the target's sampling distribution "
    "at that temperature, and temperature 0 (greedy) has none",
)


def _is_temperature_list(values) -> bool:
    try:
        return all(math.isfinite(float(v)) and float(v) >= 0 for v in values)
    except ValueError:
        return False


flags.register_validator(
    "eval_temperatures", _is_temperature_list, message="--eval_temperatures must be numbers >= 0 (0 = greedy)"
)

_TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
    "chat_template.jinja",
)


def _log(message: str) -> None:
    print(time.strftime("%H:%M:%S"), message, flush=True)


# ----------------------------------------------------------------------------------------------------------------------
# The loss: small pure functions (unit-tested in tests/test_distill.py).


def pointwise_divergence(p_logprobs: jax.Array, q_logprobs: jax.Array, kind: str) -> jax.Array:
    """D(p, q) over the last (vocabulary) axis.

    Args:
      p_logprobs: float [..., V] target log-probabilities (-inf allowed where p = 0).
      q_logprobs: float [..., V] draft log-probabilities, same shape.
      kind: "fkl" (KL(p||q)), "rkl" (KL(q||p)) or "tv" (0.5 * sum |p - q|).

    Returns:
      float32 [...].
    """
    p_lp = jnp.asarray(p_logprobs, jnp.float32)
    q_lp = jnp.asarray(q_logprobs, jnp.float32)
    if kind == "tv":
        return 0.5 * jnp.sum(jnp.abs(jnp.exp(p_lp) - jnp.exp(q_lp)), axis=-1)
    if kind == "rkl":
        p_lp, q_lp = q_lp, p_lp
    elif kind != "fkl":
        raise ValueError(f"unknown divergence {kind!r}; expected one of {', '.join(DIVERGENCES)}")
    # KL(a||b) = sum_v a (log a - log b), with 0 log 0 = 0. The inner where keeps -inf out of both
    # branches, so no NaN reaches the gradient where a = 0.
    support = p_lp > -jnp.inf
    diff = jnp.where(support, p_lp - jnp.where(support, q_lp, 0.0), 0.0)
    return jnp.sum(jnp.where(support, jnp.exp(p_lp) * diff, 0.0), axis=-1)


def divergence(p_logprobs: jax.Array, q_logprobs: jax.Array, kind: str, mask: jax.Array | None = None) -> jax.Array:
    """Mean of `pointwise_divergence` over the positions where `mask` is true.

    Args:
      p_logprobs, q_logprobs: float [..., V].
      kind: "fkl", "rkl" or "tv".
      mask: bool [...] positions to average over (all when None).

    Returns:
      float32 scalar (0 when the mask is empty).
    """
    d = pointwise_divergence(p_logprobs, q_logprobs, kind)
    if mask is None:
        return jnp.mean(d)
    mask = jnp.asarray(mask, jnp.float32)
    return jnp.sum(d * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def sequence_logprobs(model: Model, tokens_BxL: jax.Array, prompt_len: int, config: SamplingConfig) -> jax.Array:
    """Processed log-probabilities of every token after the prompt, given its prefix.

    One full forward over tokens[:, :-1] with a fresh cache sized to it (as
    `training._loss`); the outputs at positions prompt_len - 1 .. L - 2 are the
    distributions the generated tokens L - G .. L - 1 were (or would be) drawn from.

    Returns:
      float32 [B, L - prompt_len, V].
    """
    inputs_BxT = tokens_BxL[:, :-1]
    cache = model.init_cache(inputs_BxT.shape[0], inputs_BxT.shape[1])
    logits_BxTxV, _ = model(inputs_BxT, cache)
    return processed_logprobs(logits_BxTxV[:, prompt_len - 1 :], config)


def distill_loss(
    params,
    draft: Model,
    tokens_BxL: jax.Array,
    p_logprobs_BxGxV: jax.Array,
    mask_BxG: jax.Array,
    *,
    prompt_len: int,
    config: SamplingConfig,
    kind: str,
) -> jax.Array:
    """Mean divergence between the frozen target's p and the draft's q over generated positions.

    Args:
      params: the draft's params (differentiated).
      draft: the draft `Model` (its own params are ignored).
      tokens_BxL: int32 prompt (prompt_len tokens) + generation (G tokens) per row.
      p_logprobs_BxGxV: the target's `sequence_logprobs` for these tokens (same config).
      mask_BxG: true at generated tokens that count (false at padding after a row's end).
      prompt_len: static prompt length; prompt positions are never in the loss.
      config: the processing of both p and q (what the draft will sample from).
      kind: "fkl", "rkl" or "tv".
    """
    q_logprobs_BxGxV = sequence_logprobs(draft.replace(params=params), tokens_BxL, prompt_len, config)
    return divergence(jax.lax.stop_gradient(p_logprobs_BxGxV), q_logprobs_BxGxV, kind, mask_BxG)


# ----------------------------------------------------------------------------------------------------------------------
# On-policy data.


class PromptSource:
    """Prompts of a fixed token length cut at random offsets of random files (tokenised once, lazily)."""

    def __init__(self, files: list[str], tokenizer, length: int, rng: np.random.Generator):
        self.files, self.tokenizer, self.length, self.rng = files, tokenizer, length, rng
        self._ids: dict[str, np.ndarray] = {}

    def _tokens(self, path: str) -> np.ndarray:
        if path not in self._ids:
            text = training.read_texts([path])[0]
            self._ids[path] = np.asarray(self.tokenizer(text, add_special_tokens=False)["input_ids"], np.int32)
        return self._ids[path]

    def sample(self, count: int) -> np.ndarray:
        prompts = []
        for _ in range(1000 * count):
            ids = self._tokens(self.files[self.rng.integers(len(self.files))])
            if len(ids) >= self.length:
                start = self.rng.integers(len(ids) - self.length + 1)
                prompts.append(ids[start : start + self.length])
                if len(prompts) == count:
                    return np.stack(prompts)
        raise ValueError(f"too few training files with >= {self.length} tokens; lower --prompt_tokens")


heldout_prompts = harness.heldout_prompts


def make_generator(target: Model, prompt_len: int, gen_tokens: int, config: SamplingConfig):
    """Returns chunk(prompts_BxP, key) -> (tokens [B, P+G], target log-probs [B, G, V], mask [B, G]) in numpy."""
    target_logprobs = jax.jit(functools.partial(sequence_logprobs, prompt_len=prompt_len, config=config))

    def chunk(prompts_BxP: np.ndarray, key: jax.Array):
        # No EOS stop: the evaluation (and benchmark.py) sample past EOS too, so this is the same policy.
        res = jaxspec.autoregressive_sample(
            target, prompts_BxP, key=key, max_new_tokens=gen_tokens, temperature=config.temperature
        )
        tokens_BxL = jnp.concatenate([jnp.asarray(prompts_BxP), res.tokens], axis=1)
        mask_BxG = jnp.arange(gen_tokens)[None, :] < res.lengths[:, None]
        p_BxGxV = target_logprobs(target, tokens_BxL)
        return np.asarray(tokens_BxL), np.asarray(p_BxGxV), np.asarray(mask_BxG)

    return chunk


class Pool:
    """A FIFO of on-policy chunks: sequences, the target's log-probs on them, and their masks."""

    def __init__(self, chunks: list[tuple[np.ndarray, np.ndarray, np.ndarray]]):
        self.tokens, self.p_logprobs, self.mask = (np.concatenate(parts) for parts in zip(*chunks))
        self.chunk_size = len(chunks[0][0])
        self.num_chunks = len(chunks)
        self.oldest = 0

    def __len__(self) -> int:
        return len(self.tokens)

    def replace_oldest(self, chunk) -> None:
        rows = slice(self.oldest * self.chunk_size, (self.oldest + 1) * self.chunk_size)
        self.tokens[rows], self.p_logprobs[rows], self.mask[rows] = chunk
        self.oldest = (self.oldest + 1) % self.num_chunks

    def batch(self, rng: np.random.Generator, size: int):
        rows = np.sort(rng.choice(len(self), size, replace=False))
        return jnp.asarray(self.tokens[rows]), jnp.asarray(self.p_logprobs[rows]), jnp.asarray(self.mask[rows])


# ----------------------------------------------------------------------------------------------------------------------
# Training and evaluation.


def distill(target: Model, draft: Model, prompts: PromptSource, heldout: tuple, key: jax.Array) -> tuple[Model, dict]:
    config = SamplingConfig(temperature=TEMPERATURE.value)
    kind, batch_size, prompt_len = DIVERGENCE.value, BATCH.value, PROMPT_TOKENS.value
    rng = np.random.default_rng(SEED.value)
    chunk = make_generator(target, prompt_len, GEN_TOKENS.value, config)
    loss_fn = functools.partial(distill_loss, draft=draft, prompt_len=prompt_len, config=config, kind=kind)

    @jax.jit
    def evaluate(params, tokens_BxL, p_BxGxV, mask_BxG):
        q = sequence_logprobs(draft.replace(params=params), tokens_BxL, prompt_len, config)
        return divergence(p_BxGxV, q, kind, mask_BxG), divergence(p_BxGxV, q, "tv", mask_BxG)

    # The held-out chunk goes first: its call compiles the generator, so the pool chunks time warm.
    start = time.perf_counter()
    heldout_chunk = chunk(heldout[0], heldout[1])
    _log(
        f"held-out on-policy chunk: {len(heldout[0])} sequences in {time.perf_counter() - start:.1f} s (compile incl.)"
    )
    num_chunks = max(1, math.ceil(POOL_SIZE.value / GEN_BATCH.value))
    chunks, times = [], []
    for _ in range(num_chunks):
        key, sub = jax.random.split(key)
        start = time.perf_counter()
        chunks.append(chunk(prompts.sample(GEN_BATCH.value), sub))
        times.append(time.perf_counter() - start)
    pool = Pool(chunks)
    if len(pool) < batch_size:
        raise ValueError(f"--pool_size={len(pool)} is smaller than --batch_size={batch_size}")
    per_chunk = float(np.median(times))
    _log(
        f"pool: {len(pool)} sequences ({num_chunks} chunks of {GEN_BATCH.value}, {pool.p_logprobs.nbytes / 2**20:.0f} "
        f"MiB of target log-probs); {per_chunk:.2f} s per chunk"
    )

    def make_step(optimizer):
        @jax.jit
        def step(params, opt_state, tokens_BxL, p_BxGxV, mask_BxG):
            loss, grads = jax.value_and_grad(loss_fn)(
                params, tokens_BxL=tokens_BxL, p_logprobs_BxGxV=p_BxGxV, mask_BxG=mask_BxG
            )
            updates, opt_state = optimizer.update(grads, opt_state, params)
            return optax.apply_updates(params, updates), opt_state, loss

        return step

    # Calibration, as training.train: time the compiled step, then fit the schedule to the budget.
    probe = optax.adamw(1e-4)
    probe_step, probe_state = make_step(probe), probe.init(draft.params)
    jax.block_until_ready(probe_step(draft.params, probe_state, *pool.batch(rng, batch_size)))  # compile
    start = time.perf_counter()
    for _ in range(5):
        jax.block_until_ready(probe_step(draft.params, probe_state, *pool.batch(rng, batch_size)))
    per_step = (time.perf_counter() - start) / 5
    refresh = REFRESH_EVERY.value
    amortised = per_step + (per_chunk / refresh if refresh else 0.0)
    total_steps = max(MIN_STEPS.value, int(MINUTES.value * 60 / amortised))
    warmup = max(1, min(100, total_steps // 20))
    _log(
        f"draft {draft.num_params() / 1e6:.2f}M params; {per_step * 1000:.0f} ms/step + {per_chunk:.2f} s refresh "
        f"every {refresh or 'never'} steps -> {total_steps} steps in {MINUTES.value:g} min"
    )
    schedule = optax.warmup_cosine_decay_schedule(0.0, LR.value, warmup, total_steps, end_value=LR.value / 20)
    # Fine-tuning from trained weights: a light weight decay (training.train uses 0.1 from scratch).
    optimizer = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(schedule, b2=0.99, weight_decay=0.01))
    step = make_step(optimizer)
    params, opt_state = draft.params, optimizer.init(draft.params)
    before = [float(x) for x in evaluate(params, *map(jnp.asarray, heldout_chunk))]
    _log(f"held-out before: {kind} {before[0]:.4f}, tv {before[1]:.4f} (1 - tv = {1 - before[1]:.3f})")

    start = time.perf_counter()
    losses, refreshes, fresh = [], 0, 0
    log_every = 20
    for i in range(1, total_steps + 1):
        params, opt_state, loss = step(params, opt_state, *pool.batch(rng, batch_size))
        if refresh and i % refresh == 0 and i < total_steps:
            key, sub = jax.random.split(key)
            pool.replace_oldest(chunk(prompts.sample(GEN_BATCH.value), sub))
            refreshes += 1
            fresh += GEN_BATCH.value
        if i % log_every == 0 or i == total_steps:
            losses.append(float(loss))
            elapsed = time.perf_counter() - start
            _log(
                f"step {i}/{total_steps} {kind} {losses[-1]:.4f} lr {float(schedule(i)):.2e} "
                f"{fresh} fresh sequences ETA {elapsed / i * (total_steps - i) / 60:.1f} min"
            )
    seconds = time.perf_counter() - start
    after = [float(x) for x in evaluate(params, *map(jnp.asarray, heldout_chunk))]
    _log(f"held-out after: {kind} {after[0]:.4f}, tv {after[1]:.4f} (1 - tv = {1 - after[1]:.3f})")
    report = dict(
        steps=total_steps,
        warmup_steps=warmup,
        seconds=seconds,
        ms_per_step_probe=1000 * per_step,
        seconds_per_chunk=per_chunk,
        distilled_tokens=total_steps * batch_size * GEN_TOKENS.value,
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


def evaluate_speed(target: Model, drafts: dict[str, Model], prompts_NxP: np.ndarray) -> list[dict]:
    """Acceptance and speedup over autoregressive per eval temperature, batch 1, one prompt per call."""
    rows = []
    n, k = EVAL_N.value, EVAL_K.value
    for t in (float(x) for x in EVAL_TEMPERATURES.value):
        results = {name: [] for name in drafts}

        def prompt(seed):
            return prompts_NxP[seed % len(prompts_NxP)][None]

        def spec(seed, name, t=t, results=results):
            res = jaxspec.speculative_sample(
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
            "autoregressive": lambda seed, t=t: jaxspec.autoregressive_sample(
                target, prompt(seed), key=jax.random.key(seed), max_new_tokens=n, temperature=t
            )
        }
        methods.update({name: functools.partial(spec, name=name) for name in drafts})
        timings = harness.time_interleaved(methods, len(prompts_NxP))
        ar_s = float(np.mean(timings["autoregressive"]["times_s"]))
        row = dict(temperature=t, K=k, N=n, prompts=len(prompts_NxP), ar_ms=1000 * ar_s)
        for name in drafts:
            accepted = sum(int(np.sum(np.asarray(r.num_accepted))) for r in results[name])
            drafted = sum(int(np.sum(np.asarray(r.num_drafted))) for r in results[name])
            spec_s = float(np.mean(timings[name]["times_s"]))
            row[f"acceptance_{name}"] = accepted / max(drafted, 1)
            row[f"speedup_{name}"] = ar_s / spec_s
            row[f"spec_ms_{name}"] = 1000 * spec_s
        rows.append(row)
        _log(
            f"T={t:g}: acceptance {row['acceptance_before']:.3f} -> {row['acceptance_after']:.3f}, "
            f"speedup {row['speedup_before']:.2f}x -> {row['speedup_after']:.2f}x"
        )
    return rows


def _model_card(draft: Model, report: dict, rows: list[dict]) -> str:
    d, h = report["distillation"], report["distillation"]["heldout"]
    lines = [
        f"# {os.path.basename(os.path.normpath(report['out_dir']))}",
        "",
        f"A {draft.config.model_type} draft ({draft.config.num_layers} layers, width {draft.config.hidden_size}, "
        f"{draft.config.num_heads} heads, vocab {draft.config.vocab_size}) distilled from `{report['draft_model']}` "
        f"towards the target `{report['target_model']}` by jaxspec's `experiments/distill_draft.py` "
        "(DistillSpec, arXiv 2310.08461: on-policy data generated by the target, loss on the processed "
        "distributions). Weights stored as float16.",
        "",
        f"- Command: `{report['command']}`",
        f"- Divergence: **{report['divergence']}** between the target's p and the draft's q, both at temperature "
        f"**{report['temperature']:g}**, averaged over generated positions (prompt positions masked).",
        f"- Data: prompts of {report['prompt_tokens']} tokens from training-split files, {report['gen_tokens']} tokens "
        f"generated by the target per sequence; pool of {report['pool_size']} sequences, one chunk of "
        f"{report['gen_batch']} regenerated every {report['refresh_every']} steps; "
        f"{d['generated_sequences']} sequences generated in all.",
        f"- Steps: {d['steps']} x {report['batch_size']} sequences x {report['gen_tokens']} positions = "
        f"{d['distilled_tokens']:,} distilled positions in {d['seconds'] / 60:.1f} min (peak lr {report['lr']:g}).",
        f"- Held-out on-policy ({h['sequences']} sequences at T={report['temperature']:g}): {report['divergence']} "
        f"{h['divergence_before']:.4f} -> **{h['divergence_after']:.4f}**, TV {h['tv_before']:.4f} -> "
        f"**{h['tv_after']:.4f}**.",
        f"- Held-out loss on Python text (the windows `train_pair.py` reports): target "
        f"{report['heldout_loss']['target']:.3f}, draft {report['heldout_loss']['before']:.3f} before and "
        f"**{report['heldout_loss']['after']:.3f}** after distillation (nats/token).",
        "",
        f"Held-out speculative sampling against the same target (K={EVAL_K.value}, N={EVAL_N.value}, batch 1, "
        f"{rows[0]['prompts'] if rows else 0} held-out prompts):",
        "",
        "| temperature | acceptance before | acceptance after | speedup before | speedup after |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['temperature']:g} | {r['acceptance_before']:.3f} | **{r['acceptance_after']:.3f}** | "
        f"{r['speedup_before']:.2f}x | **{r['speedup_after']:.2f}x** |"
        for r in rows
    ]
    return "\n".join(lines) + "\n"


def _record_in_training_summary(out: str, heldout_loss: float, command: str) -> None:
    """Adds the distilled draft's held-out loss to the shipped pair's training_summary.json, when there is one."""
    path = os.path.join(os.path.dirname(os.path.normpath(out)), "training_summary.json")
    if not os.path.exists(path):
        return
    with open(path) as fh:
        summary = json.load(fh)
    summary["models"][os.path.basename(os.path.normpath(out))] = dict(heldout_loss=heldout_loss, command=command)
    with open(path, "w") as fh:
        json.dump(summary, fh, indent=2)


def _save(draft: Model, out: str, report: dict, rows: list[dict]) -> None:
    os.makedirs(out, exist_ok=True)
    jaxspec.save_model(draft, out, dtype=jnp.float16)
    copied = []
    if os.path.isdir(DRAFT.value):
        for name in _TOKENIZER_FILES:
            if os.path.exists(os.path.join(DRAFT.value, name)):
                shutil.copy(os.path.join(DRAFT.value, name), out)
                copied.append(name)
    if not copied:  # a hub id: write the tokenizer as loaded
        jaxspec.load_tokenizer(DRAFT.value).save_pretrained(out)
    with open(os.path.join(out, "README.md"), "w") as fh:
        fh.write(_model_card(draft, report, rows))
    with open(os.path.join(out, "distill.json"), "w") as fh:
        json.dump(report, fh, indent=2)


def run() -> None:
    target = jaxspec.load_model(TARGET.value)
    draft = jaxspec.load_model(DRAFT.value)
    if target.vocab_size != draft.vocab_size:
        raise ValueError(
            f"the target's vocabulary ({target.vocab_size}) and the draft's ({draft.vocab_size}) differ; "
            "distillation needs one tokenizer"
        )
    needed = PROMPT_TOKENS.value + max(GEN_TOKENS.value, EVAL_N.value + EVAL_K.value)
    for role, model in (("target", target), ("draft", draft)):
        if needed > model.max_positions:
            raise ValueError(
                f"--prompt_tokens + max(--gen_tokens, --eval_N + --eval_K) = {needed} positions, more than the "
                f"{role}'s context of {model.max_positions}"
            )
    tokenizer = jaxspec.load_tokenizer(TARGET.value)
    train_files, _ = training.split_files(training.python_files())
    rng = np.random.default_rng(SEED.value + 1)
    prompts = PromptSource(train_files, tokenizer, PROMPT_TOKENS.value, rng)
    eval_prompts = heldout_prompts(tokenizer, max(EVAL_PROMPTS.value, GEN_BATCH.value), PROMPT_TOKENS.value)
    key = jax.random.key(SEED.value)
    key, heldout_key = jax.random.split(key)
    heldout = (eval_prompts[: GEN_BATCH.value], heldout_key)
    _log(
        f"distilling {DRAFT.value} towards {TARGET.value}: {DIVERGENCE.value} at T={TEMPERATURE.value:g}, "
        f"{len(train_files)} training files for prompts"
    )
    distilled, dist_report = distill(target, draft, prompts, heldout, key)
    rows = evaluate_speed(target, {"before": draft, "after": distilled}, eval_prompts[: EVAL_PROMPTS.value])
    # Held-out language-modelling loss on the windows train_pair.py reports (the model cards' table).
    _, heldout_files = training.split_files(training.python_files())
    heldout_stream = training.encode(tokenizer, training.read_texts(heldout_files))
    context = min(256, draft.max_positions)
    lm_loss = {
        name: training.heldout_loss(model, heldout_stream, context)
        for name, model in (("target", target), ("before", draft), ("after", distilled))
    }
    _log(
        f"held-out loss (nats/token): target {lm_loss['target']:.3f}, draft {lm_loss['before']:.3f} -> "
        f"{lm_loss['after']:.3f} distilled"
    )
    report = dict(
        command="python " + " ".join(sys.argv),
        target_model=TARGET.value,
        draft_model=DRAFT.value,
        divergence=DIVERGENCE.value,
        temperature=TEMPERATURE.value,
        minutes=MINUTES.value,
        batch_size=BATCH.value,
        prompt_tokens=PROMPT_TOKENS.value,
        gen_tokens=GEN_TOKENS.value,
        pool_size=POOL_SIZE.value,
        gen_batch=GEN_BATCH.value,
        refresh_every=REFRESH_EVERY.value,
        lr=LR.value,
        seed=SEED.value,
        out_dir=OUT_DIR.value,
        distillation=dist_report,
        heldout_loss=lm_loss,
        eval=rows,
        device=str(jax.devices()[0]),
    )
    _save(distilled, OUT_DIR.value, report, rows)
    _record_in_training_summary(OUT_DIR.value, lm_loss["after"], report["command"])
    again = jaxspec.load_model(OUT_DIR.value)  # the folder round-trips (fp16 storage)
    _log(f"saved {OUT_DIR.value} ({again.num_params() / 1e6:.2f}M params)")
    columns = [
        ("temperature", "T"),
        ("K", "K"),
        ("acceptance_before", "accept before"),
        ("acceptance_after", "accept after"),
        ("speedup_before", "speedup before"),
        ("speedup_after", "speedup after"),
        ("ar_ms", "AR ms"),
        ("spec_ms_before", "spec ms before"),
        ("spec_ms_after", "spec ms after"),
    ]
    print(
        harness.format_table(
            [{k: (f"{v:.3f}" if isinstance(v, float) else v) for k, v in r.items()} for r in rows], columns
        )
    )
    print(f"wrote {os.path.join(OUT_DIR.value, 'distill.json')}")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    logging.set_verbosity(logging.WARNING)  # one line per event: ours, not JAX's INFO chatter
    try:
        run()
    except (ValueError, FileNotFoundError, jaxspec.CheckpointError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    app.run(main)
