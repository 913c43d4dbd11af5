"""A functional KV cache with per-row lengths.

Layout (all layers stacked so the decoder can `scan` over them):

  keys, values: [L, B, S, H, Dh]  (layers, batch rows, slots, heads, head dim)
  lengths:      [B] int32         number of valid slots of each row

H is the number of *key/value* heads: with grouped-query attention (Llama
family, ``num_key_value_heads`` < ``num_attention_heads``) the cache holds
only those, never the query heads' repeated copies.

Padding convention: prompts are *right*-padded. Row b holds its tokens in
slots 0..lengths[b]-1 and token i of a row sits at position i, so positions
never have gaps. A forward call of T tokens writes slots
lengths[b] .. lengths[b]+T-1 of each row and lets query t of row b attend to
slots 0..lengths[b]+t only. Anything in a slot at or beyond a row's length is
therefore stale and never read: rolling back is lowering `lengths`
(`KVCache.rollback`), and the next write overwrites the stale slots.

A token *tree* (`tree_attention.TreeAttention`) is written the same way, one
slot per node in node order; after verification `KVCache.keep_path` moves the
accepted root-to-node path's entries into consecutive slots, so the invariant
above holds again.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp


class KVCache(NamedTuple):
    """Preallocated keys/values of every layer plus per-row valid lengths.

    Attributes:
      keys: [L, B, S, H, Dh] keys, in the model's dtype.
      values: [L, B, S, H, Dh] values, in the model's dtype.
      lengths: [B] int32, valid slots per row.
    """

    keys: jax.Array
    values: jax.Array
    lengths: jax.Array

    @classmethod
    def create(
        cls,
        *,
        num_layers: int,
        batch_size: int,
        max_length: int,
        num_heads: int,
        head_dim: int,
        dtype=jnp.float32,
    ) -> KVCache:
        """An empty cache (all lengths 0) with room for `max_length` slots per row."""
        shape = (num_layers, batch_size, max_length, num_heads, head_dim)
        return cls(
            keys=jnp.zeros(shape, dtype),
            values=jnp.zeros(shape, dtype),
            lengths=jnp.zeros((batch_size,), jnp.int32),
        )

    @property
    def batch_size(self) -> int:
        return self.keys.shape[1]

    @property
    def max_length(self) -> int:
        return self.keys.shape[2]

    def rollback(self, lengths: jax.Array) -> KVCache:
        """Sets each row's valid length to `lengths` [B] (int32); no data moves.

        Only lowering is meaningful: slots past the old length hold nothing valid.
        """
        return self._replace(lengths=jnp.minimum(self.lengths, lengths.astype(jnp.int32)))

    def with_lengths(self, lengths: jax.Array) -> KVCache:
        """Sets per-row lengths [B] outright (caller guarantees the slots are valid)."""
        return self._replace(lengths=jnp.asarray(lengths, jnp.int32))

    def keep_path(self, start_B: jax.Array, path_BxP: jax.Array, num_kept_B: jax.Array) -> KVCache:
        """Compacts a verified token tree: keeps one root-to-node path, in order.

        A tree call wrote node i of row b at slot start_B[b] + i. Afterwards
        slot start_B[b] + j holds what was at start_B[b] + path_BxP[b, j], for
        j < num_kept_B[b], and lengths = start_B + num_kept_B. Entries are
        moved, not recomputed: with per-node positions equal to the depth, a
        node's keys/values are exactly those of a plain pass over its path.

        Args:
          start_B: int32 [B], each row's length before the tree call.
          path_BxP: int32 [B, P], node indices of the kept path (root first,
            each node's parent before it; entries past num_kept_B are ignored).
          num_kept_B: int32 [B], nodes kept (1..P).
        """
        source_BxP = start_B[:, None] + path_BxP.astype(jnp.int32)

        def move(cache_LxBxSxHxD):
            picked = jnp.take_along_axis(cache_LxBxSxHxD, source_BxP[None, :, :, None, None], axis=2)

            def write_row(cache_LxSxHxD, new_LxPxHxD, start):
                return jax.lax.dynamic_update_slice(cache_LxSxHxD, new_LxPxHxD, (0, start, 0, 0))

            return jax.vmap(write_row, in_axes=(1, 1, 0), out_axes=1)(cache_LxBxSxHxD, picked, start_B)

        return KVCache(move(self.keys), move(self.values), (start_B + num_kept_B).astype(jnp.int32))
