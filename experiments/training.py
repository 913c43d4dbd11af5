"""Corpus, tokenizer and an optax training loop for the shipped model pair.

Kept out of the `jaxspec` package on purpose: the library samples, it does not
train. Used by `train_pair.py` (and reusable for distillation experiments).
"""

from __future__ import annotations

import dataclasses
import functools
import glob
import hashlib
import math
import os
import sysconfig
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxspec
from jaxspec.models.config import DecoderConfig
from jaxspec.models.model import Model, init_model

EOS = "<|endoftext|>"


def python_files(extra_dirs=()) -> list[str]:
    """The interpreter's standard-library .py files (no site-packages) plus `extra_dirs`."""
    stdlib = sysconfig.get_paths()["stdlib"]
    files = [f for f in glob.glob(os.path.join(stdlib, "**", "*.py"), recursive=True) if "site-packages" not in f]
    for d in extra_dirs:
        files += glob.glob(os.path.join(d, "**", "*.py"), recursive=True)
    return sorted(set(files))


def split_files(files: list[str], heldout_percent: int = 5) -> tuple[list[str], list[str]]:
    """Deterministic split by a hash of each file's path below its root."""
    train, heldout = [], []
    for f in files:
        key = os.path.relpath(f, os.path.dirname(os.path.dirname(f)))
        bucket = int(hashlib.sha1(key.encode()).hexdigest(), 16) % 100
        (heldout if bucket < heldout_percent else train).append(f)
    if not heldout and len(train) > 1:  # tiny corpora (smoke runs) still get a held-out file
        heldout.append(train.pop())
    return train, heldout


def read_texts(files: list[str]) -> list[str]:
    texts = []
    for f in files:
        with open(f, encoding="utf-8", errors="replace") as fh:
            texts.append(fh.read())
    return texts


def train_tokenizer(texts: list[str], vocab_size: int, folder: str):
    """Byte-level BPE (as GPT-2) trained on `texts`, saved for AutoTokenizer."""
    import tokenizers
    import transformers

    bpe = tokenizers.ByteLevelBPETokenizer()
    bpe.train_from_iterator(texts, vocab_size=vocab_size, min_frequency=2, special_tokens=[EOS], show_progress=False)
    tok = transformers.PreTrainedTokenizerFast(
        tokenizer_object=bpe._tokenizer, bos_token=EOS, eos_token=EOS, unk_token=EOS, pad_token=EOS
    )
    tok.save_pretrained(folder)
    return jaxspec.load_tokenizer(folder)


def encode(tokenizer, texts: list[str]) -> np.ndarray:
    """All texts as one int32 stream, documents separated by EOS."""
    eos = tokenizer.convert_tokens_to_ids(EOS)
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    return np.concatenate([np.asarray(x + [eos], np.int32) for x in ids])


def gpt2_config(vocab_size: int, layers: int, width: int, heads: int, context: int, eos: int) -> DecoderConfig:
    import transformers

    hf = transformers.GPT2Config(
        vocab_size=vocab_size,
        n_embd=width,
        n_layer=layers,
        n_head=heads,
        n_positions=context,
        bos_token_id=eos,
        eos_token_id=eos,
    ).to_dict()
    hf["architectures"] = ["GPT2LMHeadModel"]
    return DecoderConfig.from_hf_config(hf)


def opt_config(vocab_size: int, layers: int, width: int, heads: int, context: int, eos: int) -> DecoderConfig:
    import transformers

    hf = transformers.OPTConfig(
        vocab_size=vocab_size,
        hidden_size=width,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        ffn_dim=4 * width,
        max_position_embeddings=context,
        word_embed_proj_dim=width,
        bos_token_id=eos,
        eos_token_id=eos,
        pad_token_id=eos,
    ).to_dict()
    hf["architectures"] = ["OPTForCausalLM"]
    return DecoderConfig.from_hf_config(hf)


def _loss(params, model: Model, batch_BxT1):
    inputs, targets = batch_BxT1[:, :-1], batch_BxT1[:, 1:]
    cache = model.init_cache(inputs.shape[0], inputs.shape[1])
    logits, _ = model.replace(params=params)(inputs, cache)
    return optax.softmax_cross_entropy_with_integer_labels(logits, targets).mean()


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


def heldout_loss(model: Model, stream: np.ndarray, context: int, windows: int = 64, batch: int = 16) -> float:
    """Mean next-token loss (nats) on `windows` evenly spaced windows of `stream`."""
    starts = np.linspace(0, len(stream) - context - 2, windows).astype(np.int64)
    loss_fn = jax.jit(functools.partial(_loss, model=model))
    losses = []
    for i in range(0, windows, batch):
        b = np.stack([stream[s : s + context + 1] for s in starts[i : i + batch]])
        losses.append(float(loss_fn(model.params, batch_BxT1=jnp.asarray(b))))
    return float(np.mean(losses))


def scale_residual_init(model: Model) -> Model:
    """GPT-2's init: the projections that write into the residual stream scaled by 1/sqrt(2 * layers)."""
    scale = (2 * model.config.num_layers) ** -0.5
    blocks = dict(model.params["blocks"])
    for name in ("attn_out", "fc_out"):
        blocks[name] = dict(blocks[name], kernel=blocks[name]["kernel"] * scale)
    return model.replace(params=dict(model.params, blocks=blocks))


# A logged window's throughput below this fraction of the probe's means another
# process is taking the cores: say so, since the schedule was fitted to the probe.
SLOW_FRACTION = 0.75


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
    log,
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

    def make_step(optimizer):
        @jax.jit
        def step(params, opt_state, batch_BxT1):
            loss, grads = jax.value_and_grad(_loss)(params, model, batch_BxT1)
            updates, opt_state = optimizer.update(grads, opt_state, params)
            return optax.apply_updates(params, updates), opt_state, loss

        return step

    probe = optax.adamw(1e-4)
    probe_step = make_step(probe)
    state = probe.init(model.params)
    jax.block_until_ready(probe_step(model.params, state, batch()))  # compile
    t0 = time.perf_counter()
    for _ in range(5):
        jax.block_until_ready(probe_step(model.params, state, batch()))
    per_step = (time.perf_counter() - t0) / 5
    total_steps = max(min_steps, int(minutes * 60 / per_step))
    warmup = min(50, max(1, total_steps // 10))
    log(
        f"{model.num_params() / 1e6:.2f}M params; {per_step * 1000:.0f} ms/step "
        f"({batch_size * context / per_step:,.0f} tokens/s) -> {total_steps} steps in {minutes:.0f} min"
    )
    schedule = optax.warmup_cosine_decay_schedule(0.0, peak_lr, warmup, total_steps, end_value=peak_lr / 10)
    optimizer = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(schedule, b2=0.99, weight_decay=0.1))
    step = make_step(optimizer)
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
            window_rate = (i - window_step) * batch_size * context / (now - window_start)
            window_start, window_step = now, i
            log(
                f"step {i}/{total_steps} loss {float(loss):.3f} lr {float(schedule(i)):.2e} "
                f"{i * batch_size * context / elapsed:,.0f} tok/s ETA {eta / 60:.1f} min"
            )
            if window_rate < SLOW_FRACTION * probe_rate:
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
