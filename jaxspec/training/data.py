"""The corpus of the shipped pair: Python source files, a held-out split, a BPE tokenizer, token streams.

The corpus is the running interpreter's standard library (plus any folders
given), split 95/5 into train and held-out files by a hash of each file's path,
so every script that asks for held-out text gets the same files. Only the
standard library and numpy are imported here; `tokenizers` and `transformers`
are imported where a tokenizer is trained.
"""

from __future__ import annotations

import glob
import hashlib
import os
import sysconfig

import numpy as np

EOS = "<|endoftext|>"


def python_files(extra_dirs=()) -> list[str]:
    """The interpreter's standard-library .py files (no site-packages) plus `extra_dirs`."""
    stdlib = sysconfig.get_paths()["stdlib"]
    files = [f for f in glob.glob(os.path.join(stdlib, "**", "*.py"), recursive=True) if "site-packages" not in f]
    for d in extra_dirs:
        files += glob.glob(os.path.join(d, "**", "*.py"), recursive=True)
    return sorted(set(files))


def split_files(files: list[str], heldout_percent: int = 5) -> tuple[list[str], list[str]]:
    """(train, held-out): a deterministic split by a hash of each file's path below its root."""
    train, heldout = [], []
    for f in files:
        key = os.path.relpath(f, os.path.dirname(os.path.dirname(f)))
        bucket = int(hashlib.sha1(key.encode()).hexdigest(), 16) % 100
        (heldout if bucket < heldout_percent else train).append(f)
    if not heldout and len(train) > 1:  # tiny corpora (smoke runs) still get a held-out file
        heldout.append(train.pop())
    return train, heldout


def read_texts(files: list[str]) -> list[str]:
    """Each file's text (undecodable bytes replaced)."""
    texts = []
    for f in files:
        with open(f, encoding="utf-8", errors="replace") as fh:
            texts.append(fh.read())
    return texts


def train_tokenizer(texts: list[str], vocab_size: int, folder: str):
    """Byte-level BPE (as GPT-2) trained on `texts`, saved in `folder` for AutoTokenizer, and loaded from there."""
    import tokenizers
    import transformers

    from jaxspec.loading import load_tokenizer

    bpe = tokenizers.ByteLevelBPETokenizer()
    bpe.train_from_iterator(texts, vocab_size=vocab_size, min_frequency=2, special_tokens=[EOS], show_progress=False)
    tok = transformers.PreTrainedTokenizerFast(
        tokenizer_object=bpe._tokenizer, bos_token=EOS, eos_token=EOS, unk_token=EOS, pad_token=EOS
    )
    tok.save_pretrained(folder)
    return load_tokenizer(folder)


def encode(tokenizer, texts: list[str]) -> np.ndarray:
    """All texts as one int32 stream, documents separated by EOS."""
    eos = tokenizer.convert_tokens_to_ids(EOS)
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    return np.concatenate([np.asarray(x + [eos], np.int32) for x in ids])


def heldout_texts() -> list[str]:
    """The texts of the standard library's held-out files (what `train_pair` never trains on)."""
    _, heldout = split_files(python_files())
    return read_texts(heldout)
