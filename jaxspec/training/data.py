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
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


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


def save_corpus(path: str, tokenizer_dir: str, files: list[str] | None = None) -> dict:
    """Writes the corpus (`files`, default the standard library), tokenized by `tokenizer_dir`'s tokenizer, to `path`.

    The file carries the train and held-out streams (uint16 when the vocabulary
    fits), the held-out files' base names and the tokenizer's files, so a
    machine with another interpreter (an accelerator host) trains and evaluates
    on exactly these tokens (`load_corpus`) and can keep extra training text
    clear of them. Returns the corpus's metadata.
    """
    from jaxspec.loading import load_tokenizer

    tokenizer = load_tokenizer(tokenizer_dir)
    tokenizer_files = {}
    for name in TOKENIZER_FILES:
        with open(os.path.join(tokenizer_dir, name)) as fh:
            tokenizer_files[name] = fh.read()
    train_files, heldout_files = split_files(python_files() if files is None else files)
    dtype = np.uint16 if len(tokenizer) <= np.iinfo(np.uint16).max + 1 else np.int32
    train = encode(tokenizer, read_texts(train_files)).astype(dtype)
    heldout = encode(tokenizer, read_texts(heldout_files)).astype(dtype)
    names = np.asarray(sorted(os.path.basename(f) for f in heldout_files))
    np.savez_compressed(
        path,
        train=train,
        heldout=heldout,
        heldout_names=names,
        train_files=len(train_files),
        **{"tokenizer/" + f: np.asarray(text) for f, text in tokenizer_files.items()},
    )
    return dict(
        train_files=len(train_files),
        heldout_files=len(heldout_files),
        train_tokens=len(train),
        heldout_tokens=len(heldout),
    )


def load_corpus(path: str, tokenizer_dir: str) -> tuple[np.ndarray, np.ndarray, dict]:
    """(train int32 [T], held-out int32 [H], metadata) from a `save_corpus` file.

    The corpus's tokenizer files are written to `tokenizer_dir`.

    Raises:
      ValueError: `path` is an .npz without a saved corpus's arrays.
    """
    os.makedirs(tokenizer_dir, exist_ok=True)
    with np.load(path) as f:
        needed = {"train", "heldout", "heldout_names", "train_files"} | {"tokenizer/" + n for n in TOKENIZER_FILES}
        if missing := sorted(needed - set(f.files)):
            raise ValueError(
                f"{path} is not a corpus written by save_corpus (missing {', '.join(missing)}); write one with "
                "`python experiments/train_pair.py --save_corpus PATH`"
            )
        for f_name in TOKENIZER_FILES:
            with open(os.path.join(tokenizer_dir, f_name), "w") as fh:
                fh.write(str(f["tokenizer/" + f_name]))
        train, heldout = f["train"].astype(np.int32), f["heldout"].astype(np.int32)
        meta = dict(
            train_files=int(f["train_files"]),
            heldout_files=len(f["heldout_names"]),
            heldout_names=[str(n) for n in f["heldout_names"]],
        )
    return train, heldout, meta


def extra_training_files(dirs, exclude_names, max_mb: float) -> list[str]:
    """.py files under `dirs` for training only: none named like a held-out file, at most `max_mb` MB (0 = all).

    Files whose base name matches a held-out file are dropped (vendored copies
    of standard-library modules would leak held-out text). The cap keeps a
    deterministic sample: files ordered by a hash of their path.
    """
    exclude = set(exclude_names)
    files = [f for d in dirs for f in glob.glob(os.path.join(d, "**", "*.py"), recursive=True)]
    files = sorted(
        {f for f in files if os.path.basename(f) not in exclude}, key=lambda f: hashlib.sha1(f.encode()).hexdigest()
    )
    if max_mb <= 0:
        return files
    kept, total = [], 0
    for f in files:
        size = os.path.getsize(f)
        if total + size > max_mb * 1e6:
            continue
        kept.append(f)
        total += size
    return kept
