"""Attention over a token tree in one forward pass (SpecInfer / Medusa style).

A verify call may score a whole tree of draft continuations at once: its N + 1
nodes (node 0 the root, the last committed token; every other node's parent
listed before it) are fed as one chunk of N + 1 tokens. Two things differ from
a chain:

- positions: node i sits at position ``start + depth(i)`` (its distance from
  the root), so siblings share a position;
- the mask: node i sees the cached prefix (slots < start) and, in the chunk,
  only its ancestors and itself.

Then the logits at node i are exactly those of a plain pass over the root path
of node i, and so are its keys/values (`KVCache.keep_path` compacts the accepted
path afterwards). `TreeAttention` carries the two tables as arrays; a draft
that grows the tree level by level feeds one level per call (`feeding`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np


class TreeAttention(NamedTuple):
    """The layout of a token tree of M nodes, and which of them a call feeds.

    A call with T tokens feeds nodes offset .. offset + T - 1; the tree's node 0
    sits at slot ``cache.lengths - offset`` (so nodes fed by earlier calls, e.g.
    a draft expanding the tree level by level, are already in the cache).

    Attributes:
      depth_M: int32 [M], node i's distance from the root (root 0).
      visible_MxM: bool [M, M], visible[i, j] iff node j is node i or one of its ancestors.
      offset: int32 [], the first node this call feeds (0: the whole tree from its root).
    """

    depth_M: jax.Array
    visible_MxM: jax.Array
    offset: jax.Array | int = 0

    def feeding(self, offset: int) -> TreeAttention:
        """The same tree, for a call that feeds nodes offset, offset + 1, ..."""
        return self._replace(offset=offset)


def tree_attention(parent: Sequence[int]) -> TreeAttention:
    """The `TreeAttention` of the tree whose node i has parent parent[i] (-1 for the root, node 0).

    Raises:
      ValueError: node 0 is not the only root, or a parent does not come before its child.
    """
    parent = [int(p) for p in parent]
    if not parent or parent[0] != -1:
        raise ValueError(f"node 0 must be the root (parent -1), got parent={parent}.")
    if any(not 0 <= p < i for i, p in enumerate(parent) if i > 0):
        raise ValueError(f"every node but the root needs a parent listed before it, got parent={parent}.")
    size = len(parent)
    depth = np.zeros(size, np.int32)
    visible = np.eye(size, dtype=bool)
    for i in range(1, size):
        depth[i] = depth[parent[i]] + 1
        visible[i] |= visible[parent[i]]
    return TreeAttention(jnp.asarray(depth), jnp.asarray(visible), 0)


def positions_and_mask(
    start_B: jax.Array,
    length: int,
    max_length: int,
    tree: TreeAttention | None = None,
    sliding_window: int | None = None,
) -> tuple[jax.Array, jax.Array]:
    """Positions of T new tokens and which cache slots each may attend to.

    Chain (tree None): token t of row b sits at slot and position start_B[b] + t
    and sees slots 0..start_B[b] + t. Tree: node i (the call's token t is node
    offset + t) sits at slot root_B[b] + i with root_B = start_B - offset, at
    position root_B[b] + depth[i], and sees the slots before the root and, in
    the tree, its ancestors and itself. With a sliding window W, a query at
    position p sees only keys at positions > p - W (a key's position: its slot
    before the tree, root_B + its depth in it).

    Returns:
      (positions_BxT int32, mask_Bx1xTxS bool).
    """
    slots_S = jnp.arange(max_length, dtype=jnp.int32)
    if tree is None:
        positions_BxT = start_B[:, None] + jnp.arange(length, dtype=jnp.int32)[None, :]
        mask_BxTxS = slots_S[None, None, :] <= positions_BxT[:, :, None]
        key_positions_BxS = jnp.broadcast_to(slots_S[None, :], (start_B.shape[0], max_length))
    else:
        size = tree.depth_M.shape[0]
        if length > size:
            raise ValueError(f"a tree of {size} nodes was given for {length} tokens per row.")
        depth_M = tree.depth_M.astype(jnp.int32)
        nodes_T = jnp.asarray(tree.offset, jnp.int32) + jnp.arange(length, dtype=jnp.int32)
        root_B = start_B - jnp.asarray(tree.offset, jnp.int32)
        positions_BxT = root_B[:, None] + depth_M[nodes_T][None, :]
        rel_BxS = slots_S[None, :] - root_B[:, None]  # node id of each slot of the tree
        in_tree_BxS = (rel_BxS >= 0) & (rel_BxS <= nodes_T[-1])
        node_BxS = jnp.clip(rel_BxS, 0, size - 1)
        visible_BxTxS = jnp.moveaxis(tree.visible_MxM[nodes_T][:, node_BxS], 0, 1)  # [T, B, S] -> [B, T, S]
        mask_BxTxS = (rel_BxS < 0)[:, None, :] | (in_tree_BxS[:, None, :] & visible_BxTxS)
        key_positions_BxS = jnp.where(in_tree_BxS, root_B[:, None] + depth_M[node_BxS], slots_S[None, :])
    if sliding_window is not None:
        mask_BxTxS &= key_positions_BxS[:, None, :] > positions_BxT[:, :, None] - sliding_window
    return positions_BxT, mask_BxTxS[:, None]
