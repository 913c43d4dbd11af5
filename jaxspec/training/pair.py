"""Trains the shipped models: a GPT-2 target and GPT-2, OPT and Llama drafts, each saved with a model card.

Corpus and split: `jaxspec.training.data`. Tokenizer: a byte-level BPE trained
on the training split (or, when some models are kept, theirs). Models: trained
by `train` (AdamW, warmup + cosine fitted to a time budget), saved with
`jaxspec.save_model` (fp16 storage) plus tokenizer files and a model card, so
both jaxspec and transformers load each folder offline. `training_summary.json`
beside the folders records every model's report, config and command.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxspec.loading import load_model, load_tokenizer, save_model
from jaxspec.training import data
from jaxspec.training.trainer import TrainReport, decoder_config, heldout_loss, train

MODEL_NAMES = ("gpt2-target", "gpt2-draft", "opt-draft", "llama-draft")
_TARGET = "gpt2-target"


@dataclasses.dataclass(frozen=True)
class PairConfig:
    """What `train_pair` trains and where (the flags of experiments/train_pair.py).

    Attributes:
      out_dir: where the model folders and training_summary.json go.
      extra_dirs: more folders of .py files for the corpus.
      vocab_size: BPE vocabulary size (when a tokenizer is trained).
      context: training context and max_position_embeddings.
      batch_size: sequences per step.
      target_minutes, draft_minutes: training time budgets.
      target_shape, draft_shape: (layers, width, heads); the draft shape is used by every draft.
      seed: seed of init and batches (model i uses seed + i).
      min_steps: steps trained whatever the budget.
      max_files: use only this many corpus files (0 = all).
      models: the models to (re)train; the others are kept from out_dir.
      target_init: a model folder the target continues from (None: random init).
      target_lr, draft_lr: peak learning rates.
      corpus: a `data.save_corpus` file (tokens and tokenizer) used instead of this interpreter's standard
        library, so an accelerator host trains on the same tokens; extra_dirs then add training text only.
      extra_max_mb: with `corpus`, at most this many MB of extra_dirs' source (0 = all).
    """

    out_dir: str = "checkpoints"
    extra_dirs: tuple[str, ...] = ()
    vocab_size: int = 4096
    context: int = 256
    batch_size: int = 16
    target_minutes: float = 60
    draft_minutes: float = 7
    target_shape: tuple[int, int, int] = (6, 256, 4)
    draft_shape: tuple[int, int, int] = (2, 96, 3)
    seed: int = 0
    min_steps: int = 50
    max_files: int = 0
    models: tuple[str, ...] = MODEL_NAMES
    target_init: str | None = None
    target_lr: float = 3e-3
    draft_lr: float = 3e-3
    corpus: str | None = None
    extra_max_mb: float = 0

    @property
    def selected(self) -> list[str]:
        return [name for name in MODEL_NAMES if name in self.models]

    @property
    def kept(self) -> list[str]:
        return [name for name in MODEL_NAMES if name not in self.models]


def check_config(config: PairConfig) -> None:
    """Raises ValueError (a usage error) when the kept models or --target_init cannot serve."""
    out, kept = config.out_dir, config.kept
    if kept:
        missing = [n for n in kept if not os.path.exists(os.path.join(out, n, "tokenizer.json"))]
        if missing or not os.path.exists(os.path.join(out, "training_summary.json")):
            raise ValueError(
                f"--models={','.join(config.selected)} keeps {', '.join(kept)}, but {out} lacks "
                f"{', '.join(missing) or 'training_summary.json'}; train all models first"
            )
    if config.corpus and not os.path.exists(config.corpus):
        raise ValueError(
            f"--corpus={config.corpus} does not exist; write it with --save_corpus on the machine "
            "whose standard library is the corpus"
        )
    if config.target_init and _TARGET not in config.selected:
        raise ValueError(f"--target_init={config.target_init} needs {_TARGET} in --models")


def model_card(name: str, config, report: TrainReport, corpus: dict, command: str, losses: dict) -> str:
    """The README.md of a trained model folder: what it is, how it was trained, the pair's held-out losses."""
    stdlib_tokens = corpus.get("stdlib_train_tokens", corpus["train_tokens"])
    device = corpus.get("device", "2 CPU cores")
    lines = [
        f"# {name}",
        "",
        f"A {config.model_type} model ({config.num_layers} layers, width {config.hidden_size}, "
        f"{config.num_heads} heads, context {config.max_positions}, vocab {config.vocab_size}) trained by jaxspec's "
        "`experiments/train_pair.py` on Python source code. Weights stored as float16.",
        "",
        f"- Training command: `{command}`",
        f"- Data: {corpus['train_files']} standard-library .py files ({stdlib_tokens:,} tokens) for "
        f"training, {corpus['heldout_files']} held-out files ({corpus['heldout_tokens']:,} tokens), split by path hash."
        + (
            f" Plus {corpus['extra_files']} .py files of installed packages ({corpus['extra_tokens']:,} tokens; none "
            "named like a held-out file) for training only."
            if corpus.get("extra_files")
            else ""
        ),
        f"- Steps: {report.steps} x {corpus['batch_size']} x {corpus['context']} tokens = {report.tokens:,} tokens "
        f"in {report.seconds / 60:.1f} min ({report.tokens_per_second:,.0f} tokens/s on {device}).",
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
    lines += [f"| {k} | {v:.3f} |" for k, v in losses.items()]
    return "\n".join(lines) + "\n"


def _tokenizer(config: PairConfig, train_texts: list[str], tok_dir: str):
    """The kept models fix the ids: reuse their tokenizer; with none kept, train a new one."""
    if not config.kept:
        return data.train_tokenizer(train_texts, config.vocab_size, tok_dir)
    os.makedirs(tok_dir, exist_ok=True)
    for f in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if os.path.exists(os.path.join(config.out_dir, config.kept[0], f)):
            shutil.copy(os.path.join(config.out_dir, config.kept[0], f), tok_dir)
    return load_tokenizer(tok_dir)


def _device_name() -> str:
    """The training device in words: the accelerator's kind, or the CPU core count."""
    device = jax.devices()[0]
    return f"{len(os.sched_getaffinity(0))} CPU cores" if device.platform == "cpu" else device.device_kind


def _saved_corpus(config: PairConfig, tok_dir: str, log: Callable[[str], None]):
    """(tokenizer, train stream, held-out stream, corpus metadata) from config.corpus plus its extra_dirs."""
    train_stream, heldout_stream, meta = data.load_corpus(config.corpus, tok_dir)
    tokenizer = load_tokenizer(tok_dir)
    corpus = dict(train_files=meta["train_files"], heldout_files=meta["heldout_files"])
    log(f"corpus: {config.corpus} ({meta['train_files']} train files, {meta['heldout_files']} held-out files)")
    if config.extra_dirs:
        files = data.extra_training_files(config.extra_dirs, meta["heldout_names"], config.extra_max_mb)
        extra = data.encode(tokenizer, data.read_texts(files))
        log(f"extra training text: {len(files)} files under {', '.join(config.extra_dirs)}, {len(extra):,} tokens")
        train_stream = np.concatenate([train_stream, extra])
        corpus.update(extra_files=len(files), extra_tokens=len(extra))
    return tokenizer, train_stream, heldout_stream, corpus


def _continued_from(folder: str, log: Callable[[str], None]) -> tuple:
    """The runs that made `folder`'s model, as train_pair recorded them beside the folder."""
    summary = os.path.join(os.path.dirname(os.path.abspath(folder)), "training_summary.json")
    with open(summary) as fh:
        earlier = json.load(fh)["models"][os.path.basename(os.path.normpath(folder))]
    log(f"target continues from {folder} (held-out loss {earlier['heldout_loss']:.3f})")
    return tuple(earlier.get("continued_from", ())) + (
        {k: earlier[k] for k in ("steps", "tokens", "seconds", "heldout_loss", "command")},
    )


def train_pair(config: PairConfig, *, command: str, log: Callable[[str], None]) -> dict:
    """Trains `config.models`, saves every selected folder, rewrites every model card and the summary.

    Args:
      config: what to train; `check_config`'s ValueError when it cannot be done.
      command: the command line recorded in the model cards and summary.
      log: one line per event.

    Returns:
      The training summary written to out_dir/training_summary.json.
    """
    check_config(config)
    out = config.out_dir
    os.makedirs(out, exist_ok=True)
    tok_dir = os.path.join(out, "_tokenizer")
    selected, kept = config.selected, config.kept
    summary_path = os.path.join(out, "training_summary.json")
    previous = {}
    if os.path.exists(summary_path):
        with open(summary_path) as fh:
            previous = json.load(fh)
    if config.corpus:
        tokenizer, train_stream, heldout_stream, corpus = _saved_corpus(config, tok_dir, log)
    else:
        files = data.python_files(config.extra_dirs)
        if config.max_files:
            files = files[: config.max_files]
        train_files, heldout_files = data.split_files(files)
        log(f"corpus: {len(train_files)} train files, {len(heldout_files)} held-out files")
        train_texts = data.read_texts(train_files)
        tokenizer = _tokenizer(config, train_texts, tok_dir)
        train_stream = data.encode(tokenizer, train_texts)
        heldout_stream = data.encode(tokenizer, data.read_texts(heldout_files))
        corpus = dict(train_files=len(train_files), heldout_files=len(heldout_files))
    eos = tokenizer.convert_tokens_to_ids(data.EOS)
    log(f"tokenizer: vocab {len(tokenizer)}; {len(train_stream):,} train tokens, {len(heldout_stream):,} held-out")
    corpus.update(
        train_tokens=len(train_stream),
        stdlib_train_tokens=len(train_stream) - corpus.get("extra_tokens", 0),
        heldout_tokens=len(heldout_stream),
        batch_size=config.batch_size,
        context=config.context,
        device=_device_name(),
    )
    shape = lambda layers, width, heads: dict(layers=layers, width=width, heads=heads)
    common = dict(vocab_size=len(tokenizer), context=config.context, eos=eos)
    target, draft = shape(*config.target_shape), shape(*config.draft_shape)
    specs = {
        "gpt2-target": (decoder_config("gpt2", **target, **common), config.target_minutes, config.target_lr),
        "gpt2-draft": (decoder_config("gpt2", **draft, **common), config.draft_minutes, config.draft_lr),
        "opt-draft": (decoder_config("opt", **draft, **common), config.draft_minutes, config.draft_lr),
        "llama-draft": (decoder_config("llama", **draft, **common), config.draft_minutes, config.draft_lr),
    }
    models, reports = {}, {}
    init, continued_from = None, ()
    if config.target_init:
        init = load_model(config.target_init)
        continued_from = _continued_from(config.target_init, log)
    for i, (name, (model_config, minutes, lr)) in enumerate(specs.items()):
        if name not in selected:
            continue
        log(f"training {name} ({i + 1}/{len(specs)})")
        models[name], reports[name] = train(
            model_config,
            train_stream,
            heldout_stream,
            minutes=minutes,
            batch_size=config.batch_size,
            context=config.context,
            peak_lr=lr,
            min_steps=config.min_steps,
            seed=config.seed + i,
            log=log,
            init=init if name == _TARGET else None,
        )
        if name == _TARGET:
            reports[name] = dataclasses.replace(reports[name], continued_from=continued_from)
        log(f"{name}: held-out loss {reports[name].heldout_loss:.3f} nats/token")
    commands = {name: command for name in selected}
    configs = {name: models[name].config for name in selected}
    corpora = {name: corpus for name in selected}
    for name in kept:
        entry = dict(previous["models"][name])
        commands[name] = entry.pop("command", previous.get("command", ""))
        corpora[name] = entry.pop("data", previous.get("data", corpus))
        configs[name] = load_model(os.path.join(out, name)).config
        entry.pop("config", None)
        reports[name] = TrainReport(**entry)
    losses = {name: reports[name].heldout_loss for name in MODEL_NAMES}
    for name in MODEL_NAMES:
        folder = os.path.join(out, name)
        if name in selected:
            save_model(models[name], folder, dtype=jnp.float16)
            for f in os.listdir(tok_dir):
                shutil.copy(os.path.join(tok_dir, f), folder)
        with open(os.path.join(folder, "README.md"), "w") as fh:
            fh.write(model_card(name, configs[name], reports[name], corpora[name], commands[name], losses))
        if name not in selected:
            continue
        # Check the folder round-trips as the stored fp16 weights.
        again = load_model(folder)
        log(
            f"saved {folder} ({models[name].num_params() / 1e6:.2f}M params); reloaded held-out loss "
            f"{heldout_loss(again, heldout_stream, config.context):.3f}"
        )
    shutil.rmtree(tok_dir)
    summary = {
        name: dict(vars(reports[name]), config=configs[name].hf_config, command=commands[name], data=corpora[name])
        for name in MODEL_NAMES
    }
    # Entries other tools added (a distilled draft, a longer-trained target) are kept as they were.
    summary.update({name: entry for name, entry in previous.get("models", {}).items() if name not in summary})
    result = dict(data=corpus, models=summary, command=command)
    with open(summary_path, "w") as fh:
        json.dump(result, fh, indent=2)
    log("done")
    return result
