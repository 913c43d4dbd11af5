"""Per-call costs of the generation loops, measured in isolation, and the speedup they predict.

The textbook prediction (Leviathan et al.) counts only model calls: a round is
K draft steps plus one verify pass. The loops also do their own work each
round: the draft's first step feeds 2 tokens (the cache catch-up), the K + 1
target positions and the K draft positions are processed (temperature, top-k,
top-p) and sampled, the accept kernel runs, tokens are emitted, and the
`while_loop` itself costs something. On a CPU with a 6-layer target that work
is not negligible, so it is measured too:

- model calls: `call_cost_ms` times one forward of `chunk` tokens at a fixed
  cache position inside a jitted `fori_loop` (no Python dispatch);
- the loops' own work: the real `autoregressive_sample` / `speculative_sample`
  run on *stand-in* models of the same vocabulary and context but almost no
  compute (1 layer, width 8); their measured time minus the stand-ins' own
  call costs is the per-token (autoregressive) or per-round (speculative)
  overhead of the loop.

Then, for N new tokens with T tokens per round:

    time_AR   = prefill_target + N * (target_step + ar_overhead)
    time_spec = prefill_target + prefill_draft
                + (N / T) * (draft_first + (K - 1) * draft_step + verify_K + round_overhead)

and predicted speedup = time_AR / time_spec, with T = (1 - a^(K+1)) / (1 - a)
for token-wise verification (a = accepted / (accepted + rejections)), or the
measured tokens per round.
"""

from __future__ import annotations

import dataclasses
import time

import jax
import jax.numpy as jnp
import numpy as np

import jaxspec
from jaxspec.testing import random_model, tiny_config


def _best_seconds(fn, repeats: int = 3) -> float:
    jax.block_until_ready(fn())  # compile
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        best = min(best, time.perf_counter() - start)
    return best


def call_cost_ms(model, batch: int, chunk: int, position: int, reps: int = 20) -> float:
    """Milliseconds of one forward of `chunk` tokens per row at cache `position`.

    Timed as `reps` calls inside one jitted fori_loop (the way the generation
    loops call the model), so Python dispatch is not counted.
    """
    cache = model.init_cache(batch, position + chunk + 1).with_lengths(jnp.full((batch,), position, jnp.int32))
    tokens = jnp.ones((batch, chunk), jnp.int32)

    @jax.jit
    def loop(model, cache):
        def body(_, carry):
            cache, acc = carry
            logits, new_cache = model(tokens, cache)
            # Reset the length so every call runs at the same position.
            return new_cache.with_lengths(cache.lengths), acc + logits[0, -1, 0]

        return jax.lax.fori_loop(0, reps, body, (cache, jnp.float32(0)))

    return 1000 * _best_seconds(lambda: loop(model, cache)) / reps


def prefill_cost_ms(model, batch: int, prompt_tokens: int) -> float:
    """Milliseconds of the prompt prefill (all prompt tokens but the last) from an empty cache."""
    if prompt_tokens < 2:
        return 0.0
    tokens = jnp.ones((batch, prompt_tokens - 1), jnp.int32)
    fn = jax.jit(lambda m: m(tokens, m.init_cache(batch, prompt_tokens))[0][0, -1, 0])
    return 1000 * _best_seconds(lambda: fn(model))


def stand_in(model, seed: int):
    """A model of `model`'s vocabulary and context with almost no compute (1 layer, width 8)."""
    config = tiny_config(
        "gpt2",
        vocab_size=model.vocab_size,
        hidden_size=8,
        num_layers=1,
        num_heads=1,
        max_positions=model.max_positions,
    )
    return random_model(config, seed)


@dataclasses.dataclass
class LoopCosts:
    """Measured costs (milliseconds) of one configuration (batch, K, settings, rule)."""

    target_step_ms: float
    verify_ms: float
    draft_step_ms: float
    draft_first_ms: float
    target_prefill_ms: float
    draft_prefill_ms: float
    ar_overhead_ms: float
    round_overhead_ms: float

    def round_ms(self, k: int) -> float:
        return self.draft_first_ms + (k - 1) * self.draft_step_ms + self.verify_ms + self.round_overhead_ms

    def predicted_times_ms(self, n: int, k: int, tokens_per_round: float) -> tuple[float, float]:
        ar = self.target_prefill_ms + n * (self.target_step_ms + self.ar_overhead_ms)
        spec = self.target_prefill_ms + self.draft_prefill_ms + n / tokens_per_round * self.round_ms(k)
        return ar, spec

    def predicted_speedup(self, n: int, k: int, tokens_per_round: float) -> float:
        ar, spec = self.predicted_times_ms(n, k, tokens_per_round)
        return ar / spec


def acceptance_by_position(histogram: np.ndarray) -> list[float]:
    """Per draft position i, kept / judged, from a round histogram [K + 1] (rounds that kept j drafts)."""
    judged = np.cumsum(np.asarray(histogram)[::-1])[::-1]  # rounds that kept >= j drafts, j = 0..K
    return (judged[1:] / np.maximum(judged[:-1], 1)).tolist()


def acceptance_summary(results: list) -> dict:
    """Acceptance figures of `SpeculativeResult`s, summed over every run and row (one definition for all scripts).

    Rejections are the rounds that kept fewer than K drafts, as `SpeculativeResult.num_rejections`.
    """
    total = lambda field: int(sum(np.asarray(getattr(r, field)).sum() for r in results))
    histogram = sum(np.asarray(r.round_histogram).sum(axis=0) for r in results)  # [K + 1]
    rounds, accepted, drafted, generated = (total(f) for f in ("num_rounds", "num_accepted", "num_drafted", "lengths"))
    rejections = int(histogram[:-1].sum())
    return dict(
        acceptance_rate=accepted / max(drafted, 1),
        alpha_per_draft=accepted / max(accepted + rejections, 1),
        acceptance_by_position=acceptance_by_position(histogram),
        tokens_per_target_call=generated / max(rounds, 1),
        rounds=rounds,
        accepted=accepted,
        rejections=rejections,
        drafted=drafted,
    )


def tokens_per_round_tokenwise(alpha: float, k: int) -> float:
    """Expected tokens per round of token-wise verification with per-draft acceptance alpha."""
    return float(k + 1) if alpha >= 1 else (1 - alpha ** (k + 1)) / (1 - alpha)


def model_costs(target, draft, batch: int, prompt_tokens: int, max_new_tokens: int, ks) -> dict:
    """The model-call costs (ms) the loops pay, at the middle of the generated span.

    Returns:
      dict with target_step_ms, draft_step_ms, draft_first_ms (the 2-token
      catch-up step), target_prefill_ms, draft_prefill_ms, and verify_ms {K: ms}.
    """
    position = prompt_tokens + max_new_tokens // 2
    return dict(
        target_step_ms=call_cost_ms(target, batch, 1, position),
        draft_step_ms=call_cost_ms(draft, batch, 1, position),
        draft_first_ms=call_cost_ms(draft, batch, 2, position),
        target_prefill_ms=prefill_cost_ms(target, batch, prompt_tokens),
        draft_prefill_ms=prefill_cost_ms(draft, batch, prompt_tokens),
        verify_ms={int(k): call_cost_ms(target, batch, int(k) + 1, position) for k in ks},
    )


def loop_overheads(
    target, draft, prompts: np.ndarray, *, max_new_tokens: int, num_draft_tokens: int, verify: str, **settings
) -> dict:
    """The loops' own work (ms): per token of `autoregressive_sample`, per round of `speculative_sample`.

    Both loops run on stand-ins of `target` and `draft` (same vocabulary and
    context, almost no compute); the stand-ins' own call costs, measured the
    same way as the real models', are subtracted.
    """
    batch, prompt_tokens = prompts.shape
    k = num_draft_tokens
    fake_target, fake_draft = stand_in(target, 0), stand_in(draft, 1)
    fake = model_costs(fake_target, fake_draft, batch, prompt_tokens, max_new_tokens, [k])
    ids = jnp.asarray(prompts)

    def ar():
        return jaxspec.autoregressive_sample(
            fake_target, ids, key=jax.random.key(0), max_new_tokens=max_new_tokens, **settings
        ).tokens

    def spec():
        return jaxspec.speculative_sample(
            fake_target,
            fake_draft,
            ids,
            key=jax.random.key(0),
            max_new_tokens=max_new_tokens,
            num_draft_tokens=k,
            verify=verify,
            **settings,
        )

    ar_ms = 1000 * _best_seconds(ar)
    rounds = float(np.max(np.asarray(spec().num_rounds)))  # the loop runs until its slowest row ends
    spec_ms = 1000 * _best_seconds(lambda: spec().tokens)
    ar_overhead = (ar_ms - fake["target_prefill_ms"]) / max_new_tokens - fake["target_step_ms"]
    round_models = fake["draft_first_ms"] + (k - 1) * fake["draft_step_ms"] + fake["verify_ms"][k]
    round_overhead = (spec_ms - fake["target_prefill_ms"] - fake["draft_prefill_ms"]) / rounds - round_models
    return dict(ar_overhead_ms=max(ar_overhead, 0.0), round_overhead_ms=max(round_overhead, 0.0))


def loop_costs(models: dict, overheads: dict, k: int) -> LoopCosts:
    """A `LoopCosts` from `model_costs` and `loop_overheads` results for draft length k."""
    fields = {f: models[f] for f in ("target_step_ms", "draft_step_ms", "draft_first_ms")}
    fields.update(target_prefill_ms=models["target_prefill_ms"], draft_prefill_ms=models["draft_prefill_ms"])
    return LoopCosts(verify_ms=models["verify_ms"][k], **fields, **overheads)
