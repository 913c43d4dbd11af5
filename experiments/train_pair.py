"""Trains the shipped default pair: a GPT-2 target, a GPT-2 draft and an OPT draft.

Corpus: the running interpreter's standard library (.py files), optionally more
folders; deterministic 95/5 train/held-out split by path hash. Tokenizer: a
byte-level BPE trained on the training split. Models: trained with optax
(AdamW, warmup + cosine fitted to the measured throughput and a time budget),
saved with `jaxspec.save_model` (fp16 storage) plus tokenizer files and a model
card, so both jaxspec and transformers load each folder offline.

    python experiments/train_pair.py                      # ~80 min on 2 CPU cores
    python experiments/train_pair.py --target_minutes 2 --draft_minutes 1 --out_dir /tmp/pair  # smoke run
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time

import jax.numpy as jnp
from absl import app, flags, logging

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import training  # noqa: E402

import jaxspec  # noqa: E402

OUT_DIR = flags.DEFINE_string("out_dir", "checkpoints", "Where the three model folders are written.")
EXTRA_DIRS = flags.DEFINE_list("extra_dirs", [], "More folders of .py files for the corpus (e.g. site-packages).")
VOCAB = flags.DEFINE_integer("vocab_size", 4096, "BPE vocabulary size.")
CONTEXT = flags.DEFINE_integer("context", 256, "Training context and max_position_embeddings.")
BATCH = flags.DEFINE_integer("batch_size", 16, "Sequences per step.")
TARGET_MINUTES = flags.DEFINE_float("target_minutes", 60, "Training time budget of the target.")
DRAFT_MINUTES = flags.DEFINE_float("draft_minutes", 7, "Training time budget of each draft.")
TARGET_SHAPE = flags.DEFINE_list("target_shape", ["6", "256", "4"], "Target layers,width,heads.")
DRAFT_SHAPE = flags.DEFINE_list("draft_shape", ["2", "96", "3"], "Draft layers,width,heads (GPT-2 and OPT).")
SEED = flags.DEFINE_integer("seed", 0, "Seed for init and batches.")
MIN_STEPS = flags.DEFINE_integer("min_steps", 50, "Train at least this many steps, whatever the budget.")
MAX_FILES = flags.DEFINE_integer("max_files", 0, "Use only this many files (0 = all); for smoke runs.")


def _log(message: str) -> None:
    print(time.strftime("%H:%M:%S"), message, flush=True)


def _model_card(name: str, config, report: training.TrainReport, data: dict, command: str, others: dict) -> str:
    lines = [
        f"# {name}",
        "",
        f"A {config.model_type} model ({config.num_layers} layers, width {config.hidden_size}, "
        f"{config.num_heads} heads, context {config.max_positions}, vocab {config.vocab_size}) trained by jaxspec's "
        "`experiments/train_pair.py` on Python source code. Weights stored as float16.",
        "",
        f"- Training command: `{command}`",
        f"- Data: {data['train_files']} standard-library .py files ({data['train_tokens']:,} tokens) for training, "
        f"{data['heldout_files']} held-out files ({data['heldout_tokens']:,} tokens), split by path hash.",
        f"- Steps: {report.steps} x {data['batch_size']} x {data['context']} tokens = {report.tokens:,} tokens "
        f"in {report.seconds / 60:.1f} min ({report.tokens_per_second:,.0f} tokens/s on 2 CPU cores).",
        f"- Held-out loss: **{report.heldout_loss:.3f} nats/token**; final train loss {report.train_loss:.3f}.",
        "",
        "Held-out losses of the shipped pair (same held-out windows):",
        "",
        "| model | held-out loss (nats/token) |",
        "|---|---|",
    ]
    lines += [f"| {k} | {v:.3f} |" for k, v in others.items()]
    return "\n".join(lines) + "\n"


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)  # one line per event: ours, not JAX's INFO chatter
    out = OUT_DIR.value
    os.makedirs(out, exist_ok=True)
    files = training.python_files(EXTRA_DIRS.value)
    if MAX_FILES.value:
        files = files[: MAX_FILES.value]
    train_files, heldout_files = training.split_files(files)
    _log(f"corpus: {len(train_files)} train files, {len(heldout_files)} held-out files")
    train_texts = training.read_texts(train_files)
    tok_dir = os.path.join(out, "_tokenizer")
    tokenizer = training.train_tokenizer(train_texts, VOCAB.value, tok_dir)
    eos = tokenizer.convert_tokens_to_ids(training.EOS)
    train_stream = training.encode(tokenizer, train_texts)
    heldout_stream = training.encode(tokenizer, training.read_texts(heldout_files))
    _log(f"tokenizer: vocab {len(tokenizer)}; {len(train_stream):,} train tokens, {len(heldout_stream):,} held-out")
    data = dict(
        train_files=len(train_files),
        heldout_files=len(heldout_files),
        train_tokens=len(train_stream),
        heldout_tokens=len(heldout_stream),
        batch_size=BATCH.value,
        context=CONTEXT.value,
    )
    tl, tw, th = (int(x) for x in TARGET_SHAPE.value)
    dl, dw, dh = (int(x) for x in DRAFT_SHAPE.value)
    specs = {
        "gpt2-target": (
            training.gpt2_config(len(tokenizer), tl, tw, th, CONTEXT.value, eos),
            TARGET_MINUTES.value,
            1.5e-3,
        ),
        "gpt2-draft": (
            training.gpt2_config(len(tokenizer), dl, dw, dh, CONTEXT.value, eos),
            DRAFT_MINUTES.value,
            3e-3,
        ),
        "opt-draft": (
            training.opt_config(len(tokenizer), dl, dw, dh, CONTEXT.value, eos),
            DRAFT_MINUTES.value,
            3e-3,
        ),
    }
    models, reports = {}, {}
    for i, (name, (config, minutes, lr)) in enumerate(specs.items()):
        _log(f"training {name} ({i + 1}/{len(specs)})")
        models[name], reports[name] = training.train(
            config,
            train_stream,
            heldout_stream,
            minutes=minutes,
            batch_size=BATCH.value,
            context=CONTEXT.value,
            peak_lr=lr,
            min_steps=MIN_STEPS.value,
            seed=SEED.value + i,
            log=_log,
        )
        _log(f"{name}: held-out loss {reports[name].heldout_loss:.3f} nats/token")
    command = "python " + " ".join(sys.argv)
    losses = {name: r.heldout_loss for name, r in reports.items()}
    for name, model in models.items():
        folder = os.path.join(out, name)
        jaxspec.save_model(model, folder, dtype=jnp.float16)
        for f in os.listdir(tok_dir):
            shutil.copy(os.path.join(tok_dir, f), folder)
        with open(os.path.join(folder, "README.md"), "w") as fh:
            fh.write(_model_card(name, model.config, reports[name], data, command, losses))
        # Check the folder round-trips as the stored fp16 weights.
        again = jaxspec.load_model(folder)
        _log(
            f"saved {folder} ({model.num_params() / 1e6:.2f}M params); reloaded held-out loss "
            f"{training.heldout_loss(again, heldout_stream, CONTEXT.value):.3f}"
        )
    shutil.rmtree(tok_dir)
    summary = {name: dict(vars(r), config=models[name].config.hf_config) for name, r in reports.items()}
    with open(os.path.join(out, "training_summary.json"), "w") as fh:
        json.dump(dict(data=data, models=summary, command=command), fh, indent=2)
    _log("done")


if __name__ == "__main__":
    app.run(main)
