"""An optax training loop for small decoders, with its schedule fitted to a time budget.

The library samples; this module trains the small models the experiments
measure (the shipped pair) and serves distillation (`jaxspec.distillation`)
with the same pieces: the loss, the jitted step, and calibrate-then-schedule
(time the compiled step, then choose the step count that fills the budget).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxspec.models.config import DecoderConfig
from jaxspec.models.model import Model, init_model

# A logged window's throughput below this fraction of the probe's means another
# process is taking the cores: say so, since the schedule was fitted to the probe.
SLOW_FRACTION = 0.75

_HF_CLASSES = {
    "gpt2": ("GPT2Config", "GPT2LMHeadModel"),
    "opt": ("OPTConfig", "OPTForCausalLM"),
    "llama": ("LlamaConfig", "LlamaForCausalLM"),
}


def decoder_config(
    model_type: str, *, vocab_size: int, layers: int, width: int, heads: int, context: int, eos: int
) -> DecoderConfig:
    """A GPT-2, OPT or Llama config with transformers' defaults for every other field (so transformers loads it too).

    OPT's feed-forward width is 4 * width and its embeddings are not projected.
    Llama (RoPE, RMSNorm, SwiGLU) gets a SwiGLU width of 8/3 * width rounded up
    to a multiple of 32 (as Llama's ratio), as many KV heads as heads, and tied
    embeddings like the small GPT-2 and OPT models.
    """
    import transformers

    if model_type == "gpt2":
        shape = dict(n_embd=width, n_layer=layers, n_head=heads, n_positions=context)
    elif model_type == "opt":
        shape = dict(
            hidden_size=width,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            ffn_dim=4 * width,
            max_position_embeddings=context,
            word_embed_proj_dim=width,
            pad_token_id=eos,
        )
    elif model_type == "llama":
        shape = dict(
            hidden_size=width,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            num_key_value_heads=heads,
            intermediate_size=-(-8 * width // (3 * 32)) * 32,
            max_position_embeddings=context,
            tie_word_embeddings=True,
        )
    else:
        raise ValueError(f"unknown model_type {model_type!r}; expected one of {', '.join(_HF_CLASSES)}")
    config_class, architecture = _HF_CLASSES[model_type]
    hf = getattr(transformers, config_class)(vocab_size=vocab_size, bos_token_id=eos, eos_token_id=eos, **shape)
    hf = hf.to_dict()
    hf["architectures"] = [architecture]
    return DecoderConfig.from_hf_config(hf)


def next_token_logits(model: Model, tokens_BxL: jax.Array) -> jax.Array:
    """float [B, L - 1, V]: one full forward over tokens[:, :-1] with a fresh cache sized to it.

    Output t is the distribution of token t + 1 given tokens[:, : t + 1].
    """
    inputs_BxT = tokens_BxL[:, :-1]
    cache = model.init_cache(inputs_BxT.shape[0], inputs_BxT.shape[1])
    logits_BxTxV, _ = model(inputs_BxT, cache)
    return logits_BxTxV


def lm_loss(params, model: Model, batch_BxT1: jax.Array) -> jax.Array:
    """Mean next-token cross-entropy (nats) of `model` with `params` over a batch of windows."""
    logits = next_token_logits(model.replace(params=params), batch_BxT1)
    return optax.softmax_cross_entropy_with_integer_labels(logits, batch_BxT1[:, 1:]).mean()


def heldout_loss(model: Model, stream: np.ndarray, context: int, windows: int = 64, batch: int = 16) -> float:
    """Mean next-token loss (nats) on `windows` evenly spaced windows of `stream`."""
    starts = np.linspace(0, len(stream) - context - 2, windows).astype(np.int64)
    loss_fn = jax.jit(lambda params, batch_BxT1: lm_loss(params, model, batch_BxT1))
    losses = []
    for i in range(0, windows, batch):
        b = np.stack([stream[s : s + context + 1] for s in starts[i : i + batch]])
        losses.append(float(loss_fn(model.params, jnp.asarray(b))))
    return float(np.mean(losses))


def scale_residual_init(model: Model) -> Model:
    """GPT-2's init: the projections that write into the residual stream scaled by 1/sqrt(2 * layers)."""
    scale = (2 * model.config.num_layers) ** -0.5
    blocks = dict(model.params["blocks"])
    for name in ("attn_out", "fc_out"):
        blocks[name] = dict(blocks[name], kernel=blocks[name]["kernel"] * scale)
    return model.replace(params=dict(model.params, blocks=blocks))


def make_step(loss_fn: Callable, optimizer: optax.GradientTransformation) -> Callable:
    """jitted step(params, opt_state, *batch) -> (params, opt_state, loss) for loss_fn(params, *batch)."""

    @jax.jit
    def step(params, opt_state, *batch):
        loss, grads = jax.value_and_grad(loss_fn)(params, *batch)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return step


def seconds_per_step(loss_fn: Callable, params, next_batch: Callable[[], tuple], probe_steps: int = 5) -> float:
    """Seconds of one compiled training step: `probe_steps` timed steps after one that compiles.

    The probe uses a plain AdamW (its cost is the real optimizer's) and does
    not keep its updates; `next_batch()` gives each step's batch arguments.
    """
    probe = optax.adamw(1e-4)
    step = make_step(loss_fn, probe)
    state = probe.init(params)
    jax.block_until_ready(step(params, state, *next_batch()))  # compile
    start = time.perf_counter()
    for _ in range(probe_steps):
        jax.block_until_ready(step(params, state, *next_batch()))
    return (time.perf_counter() - start) / probe_steps


def steps_for_budget(minutes: float, seconds_per_step: float, min_steps: int) -> int:
    """The step count that fills `minutes` at `seconds_per_step` (at least `min_steps`).

    >>> steps_for_budget(1.0, 0.5, min_steps=10), steps_for_budget(0.01, 0.5, min_steps=10)
    (120, 10)
    """
    return max(min_steps, int(minutes * 60 / seconds_per_step))


def adamw_cosine(
    peak_lr: float, total_steps: int, warmup: int, *, end_ratio: float, weight_decay: float
) -> tuple[optax.Schedule, optax.GradientTransformation]:
    """(schedule, optimizer): linear warm-up to `peak_lr`, cosine to `peak_lr / end_ratio`;
    AdamW (b2 0.99) after a global-norm clip at 1.0."""
    schedule = optax.warmup_cosine_decay_schedule(0.0, peak_lr, warmup, total_steps, end_value=peak_lr / end_ratio)
    optimizer = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(schedule, b2=0.99, weight_decay=weight_decay))
    return schedule, optimizer


@dataclasses.dataclass
class TrainReport:
    steps: int
    tokens: int
    seconds: float
    tokens_per_second: float
    heldout_loss: float
    train_loss: float
    # Earlier runs this model continued from (steps, tokens, seconds, held-out loss, command each); empty for a
    # model trained from its random init.
    continued_from: tuple = ()


def train(
    config: DecoderConfig,
    train_stream: np.ndarray,
    heldout_stream: np.ndarray,
    *,
    minutes: float,
    batch_size: int,
    context: int,
    peak_lr: float,
    seed: int,
    log: Callable[[str], None],
    min_steps: int = 50,
    init: Model | None = None,
) -> tuple[Model, TrainReport]:
    """AdamW + warmup/cosine, with the schedule fitted to the measured throughput.

    A short calibration run times the compiled step; the step count is then
    set so that the cosine reaches its end when the time budget does. The
    recipe: AdamW (b2 0.99, weight decay 0.1), global-norm clip 1.0, 50 linear
    warm-up steps to `peak_lr`, cosine to `peak_lr / 10`, N(0, 0.02) init with
    the residual output projections scaled by 1/sqrt(2 * layers), no dropout.
    A log line warns when throughput falls well below the probe's (another
    process on the cores), because the run then gets fewer steps than planned.

    With `init` (a model of the same config), training continues from its
    weights, cast to float32, with a fresh optimizer state and schedule.
    """
    rng = np.random.default_rng(seed)
    if init is None:
        model = scale_residual_init(init_model(config, jax.random.key(seed)))
    else:
        if init.config != config:
            raise ValueError(f"cannot continue training: the init model's config {init.config} differs from {config}")
        model = init.replace(params=jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), init.params))

    def batch():
        starts = rng.integers(0, len(train_stream) - context - 1, batch_size)
        return jnp.asarray(np.stack([train_stream[s : s + context + 1] for s in starts]))

    loss_fn = lambda params, batch_BxT1: lm_loss(params, model, batch_BxT1)
    per_step = seconds_per_step(loss_fn, model.params, lambda: (batch(),))
    total_steps = steps_for_budget(minutes, per_step, min_steps)
    warmup = min(50, max(1, total_steps // 10))
    log(
        f"{model.num_params() / 1e6:.2f}M params; {per_step * 1000:.0f} ms/step "
        f"({batch_size * context / per_step:,.0f} tokens/s) -> {total_steps} steps in {minutes:.0f} min"
    )
    schedule, optimizer = adamw_cosine(peak_lr, total_steps, warmup, end_ratio=10, weight_decay=0.1)
    step = make_step(loss_fn, optimizer)
    params, opt_state = model.params, optimizer.init(model.params)
    start = time.perf_counter()
    recent = []
    window_start, window_step = start, 0
    probe_rate = batch_size * context / per_step
    for i in range(1, total_steps + 1):
        params, opt_state, loss = step(params, opt_state, batch())
        if i % 50 == 0 or i == total_steps:
            recent.append(float(loss))
            now = time.perf_counter()
            elapsed = now - start
            eta = elapsed / i * (total_steps - i)
            # The first window includes compiling the real step (the probe compiled a plain AdamW): not a slowdown.
            first_window = window_step == 0
            window_rate = (i - window_step) * batch_size * context / (now - window_start)
            window_start, window_step = now, i
            log(
                f"step {i}/{total_steps} loss {float(loss):.3f} lr {float(schedule(i)):.2e} "
                f"{i * batch_size * context / elapsed:,.0f} tok/s ETA {eta / 60:.1f} min"
            )
            if not first_window and window_rate < SLOW_FRACTION * probe_rate:
                log(
                    f"WARNING: {window_rate:,.0f} tok/s over the last steps is {window_rate / probe_rate:.0%} of the "
                    f"probe's {probe_rate:,.0f}: another process is using the cores, so this run will get fewer "
                    "steps than its schedule assumed. Keep the machine idle while training."
                )
    seconds = time.perf_counter() - start
    model = model.replace(params=params)
    report = TrainReport(
        steps=total_steps,
        tokens=total_steps * batch_size * context,
        seconds=seconds,
        tokens_per_second=total_steps * batch_size * context / seconds,
        heldout_loss=heldout_loss(model, heldout_stream, context),
        train_loss=float(np.mean(recent[-5:])) if recent else math.nan,
    )
    return model, report
