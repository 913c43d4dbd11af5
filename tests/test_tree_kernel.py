"""Tests for jaxspec.sampling.tree: exact tree verification (recursive rejection, Traversal Verification).

The target and the draft are prefix tables over a tiny vocabulary: p(. | y_1..y_d)
and q(. | y_1..y_d) for every prefix, so the target's law of the first D + 1
tokens is known exactly, and a round's output can be completed to D + 1
tokens by plain target sampling (what the next round would do, in law).

Three layers:

- Exact, no sampling. Every draft tree of a small case is enumerated with
  its drafting probability. For each, the kernel's own probabilities
  (`_recursive_probs`, `_traversal_probs`, float32) give the law of (last
  accepted node, next token); completed with the target and summed over
  trees, it must equal the target's law of D + 1 tokens. A float64 numpy
  reference written from the papers' pseudocode (Traversal: literally, with
  its without-replacement M_s update) must give the same per-tree law as the
  kernel and be exact to 1e-12.
- Sampled. The jitted kernels run end to end on trees drawn by a JAX drafter
  (with or without replacement, or deterministic top-b), and the completed
  D + 1 tokens are tested by Pearson chi-square against the target's law.
- Chains. On branching (1,) * K, Traversal returns the same arrays as
  `verify_block` and recursive rejection those of `verify_tokenwise` (so
  they are equal in law), and the stop laws agree with block's w and h.

Statistical tests: alpha = 1e-3, fixed seeds (each always passes or always
fails), N = 200,000 rows. Each chi-square test asserts its power >= 0.99
(Patnaik's approximation, tests/stats.py) against the exact law of a stated
plausible bug, and that cells of target probability 0 stay empty.
`test_documented_power` states the smallest deviation the tests detect in
general: lambda = N sum (p1 - p0)^2 / p0 >= 4 N TV^2, so at TV >= 0.012 the
power is >= 0.99 for every table here (up to 81 cells).
"""

import itertools
import zlib

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from stats import chi2_sf, chi_square_power, chi_square_test

from jaxspec.sampling.accept import _block_weights, residual_distribution, verify_block, verify_tokenwise
from jaxspec.sampling.processing import sample_from_probs
from jaxspec.sampling.tree import (
    TreeSpec,
    TreeVerifyResult,
    _recursive_probs,
    _traversal_probs,
    verify_tree_recursive,
    verify_tree_traversal,
)

# Tiny models: compiles dominate, so trade run time for faster compiles (conftest).

ALPHA = 1e-3
N_MC = 200_000

_recursive = jax.jit(verify_tree_recursive, static_argnums=0)
_traversal = jax.jit(verify_tree_traversal, static_argnums=0)
_recursive_p = jax.jit(_recursive_probs, static_argnums=0)
_traversal_p = jax.jit(_traversal_probs, static_argnums=0)
KERNELS = {"recursive": _recursive, "traversal": _traversal}


@pytest.fixture(autouse=True, scope="module")
def _raise_on_rank_promotion():
    # Implicit rank promotion hides shape bugs ([B] vs [B, 1]); make it an error.
    with jax.numpy_rank_promotion("raise"):
        yield


# ----------------------------------------------------------------------------
# Target and draft as prefix tables; drafting; the target's law
# ----------------------------------------------------------------------------


def make_tables(kind, v, tree, seed):
    """(p_tabs, q_tabs): p_tabs[d] [V^d, V] for d = 0..D, q_tabs[d] for d = 0..D-1.

    Row c of table d is the law after the prefix whose base-V code is c.
    Kinds: "random" (Dirichlet(1)); "greedy_p" (one-hot p, random q);
    "sparse" (p keeps its top ceil(V/2) tokens, top-k-like; q is 0 on one token
    that p keeps, when the widest branching still leaves q enough support for
    drafting without replacement, and positive where p is 0); "equal" (q = p).
    """
    rng = np.random.default_rng(seed)
    d_max = tree.depth
    p = [rng.dirichlet(np.ones(v), size=v**d) for d in range(d_max + 1)]
    q = [rng.dirichlet(np.ones(v), size=v**d) for d in range(d_max)]
    if kind == "greedy_p":
        p = [np.eye(v)[t.argmax(-1)] for t in p]
    elif kind == "sparse":
        keep = -(-v // 2)
        for t in p:
            t[t < np.sort(t, axis=-1)[:, -keep, None]] = 0.0
            t /= t.sum(-1, keepdims=True)
        if v - 1 >= max(tree.branching):
            for dp, t in zip(p, q):
                t[np.arange(len(t)), dp.argmax(-1)] = 0.0  # p's top token: only a residual can emit it
                t /= t.sum(-1, keepdims=True)
    elif kind == "equal":
        q = [t.copy() for t in p[:-1]]
    elif kind != "random":
        raise ValueError(kind)
    return p, q


def _codes(tree, drafts, v):
    """[M, N + 1] base-V code of each node's path (root 0), for drafts [M, N] over V tokens."""
    codes = np.zeros((drafts.shape[0], tree.num_nodes + 1), np.int64)
    for i in range(1, tree.num_nodes + 1):
        codes[:, i] = codes[:, tree.parent[i]] * v + drafts[:, i - 1]
    return codes


def node_dists(tree, p_tabs, q_tabs, drafts, mode):
    """float64 (p_nodes [M, N + 1, V], q_nodes [M, N, V]) for drafts [M, N].

    q_nodes[:, i - 1] is the law node i was drawn from: the table row at its
    parent ("with"), that row without the earlier siblings' tokens,
    renormalised ("without"; all zero if nothing is left), or one-hot at the
    token ("deterministic").
    """
    v = p_tabs[0].shape[-1]
    codes = _codes(tree, drafts, v)
    depth = tree.node_depth
    p_nodes = np.stack([p_tabs[depth[i]][codes[:, i]] for i in range(tree.num_nodes + 1)], axis=1)
    q_nodes = np.zeros((drafts.shape[0], tree.num_nodes, v))
    for i in range(1, tree.num_nodes + 1):
        if mode == "deterministic":
            q_nodes[:, i - 1] = np.eye(v)[drafts[:, i - 1]]
            continue
        law = q_tabs[depth[i] - 1][codes[:, tree.parent[i]]].copy()
        if mode == "without":
            for s in range(i - tree.sibling_rank[i], i):
                law[np.arange(len(law)), drafts[:, s - 1]] = 0.0
            mass = law.sum(-1, keepdims=True)
            law = np.where(mass > 0, law / np.where(mass > 0, mass, 1.0), 0.0)
        q_nodes[:, i - 1] = law
    return p_nodes, q_nodes


def deterministic_drafts(tree, q_tabs, v):
    """[1, N]: the top-b tokens of q (ties to the lower id) as the children of every node."""
    drafts = np.zeros((1, tree.num_nodes), np.int64)
    for i in range(1, tree.num_nodes + 1):
        code = _codes(tree, drafts, v)[0, tree.parent[i]]
        ranked = np.argsort(-q_tabs[tree.node_depth[i] - 1][code], kind="stable")
        drafts[0, i - 1] = ranked[tree.sibling_rank[i]]
    return drafts


def enumerate_trees(tree, p_tabs, q_tabs, mode):
    """Every draft tree of positive probability: (drafts [M, N], weight [M], p_nodes, q_nodes)."""
    v = p_tabs[0].shape[-1]
    if mode == "deterministic":
        drafts = deterministic_drafts(tree, q_tabs, v)
    else:
        drafts = np.array(list(itertools.product(range(v), repeat=tree.num_nodes)), np.int64)
    p_nodes, q_nodes = node_dists(tree, p_tabs, q_tabs, drafts, mode)
    weight = np.prod(np.take_along_axis(q_nodes, drafts[..., None], -1)[..., 0], axis=1)
    keep = weight > 0
    return drafts[keep], weight[keep], p_nodes[keep], q_nodes[keep]


def target_law(p_tabs, length):
    """float64 [V^length]: the target's law of the first `length` tokens (base-V codes)."""
    law = np.ones(1)
    for d in range(length):
        law = (law[:, None] * p_tabs[d]).reshape(-1)
    return law


def completed_law(tree, p_tabs, drafts, weight, stop, nxt):
    """Law [V^(D+1)] of the first D + 1 tokens: the round's output, then plain target sampling.

    Args:
      drafts [M, N], weight [M] (drafting law), stop [M, N + 1] (law of the
      last accepted node given the drafts), nxt [M, N + 1, V] (next-token law
      given that node).

    Returns:
      (law, impossible): `impossible` is the mass emitted on prefixes of
      target probability 0 (it must be 0; such mass is left out of `law`).
    """
    v = nxt.shape[-1]
    d_max = tree.depth
    codes = _codes(tree, drafts, v)
    full = target_law(p_tabs, d_max + 1)
    law, impossible = np.zeros(v ** (d_max + 1)), 0.0
    for n in range(d_max + 1):
        nodes = np.flatnonzero(tree.node_depth == n)
        mass = weight[:, None, None] * stop[:, nodes, None] * nxt[:, nodes]  # [M, nodes, V]
        prefix = (codes[:, nodes, None] * v + np.arange(v)).reshape(-1)
        by_prefix = np.bincount(prefix, weights=mass.reshape(-1), minlength=v ** (n + 1))
        joint = full.reshape(v ** (n + 1), -1)  # [prefix, suffix]
        marginal = joint.sum(1)
        ok = marginal > 0
        impossible += by_prefix[~ok].sum()
        cond = np.where(ok[:, None], joint / np.where(ok, marginal, 1.0)[:, None], 0.0)
        law += (by_prefix[:, None] * cond).reshape(-1)
    return law, impossible


def recursive_stop_law(tree, accept):
    """[M, N + 1] law of the last accepted node from the per-node acceptance probabilities [M, N]."""
    m = accept.shape[0]
    reach = np.zeros((m, tree.num_nodes + 1))
    reach[:, 0] = 1.0
    stop = np.zeros_like(reach)
    for u in range(tree.num_nodes + 1):
        left = reach[:, u].copy()
        for c in range(tree.first_child[u], tree.first_child[u] + tree.num_children[u]):
            reach[:, c] = left * accept[:, c - 1]
            left = left * (1.0 - accept[:, c - 1])
        stop[:, u] = left
    return stop


def traversal_stop_law(tree, stop_prob):
    """[M, N + 1] law of the accepted node: tests in post-order, the first that fires; the root last."""
    stop = np.zeros((stop_prob.shape[0], tree.num_nodes + 1))
    left = np.ones(stop_prob.shape[0])
    for v in tree.postorder[:-1]:
        stop[:, v] = left * stop_prob[:, v - 1]
        left = left * (1.0 - stop_prob[:, v - 1])
    stop[:, 0] = left
    return stop


def _kernel_law(rule, tree, drafts, q_nodes, p_nodes):
    """(stop [M, N + 1], next [M, N + 1, V]) in float64, from the kernel's own float32 probabilities."""
    args = (jnp.asarray(drafts, jnp.int32), jnp.asarray(q_nodes, jnp.float32), jnp.asarray(p_nodes, jnp.float32))
    if rule == "recursive":
        accept, nxt = _recursive_p(tree, *args)
        stop = recursive_stop_law(tree, np.asarray(accept, np.float64))
    else:
        stop_prob, nxt = _traversal_p(tree, *args)
        stop = traversal_stop_law(tree, np.asarray(stop_prob, np.float64))
    return stop, np.asarray(nxt, np.float64)


# ----------------------------------------------------------------------------
# Float64 references, written from the papers' pseudocode
# ----------------------------------------------------------------------------


def _weight(mass, q_x):
    """min(1, mass / q_x), with q_x = 0 < mass -> 1 and mass = 0 -> 0."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(mass > 0, np.where(mass >= q_x, 1.0, mass / q_x), 0.0)


def _norm_residual(a, b):
    """norm(max(0, a - b)) per row, falling back to norm(a) when it has no mass."""
    r = np.maximum(a - b, 0.0)
    mass = r.sum(-1, keepdims=True)
    total = a.sum(-1, keepdims=True)
    fallback = a / np.where(total > 0, total, 1.0)
    return np.where(mass > 0, r / np.where(mass > 0, mass, 1.0), fallback)


def _at(x, tokens):
    return np.take_along_axis(x, tokens[:, None], -1)[:, 0]


def recursive_ref(tree, drafts, q_nodes, p_nodes, bug=None):
    """(stop [M, N + 1], next [M, N + 1, V]) of recursive rejection sampling (SpecInfer).

    bug="stale_residual": every sibling is tested against p itself (the
    residual is not updated after a rejected sibling), and the final residual
    is norm(max(0, p - q_last)).
    """
    m, n1, v = p_nodes.shape
    accept = np.zeros((m, n1 - 1))
    nxt = p_nodes / p_nodes.sum(-1, keepdims=True)
    for u in range(n1):
        r = p_nodes[:, u]
        for c in range(tree.first_child[u], tree.first_child[u] + tree.num_children[u]):
            x, q = drafts[:, c - 1], q_nodes[:, c - 1]
            accept[:, c - 1] = _weight(_at(r, x), _at(q, x))
            r = _norm_residual(p_nodes[:, u] if bug == "stale_residual" else r, q)
        if tree.num_children[u]:
            nxt[:, u] = r
    return recursive_stop_law(tree, accept), nxt


def traversal_ref(tree, drafts, q_nodes, p_nodes, siblings, bug=None):
    """(stop [M, N + 1], next [M, N + 1, V]) of Traversal Verification (Weng et al. 2025, Algorithm 2).

    Literally: a p_alpha per node, M_b and M_s per node; repeatedly take the
    first leaf of the remaining tree in depth-first post-order, test it with
    p_alpha, and on rejection delete it and update its parent's M_b, M_s and
    p_alpha, then recompute p_alpha over the parent's remaining subtree.

    siblings: how M_s is updated after a deletion: "without" (the paper:
    remove the token, renormalise), "with" (unchanged: i.i.d. siblings),
    "given" (the next sibling's q, as the kernel does).
    bug: "stale_residual" (M_b not updated), "stale_alpha" (p_alpha of the
    parent not updated), or None.
    """
    m, n1, v = p_nodes.shape
    parent, rows = tree.parent, np.arange(m)
    mb = p_nodes.copy()
    ms = np.zeros_like(p_nodes)
    for u in range(n1):
        if tree.num_children[u]:
            ms[:, u] = q_nodes[:, tree.first_child[u] - 1]
    alpha = np.ones((m, n1))
    deleted = np.zeros(n1, bool)

    def recompute(top):
        for c in range(1, n1):  # BFS order: parents first
            if not deleted[c] and (tree.strict_descendants[top, c]):
                u, x = parent[c], drafts[:, c - 1]
                alpha[:, c] = _weight(alpha[:, u] * _at(mb[:, u], x), _at(ms[:, u], x))

    recompute(0)
    stop, nxt = np.zeros((m, n1)), np.zeros((m, n1, v))
    left = np.ones(m)
    while True:
        # First leaf of the remaining tree in post-order: descend through first remaining children.
        leaf = 0
        while True:
            kids = [c for c in range(tree.first_child[leaf], tree.first_child[leaf] + tree.num_children[leaf])]
            kids = [c for c in kids if not deleted[c]]
            if not kids:
                break
            leaf = kids[0]
        # M_b of a node with alpha = 0 (it never stops) can be all zero: its next law is then 0, not 0 / 0.
        total = mb[:, leaf].sum(-1, keepdims=True)
        nxt[:, leaf] = mb[:, leaf] / np.where(total > 0, total, 1.0)
        if leaf == 0:
            stop[:, 0] = left * alpha[:, 0]
            assert np.allclose(alpha[:, 0], 1.0)
            return stop, nxt
        stop[:, leaf] = left * alpha[:, leaf]
        left = left * (1.0 - alpha[:, leaf])
        u, x = parent[leaf], drafts[:, leaf - 1]
        scaled = alpha[:, u, None] * mb[:, u]
        s = np.maximum(scaled - ms[:, u], 0.0).sum(-1)
        denom = s + (1.0 - alpha[:, u])  # as the kernel: exactly s when alpha = 1, so S = 0 keeps alpha at 1
        if bug != "stale_residual":
            mb[:, u] = _norm_residual(scaled, ms[:, u])
        if bug != "stale_alpha":
            with np.errstate(divide="ignore", invalid="ignore"):
                alpha[:, u] = np.where(denom > 0, s / denom, 1.0)
        if siblings == "without":
            ms[rows, u, x] = 0.0
            mass = ms[:, u].sum(-1, keepdims=True)
            ms[:, u] = np.where(mass > 0, ms[:, u] / np.where(mass > 0, mass, 1.0), 0.0)
        elif siblings == "given" and tree.next_sibling[leaf] >= 0:
            ms[:, u] = q_nodes[:, tree.next_sibling[leaf] - 1]
        deleted[leaf] = True
        recompute(u)


def _pad_rows(m_full, *arrays):
    """Pads every array's first axis to m_full rows (repeating row 0) so one compile serves a tree."""
    return [np.concatenate([a, np.repeat(a[:1], m_full - len(a), axis=0)]) for a in arrays]


def _assert_chi_square(counts, law, alternative, label):
    """Zero cells empty, chi-square p-value > alpha, and power >= 0.99 against `alternative`.

    The combined test rejects if a zero-probability cell is hit or the
    chi-square rejects; its power is 1 - (1 - m)^N (1 - chi-square power), m the
    alternative's mass on the zero cells (as in tests/test_block_kernel.py).
    """
    law, alternative, counts = np.ravel(law), np.ravel(alternative), np.ravel(counts)
    n, zero = int(counts.sum()), law <= 1e-12
    assert counts[zero].sum() == 0, f"{label}: emitted an outcome of target probability 0"
    stat, p_value, df = chi_square_test(law, counts)
    miss = (1.0 - alternative[zero].sum()) ** n * (1.0 - chi_square_power(law, alternative, n, ALPHA))
    assert 1.0 - miss >= 0.99, f"{label}: test too weak (power {1.0 - miss:.3f})"
    assert p_value > ALPHA, f"{label}: chi2={stat:.1f} df={df} p={p_value:.2e}"


def _power_at(df, lam, alpha=ALPHA):
    """Power of the level-alpha chi-square(df) test at noncentrality lam (Patnaik, as tests/stats.py)."""
    lo, hi = 0.0, 10.0 * df + 100.0
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if chi2_sf(mid, df) > alpha else (lo, mid)
    c = (df + 2 * lam) / (df + lam)
    h = (df + lam) ** 2 / (df + 2 * lam)
    return chi2_sf(hi / c, h)


# ----------------------------------------------------------------------------
# Layout
# ----------------------------------------------------------------------------


def test_tree_layout():
    tree = TreeSpec((2, 2))
    assert tree.num_nodes == 6 and tree.depth == 2
    np.testing.assert_array_equal(tree.parent, [-1, 0, 0, 1, 1, 2, 2])
    np.testing.assert_array_equal(tree.node_depth, [0, 1, 1, 2, 2, 2, 2])
    np.testing.assert_array_equal(tree.first_child, [1, 3, 5, -1, -1, -1, -1])
    np.testing.assert_array_equal(tree.next_sibling, [-1, 2, -1, 4, -1, 6, -1])
    np.testing.assert_array_equal(tree.sibling_rank, [0, 0, 1, 0, 1, 0, 1])
    np.testing.assert_array_equal(tree.postorder, [3, 4, 1, 5, 6, 2, 0])
    np.testing.assert_array_equal(tree.path[[0, 2, 5]], [[-1, -1], [2, -1], [2, 5]])
    assert TreeSpec((2, 2)) == tree and hash(TreeSpec((2, 2))) == hash(tree) and TreeSpec((2,)) != tree
    chain = TreeSpec((1, 1, 1))
    np.testing.assert_array_equal(chain.postorder, [3, 2, 1, 0])
    np.testing.assert_array_equal(chain.node_depth, [0, 1, 2, 3])
    assert TreeSpec((3, 2, 2, 1)).num_nodes == 3 + 6 + 12 + 12
    for bad in [(), (2, 0), (1.5,), (True,)]:
        with pytest.raises(ValueError, match="branching"):
            TreeSpec(bad)


# ----------------------------------------------------------------------------
# Exact laws over every draft tree
# ----------------------------------------------------------------------------

TREES = [((2,), 5), ((2, 1), 4), ((2, 2), 4), ((3, 2), 3)]
CASES = [
    ("random", "without"),
    ("random", "with"),
    ("random", "deterministic"),
    ("greedy_p", "without"),
    ("greedy_p", "deterministic"),
    ("sparse", "without"),
    ("sparse", "with"),
    ("equal", "without"),
]


@pytest.mark.parametrize("branching, v", TREES, ids=[str(t[0]) for t in TREES])
@pytest.mark.parametrize("kind, mode", CASES, ids=[f"{k}-{m}" for k, m in CASES])
def test_exact_law_is_target(branching, v, kind, mode):
    """Over every draft tree: both kernels' own probabilities give the target's law of D + 1 tokens.

    Also: the float64 references (Traversal literally as the paper, with its
    own M_s update for the drafting mode) give the same per-tree law as the
    kernels and are exact to 1e-12.
    """
    tree = TreeSpec(branching)
    p_tabs, q_tabs = make_tables(kind, v, tree, seed=zlib.crc32(repr((branching, kind, mode)).encode()))
    drafts, weight, p_nodes, q_nodes = enumerate_trees(tree, p_tabs, q_tabs, mode)
    target = target_law(p_tabs, tree.depth + 1)
    m_full = v**tree.num_nodes
    padded = _pad_rows(m_full, drafts, q_nodes, p_nodes)
    literal = {"deterministic": "given"}.get(mode, mode)
    for rule in ("recursive", "traversal"):
        stop, nxt = (a[: len(drafts)] for a in _kernel_law(rule, tree, *padded))
        np.testing.assert_allclose(stop.sum(1), 1.0, atol=1e-6)
        law, impossible = completed_law(tree, p_tabs, drafts, weight, stop, nxt)
        assert impossible < 1e-7, f"{rule}: mass {impossible} on prefixes the target cannot produce"
        np.testing.assert_allclose(law, target, atol=1e-5, err_msg=rule)
        if rule == "recursive":
            ref_stop, ref_next = recursive_ref(tree, drafts, q_nodes, p_nodes)
        else:
            ref_stop, ref_next = traversal_ref(tree, drafts, q_nodes, p_nodes, literal)
        np.testing.assert_allclose(stop, ref_stop, atol=2e-5, err_msg=rule)
        np.testing.assert_allclose(stop[..., None] * nxt, ref_stop[..., None] * ref_next, atol=2e-5, err_msg=rule)
        ref_law, ref_impossible = completed_law(tree, p_tabs, drafts, weight, ref_stop, ref_next)
        assert ref_impossible < 1e-12
        np.testing.assert_allclose(ref_law, target, atol=1e-12, err_msg=f"{rule} reference")


@pytest.mark.parametrize(
    "rule, bug, mode",
    [
        ("recursive", "stale_residual", "without"),
        ("recursive", "stale_residual", "with"),
        ("traversal", "stale_residual", "without"),
        ("traversal", "stale_alpha", "without"),
        ("traversal", "stale_ms", "without"),
    ],
)
def test_plausible_bugs_are_not_exact(rule, bug, mode):
    """The exact check above has teeth: each plausible slip moves the law by TV > 0.01 on (2, 2).

    stale_residual: residual (M_b) not updated after a rejected sibling;
    stale_alpha: the parent's p_alpha not updated; stale_ms: M_s left at the
    first child's q though the siblings were drawn without replacement.
    """
    tree = TreeSpec((2, 2))
    p_tabs, q_tabs = make_tables("random", 4, tree, seed=3)
    drafts, weight, p_nodes, q_nodes = enumerate_trees(tree, p_tabs, q_tabs, mode)
    if rule == "recursive":
        stop, nxt = recursive_ref(tree, drafts, q_nodes, p_nodes, bug=bug)
    elif bug == "stale_ms":
        stop, nxt = traversal_ref(tree, drafts, q_nodes, p_nodes, "with")
    else:
        stop, nxt = traversal_ref(tree, drafts, q_nodes, p_nodes, "given", bug=bug)
    law, impossible = completed_law(tree, p_tabs, drafts, weight, stop, nxt)
    assert 0.5 * (np.abs(law - target_law(p_tabs, 3)).sum() + impossible) > 0.01


def test_depth_one_rules_coincide():
    """D = 1: a(root) stays 1, so Traversal is recursive rejection; same law per draft tree."""
    tree = TreeSpec((3,))
    p_tabs, q_tabs = make_tables("random", 5, tree, seed=4)
    drafts, _, p_nodes, q_nodes = enumerate_trees(tree, p_tabs, q_tabs, "without")
    padded = _pad_rows(5**3, drafts, q_nodes, p_nodes)
    rec_stop, rec_next = _kernel_law("recursive", tree, *padded)
    tv_stop, tv_next = _kernel_law("traversal", tree, *padded)
    np.testing.assert_allclose(tv_stop, rec_stop, atol=1e-6)
    np.testing.assert_allclose(tv_stop[..., None] * tv_next, rec_stop[..., None] * rec_next, atol=1e-6)


# ----------------------------------------------------------------------------
# Sampled: the jitted kernels end to end, drafts drawn on device
# ----------------------------------------------------------------------------


def _flat(tabs):
    """Stacks tables [V^d, V] into one [sum V^d, V] array and returns (array, row offset per depth)."""
    offsets = np.cumsum([0] + [len(t) for t in tabs])[:-1]
    return jnp.asarray(np.concatenate(tabs), jnp.float32), tuple(int(o) for o in offsets)


def _draft_tree(key, tree, mode, v, q_flat, q_off, p_flat, p_off, b):
    """Draws B trees from the q tables: (drafts [B, N], q_nodes [B, N, V], p_nodes [B, N + 1, V])."""
    keys = jax.random.split(key, tree.num_nodes)
    codes = [jnp.zeros((b,), jnp.int32)]
    drafts, laws = [], []
    for i in range(1, tree.num_nodes + 1):
        u, d = int(tree.parent[i]), int(tree.node_depth[i])
        base = q_flat[q_off[d - 1] + codes[u]]
        taken = jnp.zeros((b, v), bool)
        for s in range(i - int(tree.sibling_rank[i]), i):
            taken = taken | jax.nn.one_hot(drafts[s - 1], v, dtype=bool)
        if mode == "deterministic":
            x = jnp.argmax(jnp.where(taken, -1.0, base), axis=-1).astype(jnp.int32)
            law = jax.nn.one_hot(x, v, dtype=jnp.float32)
        else:
            law = base
            if mode == "without":
                law = jnp.where(taken, 0.0, base)
                law = law / jnp.sum(law, axis=-1, keepdims=True)
            x = sample_from_probs(keys[i - 1], law)
        drafts.append(x)
        laws.append(law)
        codes.append(codes[u] * v + x)
    codes_BxN1 = jnp.stack(codes, axis=1)
    p_nodes = p_flat[jnp.asarray(p_off)[tree.node_depth][None, :] + codes_BxN1]
    return jnp.stack(drafts, axis=1), jnp.stack(laws, axis=1), p_nodes


def _complete(key, tree, v, tokens, num_accepted, p_flat, p_off):
    """Base-V code of the first D + 1 tokens: the round's tokens, then plain target sampling."""
    keys = jax.random.split(key, tree.depth + 1)
    code = jnp.zeros_like(num_accepted)
    for pos in range(tree.depth + 1):
        sampled = sample_from_probs(keys[pos], p_flat[p_off[pos] + code])
        code = code * v + jnp.where(pos <= num_accepted, tokens[:, pos], sampled)
    return code


def _sampled_round(key, tree, rule, mode, v, q_flat, q_off, p_flat, p_off, b):
    key_draft, key_verify, key_complete = jax.random.split(key, 3)
    drafts, q_nodes, p_nodes = _draft_tree(key_draft, tree, mode, v, q_flat, q_off, p_flat, p_off, b)
    verify = verify_tree_recursive if rule == "recursive" else verify_tree_traversal
    result = verify(tree, key_verify, drafts, q_nodes, p_nodes)
    return _complete(key_complete, tree, v, result.tokens, result.num_accepted, p_flat, p_off), result


_sampled = jax.jit(_sampled_round, static_argnums=(1, 2, 3, 4, 6, 8, 9))

SAMPLED = [
    ("traversal", (3, 2), 3, "random", "without", 11),
    ("traversal", (2, 2), 4, "sparse", "with", 12),
    ("traversal", (2, 2), 4, "random", "deterministic", 13),
    ("recursive", (3, 2), 3, "random", "with", 14),
    ("recursive", (2, 2), 4, "sparse", "without", 15),
]


@pytest.mark.parametrize("rule, branching, v, kind, mode, seed", SAMPLED)
def test_sampled_first_tokens_follow_target(rule, branching, v, kind, mode, seed):
    """N = 200k rounds on drafted trees; the completed D + 1 tokens ~ the target (chi-square).

    Power >= 0.99 is asserted against the exact law of the same rule with the
    residual not updated after a rejected sibling (stale_residual), computed
    by enumeration with the float64 reference.
    """
    tree = TreeSpec(branching)
    p_tabs, q_tabs = make_tables(kind, v, tree, seed)
    (p_flat, p_off), (q_flat, q_off) = _flat(p_tabs), _flat(q_tabs)
    codes, _ = _sampled(jax.random.key(seed), tree, rule, mode, v, q_flat, q_off, p_flat, p_off, N_MC)
    counts = np.bincount(np.asarray(codes), minlength=v ** (tree.depth + 1))
    drafts, weight, p_nodes, q_nodes = enumerate_trees(tree, p_tabs, q_tabs, mode)
    literal = {"deterministic": "given"}.get(mode, mode)
    if rule == "recursive":
        stop, nxt = recursive_ref(tree, drafts, q_nodes, p_nodes, bug="stale_residual")
    else:
        stop, nxt = traversal_ref(tree, drafts, q_nodes, p_nodes, literal, bug="stale_residual")
    buggy, impossible = completed_law(tree, p_tabs, drafts, weight, stop, nxt)
    buggy = buggy + impossible / len(buggy)  # any mass the bug puts on impossible prefixes, spread
    _assert_chi_square(counts, target_law(p_tabs, tree.depth + 1), buggy, f"{rule} {branching} {kind} {mode}")


def test_documented_power():
    """TV >= 0.012 gives lambda >= 4 N TV^2 = 115 and power >= 0.99 at up to 80 df (81 cells)."""
    lam = 4 * N_MC * 0.012**2
    for df in (8, 26, 63, 80):
        assert _power_at(df, lam) >= 0.99


# ----------------------------------------------------------------------------
# Chains: Traversal is block verification, recursive rejection is token-wise
# ----------------------------------------------------------------------------


def _chain_inputs(seed, b=4096, k=3, v=6):
    """Random p [B, K+1, V], q [B, K, V] with zeros, and arbitrary (not drawn-from-q) drafts."""
    rng = np.random.default_rng(seed)
    p = rng.dirichlet(np.full(v, 0.5), size=(b, k + 1)) * (rng.random((b, k + 1, v)) > 0.3)
    q = rng.dirichlet(np.full(v, 0.5), size=(b, k)) * (rng.random((b, k, v)) > 0.3)
    p[..., 0] += 1e-3
    q[..., 1] += 1e-3
    p = jnp.asarray(p / p.sum(-1, keepdims=True), jnp.float32)
    q = jnp.asarray(q / q.sum(-1, keepdims=True), jnp.float32)
    draft = jnp.asarray(rng.integers(0, v, size=(b, k)), jnp.int32)
    return draft, q, p


def test_chain_traversal_is_block_verification():
    """Branching (1, 1, 1): stop probabilities are block's h_1, h_2 and w_3, and outputs are bit-identical."""
    tree = TreeSpec((1, 1, 1))
    _block = jax.jit(verify_block)
    for seed in range(3):
        draft, q, p = _chain_inputs(seed)
        w, h = _block_weights(draft, q, p)
        stop_prob, nxt = _traversal_p(tree, draft, q, p)
        np.testing.assert_allclose(stop_prob[:, :2], h[:, :2], rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(stop_prob[:, 2], w[:, 2], rtol=1e-6, atol=1e-7)
        w1 = jnp.concatenate([jnp.ones_like(w[:, :1]), w[:, :2]], axis=1)
        expected = residual_distribution(w1[..., None] * p[:, :3], q)
        # A node with weight 0 never stops; its law is not block's 0 / 0 there (the kernel keeps M_b).
        live = np.asarray(w1) > 0
        # float32, computed in another order (a scan of residual updates): agreement to ~1e-5 relative.
        np.testing.assert_allclose(np.asarray(nxt[:, :3])[live], np.asarray(expected)[live], rtol=1e-4, atol=1e-7)
        key = jax.random.key(100 + seed)
        block, traversal = _block(key, draft, q, p), _traversal(tree, key, draft, q, p)
        np.testing.assert_array_equal(traversal.num_accepted, block.num_accepted)
        np.testing.assert_array_equal(traversal.next_token, block.next_token)
    assert set(np.asarray(block.num_accepted).tolist()) == {0, 1, 2, 3}


def test_chain_recursive_is_tokenwise():
    """Branching (1, 1, 1): recursive rejection returns verify_tokenwise's arrays for the same key."""
    tree = TreeSpec((1, 1, 1))
    _tokenwise = jax.jit(verify_tokenwise)
    for seed in range(3):
        draft, q, p = _chain_inputs(10 + seed)
        key = jax.random.key(200 + seed)
        tokenwise, recursive = _tokenwise(key, draft, q, p), _recursive(tree, key, draft, q, p)
        np.testing.assert_array_equal(recursive.num_accepted, tokenwise.num_accepted)
        np.testing.assert_array_equal(recursive.next_token, tokenwise.next_token)
    assert set(np.asarray(tokenwise.num_accepted).tolist()) == {0, 1, 2, 3}


def test_chain_traversal_accepts_more_than_recursive():
    """On a chain, E[n] of Traversal (block) >= recursive (token-wise), per draft block; exact, K = 3."""
    tree = TreeSpec((1, 1, 1))
    p_tabs, q_tabs = make_tables("random", 3, tree, seed=21)
    drafts, weight, p_nodes, q_nodes = enumerate_trees(tree, p_tabs, q_tabs, "with")
    rec_stop, _ = _kernel_law("recursive", tree, drafts, q_nodes, p_nodes)
    tv_stop, _ = _kernel_law("traversal", tree, drafts, q_nodes, p_nodes)
    rec_n, tv_n = weight @ (rec_stop @ tree.node_depth), weight @ (tv_stop @ tree.node_depth)
    assert tv_n >= rec_n - 1e-6 and tv_n > rec_n + 1e-3, (tv_n, rec_n)


# ----------------------------------------------------------------------------
# Greedy, shapes, validation
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("rule", ["recursive", "traversal"])
def test_greedy_one_hot_follows_argmax_path(rule):
    """One-hot p and one-hot q (a greedy target, distinct top-b drafts): the longest argmax path, then argmax."""
    tree = TreeSpec((3, 2, 1))
    b, v = 256, 7
    rng = np.random.default_rng(30)
    n1 = tree.num_nodes + 1
    drafts = np.zeros((b, tree.num_nodes), np.int64)
    argmax = rng.integers(0, v, size=(b, n1))
    for u in range(n1):
        kids = range(tree.first_child[u], tree.first_child[u] + tree.num_children[u])
        if len(kids):
            tokens = np.stack([rng.permutation(v)[: len(kids)] for _ in range(b)])
            # Half the time the target's argmax is one of the children.
            hit = rng.random(b) < 0.6
            argmax[hit, u] = tokens[hit, rng.integers(0, len(kids), size=b)[hit]]
            drafts[:, np.asarray(kids) - 1] = tokens
    p = jax.nn.one_hot(argmax, v)
    q = jax.nn.one_hot(drafts, v)
    result = KERNELS[rule](tree, jax.random.key(31), jnp.asarray(drafts, jnp.int32), q, p)
    rows, node = np.arange(b), np.zeros(b, np.int64)
    for _ in range(tree.depth):
        cur, match = node.copy(), np.zeros(b, bool)
        for j in range(max(tree.branching)):
            c = tree.first_child[cur] + j
            ok = (j < tree.num_children[cur]) & ~match
            ok &= drafts[rows, np.clip(c - 1, 0, tree.num_nodes - 1)] == argmax[rows, cur]
            node = np.where(ok, c, node)
            match |= ok
    np.testing.assert_array_equal(result.accepted_node, node)
    np.testing.assert_array_equal(result.num_accepted, tree.node_depth[node])
    np.testing.assert_array_equal(result.next_token, argmax[np.arange(b), node])
    assert set(tree.node_depth[node].tolist()) == {0, 1, 2, 3}


@pytest.mark.parametrize("rule", ["recursive", "traversal"])
def test_shapes_dtypes_tokens_and_no_retrace(rule):
    tree = TreeSpec((2, 2))
    verify = verify_tree_recursive if rule == "recursive" else verify_tree_traversal
    fn = jax.jit(chex.assert_max_traces(verify, n=1), static_argnums=0)
    b, v, n = 64, 5, tree.num_nodes
    rng = np.random.default_rng(40)
    q = jnp.asarray(rng.dirichlet(np.ones(v), size=(b, n)), jnp.float32)
    p = jnp.asarray(rng.dirichlet(np.ones(v), size=(b, n + 1)), jnp.float32)
    draft = jnp.asarray(rng.integers(0, v, size=(b, n)), jnp.int32)
    result = fn(tree, jax.random.key(0), draft, q, p)
    fn(tree, jax.random.key(1), (draft + 1) % v, q, jax.nn.softmax(p * 3.0))  # new values: no retrace
    assert isinstance(result, TreeVerifyResult)
    chex.assert_shape([result.num_accepted, result.next_token, result.accepted_node], (b,))
    chex.assert_shape(result.path, (b, tree.depth))
    chex.assert_shape(result.tokens, (b, tree.depth + 1))
    chex.assert_type([result.num_accepted, result.next_token, result.accepted_node, result.path], jnp.int32)
    n_acc, node, path, tokens = (
        np.asarray(x) for x in (result.num_accepted, result.accepted_node, result.path, result.tokens)
    )
    np.testing.assert_array_equal(path, tree.path[node])
    np.testing.assert_array_equal(n_acc, tree.node_depth[node])
    for row in range(b):
        kept = path[row, : n_acc[row]]
        np.testing.assert_array_equal(tokens[row, : n_acc[row]], np.asarray(draft)[row, kept - 1])
        assert tokens[row, n_acc[row]] == result.next_token[row]
        assert (tokens[row, n_acc[row] + 1 :] == -1).all() and (path[row, n_acc[row] :] == -1).all()
        assert all(tree.parent[kept[i + 1]] == kept[i] for i in range(len(kept) - 1))
    assert len(set(n_acc.tolist())) > 1


@pytest.mark.parametrize(
    "draft_shape, q_shape, p_shape, message",
    [
        ((2, 5), (2, 5, 4), (2, 6, 4), "N = 6"),
        ((2, 6), (2, 6, 4), (2, 6, 4), "N \\+ 1"),
        ((2, 6), (2, 5, 4), (2, 7, 4), "draft_probs"),
    ],
)
def test_bad_shapes_raise(draft_shape, q_shape, p_shape, message):
    tree = TreeSpec((2, 2))
    for verify in (verify_tree_recursive, verify_tree_traversal):
        with pytest.raises(ValueError, match=message):
            verify(tree, jax.random.key(0), jnp.zeros(draft_shape, jnp.int32), jnp.ones(q_shape), jnp.ones(p_shape))
    with pytest.raises(TypeError, match="TreeSpec"):
        verify_tree_traversal(
            (2, 2), jax.random.key(0), jnp.zeros((2, 6), jnp.int32), jnp.ones((2, 6, 4)), jnp.ones((2, 7, 4))
        )


@pytest.mark.parametrize("rule", ["recursive", "traversal"])
def test_a_rejected_node_with_children_stays_rejected(rule):
    """Regression: one-hot p and q on (1, 2) with the depth-1 draft off p's support. Its weight
    a = 0 made Traversal's residual 0 / 0 = NaN, then a = 1 at the next child: the node was
    accepted with a NaN next-token law (seen as wrong greedy tokens in the tree loop)."""
    tree = TreeSpec((1, 2))
    p = jax.nn.one_hot(jnp.array([[3, 5, 6, 7]]), 8)  # the target wants 3 at the root
    drafts = jnp.array([[1, 2, 4]])
    kernel = {"recursive": _recursive, "traversal": _traversal}[rule]  # jitted: eager kernels compile op by op
    for seed in range(5):
        res = kernel(tree, jax.random.key(seed), drafts, jax.nn.one_hot(drafts, 8), p)
        assert int(res.num_accepted[0]) == 0 and int(res.next_token[0]) == 3
    if rule == "traversal":
        stop, nxt = _traversal_p(tree, drafts, jax.nn.one_hot(drafts, 8), p)
        assert np.all(np.isfinite(np.asarray(stop))) and np.all(np.isfinite(np.asarray(nxt)))
        np.testing.assert_array_equal(np.asarray(stop)[0, 0], 0.0)
