"""Exact verification of a token tree: recursive rejection and Traversal Verification.

A draft *tree* offers several continuations per position; the target scores
every node in one pass, and a verification rule keeps one root-to-node path
plus one more token, so that the emitted tokens are distributed exactly as
plain sampling from the target. Two rules are implemented, each as a pure,
jit-able kernel vectorised over the batch (the tree's shape is static):

- `verify_tree_recursive`: recursive rejection sampling (SpecInfer's
  multi-step speculative sampling; "RRS" of Jeon et al. 2024, with or without
  replacement). Top-down: at a node, try its children in draft order; child
  x_j is accepted with probability min(1, r_j(x_j) / q_j(x_j)), where r_1 is
  the target's p at the node and, after a rejected child,
  r_{j+1} = norm(max(0, r_j - q_j)). An accepted child becomes the node; if
  every child is rejected, the next token is drawn from the last r; at an
  accepted leaf, the bonus token is drawn from p at the leaf.
- `verify_tree_traversal`: Traversal Verification (Weng et al., NeurIPS 2025,
  arXiv 2505.12398). Bottom-up: nodes are tested in post-order (the first leaf
  of a depth-first traversal, then the next, a parent once all its children are
  gone), each with a *sequence-level* acceptance probability a(v), and the first
  accepted node ends the round with its whole root path. With a(root) = 1 and
  a(v) = min(1, a(u) M_b(x_v | u) / M_s(x_v | u)) for a child v of u (M_b = p
  and M_s = q at first), rejecting v updates its parent u:

      S      = sum_x max(0, a(u) M_b(x | u) - M_s(x | u)),
      M_b(.|u) <- norm(max(0, a(u) M_b(.|u) - M_s(.|u))),
      a(u)   <- S / (S + 1 - a(u)),
      M_s(.|u) <- the law of u's next child,

  and the a of u's remaining subtree is recomputed from the new values. An
  accepted node v emits its path, then a token from M_b(. | v): p at a leaf, the
  residual at a node whose children were all rejected. On a chain (branching
  (1, ..., 1)) this is block verification (Sun et al. 2024) exactly: a(v) is
  the block weight w_n, the updated a(u) is its stop probability h_n, and
  `verify_tree_traversal` returns the same arrays as `accept.verify_block`
  for the same key.

The vocabulary is the same as in `accept`: *accepted* draft tokens, one *next*
token (a residual draw after a rejection, or the *bonus* token from p after
an accepted leaf).

Tree layout (`TreeSpec`): a per-depth branching (b_1, ..., b_D) gives every
depth-(d-1) node b_d children. Nodes are numbered in breadth-first order:
node 0 is the root (the position after the committed prefix, drafted by
nobody), nodes 1..N are the drafts, depth by depth, and within a depth by
parent, so the children of a node are contiguous and in draft order (sibling
j is the j-th drawn). Arrays over drafts ([B, N]) hold node i in column i - 1;
arrays over positions ([B, N + 1]) hold node i in column i. For example
(2, 2): depth-1 nodes 1, 2; node 1's children 3, 4; node 2's children 5, 6.

What q must be. draft_probs[:, i - 1] is exactly the law node i's token was
drawn from, given its parent's path and its earlier siblings' tokens. This
covers the three ways of drafting siblings, and both rules are exact for each:

- without replacement (recommended; what Traversal Verification's paper
  assumes): sibling j is drawn from q with siblings 1..j-1 removed and
  renormalised, and that renormalised remainder is its q;
- with replacement (i.i.d.): every sibling's q is the parent's q itself;
  duplicates are allowed, but they waste verify positions;
- deterministic (top-b by the draft's scores, greedy): every q is one-hot.

The rules only ever use sibling j's q after siblings 1..j-1 were rejected, so
the contract above is all they need (the recursive rule's exactness argument
is the chain's, applied per sibling; Traversal's is the paper's with its
without-replacement M_s update replaced by the next sibling's given q, which
is the same update when drafting is without replacement). p must be the
processed target distribution at every node, as in `accept`.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxspec.sampling import draws
from jaxspec.sampling.accept import residual_distribution
from jaxspec.sampling.processing import sample_from_probs
from jaxspec.tracers import jit_when_eager

__all__ = ["TreeSpec", "TreeVerifyResult", "verify_tree_recursive", "verify_tree_traversal"]


def _frozen(a) -> np.ndarray:
    a = np.asarray(a, np.int32)
    a.setflags(write=False)
    return a


@dataclasses.dataclass(frozen=True)
class TreeSpec:
    """Static shape of a draft tree: b_d children for every node at depth d - 1.

    Hashable and compared by `branching` only, so it can be a static argument
    of `jax.jit`. The derived tables are read-only numpy int32 arrays (built on
    first use); node numbering is in the module docstring.

    Attributes:
      branching: (b_1, ..., b_D), each >= 1. (1,) * K is a chain of K drafts.
    """

    branching: tuple[int, ...]

    def __post_init__(self):
        branching = tuple(self.branching)
        if not branching or any(not isinstance(b, (int, np.integer)) or isinstance(b, bool) for b in branching):
            raise ValueError(f"branching must be a non-empty tuple of ints (b_1, ..., b_D), got {self.branching!r}.")
        if min(branching) < 1:
            raise ValueError(f"every branching factor must be >= 1, got {branching}.")
        object.__setattr__(self, "branching", tuple(int(b) for b in branching))

    @property
    def depth(self) -> int:
        """D, the number of draft levels (the longest accepted path)."""
        return len(self.branching)

    @functools.cached_property
    def level_sizes(self) -> tuple[int, ...]:
        """Number of nodes at depths 0..D (1 for the root)."""
        sizes = [1]
        for b in self.branching:
            sizes.append(sizes[-1] * b)
        return tuple(sizes)

    @functools.cached_property
    def level_starts(self) -> tuple[int, ...]:
        """Node id of the first node at depths 0..D, and N + 1 at the end."""
        return tuple(int(s) for s in np.cumsum((0, *self.level_sizes)))

    @property
    def num_nodes(self) -> int:
        """N, the number of draft nodes (the root excluded)."""
        return self.level_starts[-1] - 1

    @functools.cached_property
    def parent(self) -> np.ndarray:
        """[N + 1] parent id of each node; -1 for the root."""
        parent = [-1]
        for d, b in enumerate(self.branching, start=1):
            parent += [self.level_starts[d - 1] + k // b for k in range(self.level_sizes[d])]
        return _frozen(parent)

    @functools.cached_property
    def node_depth(self) -> np.ndarray:
        """[N + 1] depth of each node (0 for the root)."""
        return _frozen(np.repeat(np.arange(self.depth + 1), self.level_sizes))

    @functools.cached_property
    def sibling_rank(self) -> np.ndarray:
        """[N + 1] j - 1 for the j-th child of its parent (0 for the root)."""
        rank = [0]
        for d, b in enumerate(self.branching, start=1):
            rank += [k % b for k in range(self.level_sizes[d])]
        return _frozen(rank)

    @functools.cached_property
    def num_children(self) -> np.ndarray:
        """[N + 1] number of children (0 for a leaf)."""
        return _frozen(np.repeat((*self.branching, 0), self.level_sizes))

    @functools.cached_property
    def first_child(self) -> np.ndarray:
        """[N + 1] id of the first child; -1 for a leaf."""
        first = []
        for d in range(self.depth + 1):
            for k in range(self.level_sizes[d]):
                first.append(self.level_starts[d + 1] + k * self.branching[d] if d < self.depth else -1)
        return _frozen(first)

    @functools.cached_property
    def next_sibling(self) -> np.ndarray:
        """[N + 1] id of the next child of the same parent; -1 for a last child and the root."""
        nxt = np.full(self.num_nodes + 1, -1)
        has_next = np.arange(self.num_nodes + 1) > 0
        has_next &= self.sibling_rank < np.asarray((0, *self.branching))[self.node_depth] - 1
        nxt[has_next] = np.arange(self.num_nodes + 1)[has_next] + 1
        return _frozen(nxt)

    @functools.cached_property
    def postorder(self) -> np.ndarray:
        """[N + 1] node ids in depth-first post-order (children in draft order); the root is last."""
        order = []

        def visit(v):
            if self.first_child[v] >= 0:
                for c in range(self.first_child[v], self.first_child[v] + self.num_children[v]):
                    visit(c)
            order.append(v)

        visit(0)
        return _frozen(order)

    @functools.cached_property
    def postorder_rank(self) -> np.ndarray:
        """[N + 1] position of each node in `postorder`."""
        rank = np.empty(self.num_nodes + 1, np.int32)
        rank[self.postorder] = np.arange(self.num_nodes + 1)
        return _frozen(rank)

    @functools.cached_property
    def path(self) -> np.ndarray:
        """[N + 1, D] the ids of the nodes at depths 1..D on the root path of each node, -1 past its depth."""
        path = np.full((self.num_nodes + 1, self.depth), -1)
        for v in range(1, self.num_nodes + 1):
            u = v
            while u > 0:
                path[v, self.node_depth[u] - 1] = u
                u = self.parent[u]
        return _frozen(path)

    @functools.cached_property
    def strict_descendants(self) -> np.ndarray:
        """[N + 1, N + 1] bool: [u, v] is True iff v lies strictly below u."""
        below = np.zeros((self.num_nodes + 1, self.num_nodes + 1), bool)
        for v in range(1, self.num_nodes + 1):
            u = self.parent[v]
            while u >= 0:
                below[u, v] = True
                u = self.parent[u]
        below.setflags(write=False)
        return below


class TreeVerifyResult(NamedTuple):
    """Outcome of verifying one draft tree per batch row.

    Attributes:
      num_accepted: int32 [B], n, the depth of the last accepted node (0..D).
      next_token: int32 [B], the token after the accepted path: a draw from the
        residual at that node if its children were rejected, else (a leaf) the
        bonus draw from p there.
      accepted_node: int32 [B], id of the last accepted node (0, the root, if none).
      path: int32 [B, D], ids of the accepted nodes at depths 1..n, then -1.
      tokens: int32 [B, D + 1], the emitted tokens: the n accepted draft tokens,
        next_token at column n, then -1.
    """

    num_accepted: jax.Array
    next_token: jax.Array
    accepted_node: jax.Array
    path: jax.Array
    tokens: jax.Array


def _probs_at(probs: jax.Array, tokens: jax.Array) -> jax.Array:
    """probs [..., V] float, tokens [...] int -> probs[..., tokens] as [...]."""
    return jnp.take_along_axis(probs, tokens[..., None], axis=-1)[..., 0]


def _clipped_weight(mass: jax.Array, q_x: jax.Array) -> jax.Array:
    """min(1, mass / q_x), as block verification's running weight (`kernel._running_weights`).

    NaN-free: mass >= q_x > 0 or q_x = 0 < mass gives 1; mass = 0 gives 0
    whatever q_x is (a weight of 0 stays 0); the division is used only when
    mass < q_x, where it is finite.
    """
    clipped = (mass >= q_x) & (mass > 0)
    return jnp.where(clipped, 1.0, mass / jnp.where(q_x > 0, q_x, 1.0))


def _check_tree_shapes(tree: TreeSpec, draft_tokens, draft_probs, target_probs) -> None:
    # Shapes are static under jit, so these checks cost nothing at run time.
    if not isinstance(tree, TreeSpec):
        raise TypeError(f"tree must be a TreeSpec (e.g. TreeSpec((3, 2))), got {type(tree).__name__}.")
    n = tree.num_nodes
    if draft_tokens.ndim != 2 or draft_tokens.shape[1] != n:
        raise ValueError(
            f"draft_tokens must be [B, N] with N = {n} nodes for branching {tree.branching}, "
            f"got shape {draft_tokens.shape}."
        )
    b = draft_tokens.shape[0]
    if draft_probs.ndim != 3 or draft_probs.shape[:2] != (b, n):
        raise ValueError(f"draft_probs must be [B, N, V] = [{b}, {n}, V], got shape {draft_probs.shape}.")
    v = draft_probs.shape[-1]
    if target_probs.shape != (b, n + 1, v):
        raise ValueError(
            f"target_probs must be [B, N + 1, V] = [{b}, {n + 1}, {v}] (column 0 for the root, "
            f"column i for node i), got shape {target_probs.shape}."
        )
    if not jnp.issubdtype(draft_tokens.dtype, jnp.integer):
        raise ValueError(f"draft_tokens must be an integer array, got dtype {draft_tokens.dtype}.")


def _as_arrays(draft_tokens, draft_probs, target_probs):
    return (
        jnp.asarray(draft_tokens),
        jnp.asarray(draft_probs, jnp.float32),
        jnp.asarray(target_probs, jnp.float32),
    )


def _leaf_next_probs(target_probs: jax.Array) -> jax.Array:
    # The bonus law at a leaf, written as the chain kernels write it
    # (residual_distribution(p, 0) = p / sum p) so that chains match them bit for bit.
    return residual_distribution(target_probs, jnp.zeros_like(target_probs))


def _recursive_probs(tree: TreeSpec, draft_tokens, draft_probs, target_probs) -> tuple[jax.Array, jax.Array]:
    """The recursive rule's probabilities, deterministic given the drafts.

    Returns:
      accept_BxN: float32 [B, N], probability that node i (column i - 1) is
        accepted once its parent was accepted and its earlier siblings rejected.
      next_BxN1xV: float32 [B, N + 1, V], the next-token law if the round ends
        at node i: the residual after all its children were rejected, or p
        (normalised) at a leaf.
    """
    draft_tokens, draft_probs, target_probs = _as_arrays(draft_tokens, draft_probs, target_probs)
    x_BxN = draft_tokens.astype(jnp.int32)
    b, v = x_BxN.shape[0], draft_probs.shape[-1]
    starts, sizes = tree.level_starts, tree.level_sizes
    next_BxN1xV = _leaf_next_probs(target_probs)
    accept_levels = []
    # Uniform branching per depth: the children of the k-th node at depth d are
    # nodes starts[d+1] + k b .. + b - 1, so each level is one reshape, no gather.
    for d, br in enumerate(tree.branching):
        lo, hi = starts[d + 1] - 1, starts[d + 2] - 1  # draft columns of depth d + 1
        x_BxPxC = x_BxN[:, lo:hi].reshape(b, sizes[d], br)
        q_BxPxCxV = draft_probs[:, lo:hi].reshape(b, sizes[d], br, v)
        r_BxPxV = target_probs[:, starts[d] : starts[d + 1]]  # r_1 = p at the parent, unnormalised as given
        accept = []
        for j in range(br):
            q_BxPxV = q_BxPxCxV[:, :, j]
            x_BxP = x_BxPxC[:, :, j]
            accept.append(_clipped_weight(_probs_at(r_BxPxV, x_BxP), _probs_at(q_BxPxV, x_BxP)))
            r_BxPxV = residual_distribution(r_BxPxV, q_BxPxV)
        accept_levels.append(jnp.stack(accept, axis=-1).reshape(b, sizes[d + 1]))
        next_BxN1xV = next_BxN1xV.at[:, starts[d] : starts[d + 1]].set(r_BxPxV)
    return jnp.concatenate(accept_levels, axis=1), next_BxN1xV


def _traversal_probs(tree: TreeSpec, draft_tokens, draft_probs, target_probs) -> tuple[jax.Array, jax.Array]:
    """Traversal Verification's probabilities, deterministic given the drafts.

    The nodes are tested in a fixed order (post-order) and the round goes on
    only while every test fails, so the state the rule sees at each test is a
    function of the drafts alone: one `lax.scan` over the N draft nodes in
    post-order computes it, and the random part (`verify_tree_traversal`)
    then only draws. The root, tested last, has a = 1 and always stops.

    Returns:
      stop_BxN: float32 [B, N], a(i) when node i (column i - 1) is tested:
        the probability that the round stops there if it gets there.
      next_BxN1xV: float32 [B, N + 1, V], M_b(. | i) when node i is tested:
        the next-token law if the round stops at node i.
    """
    draft_tokens, draft_probs, target_probs = _as_arrays(draft_tokens, draft_probs, target_probs)
    x_BxN = draft_tokens.astype(jnp.int32)
    b, n = x_BxN.shape
    parent = np.maximum(tree.parent, 0)
    # Per node: p at the parent and q at the token, the factors of the initial weights.
    p_par_x_BxN = _probs_at(target_probs[:, parent[1:]], x_BxN)
    q_x_BxN = _probs_at(draft_probs, x_BxN)
    ones_Bx1 = jnp.ones((b, 1), jnp.float32)
    p_par_x_BxN1 = jnp.concatenate([ones_Bx1, p_par_x_BxN], axis=1)
    q_x_BxN1 = jnp.concatenate([ones_Bx1, q_x_BxN], axis=1)

    # Initial weights, top-down: a(v) = min(1, a(u) p_u(x_v) / q_v(x_v)); the
    # product is clipped at every step (block verification's w_n).
    a_BxN1 = ones_Bx1
    for d in range(1, tree.depth + 1):
        lo, hi = tree.level_starts[d], tree.level_starts[d + 1]
        a_par = a_BxN1[:, parent[lo:hi]]
        a_BxN1 = jnp.concatenate([a_BxN1, _clipped_weight(a_par * p_par_x_BxN1[:, lo:hi], q_x_BxN1[:, lo:hi])], axis=1)

    # One scan step per non-root node, in post-order: reject it, update its parent.
    order = tree.postorder[:-1]
    nxt = tree.next_sibling[order]
    xs = (
        jnp.asarray(order),
        jnp.asarray(tree.parent[order]),
        jnp.asarray(np.maximum(nxt, 0)),
        jnp.asarray(nxt >= 0),
        jnp.asarray(tree.strict_descendants[np.maximum(nxt, 0)] & (nxt >= 0)[:, None]),
    )
    parent_j = jnp.asarray(parent)

    def step(carry, step_xs):
        a_BxN1, mb_BxN1xV = carry
        v, u, w, has_w, below_w_N1 = step_xs
        a_u_B = a_BxN1[:, u]
        scaled_BxV = a_u_B[:, None] * mb_BxN1xV[:, u]
        q_v_BxV = draft_probs[:, v - 1]
        s_B = jnp.sum(jnp.maximum(scaled_BxV - q_v_BxV, 0.0), axis=-1)
        denom_B = s_B + (1.0 - a_u_B)
        # 0 / 0 only when a(u) = 1 and S = 0 (then M_b = M_s): a(u) stays 1, as
        # block verification's h_n (see `kernel._block_weights`).
        new_a_u_B = jnp.where(denom_B > 0, s_B / jnp.where(denom_B > 0, denom_B, 1.0), 1.0)
        # With a(u) = 0, u and its subtree can never stop: keep M_b(. | u) (the
        # residual of an all-zero scaled law would be 0 / 0 = NaN, and a NaN here
        # turned into a(u) = 1 at u's next child: a rejected node accepted).
        new_mb_u_BxV = jnp.where((a_u_B > 0)[:, None], residual_distribution(scaled_BxV, q_v_BxV), mb_BxN1xV[:, u])
        a_BxN1 = a_BxN1.at[:, u].set(new_a_u_B)
        mb_BxN1xV = mb_BxN1xV.at[:, u].set(new_mb_u_BxV)
        # The next sibling w, drawn from its own q (M_s after the deletion),
        # then its subtree, top-down, one level per pass.
        new_a_w_B = _clipped_weight(new_a_u_B * _probs_at(new_mb_u_BxV, x_BxN[:, w - 1]), q_x_BxN1[:, w])
        a_BxN1 = a_BxN1.at[:, w].set(jnp.where(has_w, new_a_w_B, a_BxN1[:, w]))
        for _ in range(tree.depth - 1):
            below = _clipped_weight(a_BxN1[:, parent_j] * p_par_x_BxN1, q_x_BxN1)
            a_BxN1 = jnp.where(below_w_N1[None, :], below, a_BxN1)
        return (a_BxN1, mb_BxN1xV), None

    (a_BxN1, mb_BxN1xV), _ = jax.lax.scan(step, (a_BxN1, target_probs), xs)
    # M_b is never changed at a leaf: its next-token law is p, written as the chain kernels write it.
    leaf = jnp.asarray(tree.num_children == 0)
    next_BxN1xV = jnp.where(leaf[None, :, None], _leaf_next_probs(target_probs), mb_BxN1xV)
    return a_BxN1[:, 1:], next_BxN1xV


def _result(tree: TreeSpec, key_next, draft_tokens, node_B, next_BxN1xV) -> TreeVerifyResult:
    path_BxD = jnp.asarray(tree.path)[node_B]
    num_accepted_B = jnp.asarray(tree.node_depth)[node_B]
    accepted_BxD = jnp.where(path_BxD > 0, jnp.take_along_axis(draft_tokens, jnp.maximum(path_BxD - 1, 0), axis=1), -1)
    next_BxV = jnp.take_along_axis(next_BxN1xV, node_B[:, None, None], axis=1)[:, 0]
    next_token_B = sample_from_probs(key_next, next_BxV)
    column_BxD1 = jax.lax.broadcasted_iota(jnp.int32, (node_B.shape[0], tree.depth + 1), 1)
    tokens_BxD1 = jnp.concatenate([accepted_BxD, jnp.full_like(accepted_BxD[:, :1], -1)], axis=1)
    tokens_BxD1 = jnp.where(column_BxD1 == num_accepted_B[:, None], next_token_B[:, None], tokens_BxD1)
    return TreeVerifyResult(
        num_accepted=num_accepted_B,
        next_token=next_token_B,
        accepted_node=node_B,
        path=path_BxD,
        tokens=tokens_BxD1,
    )


@jit_when_eager(static_argnums=(0,))
def verify_tree_recursive(
    tree: TreeSpec,
    key: jax.Array,
    draft_tokens: jax.Array,
    draft_probs: jax.Array,
    target_probs: jax.Array,
) -> TreeVerifyResult:
    """Recursive rejection sampling over a draft tree, for B rows at once.

    The rule is in the module docstring. Every acceptance test is drawn up
    front (one Bernoulli per node, `draws.bernoulli`); the walk then descends
    D levels, taking at each the first accepted child in draft order. On a
    chain ((1,) * K) this is token-wise verification and, for the same key,
    returns the same arrays as `accept.verify_tokenwise`.

    Args:
      tree: the static tree shape (`TreeSpec`); mark it static under jit.
      key: a PRNG key, consumed here.
      draft_tokens: int [B, N], node i's token in column i - 1 (BFS order).
      draft_probs: float32 [B, N, V], exactly the law each node's token was
        drawn from given its parent's path and earlier siblings (module docstring).
      target_probs: float32 [B, N + 1, V], the processed target distribution
        for the token after each node (column 0: after the committed prefix).

    Returns:
      A `TreeVerifyResult`. With context-free or causally computed p, the
      emitted tokens have exactly the law of sampling from the target.
    """
    draft_tokens, draft_probs, target_probs = _as_arrays(draft_tokens, draft_probs, target_probs)
    _check_tree_shapes(tree, draft_tokens, draft_probs, target_probs)
    draft_tokens = draft_tokens.astype(jnp.int32)
    key_accept, key_next = jax.random.split(key)
    accept_prob_BxN, next_BxN1xV = _recursive_probs(tree, draft_tokens, draft_probs, target_probs)
    accept_BxN = draws.bernoulli(key_accept, accept_prob_BxN)
    b = draft_tokens.shape[0]
    node_B = jnp.zeros((b,), jnp.int32)
    alive_B = jnp.ones((b,), bool)
    starts = tree.level_starts
    for d, br in enumerate(tree.branching):
        # Children of the current depth-d node k: starts[d+1] + k br + j, j < br.
        # Rows that already stopped sit at a shallower node: clamp, their result is discarded.
        index_B = jnp.clip(node_B - starts[d], 0, tree.level_sizes[d] - 1)
        children_BxC = starts[d + 1] + index_B[:, None] * br + jnp.arange(br, dtype=jnp.int32)[None, :]
        accepted_BxC = jnp.take_along_axis(accept_BxN, children_BxC - 1, axis=1)
        found_B = jnp.any(accepted_BxC, axis=1) & alive_B
        first_B = draws.argmax_first(accepted_BxC.astype(jnp.int32))
        node_B = jnp.where(found_B, jnp.take_along_axis(children_BxC, first_B[:, None], axis=1)[:, 0], node_B)
        alive_B = found_B
    return _result(tree, key_next, draft_tokens, node_B, next_BxN1xV)


@jit_when_eager(static_argnums=(0,))
def verify_tree_traversal(
    tree: TreeSpec,
    key: jax.Array,
    draft_tokens: jax.Array,
    draft_probs: jax.Array,
    target_probs: jax.Array,
) -> TreeVerifyResult:
    """Traversal Verification (Weng et al. 2025) of a draft tree, for B rows at once.

    The rule is in the module docstring; `_traversal_probs` computes every
    node's stop probability and next-token law (deterministic given the
    drafts), then one Bernoulli per node is drawn up front and the round stops
    at the first node in post-order whose test fires (the root if none). On a
    chain ((1,) * K) this is block verification and, for the same key, returns
    the same arrays as `accept.verify_block`.

    Arguments and result: as `verify_tree_recursive`.
    """
    draft_tokens, draft_probs, target_probs = _as_arrays(draft_tokens, draft_probs, target_probs)
    _check_tree_shapes(tree, draft_tokens, draft_probs, target_probs)
    draft_tokens = draft_tokens.astype(jnp.int32)
    key_stop, key_next = jax.random.split(key)
    stop_prob_BxN, next_BxN1xV = _traversal_probs(tree, draft_tokens, draft_probs, target_probs)
    stop_BxN = draws.bernoulli(key_stop, stop_prob_BxN)
    n = tree.num_nodes
    rank_BxN = jnp.where(stop_BxN, jnp.asarray(tree.postorder_rank[1:])[None, :], n)
    node_B = jnp.asarray(tree.postorder)[jnp.min(rank_BxN, axis=1)]  # rank N is the root
    return _result(tree, key_next, draft_tokens, node_B, next_BxN1xV)
