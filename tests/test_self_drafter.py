"""SelfDrafter: the target drafting through a subset of its own layers.

Checked: the truncated model is the model transformers builds from the kept
layers (GPT-2, independent of jaxspec's code); greedy speculative decoding with a
self-draft equals greedy autoregressive decoding (GPT-2, OPT, Llama; first layers
and skipped layers; both rules); the exact target law (the chi-square harness of
test_exactness.py); the drafter shares the target's arrays and compiles once;
bad layer choices are refused with the fix named.
"""

import exact_law
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import fixture_path

import jaxspec
from jaxspec import SelfDrafter, autoregressive_sample, speculative_sample
from jaxspec.generation import speculative
from jaxspec.generation.self_drafter import truncated_model
from jaxspec.sampling.processing import SamplingConfig
from jaxspec.testing import random_model, tiny_config

PROMPTS = [[1, 2, 3, 4, 5, 6], [7, 8], [9, 3, 9, 3]]


def _logits(model, tokens):
    cache = model.init_cache(*tokens.shape)
    return np.asarray(jax.jit(lambda m, t, c: m(t, c)[0])(model, jnp.asarray(tokens), cache))


@pytest.mark.parametrize("layers", [(0,), (1,)])
def test_truncated_model_equals_transformers_built_from_the_kept_layers(layers):
    """The 2-layer fixture with one layer kept: transformers' GPT2 whose `h` is that layer alone."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    path = fixture_path("gpt2_tiny")
    reference = transformers.GPT2LMHeadModel.from_pretrained(path).eval()
    reference.transformer.h = torch.nn.ModuleList([reference.transformer.h[i] for i in layers])
    tokens = np.array([[5, 9, 1, 33, 2, 60, 7]], np.int32)
    with torch.no_grad():
        expected = reference(torch.as_tensor(tokens, dtype=torch.long)).logits.numpy()
    got = _logits(truncated_model(jaxspec.load_model(path), layers), tokens)
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=1e-4)
    # Not vacuous: the full model differs.
    assert np.max(np.abs(_logits(jaxspec.load_model(path), tokens) - expected)) > 1e-2


def _target(family):
    extra = dict(num_key_value_heads=1) if family == "llama" else {}
    return random_model(tiny_config(family, vocab_size=32, num_layers=4, **extra), seed=3, scale=6.0)


@pytest.mark.parametrize(
    "family, make, verify",
    [
        ("gpt2", lambda t: SelfDrafter.first_layers(t, 1), "tokenwise"),
        ("opt", lambda t: SelfDrafter.first_layers(t, 2), "block"),
        ("llama", lambda t: SelfDrafter.skipping(t, [1, 2]), "block"),
    ],
)
def test_greedy_self_draft_equals_greedy_autoregressive(family, make, verify):
    target = _target(family)
    expected = autoregressive_sample(target, PROMPTS, key=jax.random.key(0), max_new_tokens=12, temperature=0.0)
    out = speculative_sample(
        target, make(target), PROMPTS, key=jax.random.key(1), max_new_tokens=12, num_draft_tokens=3,
        temperature=0.0, verify=verify,
    )  # fmt: skip
    np.testing.assert_array_equal(out.tokens, expected.tokens)
    # Some drafts accepted and some rejected: the comparison is not vacuous.
    assert 0 < int(np.sum(out.num_accepted)) < int(np.sum(out.num_drafted))


@pytest.mark.parametrize("verify", ["tokenwise", "block"])
def test_self_draft_matches_exact_target_law(verify):
    """The harness's target (GPT-2, 2 layers) drafting with its first layer: chi-square at
    alpha = 1e-3 with asserted power >= 0.99, and the first draft's acceptance sum(min(p, q))."""
    target, _ = exact_law.pair()
    drafter = SelfDrafter.first_layers(target, 1)
    sampling = SamplingConfig()
    out = speculative_sample(
        target,
        drafter,
        np.tile(exact_law.PROMPT, (exact_law.ROWS, 1)),
        key=jax.random.key(23),
        max_new_tokens=exact_law.NUM_TOKENS,
        num_draft_tokens=2,
        verify=verify,
    )
    draft_model = truncated_model(target, (0,))
    law = exact_law.sequence_law(target, sampling)
    exact_law.check(out.tokens, law, exact_law.sequence_law(draft_model, sampling), f"self {verify}")
    if verify == "tokenwise":
        exact_law.check_first_acceptance(out, target, draft_model, sampling)


def test_shares_the_targets_arrays_and_compiles_once():
    target = _target("gpt2")
    drafter = SelfDrafter.first_layers(target, 1)
    target_leaves = jax.tree.leaves(target)
    assert all(any(leaf is t for t in target_leaves) for leaf in jax.tree.leaves(drafter))
    # The shapes of the greedy GPT-2 test above (settings are traced): its compiled loop serves these calls.
    kwargs = dict(max_new_tokens=12, num_draft_tokens=3, temperature=0.7)
    speculative_sample(target, drafter, PROMPTS, key=jax.random.key(0), **kwargs)
    before = speculative._generate._cache_size()
    for seed in (1, 2):
        speculative_sample(target, drafter, PROMPTS, key=jax.random.key(seed), **kwargs)
    assert speculative._generate._cache_size() == before


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda t: SelfDrafter.first_layers(t, 0), "num_layers"),
        (lambda t: SelfDrafter.first_layers(t, 4), "num_layers"),
        (lambda t: SelfDrafter.skipping(t, []), "target itself"),
        (lambda t: SelfDrafter.skipping(t, [0, 1, 2, 3]), "empty"),
        (lambda t: SelfDrafter.skipping(t, [4]), "skipped layer"),
        (lambda t: SelfDrafter(t, layers=(0, 4)), r"0\.\.3"),
        (lambda t: SelfDrafter(t, layers=(2, 1)), "strictly increasing"),
        (lambda t: SelfDrafter(t, layers=(0, 1, 2, 3)), "target itself"),
    ],
)
def test_bad_layer_choices_are_refused(build, message):
    target = _target("gpt2")
    with pytest.raises(ValueError, match=message):
        drafter = build(target)
        speculative_sample(target, drafter, PROMPTS, key=jax.random.key(0), max_new_tokens=2)


def test_a_self_draft_of_another_model_is_refused():
    target, other = _target("gpt2"), random_model(tiny_config("gpt2", vocab_size=32, num_layers=3), seed=0)
    with pytest.raises(ValueError, match="same model"):
        speculative_sample(target, SelfDrafter.first_layers(other, 1), PROMPTS, key=jax.random.key(0), max_new_tokens=2)
