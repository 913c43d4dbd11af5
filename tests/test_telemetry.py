"""Compile telemetry: a compile is counted once, a cache hit not at all; warmup is marked once."""

import jax
import jax.numpy as jnp
import numpy as np

from jaxspec.serving.telemetry import CompileCounter, xla_compiles


def test_counts_compiles_not_cache_hits():
    counter = CompileCounter()
    assert counter.stats() == dict(programs=0, xla_compiles=0, xla_compiles_since_warmup=None)
    fn = jax.jit(lambda x: x * 3 + 1)  # a new function: its first call compiles
    before = xla_compiles()
    fn(jnp.ones(3)).block_until_ready()
    assert xla_compiles() > before
    counter.warmed_up()
    compiled = counter.stats()["xla_compiles"]
    assert compiled >= 1
    fn(jnp.zeros(3)).block_until_ready()  # same shape: the cached program
    assert counter.stats() == dict(programs=0, xla_compiles=compiled, xla_compiles_since_warmup=0)
    fn(jnp.zeros(4)).block_until_ready()  # a new shape compiles again
    stats = counter.stats()
    assert (
        stats["xla_compiles_since_warmup"] >= 1
        and stats["xla_compiles"] == compiled + stats["xla_compiles_since_warmup"]
    )


def test_warmup_mark_and_programs():
    counter = CompileCounter()
    counter.warmed_up()
    jax.jit(lambda x: x - 2)(np.ones(5)).block_until_ready()
    counter.warmed_up(keep_earlier=True)  # `start` after `warmup`: the earlier mark stands
    assert counter.stats()["xla_compiles_since_warmup"] >= 1
    counter.warmed_up()  # a second warmup moves it
    assert counter.stats()["xla_compiles_since_warmup"] == 0
    for program in [((2, 8), 16), ((2, 8), 16), ((4, 8), 16)]:
        counter.ran(program)
    assert counter.stats()["programs"] == 2
