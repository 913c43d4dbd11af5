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

- the round's model calls together: `round_calls_cost_ms` times the 2-token
  draft step, K - 1 draft steps and the verify pass one after another in a
  jitted `fori_loop`, as a round makes them. On this CPU that has cost up to
  0.3-0.8 ms a round more than the sum of the calls timed one by one with the
  shipped pair (and at other times nothing): after the verify pass has
  streamed the target's 64 MB of weights through the 32 MB L3 cache, the
  draft's steps can run slower than back to back (the same excess followed a
  plain 64 MB read; BUILD_NOTES).

Then, for N new tokens with T tokens per round:

    time_AR   = prefill_target + N * (target_step + ar_overhead)
    time_spec = prefill_target + prefill_draft + (N / T) * (round_calls_K + round_overhead)

(`LoopCosts.isolated_round_calls_ms` is the textbook sum draft_first +
(K - 1) * draft_step + verify_K, kept for comparison.)

and predicted speedup = time_AR / time_spec, with T = (1 - a^(K+1)) / (1 - a)
for token-wise verification (a = `alpha_per_draft`), or the measured tokens
per round.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxspec.benchmarking.timing import best_seconds
from jaxspec.generation import autoregressive_sample, speculative_sample
from jaxspec.testing import random_model, tiny_config


@functools.partial(jax.jit, static_argnames="reps")
def _call_loop(model, cache, tokens_BxT, reps: int):
    def body(_, carry):
        cache, acc = carry
        logits, new_cache = model(tokens_BxT, cache)
        # Reset the length so every call runs at the same position.
        return new_cache.with_lengths(cache.lengths), acc + logits[0, -1, 0]

    return jax.lax.fori_loop(0, reps, body, (cache, jnp.float32(0)))


def call_loop(
    model, batch: int, chunk: int, position: int, reps: int, capacity: int | None = None
) -> Callable[[], tuple]:
    """A no-argument function that runs `reps` forwards of `chunk` tokens per row at cache `position`.

    The calls run inside one jitted `fori_loop` (the way the generation loops
    call the model), so Python dispatch is not counted; time it with
    `best_seconds` or `time_interleaved` and divide by `reps`. `capacity` is
    the cache's slots (default position + chunk + 1): attention reads every
    slot, so give the generation loop's capacity to cost its calls.
    """
    capacity = position + chunk + 1 if capacity is None else capacity
    if capacity < position + chunk:
        raise ValueError(f"capacity={capacity} has no room for {chunk} tokens at position {position}")
    cache = model.init_cache(batch, capacity).with_lengths(jnp.full((batch,), position, jnp.int32))
    tokens_BxT = jnp.ones((batch, chunk), jnp.int32)
    return lambda: _call_loop(model, cache, tokens_BxT, reps)


def call_cost_ms(model, batch: int, chunk: int, position: int, reps: int = 20, capacity: int | None = None) -> float:
    """Milliseconds of one forward of `chunk` tokens per row at cache `position` (best of 7 `call_loop`s).

    Best of 7, not 3: single timings here stretch by up to 2x now and then, and
    a verify cost measured once high skewed a whole sweep column's prediction.
    """
    return 1000 * best_seconds(call_loop(model, batch, chunk, position, reps, capacity), repeats=7) / reps


@functools.partial(jax.jit, static_argnames=("k", "reps"))
def _round_loop(target, draft, target_cache, draft_cache, k: int, reps: int):
    batch = target_cache.lengths.shape[0]

    def tokens(acc, length):
        # Each call's tokens depend on the previous call's logits (as in a round), so none can be
        # hoisted or reordered.
        return jnp.ones((batch, length), jnp.int32) + (acc > 1e30).astype(jnp.int32)

    def body(_, carry):
        target_cache, draft_cache, acc = carry
        logits, cache = draft(tokens(acc, 2), draft_cache)

        def step(carry, _):
            cache, acc = carry
            logits, cache = draft(tokens(acc, 1), cache)
            return (cache, acc + logits[0, -1, 0]), None

        (cache, acc), _ = jax.lax.scan(step, (cache, acc + logits[0, -1, 0]), None, length=k - 1)
        logits, new_target_cache = target(tokens(acc, k + 1), target_cache)
        acc = acc + logits[0, -1, 0]
        # Reset the lengths so every round runs at the same position.
        return new_target_cache.with_lengths(target_cache.lengths), cache.with_lengths(draft_cache.lengths), acc

    return jax.lax.fori_loop(0, reps, body, (target_cache, draft_cache, jnp.float32(0)))


def round_loop(target, draft, batch: int, k: int, position: int, capacity: int, reps: int) -> Callable[[], tuple]:
    """A no-argument function running `reps` rounds of model calls (see `round_calls_cost_ms`)."""
    if k < 1 or capacity < position + k + 1:
        raise ValueError(f"k={k} must be >= 1 and capacity={capacity} must hold {k + 1} tokens at position {position}")
    lengths = jnp.full((batch,), position, jnp.int32)
    target_cache = target.init_cache(batch, capacity).with_lengths(lengths)
    draft_cache = draft.init_cache(batch, capacity).with_lengths(lengths)
    return lambda: _round_loop(target, draft, target_cache, draft_cache, k, reps)


def round_calls_cost_ms(target, draft, batch: int, k: int, position: int, capacity: int, reps: int = 20) -> float:
    """Milliseconds of one round's model calls, made one after another as `speculative_sample` makes them.

    The draft's 2-token step, its K - 1 one-token steps (a `lax.scan`) and the
    target's (K + 1)-token verify pass, at cache `position` of caches with
    `capacity` slots, inside one jitted `fori_loop` (best of 7 loops of `reps`
    rounds). No sampling, accept kernel or emit: those are the loop's own
    work (`loop_overheads`).
    """
    loop = round_loop(target, draft, batch, k, position, capacity, reps)
    return 1000 * best_seconds(loop, repeats=7) / reps


def prefill_cost_ms(model, batch: int, prompt_tokens: int) -> float:
    """Milliseconds of the prompt prefill (all prompt tokens but the last) from an empty cache."""
    if prompt_tokens < 2:
        return 0.0
    tokens = jnp.ones((batch, prompt_tokens - 1), jnp.int32)
    fn = jax.jit(lambda m: m(tokens, m.init_cache(batch, prompt_tokens))[0][0, -1, 0])
    return 1000 * best_seconds(lambda: fn(model))


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


def textbook_round_ms(draft_first_ms: float, draft_step_ms: float, verify_ms: float, k: int) -> float:
    """A round's model calls as the textbook counts them: each call's isolated cost, summed.

    >>> textbook_round_ms(2.0, 1.0, 12.0, 3)
    16.0
    """
    return draft_first_ms + (k - 1) * draft_step_ms + verify_ms


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
    # The round's model calls timed together (`round_calls_cost_ms`); None: the isolated sum.
    round_calls_ms: float | None = None

    def isolated_round_calls_ms(self, k: int) -> float:
        """The textbook round: the model calls' costs timed one by one, summed."""
        return textbook_round_ms(self.draft_first_ms, self.draft_step_ms, self.verify_ms, k)

    def round_calls(self, k: int) -> float:
        """A round's model calls: timed together when measured, else the textbook sum."""
        return self.isolated_round_calls_ms(k) if self.round_calls_ms is None else self.round_calls_ms

    def round_ms(self, k: int) -> float:
        return self.round_calls(k) + self.round_overhead_ms

    def predicted_times_ms(self, n: int, k: int, tokens_per_round: float) -> tuple[float, float]:
        ar = self.target_prefill_ms + n * (self.target_step_ms + self.ar_overhead_ms)
        spec = self.target_prefill_ms + self.draft_prefill_ms + n / tokens_per_round * self.round_ms(k)
        return ar, spec

    def predicted_speedup(self, n: int, k: int, tokens_per_round: float) -> float:
        ar, spec = self.predicted_times_ms(n, k, tokens_per_round)
        return ar / spec


def tokens_per_round_tokenwise(alpha: float, k: int) -> float:
    """Expected tokens per round of token-wise verification with per-draft acceptance alpha.

    >>> tokens_per_round_tokenwise(0.5, 2), tokens_per_round_tokenwise(1.0, 4)
    (1.75, 5.0)
    """
    return float(k + 1) if alpha >= 1 else (1 - alpha ** (k + 1)) / (1 - alpha)


def _positions(prompt_tokens: int, max_new_tokens: int, ks) -> tuple[int, int, dict[int, int]]:
    """(the timed calls' cache position: mid-span, the autoregressive loop's capacity, {K: speculative capacity})."""
    position = prompt_tokens + max_new_tokens // 2
    # (At least room for the timed call itself: a loop of N = 1 never makes a call in mid-span.)
    ar_capacity = max(prompt_tokens + max_new_tokens - 1, position + 1)
    spec_capacity = {int(k): max(prompt_tokens + max_new_tokens + int(k) - 1, position + int(k) + 1) for k in ks}
    return position, ar_capacity, spec_capacity


def cost_loops(target, draft, batch: int, prompt_tokens: int, max_new_tokens: int, ks, reps: int = 5) -> dict:
    """The loops behind the prediction's two largest costs, to time among a sweep's runs.

    A long sweep sees the machine's speed drift (here a target step took
    3.4 ms in one hour and 4.3 ms in another); costs timed once before the
    runs then predict for conditions the runs did not see. Timed as extra
    methods of `time_interleaved`, these loops see the runs' conditions;
    `interleaved_costs` turns their times into costs.

    Returns:
      {"target_step": fn, "round_calls K=k": fn for each k}, each fn running
      `reps` calls at the positions and capacities of `model_costs`.
    """
    position, ar_capacity, spec_capacity = _positions(prompt_tokens, max_new_tokens, ks)
    loops = {"target_step": call_loop(target, batch, 1, position, reps, ar_capacity)}
    for k, capacity in spec_capacity.items():
        loops[f"round_calls K={k}"] = round_loop(target, draft, batch, k, position, capacity, reps)
    return loops


def interleaved_costs(times_s: dict[str, list[float]], reps: int = 5) -> dict:
    """{"target_step_ms", "round_calls_ms": {K: ms}} from the times of `cost_loops`' loops (the median run).

    >>> interleaved_costs({"target_step": [0.02, 0.03, 0.9], "round_calls K=4": [0.05, 0.05]})
    {'target_step_ms': 6.0, 'round_calls_ms': {4: 10.0}}
    """
    ms = {name: 1000 * float(np.median(t)) / reps for name, t in times_s.items()}
    rounds = {int(name.split("=")[1]): v for name, v in ms.items() if name.startswith("round_calls K=")}
    return dict(target_step_ms=ms["target_step"], round_calls_ms=rounds)


def model_costs(target, draft, batch: int, prompt_tokens: int, max_new_tokens: int, ks) -> dict:
    """The model-call costs (ms) the loops pay, at the middle of the generated span.

    Each call is timed with the cache capacity of the loop that makes it
    (`autoregressive_sample`: prompt + N - 1 slots; `speculative_sample`:
    prompt + N + K - 1, the draft's at the largest K).

    Returns:
      dict with target_step_ms, draft_step_ms, draft_first_ms (the 2-token
      catch-up step), target_prefill_ms, draft_prefill_ms, verify_ms {K: ms}
      and round_calls_ms {K: ms} (`round_calls_cost_ms`).
    """
    position, ar_capacity, spec_capacity = _positions(prompt_tokens, max_new_tokens, ks)
    draft_capacity = max(*spec_capacity.values(), position + 2)
    return dict(
        target_step_ms=call_cost_ms(target, batch, 1, position, capacity=ar_capacity),
        draft_step_ms=call_cost_ms(draft, batch, 1, position, capacity=draft_capacity),
        draft_first_ms=call_cost_ms(draft, batch, 2, position, capacity=draft_capacity),
        target_prefill_ms=prefill_cost_ms(target, batch, prompt_tokens),
        draft_prefill_ms=prefill_cost_ms(draft, batch, prompt_tokens),
        verify_ms={k: call_cost_ms(target, batch, k + 1, position, capacity=c) for k, c in spec_capacity.items()},
        round_calls_ms={k: round_calls_cost_ms(target, draft, batch, k, position, c) for k, c in spec_capacity.items()},
    )


def loop_overheads(
    target, draft, prompts: np.ndarray, *, max_new_tokens: int, num_draft_tokens: int, verify: str, **settings
) -> dict:
    """The loops' own work (ms): per token of `autoregressive_sample`, per round of `speculative_sample`.

    Both loops run on stand-ins of `target` and `draft` (same vocabulary and
    context, almost no compute); the stand-ins' own call costs, measured the
    same way as the real models' (their round's calls timed together), are
    subtracted.
    """
    batch, prompt_tokens = prompts.shape
    k = num_draft_tokens
    fake_target, fake_draft = stand_in(target, 0), stand_in(draft, 1)
    fake = model_costs(fake_target, fake_draft, batch, prompt_tokens, max_new_tokens, [k])
    ids = jnp.asarray(prompts)

    def ar():
        return autoregressive_sample(fake_target, ids, key=jax.random.key(0), max_new_tokens=max_new_tokens, **settings)

    def spec():
        return speculative_sample(
            fake_target,
            fake_draft,
            ids,
            key=jax.random.key(0),
            max_new_tokens=max_new_tokens,
            num_draft_tokens=k,
            verify=verify,
            **settings,
        )

    ar_ms = 1000 * best_seconds(lambda: ar().tokens)
    rounds = float(np.max(np.asarray(spec().num_rounds)))  # the loop runs until its slowest row ends
    spec_ms = 1000 * best_seconds(lambda: spec().tokens)
    ar_overhead = (ar_ms - fake["target_prefill_ms"]) / max_new_tokens - fake["target_step_ms"]
    fake_round_calls = fake["round_calls_ms"][k]
    round_overhead = (spec_ms - fake["target_prefill_ms"] - fake["draft_prefill_ms"]) / rounds - fake_round_calls
    return dict(ar_overhead_ms=max(ar_overhead, 0.0), round_overhead_ms=max(round_overhead, 0.0))


def loop_costs(models: dict, overheads: dict, k: int) -> LoopCosts:
    """A `LoopCosts` from `model_costs` and `loop_overheads` results for draft length k."""
    fields = {f: models[f] for f in ("target_step_ms", "draft_step_ms", "draft_first_ms")}
    fields.update(target_prefill_ms=models["target_prefill_ms"], draft_prefill_ms=models["draft_prefill_ms"])
    round_calls = models.get("round_calls_ms", {}).get(k)
    return LoopCosts(verify_ms=models["verify_ms"][k], **fields, **overheads, round_calls_ms=round_calls)
