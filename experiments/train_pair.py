"""Trains the shipped default pair: a GPT-2 target, a GPT-2 draft and an OPT draft.

Corpus: the running interpreter's standard library (.py files), optionally more
folders; deterministic 95/5 train/held-out split by path hash. Tokenizer: a
byte-level BPE trained on the training split. Models: trained with optax
(AdamW, warmup + cosine fitted to the measured throughput and a time budget),
saved with `jaxspec.save_model` (fp16 storage) plus tokenizer files and a model
card, so both jaxspec and transformers load each folder offline.

    python experiments/train_pair.py                      # ~55 min on 2 CPU cores (default budgets: 60 + 2 x 7 min)
    python experiments/train_pair.py --target_minutes 2 --draft_minutes 1 --out_dir /tmp/pair  # smoke run
    python experiments/train_pair.py --models gpt2-target --target_minutes 35   # retrain one model

With --models naming a subset, the others are kept as they are in --out_dir: the
tokenizer is taken from their folders (so ids stay compatible), their reports
come from training_summary.json, and every model card's table of held-out
losses is rewritten.
"""

from __future__ import annotations

import dataclasses
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
MODEL_NAMES = ("gpt2-target", "gpt2-draft", "opt-draft")
MODELS = flags.DEFINE_multi_enum(
    "models", list(MODEL_NAMES), list(MODEL_NAMES), "Models to (re)train; the others are kept from --out_dir."
)
TARGET_INIT = flags.DEFINE_string(
    "target_init",
    None,
    "Continue training the target from this model folder (same shape) instead of a random init; the model card "
    "and training_summary.json record the run it continued from. Copy the folder elsewhere first if it is --out_dir's.",
)
TARGET_LR = flags.DEFINE_float("target_lr", 3e-3, "Peak learning rate of the target.", lower_bound=0.0)
DRAFT_LR = flags.DEFINE_float("draft_lr", 3e-3, "Peak learning rate of the drafts.", lower_bound=0.0)


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
    ]
    for earlier in report.continued_from:
        lines.append(
            f"- Continued from an earlier run: {earlier['steps']} steps ({earlier['tokens']:,} tokens, "
            f"{earlier['seconds'] / 60:.1f} min, held-out loss {earlier['heldout_loss']:.3f}), made by "
            f"`{earlier['command']}`."
        )
    lines += [
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
    selected = [name for name in MODEL_NAMES if name in MODELS.value]
    kept = [name for name in MODEL_NAMES if name not in selected]
    summary_path = os.path.join(out, "training_summary.json")
    previous = {}
    if kept:
        missing = [n for n in kept if not os.path.exists(os.path.join(out, n, "tokenizer.json"))]
        if missing or not os.path.exists(summary_path):
            raise app.UsageError(
                f"--models={','.join(selected)} keeps {', '.join(kept)}, but {out} lacks "
                f"{', '.join(missing) or 'training_summary.json'}; train all models first"
            )
        with open(summary_path) as fh:
            previous = json.load(fh)
        # The kept models fix the ids: reuse their tokenizer instead of training a new one.
        os.makedirs(tok_dir, exist_ok=True)
        for f in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
            if os.path.exists(os.path.join(out, kept[0], f)):
                shutil.copy(os.path.join(out, kept[0], f), tok_dir)
        tokenizer = jaxspec.load_tokenizer(tok_dir)
    else:
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
            TARGET_LR.value,
        ),
        "gpt2-draft": (
            training.gpt2_config(len(tokenizer), dl, dw, dh, CONTEXT.value, eos),
            DRAFT_MINUTES.value,
            DRAFT_LR.value,
        ),
        "opt-draft": (
            training.opt_config(len(tokenizer), dl, dw, dh, CONTEXT.value, eos),
            DRAFT_MINUTES.value,
            DRAFT_LR.value,
        ),
    }
    models, reports = {}, {}
    init, continued_from = None, ()
    if TARGET_INIT.value:
        if "gpt2-target" not in selected:
            raise app.UsageError(f"--target_init={TARGET_INIT.value} needs gpt2-target in --models")
        init = jaxspec.load_model(TARGET_INIT.value)
        # The run that made it, as train_pair recorded it beside the folder.
        init_summary = os.path.join(os.path.dirname(os.path.abspath(TARGET_INIT.value)), "training_summary.json")
        with open(init_summary) as fh:
            earlier = json.load(fh)["models"][os.path.basename(os.path.normpath(TARGET_INIT.value))]
        continued_from = tuple(earlier.get("continued_from", ())) + (
            {k: earlier[k] for k in ("steps", "tokens", "seconds", "heldout_loss", "command")},
        )
        _log(f"target continues from {TARGET_INIT.value} (held-out loss {earlier['heldout_loss']:.3f})")
    for i, (name, (config, minutes, lr)) in enumerate(specs.items()):
        if name not in selected:
            continue
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
            init=init if name == "gpt2-target" else None,
        )
        if name == "gpt2-target":
            reports[name] = dataclasses.replace(reports[name], continued_from=continued_from)
        _log(f"{name}: held-out loss {reports[name].heldout_loss:.3f} nats/token")
    command = "python " + " ".join(sys.argv)
    commands = {name: command for name in selected}
    configs = {name: models[name].config for name in selected}
    for name in kept:
        entry = dict(previous["models"][name])
        commands[name] = entry.pop("command", previous.get("command", ""))
        configs[name] = jaxspec.load_model(os.path.join(out, name)).config
        entry.pop("config", None)
        reports[name] = training.TrainReport(**entry)
    losses = {name: reports[name].heldout_loss for name in MODEL_NAMES}
    for name in MODEL_NAMES:
        folder = os.path.join(out, name)
        if name in selected:
            jaxspec.save_model(models[name], folder, dtype=jnp.float16)
            for f in os.listdir(tok_dir):
                shutil.copy(os.path.join(tok_dir, f), folder)
        with open(os.path.join(folder, "README.md"), "w") as fh:
            fh.write(_model_card(name, configs[name], reports[name], data, commands[name], losses))
        if name not in selected:
            continue
        model = models[name]
        # Check the folder round-trips as the stored fp16 weights.
        again = jaxspec.load_model(folder)
        _log(
            f"saved {folder} ({model.num_params() / 1e6:.2f}M params); reloaded held-out loss "
            f"{training.heldout_loss(again, heldout_stream, CONTEXT.value):.3f}"
        )
    shutil.rmtree(tok_dir)
    summary = {
        name: dict(vars(reports[name]), config=configs[name].hf_config, command=commands[name]) for name in MODEL_NAMES
    }
    with open(summary_path, "w") as fh:
        json.dump(dict(data=data, models=summary, command=command), fh, indent=2)
    _log("done")


if __name__ == "__main__":
    app.run(main)
