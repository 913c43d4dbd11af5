"""Training the small models the experiments measure: corpus, tokenizer, an optax loop fitted to a time budget.

Not part of `import jaxspec` (the library samples; this package trains): import
`jaxspec.training` explicitly. `tokenizers` and `transformers` are imported only
where a tokenizer is trained or an HF config is built.

  data: the corpus (the standard library's .py files), its held-out split, BPE, token streams.
  trainer: the loss, the jitted step, calibrate-then-schedule, `train`, `heldout_loss`.
  pair: `train_pair`, the shipped GPT-2 target and GPT-2 / OPT drafts with model cards.
"""

from jaxspec.training.data import EOS, encode, heldout_texts, python_files, read_texts, split_files, train_tokenizer
from jaxspec.training.pair import MODEL_NAMES, PairConfig, check_config, train_pair
from jaxspec.training.trainer import (
    TrainReport,
    adamw_cosine,
    decoder_config,
    heldout_loss,
    lm_loss,
    make_step,
    next_token_logits,
    scale_residual_init,
    seconds_per_step,
    steps_for_budget,
    train,
)

__all__ = [
    "EOS",
    "MODEL_NAMES",
    "PairConfig",
    "TrainReport",
    "adamw_cosine",
    "check_config",
    "decoder_config",
    "encode",
    "heldout_loss",
    "heldout_texts",
    "lm_loss",
    "make_step",
    "next_token_logits",
    "python_files",
    "read_texts",
    "scale_residual_init",
    "seconds_per_step",
    "split_files",
    "steps_for_budget",
    "train",
    "train_pair",
    "train_tokenizer",
]
