"""Trains the shipped models: a GPT-2 target and GPT-2, OPT and Llama-architecture drafts.

Corpus: the running interpreter's standard library (.py files), optionally more
folders; deterministic 95/5 train/held-out split by path hash. Tokenizer: a
byte-level BPE trained on the training split. Models: trained with optax
(AdamW, warmup + cosine fitted to the measured throughput and a time budget),
saved with `jaxspec.save_model` (fp16 storage) plus tokenizer files and a model
card, so both jaxspec and transformers load each folder offline.

    python experiments/train_pair.py                      # ~90 min on 2 CPU cores (default budgets: 60 + 3 x 7 min)
    python experiments/train_pair.py --target_minutes 2 --draft_minutes 1 --out_dir /tmp/pair  # smoke run
    python experiments/train_pair.py --models gpt2-target --target_minutes 35   # retrain one model
    python experiments/train_pair.py --models llama-draft   # add the Llama-architecture draft
    python experiments/train_pair.py --save_corpus corpus.npz    # tokens + tokenizer for an accelerator host
    python experiments/train_pair.py --corpus corpus.npz --extra_dirs "$SITE_PACKAGES" --extra_max_mb 150 \
        --target_shape 8,384,6 --batch_size 64 --target_minutes 3 --draft_minutes 0.5   # there

With --models naming a subset, the others are kept as they are in --out_dir: the
tokenizer is taken from their folders (so ids stay compatible), their reports
come from training_summary.json, and every model card's table of held-out
losses is rewritten. The work is `jaxspec.training.train_pair`.
"""

from __future__ import annotations

import os
import sys

from absl import app, flags

from jaxspec import benchmarking, training

flags.DEFINE_string("out_dir", "checkpoints", "Where the model folders are written.")
flags.DEFINE_list("extra_dirs", [], "More folders of .py files for the corpus (e.g. site-packages).")
flags.DEFINE_integer("vocab_size", 4096, "BPE vocabulary size.")
flags.DEFINE_integer("context", 256, "Training context and max_position_embeddings.")
flags.DEFINE_integer("batch_size", 16, "Sequences per step.")
flags.DEFINE_float("target_minutes", 60, "Training time budget of the target.")
flags.DEFINE_float("draft_minutes", 7, "Training time budget of each draft.")
flags.DEFINE_list("target_shape", ["6", "256", "4"], "Target layers,width,heads.")
flags.DEFINE_list("draft_shape", ["2", "96", "3"], "Draft layers,width,heads (GPT-2 and OPT).")
flags.DEFINE_integer("seed", 0, "Seed for init and batches.")
flags.DEFINE_integer("min_steps", 50, "Train at least this many steps, whatever the budget.")
flags.DEFINE_integer("max_files", 0, "Use only this many files (0 = all); for smoke runs.")
MODEL_NAMES = training.MODEL_NAMES
flags.DEFINE_multi_enum(
    "models", list(MODEL_NAMES), list(MODEL_NAMES), "Models to (re)train; the others are kept from --out_dir."
)
flags.DEFINE_string(
    "target_init",
    None,
    "Continue training the target from this model folder (same shape) instead of a random init; the model card "
    "and training_summary.json record the run it continued from. Copy the folder elsewhere first if it is --out_dir's.",
)
flags.DEFINE_float("target_lr", 3e-3, "Peak learning rate of the target.", lower_bound=0.0)
flags.DEFINE_float("draft_lr", 3e-3, "Peak learning rate of the drafts.", lower_bound=0.0)
flags.DEFINE_string(
    "corpus",
    None,
    "A tokenized corpus written by --save_corpus, used instead of this interpreter's standard library (so an "
    "accelerator host with another Python trains on the same tokens); --extra_dirs then add training text only.",
)
flags.DEFINE_float("extra_max_mb", 0, "With --corpus: at most this many MB of --extra_dirs source (0 = all).")
SAVE_CORPUS = flags.DEFINE_string(
    "save_corpus",
    None,
    "Write the standard-library corpus, tokenized with --out_dir's gpt2-target tokenizer, to this .npz and exit.",
)


def main(argv):
    del argv
    benchmarking.quiet_logs()  # one line per event: ours, not JAX's INFO chatter
    if SAVE_CORPUS.value:
        meta = training.data.save_corpus(SAVE_CORPUS.value, os.path.join(flags.FLAGS.out_dir, "gpt2-target"))
        benchmarking.log(f"wrote {SAVE_CORPUS.value}: {meta}")
        return
    config = benchmarking.from_flags(training.PairConfig, flags.FLAGS, check=training.check_config)
    training.train_pair(config, command="python " + " ".join(sys.argv), log=benchmarking.log)


if __name__ == "__main__":
    app.run(main)
