"""The decode step writes its new cache slots in place: no per-call copy of the whole KV cache.

A layer scan that takes the stacked cache as scanned input and stacks it again
as output zero-fills a fresh cache-sized buffer and copies every layer's keys
and values on every call; at the shipped target's size that cost ~1 ms per
token and grew with the cache's capacity (BUILD_NOTES, "the autoregressive
loop's excess"). Here the compiled `while` body of a decode loop must contain
no cache-shaped copy or broadcast: only in-place updates of the carried cache.
"""

import jax
import jax.numpy as jnp
import pytest

from jaxspec.benchmarking.hlo import hlo_computations
from jaxspec.testing import random_model, tiny_config

LAYERS, SLOTS = 3, 37  # a cache shape no other array of these models has


def _decode_loop_hlo(family: str, chunk: int) -> tuple[str, str]:
    """Compiled HLO of a loop of calls of `chunk` tokens per row (1: decoding; K + 1: verification)."""
    config = tiny_config(family, vocab_size=64, num_layers=LAYERS, max_positions=64)
    model = random_model(config, seed=0)
    cache = model.init_cache(2, SLOTS)

    @jax.jit
    def decode(model, cache):
        def body(_, carry):
            cache, tokens = carry
            logits, new_cache = model(tokens, cache)
            # A verification-like step: keep one token of the chunk, as a rollback would.
            return new_cache.with_lengths(cache.lengths + 1), jnp.argmax(logits, axis=-1).astype(jnp.int32)

        return jax.lax.fori_loop(0, 8, body, (cache, jnp.zeros((2, chunk), jnp.int32)))

    shape = ",".join(str(d) for d in cache.keys.shape)
    return decode.lower(model, cache).compile().as_text(), f"f32[{shape}]"


@pytest.mark.parametrize("chunk", [1, 4])
@pytest.mark.parametrize("family", ["gpt2", "opt", "llama"])
def test_decode_loop_never_copies_the_whole_cache(family, chunk):
    hlo, cache_type = _decode_loop_hlo(family, chunk)
    in_loop = [
        line
        for name, lines in hlo_computations(hlo).items()
        if not name.startswith("ENTRY")
        for line in lines
        if f"= {cache_type}" in line
    ]
    assert in_loop, f"no {cache_type} value inside the loop: the test no longer sees the cache"
    copies = [
        line.strip()[:160] for line in in_loop if " copy(" in line or " broadcast(" in line or "wrapped_copy" in line
    ]
    assert not copies, "cache-sized copies inside the decode loop:\n" + "\n".join(copies)
