"""`tree_speculative_sample`: a draft tree verified in one target pass, in the on-device loop.

Checked: greedy tree decoding returns the target's greedy tokens (GPT-2 / OPT, Llama / noisy Llama;
several tree shapes; both rules), the exact target law of the first 3 tokens (the chi-square
harness of test_exactness.py, asserted power >= 0.99) for both rules and two settings, the
counts agree with each other, and bad arguments are refused.
"""

import exact_law
import jax
import numpy as np
import pytest

from jaxspec import NgramDrafter, autoregressive_sample, tree_speculative_sample
from jaxspec.generation.tree_speculative import draw_children
from jaxspec.sampling.processing import SamplingConfig
from jaxspec.testing import random_model, tiny_config

PROMPTS = [[1, 2, 3, 4, 5], [7, 8], [9, 3, 9]]


def _pair(family):
    if family == "gpt2":
        target = random_model(tiny_config("gpt2", vocab_size=32), seed=0, scale=6.0)
        draft = random_model(tiny_config("opt", vocab_size=32), seed=1, scale=6.0)
    else:
        llama = tiny_config("llama", vocab_size=32, num_heads=4, num_key_value_heads=2)
        target = random_model(llama, seed=0, scale=6.0)
        # A noisy copy: random Llama-family pairs of this size agree on no greedy token at all.
        leaves, treedef = jax.tree.flatten(target.params)
        keys = jax.random.split(jax.random.key(1), len(leaves))
        noisy = [x + 0.05 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)]
        draft = target.replace(params=jax.tree.unflatten(treedef, noisy))
    return target, draft


@pytest.mark.parametrize(
    "family, branching, verify",
    [
        ("gpt2", (2, 2, 1), "traversal"),
        ("gpt2", (3, 1), "recursive"),
        ("llama", (2, 2), "traversal"),
        ("gpt2", (1, 1, 1), "traversal"),
    ],
)
def test_greedy_tree_decoding_equals_greedy_autoregressive(family, branching, verify):
    target, draft = _pair(family)
    expected = autoregressive_sample(target, PROMPTS, key=jax.random.key(0), max_new_tokens=12, temperature=0.0)
    out = tree_speculative_sample(
        target, draft, PROMPTS, key=jax.random.key(1), max_new_tokens=12, branching=branching, verify=verify,
        temperature=0.0,
    )  # fmt: skip
    np.testing.assert_array_equal(out.tokens, expected.tokens)
    assert 0 < int(np.sum(out.num_accepted)) < int(np.sum(out.num_rounds)) * len(branching)


@pytest.mark.run_bound  # 40,000 rows: compiled for run time (tests/conftest.py)
@pytest.mark.parametrize("verify", ["traversal", "recursive"])
@pytest.mark.parametrize("setting", ["t1", "t0.7_topk3"])
def test_tree_decoding_matches_exact_target_law(verify, setting):
    """Branching (2, 2): 6 drafts per round, at most 2 kept, so the 3 tokens span rounds."""
    target, draft = exact_law.pair()
    kwargs = exact_law.SETTINGS[setting]
    sampling = SamplingConfig(**kwargs)
    out = tree_speculative_sample(
        target,
        draft,
        np.tile(exact_law.PROMPT, (exact_law.ROWS, 1)),
        key=jax.random.key(31),
        max_new_tokens=exact_law.NUM_TOKENS,
        branching=(2, 2),
        verify=verify,
        **kwargs,
    )
    assert np.all(np.asarray(out.lengths) == exact_law.NUM_TOKENS)
    law = exact_law.sequence_law(target, sampling)
    exact_law.check(out.tokens, law, exact_law.sequence_law(draft, sampling), f"tree {verify} {setting}")


def test_counts_agree():
    target, draft = _pair("gpt2")
    out = tree_speculative_sample(  # the compiled loop of the first greedy test (settings and EOS are traced)
        target, draft, PROMPTS, key=jax.random.key(2), max_new_tokens=12, branching=(2, 2, 1), temperature=0.8,
        eos_token_id=3,
    )  # fmt: skip
    hist = np.asarray(out.round_histogram)
    assert hist.shape == (3, 4)
    np.testing.assert_array_equal(hist.sum(1), out.num_rounds)
    np.testing.assert_array_equal((np.arange(4) * hist).sum(1), out.num_accepted)
    np.testing.assert_array_equal(out.num_drafted, 10 * np.asarray(out.num_rounds))  # 2 + 4 + 4 nodes


def test_children_are_drawn_without_replacement_with_their_laws():
    """Three children of a node whose q has two tokens: the third is the best remaining logit, one-hot."""
    q = np.zeros((1, 1, 5), np.float32)
    q[0, 0, [1, 3]] = [0.75, 0.25]
    logits = np.log(np.array([[[0.01, 0.75, 0.02, 0.25, 0.03]]], np.float32))
    tokens, laws = draw_children(jax.random.key(0), q, logits, np.array([False]), 3)
    tokens, laws = np.asarray(tokens[0, 0]), np.asarray(laws[0, 0])
    assert sorted(tokens[:2].tolist()) == [1, 3] and tokens[2] == 4
    np.testing.assert_allclose(laws[0], q[0, 0])
    np.testing.assert_allclose(laws[1], np.eye(5)[tokens[1]])  # what is left of q after the first
    np.testing.assert_allclose(laws[2], np.eye(5)[4])
    # Greedy rows: the top-3 by logits, one-hot.
    tokens, laws = draw_children(jax.random.key(0), q, logits, np.array([True]), 3)
    assert np.asarray(tokens[0, 0]).tolist() == [1, 3, 4]


def test_bad_arguments_are_refused():
    target, draft = _pair("gpt2")
    kwargs = dict(key=jax.random.key(0), max_new_tokens=4)
    with pytest.raises(ValueError, match="not a tree rule"):
        tree_speculative_sample(target, draft, PROMPTS, verify="block", **kwargs)
    with pytest.raises(ValueError, match="branching"):
        tree_speculative_sample(target, draft, PROMPTS, branching=(2, 0), **kwargs)
    with pytest.raises(TypeError, match="draft Model"):
        tree_speculative_sample(target, NgramDrafter(), PROMPTS, **kwargs)
    with pytest.raises(ValueError, match="context"):
        tree_speculative_sample(target, draft, PROMPTS, branching=(4, 4, 4), max_new_tokens=4, key=jax.random.key(0))


def test_speculative_sample_tree_argument_is_the_tree_loop():
    """speculative_sample(tree=...) runs tree_speculative_sample; chain-only arguments that disagree are refused."""
    from jaxspec import speculative_sample, tree_speculative_sample
    from jaxspec.testing import random_model, tiny_config

    target = random_model(tiny_config("gpt2", vocab_size=32), seed=0, scale=4.0)
    draft = random_model(tiny_config("opt", vocab_size=32), seed=1, scale=4.0)
    # The shapes of the greedy (3, 1) recursive test: one compiled loop.
    kwargs = dict(key=jax.random.key(2), max_new_tokens=12, temperature=0.0)
    via_arg = speculative_sample(target, draft, PROMPTS, tree=(3, 1), verify="recursive", **kwargs)
    direct = tree_speculative_sample(target, draft, PROMPTS, branching=(3, 1), verify="recursive", **kwargs)
    np.testing.assert_array_equal(via_arg.tokens, direct.tokens)
    np.testing.assert_array_equal(via_arg.num_rounds, direct.num_rounds)
    with pytest.raises(ValueError, match=r"num_draft_tokens=3 disagrees with tree=\(2, 1\)"):
        speculative_sample(target, draft, [[1]], tree=(2, 1), num_draft_tokens=3, **kwargs)
    with pytest.raises(ValueError, match="verify='block' is not a tree rule"):
        speculative_sample(target, draft, [[1]], tree=(2, 1), verify="block", **kwargs)
    with pytest.raises(ValueError, match="tree=\\(2, 0\\) must be"):
        speculative_sample(target, draft, [[1]], tree=(2, 0), **kwargs)


def test_tree_loop_compiles_once_per_shape_and_dynamic_length_once_per_threshold():
    """New prompts, keys, lengths and settings reuse the compiled tree loop; any confidence threshold
    reuses the compiled chain loop (it is traced)."""
    from jaxspec import speculative_sample
    from jaxspec.generation import speculative, tree_speculative

    target = random_model(tiny_config("gpt2", vocab_size=32), seed=0, scale=4.0)
    draft = random_model(tiny_config("opt", vocab_size=32), seed=1, scale=4.0)
    prompts = np.array([[1, 2, 3, 4, 5], [4, 5, 6, 0, 0], [7, 8, 9, 0, 0]], np.int32)  # the shapes of PROMPTS
    kwargs = dict(max_new_tokens=12, branching=(2, 2, 1), verify="traversal")
    tree_speculative_sample(target, draft, prompts, key=jax.random.key(0), temperature=0.9, **kwargs)
    before = tree_speculative._generate._cache_size()
    tree_speculative_sample(
        target, draft, prompts + 7, key=jax.random.key(1), prompt_lengths=[2, 3, 5], temperature=0.5, top_k=4,
        eos_token_id=9, pad_token_id=1, **kwargs,
    )  # fmt: skip
    assert tree_speculative._generate._cache_size() == before
    chain = dict(max_new_tokens=5, num_draft_tokens=3)
    speculative_sample(target, draft, prompts, key=jax.random.key(0), min_draft_confidence=0.2, **chain)
    before = speculative._generate._cache_size()
    speculative_sample(target, draft, prompts, key=jax.random.key(1), min_draft_confidence=0.7, **chain)
    assert speculative._generate._cache_size() == before
