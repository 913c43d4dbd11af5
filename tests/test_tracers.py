"""Eager calls of the public functions built on lax.scan / lax.cond compile once per shape (jaxspec.tracers)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from compile_report import count_compiles

from jaxspec import tracers
from jaxspec.sampling import accept, tree

B, K, V = 3, 3, 20


def _kernel_inputs(seed, k=K):
    rng = np.random.default_rng(seed)
    q = jax.nn.softmax(jnp.asarray(rng.normal(size=(B, k, V)), jnp.float32), -1)
    p = jax.nn.softmax(jnp.asarray(rng.normal(size=(B, k + 1, V)), jnp.float32), -1)
    drafts = jnp.asarray(rng.integers(0, V, size=(B, k)), jnp.int32)
    return drafts, q, p


def test_jit_when_eager_runs_the_function_itself_under_a_transformation():
    calls = []

    @tracers.jit_when_eager
    def f(x):
        calls.append(type(x).__name__)
        return jnp.cumsum(x) * 2

    x = jnp.arange(4.0)
    np.testing.assert_array_equal(f(x), jnp.cumsum(x) * 2)  # eager: traced once, by jit
    np.testing.assert_array_equal(jax.jit(f)(x), jnp.cumsum(x) * 2)  # under jit: the body is inlined
    f(x + 1)  # eager again, same shape: the compiled program, no trace
    assert len(calls) == 2 and not tracers.traced(x) and f.__name__ == "f"


@pytest.mark.parametrize("rule", ["verify_tokenwise", "verify_block"])
def test_chain_kernels_called_eagerly_compile_once_per_shape(rule):
    kernel = getattr(accept, rule)
    first = kernel(jax.random.key(0), *_kernel_inputs(0))
    # Same shapes, new values and key: nothing compiles (verify_block's K-step scan did, at every call).
    key, inputs = jax.random.key(1), _kernel_inputs(1)
    assert count_compiles(lambda: jax.block_until_ready(kernel(key, *inputs))) == 0
    jitted = jax.jit(kernel)(jax.random.key(0), *_kernel_inputs(0))
    np.testing.assert_array_equal(np.asarray(first.num_accepted), np.asarray(jitted.num_accepted))
    np.testing.assert_array_equal(np.asarray(first.next_token), np.asarray(jitted.next_token))


@pytest.mark.parametrize("rule", ["verify_tree_traversal", "verify_tree_recursive"])
def test_tree_kernels_called_eagerly_compile_once_per_shape(rule):
    spec = tree.TreeSpec((2, 1))
    kernel = getattr(tree, rule)
    kernel(spec, jax.random.key(0), *_kernel_inputs(0, k=spec.num_nodes))
    key, inputs = jax.random.key(1), _kernel_inputs(1, k=spec.num_nodes)
    assert count_compiles(lambda: jax.block_until_ready(kernel(spec, key, *inputs))) == 0
