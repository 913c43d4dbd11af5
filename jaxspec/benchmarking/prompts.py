"""Prompts for measurements: held-out code the shipped models never trained on."""

from __future__ import annotations

import numpy as np

# A fixed prompt of the scripts that decode one prompt (quantization, vs_transformers).
DEFAULT_PROMPT = "import os\nimport sys\n\n\ndef main(argv):\n    "


def heldout_prompts(tokenizer, count: int, length: int, per_file: int = 1, spacing: int = 0) -> np.ndarray:
    """int32 [count, length]: prompts cut from held-out files, `per_file` from each file in turn.

    The held-out files are those `train_pair` never trained on (the
    interpreter's standard library, split by path hash:
    `jaxspec.training.split_files`). A file gives its first `length` tokens,
    and with `per_file` > 1 also the `length` tokens starting at `spacing`,
    2 * `spacing`, ... (only files that long are used); rows i * per_file ..
    (i + 1) * per_file - 1 come from one file (see `prompt_files`). Prompts of
    one file are not independent draws: give `prompt_files(count, per_file)`
    as the clusters of `metrics.paired_speedup`.

    Raises:
      ValueError: too few held-out files have the tokens asked for.
    """
    needed = (per_file - 1) * spacing + length
    prompts = []
    for held in _prompts_of_each_file(tokenizer, length, per_file, spacing):
        if len(held) == per_file:
            prompts.extend(held)
        if len(prompts) >= count:
            break
    if len(prompts) < count:
        fewer = " or fewer per file" if per_file > 1 else ""
        raise ValueError(
            f"only {len(prompts) // per_file} held-out files have {needed} tokens; ask for fewer or shorter prompts"
            f"{fewer}."
        )
    return np.asarray(prompts[:count], np.int32)


def _prompts_of_each_file(tokenizer, length: int, per_file: int, spacing: int):
    """Yields, for each held-out file in turn, the list of its (up to `per_file`) prompts `spacing` tokens apart."""
    from jaxspec.training import data  # kept lazy: importing jaxspec.training imports optax

    if per_file > 1 and spacing < length:
        raise ValueError(f"spacing={spacing} must be >= length={length} so that one file's prompts do not overlap.")
    for text in data.heldout_texts():
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        yield [ids[j * spacing : j * spacing + length] for j in range(per_file) if j * spacing + length <= len(ids)]


def prompt_files(count: int, per_file: int = 1) -> np.ndarray:
    """int [count]: which held-out file each row of `heldout_prompts(..., count, per_file=per_file)` came from.

    >>> prompt_files(5, per_file=2).tolist()
    [0, 0, 1, 1, 2]
    """
    return np.arange(count) // per_file


def heldout_prompts_by_file(tokenizer, count: int, length: int, max_per_file: int, spacing: int):
    """(int32 [count, length] prompts, int [count] file of each): up to `max_per_file` prompts from every held-out file.

    Like `heldout_prompts(..., per_file=max_per_file, spacing=spacing)`, but a
    file too short for all of them gives as many as it holds (the j-th prompt
    needs j * `spacing` + `length` tokens) instead of none: every held-out file
    with `length` tokens is used, so the runs' standard error pools over as
    many independent files as there are. Give the second array as the clusters
    of `metrics.paired_speedup` / `metrics.speedup_of_means`.

    Raises:
      ValueError: the held-out files hold fewer than `count` such prompts.
    """
    prompts, files = [], []
    for held in _prompts_of_each_file(tokenizer, length, max_per_file, spacing):
        if held:
            files.extend([files[-1] + 1 if files else 0] * len(held))
            prompts.extend(held)
        if len(prompts) >= count:
            break
    if len(prompts) < count:
        raise ValueError(
            f"the held-out files hold only {len(prompts)} prompts of {length} tokens at most {max_per_file} per file "
            f"{spacing} tokens apart; ask for at most that many runs, or more per file."
        )
    return np.asarray(prompts[:count], np.int32), np.asarray(files[:count])


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
