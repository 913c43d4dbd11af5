"""Prompts for measurements: held-out code the shipped models never trained on."""

from __future__ import annotations

import numpy as np

# A fixed prompt of the scripts that decode one prompt (quantization, vs_transformers).
DEFAULT_PROMPT = "import os\nimport sys\n\n\ndef main(argv):\n    "


def heldout_prompts(tokenizer, count: int, length: int) -> np.ndarray:
    """int32 [count, length]: the first `length` tokens of `count` distinct held-out files.

    The held-out files are those `train_pair` never trained on (the
    interpreter's standard library, split by path hash:
    `jaxspec.training.split_files`).

    Raises:
      ValueError: fewer than `count` held-out files have `length` tokens.
    """
    from jaxspec.training import data  # kept lazy: importing jaxspec.training imports optax

    prompts = []
    for text in data.heldout_texts():
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(ids) >= length:
            prompts.append(ids[:length])
        if len(prompts) == count:
            break
    if len(prompts) < count:
        raise ValueError(f"only {len(prompts)} held-out files have {length} tokens; ask for fewer or shorter prompts.")
    return np.asarray(prompts, np.int32)


def ngram_prompt_sets(tokenizer, count: int, length: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Prompt sets of equal token length (one compile per set and method), for prompt lookup.

    quote: a held-out snippet, a comment asking for it again, and its first
      tokens (the continuation should copy the snippet: lookup's best case);
    code: real held-out code, which repeats its own identifiers;
    shuffled: the same code with its tokens permuted (no structure to look up).
    """
    snippet_len = length // 2
    cue = tokenizer("\n\n# The same code again:\n", add_special_tokens=False)["input_ids"]
    head = length - snippet_len - len(cue)
    code = heldout_prompts(tokenizer, count, length)
    quote = [list(row[:snippet_len]) + cue + list(row[:head]) for row in code]
    rng = np.random.default_rng(seed)
    shuffled = np.stack([rng.permutation(row) for row in code])
    return {"quote": np.asarray(quote, np.int32), "code": code, "shuffled": shuffled.astype(np.int32)}
