"""On-policy data: prompts cut from training files, sequences the target generates, a FIFO pool of them.

Generating with the target is the costly part on CPU, so sequences are not
generated per step: a pool of chunks is generated up front, each step draws a
batch from it, and the oldest chunk is regenerated every few steps. The target
is frozen, so its processed log-probabilities over a sequence are computed
once, when the sequence enters the pool, and stored with it.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from jaxspec.distillation.losses import sequence_logprobs
from jaxspec.generation import autoregressive_sample
from jaxspec.models.model import Model
from jaxspec.sampling.processing import SamplingConfig
from jaxspec.training.data import read_texts


class PromptSource:
    """Prompts of a fixed token length cut at random offsets of random files (tokenised once, lazily)."""

    def __init__(self, files: list[str], tokenizer, length: int, rng: np.random.Generator):
        self.files, self.tokenizer, self.length, self.rng = files, tokenizer, length, rng
        self._ids: dict[str, np.ndarray] = {}

    def _tokens(self, path: str) -> np.ndarray:
        if path not in self._ids:
            text = read_texts([path])[0]
            self._ids[path] = np.asarray(self.tokenizer(text, add_special_tokens=False)["input_ids"], np.int32)
        return self._ids[path]

    def sample(self, count: int) -> np.ndarray:
        """int32 [count, length] prompts; ValueError when too few files are long enough."""
        prompts = []
        for _ in range(1000 * count):
            ids = self._tokens(self.files[self.rng.integers(len(self.files))])
            if len(ids) >= self.length:
                start = self.rng.integers(len(ids) - self.length + 1)
                prompts.append(ids[start : start + self.length])
                if len(prompts) == count:
                    return np.stack(prompts)
        raise ValueError(f"too few training files with >= {self.length} tokens; lower --prompt_tokens")


class StreamPromptSource:
    """Prompts of a fixed token length cut at random offsets of one token stream (a saved corpus's training split)."""

    def __init__(self, stream: np.ndarray, length: int, rng: np.random.Generator):
        if len(stream) <= length:
            raise ValueError(f"the stream has {len(stream)} tokens, too few for {length}-token prompts")
        self.stream, self.length, self.rng = stream, length, rng

    def sample(self, count: int) -> np.ndarray:
        """int32 [count, length] prompts."""
        starts = self.rng.integers(0, len(self.stream) - self.length + 1, count)
        return np.stack([self.stream[s : s + self.length] for s in starts]).astype(np.int32)


def document_prompts(stream: np.ndarray, eos: int, count: int, length: int) -> np.ndarray:
    """int32 [count, length]: the first `length` tokens of the first `count` documents (EOS-separated) that have them.

    On a saved corpus's held-out stream these are `heldout_prompts`' prompts.

    >>> document_prompts(np.array([5, 6, 0, 7, 8, 9, 0, 1, 2, 0]), eos=0, count=2, length=2).tolist()
    [[5, 6], [7, 8]]
    """
    ends = np.flatnonzero(stream == eos)
    starts = np.concatenate([[0], ends[:-1] + 1])
    prompts = [stream[s : s + length] for s, e in zip(starts, ends) if e - s >= length][:count]
    if len(prompts) < count:
        raise ValueError(
            f"only {len(prompts)} held-out documents have {length} tokens; ask for fewer or shorter prompts."
        )
    return np.stack(prompts).astype(np.int32)


def make_generator(target: Model, prompt_len: int, gen_tokens: int, config: SamplingConfig):
    """Returns chunk(prompts_BxP, key) -> (tokens [B, P+G], target log-probs [B, G, V], mask [B, G]) in numpy."""
    target_logprobs = jax.jit(functools.partial(sequence_logprobs, prompt_len=prompt_len, config=config))

    def chunk(prompts_BxP: np.ndarray, key: jax.Array):
        # No EOS stop: the evaluation (and the benchmarks) sample past EOS too, so this is the same policy.
        res = autoregressive_sample(
            target, prompts_BxP, key=key, max_new_tokens=gen_tokens, temperature=config.temperature
        )
        tokens_BxL = jnp.concatenate([jnp.asarray(prompts_BxP), res.tokens], axis=1)
        mask_BxG = jnp.arange(gen_tokens)[None, :] < res.lengths[:, None]
        p_BxGxV = target_logprobs(target, tokens_BxL)
        return np.asarray(tokens_BxL), np.asarray(p_BxGxV), np.asarray(mask_BxG)

    return chunk


class Pool:
    """A FIFO of on-policy chunks: sequences, the target's log-probs on them, and their masks."""

    def __init__(self, chunks: list[tuple[np.ndarray, np.ndarray, np.ndarray]]):
        self.tokens, self.p_logprobs, self.mask = (np.concatenate(parts) for parts in zip(*chunks))
        self.chunk_size = len(chunks[0][0])
        self.num_chunks = len(chunks)
        self.oldest = 0

    def __len__(self) -> int:
        return len(self.tokens)

    def replace_oldest(self, chunk) -> None:
        rows = slice(self.oldest * self.chunk_size, (self.oldest + 1) * self.chunk_size)
        self.tokens[rows], self.p_logprobs[rows], self.mask[rows] = chunk
        self.oldest = (self.oldest + 1) % self.num_chunks

    def batch(self, rng: np.random.Generator, size: int):
        """`size` distinct sequences drawn uniformly: (tokens, target log-probs, mask) on device."""
        rows = np.sort(rng.choice(len(self), size, replace=False))
        return jnp.asarray(self.tokens[rows]), jnp.asarray(self.p_logprobs[rows]), jnp.asarray(self.mask[rows])
