"""Drafters: prompt lookup against a brute-force reference, and both drafters
(and both verification rules) inside the speculative loop."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxspec import NgramDrafter, autoregressive_sample, speculative_sample
from jaxspec.generation.provenance import ACCEPTED_DRAFT, BONUS, RESAMPLED
from jaxspec.testing import random_model, tiny_config


def _reference_lookup(tokens, length, k, min_n, max_n):
    """Most recent earlier occurrence of the longest matching suffix, continued periodically."""
    for n in range(max_n, min_n - 1, -1):
        if length < n + 1:
            continue
        suffix = list(tokens[length - n : length])
        for j in range(length - n - 1, -1, -1):
            if list(tokens[j : j + n]) == suffix:
                period = length - n - j
                return [tokens[j + n + i % period] for i in range(k)]
    return [tokens[length - 1]] * k


@pytest.mark.parametrize("min_n,max_n", [(1, 1), (1, 3), (2, 4)])
def test_lookup_matches_reference(min_n, max_n):
    rng = np.random.default_rng(min_n * 10 + max_n)
    batch, width, k = 64, 24, 5
    tokens = rng.integers(0, 4, size=(batch, width))  # small vocabulary: many matches
    lengths = rng.integers(1, width + 1, size=batch)
    drafter = NgramDrafter(min_ngram=min_n, max_ngram=max_n, vocab_size=4)
    got = np.asarray(jax.jit(drafter.lookup, static_argnums=2)(jnp.asarray(tokens), jnp.asarray(lengths), k))
    for b in range(batch):
        assert list(got[b]) == _reference_lookup(tokens[b], lengths[b], k, min_n, max_n), (tokens[b], lengths[b])


def test_lookup_examples():
    drafter = NgramDrafter(min_ngram=1, max_ngram=2, vocab_size=10)
    buffers = jnp.asarray([[1, 2, 3, 1, 2, 0, 0], [5, 6, 7, 8, 9, 0, 0], [4, 4, 4, 4, 0, 0, 0]])
    got = drafter.lookup(buffers, jnp.asarray([5, 5, 4]), 5)
    # "1 2" last seen at 0 -> 3, then the pattern "3 1 2" repeats;
    # no match -> the last token; "4 4" most recently at 1 -> period 1.
    np.testing.assert_array_equal(got, [[3, 1, 2, 3, 1], [9, 9, 9, 9, 9], [4, 4, 4, 4, 4]])


def test_ngram_settings_are_validated():
    with pytest.raises(ValueError, match="max_ngram=1 must be >= min_ngram=2"):
        NgramDrafter(min_ngram=2, max_ngram=1)
    with pytest.raises(ValueError, match="min_ngram must be an integer >= 1"):
        NgramDrafter(min_ngram=0)


VOCAB = 16


@functools.cache
def _models():
    target = random_model(tiny_config("gpt2", vocab_size=VOCAB), seed=0, scale=3.0)
    draft = random_model(tiny_config("opt", vocab_size=VOCAB), seed=1, scale=3.0)
    return target, draft


PROMPTS = [[1, 2, 3, 1, 2, 3, 1], [7, 7], [4, 5, 6, 4, 5]]


@pytest.mark.parametrize("verify", ["tokenwise", "block"])
@pytest.mark.parametrize("drafter", ["model", "ngram"])
def test_greedy_equals_autoregressive(drafter, verify):
    """Greedy output is the target's argmax path whatever proposes and whatever rule verifies."""
    target, draft = _models()
    proposer = draft if drafter == "model" else NgramDrafter(max_ngram=2)
    expected = autoregressive_sample(target, PROMPTS, key=jax.random.key(0), max_new_tokens=12, temperature=0.0)
    out = speculative_sample(
        target,
        proposer,
        PROMPTS,
        key=jax.random.key(1),
        max_new_tokens=12,
        num_draft_tokens=3,
        temperature=0.0,
        verify=verify,
    )
    np.testing.assert_array_equal(out.tokens, expected.tokens)
    assert np.all(np.asarray(out.num_accepted) <= np.asarray(out.num_drafted))


def test_ngram_rounds_follow_the_lookup_on_the_greedy_path():
    """Greedy with lookup, simulated on the host from the target's greedy path:
    each round accepts the longest prefix of the lookup proposal (made from
    prompt + generated text) that agrees with the path, then emits one token.
    The loop must reproduce the simulated rounds and accepted counts exactly."""
    target, _ = _models()
    n, k = 20, 3
    # All prompts in one batch (each row's path and rounds are its own): one compiled loop each.
    # k extra tokens of path: the kernel may accept drafts beyond N (counted, not emitted).
    paths = autoregressive_sample(target, PROMPTS, key=jax.random.key(0), max_new_tokens=n + k, temperature=0.0)
    out = speculative_sample(
        target,
        NgramDrafter(max_ngram=2),
        PROMPTS,
        key=jax.random.key(3),
        max_new_tokens=n,
        num_draft_tokens=k,
        temperature=0.0,
    )
    for row, prompt in enumerate(PROMPTS):
        path = [int(t) for t in np.asarray(paths.tokens[row])]
        seq, rounds, accepted, kinds = list(prompt), 0, 0, []
        while len(seq) < len(prompt) + n:
            proposal = _reference_lookup(seq, len(seq), k, 1, 2)
            future = path[len(seq) - len(prompt) :]
            m = 0
            while m < k and proposal[m] == future[m]:
                m += 1
            seq += future[: m + 1]
            kinds += [ACCEPTED_DRAFT] * m + [BONUS if m == k else RESAMPLED]
            rounds, accepted = rounds + 1, accepted + m
        np.testing.assert_array_equal(np.asarray(out.tokens[row]), path[:n])
        assert (int(out.num_rounds[row]), int(out.num_accepted[row])) == (rounds, accepted), prompt
        np.testing.assert_array_equal(np.asarray(out.provenance[row]), kinds[:n])


def test_bad_drafter_options_are_clear():
    target, draft = _models()
    with pytest.raises(ValueError, match="verify='fast' is not a verification rule"):
        speculative_sample(target, draft, [[1, 2]], key=jax.random.key(0), max_new_tokens=2, verify="fast")
    with pytest.raises(ValueError, match="draft_temperature only applies when draft is a Model"):
        speculative_sample(
            target, NgramDrafter(), [[1, 2]], key=jax.random.key(0), max_new_tokens=2, draft_temperature=0.5
        )
    with pytest.raises(TypeError, match="draft must be a jaxspec Model or a Drafter"):
        speculative_sample(target, "ngram", [[1, 2]], key=jax.random.key(0), max_new_tokens=2)
