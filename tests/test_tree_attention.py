"""Token trees in one forward pass: every node's logits are those of a plain pass over its root path,
and after `KVCache.keep_path` the cache is that of a plain pass over the accepted path.

GPT-2, OPT, Llama (grouped-query, llama3 RoPE) and Mistral with a sliding window shorter than
prompt + tree depth; a ragged batch of two rows; the tree of branching (2, 2) and a chain.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxspec.models.tree_attention import tree_attention
from jaxspec.testing import random_model, tiny_config

VOCAB = 32
PARENT_22 = [-1, 0, 0, 1, 1, 2, 2]  # root; depth 1: nodes 1, 2; node 1's children 3, 4; node 2's 5, 6
PROMPTS = [[3, 7, 1, 9, 4, 2], [5, 8, 6]]  # ragged: row 1 is padded
NODES = np.array([[2, 11, 12, 13, 14, 15, 16], [6, 20, 21, 22, 23, 24, 25]], np.int32)  # node 0 = last prompt token

CONFIGS = {
    "gpt2": lambda: tiny_config("gpt2", vocab_size=VOCAB),
    "opt": lambda: tiny_config("opt", vocab_size=VOCAB),
    "llama": lambda: tiny_config(
        "llama",
        vocab_size=VOCAB,
        num_heads=4,
        num_key_value_heads=2,
        rope_parameters=dict(
            rope_type="llama3",
            rope_theta=100.0,
            factor=4.0,
            low_freq_factor=1.0,
            high_freq_factor=4.0,
            original_max_position_embeddings=8,
        ),
    ),
    "mistral": lambda: tiny_config("mistral", vocab_size=VOCAB, sliding_window=4),
}


def _path(parent, node):
    path = [node]
    while parent[path[-1]] != -1:
        path.append(parent[path[-1]])
    return path[::-1]


@jax.jit
def _forward(model, tokens, cache, lengths=None, tree=None):
    """One jitted pass (an eager pass compiles every op of every layer on its own)."""
    return model(tokens, cache, lengths, tree=tree)


def _prefilled(model, max_length=24):
    """The cache holding each row's prompt but its last token (the loops' invariant), and lengths."""
    width = max(map(len, PROMPTS))
    ids = np.zeros((len(PROMPTS), width), np.int32)
    for b, p in enumerate(PROMPTS):
        ids[b, : len(p)] = p
    lengths = np.array([len(p) - 1 for p in PROMPTS], np.int32)
    cache = model.init_cache(len(PROMPTS), max_length)
    _, cache = _forward(model, jnp.asarray(ids[:, :-1]), cache, jnp.asarray(lengths))
    return cache


PLAIN_WIDTH = 10  # longest plain pass: 5 prompt tokens + a 3-node path + 1 next token


@jax.jit
def _padded_plain_pass(model, seq_1xW):
    return model(seq_1xW, model.init_cache(1, PLAIN_WIDTH))


def _plain_pass(model, seq):
    """(logits [n, V], cache) of a plain pass over the n ids `seq`.

    Run right-padded to one width (one compile per model, not one per length;
    attention is causal, so the padding changes nothing at positions < n).
    """
    assert len(seq) <= PLAIN_WIDTH
    padded = np.zeros((1, PLAIN_WIDTH), np.int32)
    padded[0, : len(seq)] = seq
    logits, cache = _padded_plain_pass(model, jnp.asarray(padded))
    return np.asarray(logits[0, : len(seq)]), cache


def _chain_logits(model, row, tokens):
    """Logits of a plain pass over PROMPTS[row][:-1] + tokens, at the positions of `tokens`."""
    logits, _ = _plain_pass(model, PROMPTS[row][:-1] + list(tokens))
    return logits[len(PROMPTS[row]) - 1 :]


@pytest.mark.parametrize("family", CONFIGS)
@pytest.mark.parametrize("parent", [PARENT_22, [-1, 0, 1, 2]], ids=["tree22", "chain"])
def test_every_node_sees_exactly_its_root_path(family, parent):
    model = random_model(CONFIGS[family](), seed=2, scale=4.0)
    nodes = NODES[:, : len(parent)]
    cache = _prefilled(model)
    logits, after = jax.jit(lambda m, t, c, tr: m(t, c, tree=tr))(
        model, jnp.asarray(nodes), cache, tree_attention(parent)
    )
    np.testing.assert_array_equal(after.lengths, cache.lengths + len(parent))
    for row in range(len(PROMPTS)):
        for node in range(len(parent)):
            path = _path(parent, node)
            expected = _chain_logits(model, row, nodes[row, path])[-1]
            np.testing.assert_allclose(logits[row, node], expected, atol=2e-5, rtol=1e-5, err_msg=f"{row} {node}")
    if parent == PARENT_22:  # not vacuous: siblings at one position see different contexts
        assert np.max(np.abs(np.asarray(logits[:, 3] - logits[:, 5]))) > 1e-3


@pytest.mark.parametrize("family", ["gpt2", "llama", "mistral"])
def test_keep_path_leaves_the_cache_of_a_plain_pass(family):
    """Row 0 keeps root -> 2 -> 5, row 1 root -> 1; a next step then equals a full pass."""
    model = random_model(CONFIGS[family](), seed=3, scale=4.0)
    cache = _prefilled(model)
    start = cache.lengths
    _, cache = _forward(model, jnp.asarray(NODES), cache, tree=tree_attention(PARENT_22))
    paths = [[0, 2, 5], [0, 1]]
    path_BxP = np.zeros((2, 3), np.int32)
    for b, p in enumerate(paths):
        path_BxP[b, : len(p)] = p
    kept = cache.keep_path(start, jnp.asarray(path_BxP), jnp.asarray([len(p) for p in paths]))
    np.testing.assert_array_equal(kept.lengths, np.asarray(start) + [3, 2])
    nxt = jnp.asarray([[30], [31]], np.int32)
    logits, _ = _forward(model, nxt, kept)
    for row, path in enumerate(paths):
        accepted = list(NODES[row, path]) + [int(nxt[row, 0])]
        expected = _chain_logits(model, row, accepted)[-1]
        np.testing.assert_allclose(logits[row, 0], expected, atol=2e-5, rtol=1e-5)
        # The kept entries themselves equal a plain pass's.
        seq = PROMPTS[row][:-1] + list(NODES[row, path])
        _, plain = _plain_pass(model, seq)
        n = len(seq)
        np.testing.assert_allclose(kept.keys[:, row, :n], plain.keys[:, 0, :n], atol=2e-5, rtol=1e-5)
        np.testing.assert_allclose(kept.values[:, row, :n], plain.values[:, 0, :n], atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "parent, message",
    [([0, 0], "root"), ([-1, 1], "before it"), ([-1, 0, 3, 1], "before it"), ([], "root")],
)
def test_bad_trees_are_refused(parent, message):
    with pytest.raises(ValueError, match=message):
        tree_attention(parent)


def test_tree_size_must_match_the_chunk():
    model = random_model(CONFIGS["gpt2"](), seed=0)
    with pytest.raises(ValueError, match="3 nodes was given for 4"):
        model(jnp.zeros((1, 4), jnp.int32), model.init_cache(1, 8), tree=tree_attention([-1, 0, 0]))


@pytest.mark.parametrize("family", ["gpt2", "mistral"])
def test_feeding_the_tree_level_by_level_equals_one_pass(family):
    """Nodes 0..2 in one call, then nodes 3..6 (`feeding(3)`): the same logits as the whole tree at once."""
    model = random_model(CONFIGS[family](), seed=4, scale=4.0)
    tree = tree_attention(PARENT_22)
    whole, _ = _forward(model, jnp.asarray(NODES), _prefilled(model), tree=tree)
    first, cache = _forward(model, jnp.asarray(NODES[:, :3]), _prefilled(model), tree=tree)
    second, cache = _forward(model, jnp.asarray(NODES[:, 3:]), cache, tree=tree.feeding(3))
    np.testing.assert_allclose(np.concatenate([first, second], axis=1), whole, atol=2e-5, rtol=1e-5)
