"""Verify: the target's passes over the prompt and over each round's drafts.

`prefill` writes a prompt into a cache (both loops). `score_drafts` is the
verification pass of speculative sampling: ONE target forward over the chunk
[last token, d_1..d_K] (K + 1 positions), whose logits give the processed
target laws p_1..p_{K+1} the accept rule (`jaxspec.sampling.accept`) compares
with the drafts' q.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxspec.generation.emit import Sequences, last_tokens
from jaxspec.models.cache import KVCache
from jaxspec.models.model import Model
from jaxspec.sampling.processing import SamplingParams, processed_probs


def prefill(model: Model, prompt_ids_BxT: jax.Array, prompt_lengths_B: jax.Array, cache: KVCache) -> KVCache:
    """Writes all prompt tokens but each row's last into the cache.

    Afterwards cache.lengths == prompt_lengths - 1: the last prompt token is the
    first input of the decoding loop, which is what yields the first new token.
    """
    if prompt_ids_BxT.shape[1] == 1:
        return cache
    _, cache = model(prompt_ids_BxT[:, :-1], cache, prompt_lengths_B - 1)
    return cache


def score_drafts(
    target: Model, cache: KVCache, seqs: Sequences, drafts_BxK: jax.Array, sampling: SamplingParams, vocab_size: int
) -> tuple[jax.Array, jax.Array, KVCache]:
    """One target forward over [last token, d_1..d_K] per row.

    Args:
      target: the target model; `cache` holds every token of `seqs` but each row's last.
      drafts_BxK: int32 draft tokens.
      sampling: the target's per-row settings.
      vocab_size: ids the loop samples over (the target's logits are cut to them).

    Returns:
      (p float32 [B, K+1, V] processed target laws, logits float32 [B, K+1, V],
      the cache with the K + 1 new entries written).
    """
    chunk_BxK1 = jnp.concatenate([last_tokens(seqs)[:, None], drafts_BxK], axis=1)
    logits_BxK1xV, cache = target(chunk_BxK1, cache)
    logits_BxK1xV = logits_BxK1xV[..., :vocab_size]
    return processed_probs(logits_BxK1xV, sampling), logits_BxK1xV, cache
