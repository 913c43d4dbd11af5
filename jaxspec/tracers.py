"""Whether a call runs under a JAX transformation, for functions that also run eagerly.

Called outside jit, a function built on `lax.cond` or `lax.scan` is executed op
by op, and JAX traces and compiles each of those control-flow ops again at
every call (their branches and bodies are new functions each time). The
library's public functions of that kind (`Model.__call__`, the verification
kernels, `processed_probs`, `processed_logprobs`) test `traced` and, when it is
False, run themselves through one `jax.jit` instead (`jit_when_eager`): one
compiled program per input shape, as under the user's own jit.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax

__all__ = ["jit_when_eager", "traced"]


def traced(*trees) -> bool:
    """True when some leaf of `trees` is a tracer (inside jit, grad, vmap, ...)."""
    return any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree.leaves(trees))


def jit_when_eager(fn: Callable | None = None, *, static_argnums: tuple[int, ...] = ()) -> Callable:
    """Decorator: `fn` as is under a transformation, through one `jax.jit` of itself when eager.

    Args:
      fn: the function; its array arguments must be pytrees of arrays, its
        other arguments listed in `static_argnums` (hashable).
      static_argnums: positions of the static arguments, as in `jax.jit`.

    Returns:
      A function with `fn`'s signature, docstring and results.
    """
    if fn is None:
        return functools.partial(jit_when_eager, static_argnums=static_argnums)
    jitted = jax.jit(fn, static_argnums=static_argnums)

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        if traced(args, kwargs):
            return fn(*args, **kwargs)
        return jitted(*args, **kwargs)

    return wrapper
