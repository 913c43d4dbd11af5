"""`Model`: a Flax decoder's config and params bundled as one pytree.

The params are the only array leaves; the config and dtype are static, so a
`Model` can be passed straight into `jax.jit` and two models with the same
config share compiled code.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from jaxspec.models.cache import KVCache
from jaxspec.models.config import DecoderConfig
from jaxspec.models.decoder import Decoder
from jaxspec.models.llama import LlamaDecoder
from jaxspec.models.tree_attention import TreeAttention
from jaxspec.tracers import jit_when_eager


def decoder_module(config: DecoderConfig, dtype=jnp.float32):
    """The Flax module of `config`'s family: `LlamaDecoder` or `Decoder` (GPT-2 / OPT)."""
    cls = LlamaDecoder if config.is_llama_family else Decoder
    return cls(config, jnp.dtype(dtype))


def empty_cache(config: DecoderConfig, batch_size: int, max_length: int, dtype=jnp.float32) -> KVCache:
    """An unconstrained empty cache for `config`: one entry per KV head."""
    return KVCache.create(
        num_layers=config.num_layers,
        batch_size=batch_size,
        max_length=max_length,
        num_heads=config.num_kv_heads,
        head_dim=config.head_dim,
        dtype=dtype,
    )


@flax.struct.dataclass
class Model:
    """A decoder-only language model ready for cached decoding.

    Attributes:
      params: the Flax params pytree (layer params stacked on a leading axis).
      config: the static architecture (`DecoderConfig`).
      dtype: parameter/computation dtype (a numpy dtype: float32 or bfloat16).
      sharding: None (the default: one device), or the static, hashable
        `jaxspec.sharding.ModelSharding` that `shard_model` sets; caches made
        by `init_cache` then follow the params' head sharding.
    """

    params: Any
    config: DecoderConfig = flax.struct.field(pytree_node=False)
    dtype: Any = flax.struct.field(pytree_node=False, default=np.dtype("float32"))
    sharding: Any = flax.struct.field(pytree_node=False, default=None)

    @property
    def module(self) -> Decoder | LlamaDecoder:
        return decoder_module(self.config, self.dtype)

    @property
    def vocab_size(self) -> int:
        return self.config.vocab_size

    @property
    def max_positions(self) -> int:
        return self.config.max_positions

    def init_cache(self, batch_size: int, max_length: int) -> KVCache:
        """An empty KV cache for `batch_size` rows of up to `max_length` tokens.

        Raises:
          ValueError: if `max_length` exceeds the model's position table.
        """
        if max_length > self.config.max_positions:
            raise ValueError(
                f"a cache of {max_length} positions exceeds this model's context of "
                f"{self.config.max_positions} positions (max_position_embeddings); "
                "shorten the prompt or generate fewer tokens."
            )
        cache = empty_cache(self.config, batch_size, max_length, self.dtype)
        # Sharded over heads like the qkv outputs written into it, so the
        # decode step never moves cache entries between devices.
        return cache if self.sharding is None else self.sharding.constrain_cache(cache)

    @jit_when_eager
    def __call__(
        self,
        tokens_BxT: jax.Array,
        cache: KVCache,
        num_new_B: jax.Array | None = None,
        tree: TreeAttention | None = None,
    ):
        """Forward pass of T new tokens per row (a chain, or a token tree); see `Decoder.__call__`.

        Outside jit, a call runs one compiled program per input shape (op by op,
        the layer scan was traced and compiled again at every call).

        Returns:
          (logits float32 [B, T, V], updated cache).
        """
        return self.module.apply({"params": self.params}, tokens_BxT, cache, num_new_B, tree)

    def num_params(self) -> int:
        return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(self.params))


def abstract_params(config: DecoderConfig, dtype=jnp.float32) -> Any:
    """The params pytree of `config` as `jax.ShapeDtypeStruct`s (no memory)."""
    module = decoder_module(config, dtype)
    cache = empty_cache(config, 1, 1, dtype)
    variables = jax.eval_shape(module.init, jax.random.key(0), jnp.zeros((1, 1), jnp.int32), cache)
    return variables["params"]


def init_model(config: DecoderConfig, key: jax.Array, dtype=jnp.float32) -> Model:
    """A model with random weights, N(0, 0.02) as Hugging Face initialises them (RMSNorm scales 1)."""
    dtype = jnp.dtype(dtype)
    return Model(params=_random_params(key, config, dtype), config=config, dtype=dtype)


@functools.partial(jax.jit, static_argnames=("config", "dtype"))
def _random_params(key: jax.Array, config: DecoderConfig, dtype: jnp.dtype) -> Any:
    """One compiled initialiser per (config, dtype), whatever the key (a jit of a fresh module's
    `init` traced and compiled again at every call)."""
    module = decoder_module(config, dtype)
    return module.init(key, jnp.zeros((1, 1), jnp.int32), empty_cache(config, 1, 1, dtype))["params"]
