"""Generation loops: greedy equality, edge cases, bookkeeping, errors, compilation."""

import functools

import jax
import numpy as np
import pytest

from jaxspec import autoregressive_sample, speculative_sample
from jaxspec.generation import autoregressive, speculative
from jaxspec.generation.provenance import ACCEPTED_DRAFT, BONUS, NOT_GENERATED, RESAMPLED
from jaxspec.testing import random_model, tiny_config

VOCAB = 48

PROMPTS = [[5, 17, 3, 9, 22], [8], [40, 2, 2]]  # ragged: lengths 5, 1, 3


@functools.cache
def _pair():
    """A target and a different-architecture draft that disagree often."""
    target = random_model(tiny_config("gpt2", vocab_size=VOCAB, max_positions=48), seed=6, scale=12.0)
    draft = random_model(tiny_config("opt", vocab_size=VOCAB, max_positions=48), seed=4, scale=12.0)
    return target, draft


def _rows(result):
    tokens, lengths = np.asarray(result.tokens), np.asarray(result.lengths)
    return [tokens[i, : lengths[i]].tolist() for i in range(len(lengths))]


@functools.cache
def _greedy_reference(n):
    target, _ = _pair()
    return _rows(autoregressive_sample(target, PROMPTS, key=jax.random.key(0), max_new_tokens=n, temperature=0))


@pytest.mark.parametrize("k", (1, 2, 4, 7))
def test_greedy_speculative_equals_greedy_autoregressive(k):
    target, draft = _pair()
    reference = _greedy_reference(12)
    assert len({tuple(r) for r in reference}) == 3 and all(len(set(r)) > 2 for r in reference)
    out = speculative_sample(
        target, draft, PROMPTS, key=jax.random.key(1), max_new_tokens=12, num_draft_tokens=k, temperature=0
    )
    assert _rows(out) == reference
    # The pair disagrees, so rejections happened: the comparison is not vacuous.
    assert np.all(np.asarray(out.acceptance_rate) < 1.0)


@pytest.mark.parametrize("k", (1, 4, 7))  # the greedy test's K: EOS and pad ids are traced, the loops are shared
def test_greedy_with_eos_stops_right_after_it(k):
    target, draft = _pair()
    reference = _greedy_reference(12)
    eos = reference[0][4]  # a token row 0 emits (not first at 0: EOS cuts the row mid-way)
    out = speculative_sample(
        target,
        draft,
        PROMPTS,
        key=jax.random.key(1),
        max_new_tokens=12,
        num_draft_tokens=k,
        temperature=0,
        eos_token_id=eos,
        pad_token_id=VOCAB - 1,
    )
    expected = [r[: r.index(eos) + 1] if eos in r else r for r in reference]
    assert _rows(out) == expected
    tokens = np.asarray(out.tokens)
    for i, row in enumerate(expected):
        assert np.all(tokens[i, len(row) :] == VOCAB - 1)  # nothing after EOS
        assert np.all(np.asarray(out.provenance)[i, len(row) :] == NOT_GENERATED)
    ar = autoregressive_sample(
        target, PROMPTS, key=jax.random.key(0), max_new_tokens=12, temperature=0, eos_token_id=eos
    )
    assert _rows(ar) == expected


def test_eos_inside_a_fully_accepted_block():
    """Draft == target accepts every draft, so EOS arrives mid-block (row 0: its third token, K = 5)."""
    target, _ = _pair()
    reference = _greedy_reference(12)
    eos = reference[0][2]
    out = speculative_sample(
        target,
        target,
        PROMPTS,
        key=jax.random.key(2),
        max_new_tokens=30,  # the shapes of test_draft_equal_to_target_accepts_everything[5]: one compiled loop
        num_draft_tokens=5,
        temperature=0,
        eos_token_id=eos,
    )
    assert _rows(out)[0] == reference[0][:3]
    assert np.asarray(out.provenance)[0, :3].tolist() == [ACCEPTED_DRAFT] * 3


@pytest.mark.parametrize("k", (1, 3, 5))
def test_draft_equal_to_target_accepts_everything(k):
    """Over many rounds: a draft cache missing the bonus token's entry after a
    fully accepted block (vLLM #4212) would make acceptance fall below 1."""
    target, _ = _pair()
    out = speculative_sample(target, target, PROMPTS, key=jax.random.key(3), max_new_tokens=30, num_draft_tokens=k)
    np.testing.assert_array_equal(np.asarray(out.acceptance_rate), 1.0)
    assert np.all(np.asarray(out.lengths) == 30)
    assert np.all(np.asarray(out.num_rounds) == -(-30 // (k + 1)))
    # Every round kept all K drafts: no rejection, per-draft alpha and every position at 1.
    np.testing.assert_array_equal(np.asarray(out.round_histogram)[:, k], np.asarray(out.num_rounds))
    np.testing.assert_array_equal(np.asarray(out.num_rejections), 0)
    np.testing.assert_array_equal(np.asarray(out.acceptance_per_draft), 1.0)
    np.testing.assert_array_equal(np.asarray(out.acceptance_by_position), 1.0)


def test_k_larger_than_remaining_and_n_equal_one():
    target, draft = _pair()
    for n, k in ((1, 1), (1, 4), (3, 8)):
        out = speculative_sample(
            target, draft, PROMPTS, key=jax.random.key(4), max_new_tokens=n, num_draft_tokens=k, temperature=0
        )
        assert _rows(out) == [r[:n] for r in _greedy_reference(12)]
        assert np.asarray(out.tokens).shape == (3, n)


def test_bookkeeping_is_consistent():
    target, draft = _pair()
    k = 4  # N and K of test_greedy_speculative_equals_greedy_autoregressive[4]: the same compiled loop, sampled
    out = speculative_sample(target, draft, PROMPTS, key=jax.random.key(5), max_new_tokens=12, num_draft_tokens=k)
    prov = np.asarray(out.provenance)
    lengths = np.asarray(out.lengths)
    assert np.all(lengths == 12)
    assert np.all((prov != NOT_GENERATED).sum(1) == lengths)
    # One resample-or-bonus token closes every round (the last may be cut by N).
    closing = ((prov == RESAMPLED) | (prov == BONUS)).sum(1)
    rounds = np.asarray(out.num_rounds)
    assert np.all((closing == rounds) | (closing == rounds - 1))
    assert np.all(np.asarray(out.num_drafted) == k * rounds)
    assert np.all((prov == ACCEPTED_DRAFT).sum(1) <= np.asarray(out.num_accepted))
    np.testing.assert_allclose(np.asarray(out.tokens_per_round), lengths / rounds, rtol=1e-6)
    # The round histogram: one entry per round, its mean is the accepted drafts per round.
    histogram = np.asarray(out.round_histogram)
    assert histogram.shape == (3, k + 1)
    np.testing.assert_array_equal(histogram.sum(1), rounds)
    np.testing.assert_array_equal(histogram @ np.arange(k + 1), np.asarray(out.num_accepted))
    np.testing.assert_array_equal(np.asarray(out.num_rejections), rounds - histogram[:, k])
    alpha = np.asarray(out.acceptance_per_draft)
    assert np.all(alpha >= np.asarray(out.acceptance_rate) - 1e-6) and np.all(alpha < 1)
    by_position = np.asarray(out.acceptance_by_position)
    np.testing.assert_allclose(by_position[:, 0], 1 - histogram[:, 0] / rounds, rtol=1e-6)


def test_prompt_ids_array_with_lengths_equals_ragged_list():
    target, draft = _pair()
    padded = np.zeros((3, 5), np.int32)
    for i, p in enumerate(PROMPTS):
        padded[i, : len(p)] = p
    padded[1, 1:] = 33  # padding content must not matter
    kwargs = dict(key=jax.random.key(6), max_new_tokens=12, num_draft_tokens=2)  # a loop compiled above
    a = speculative_sample(target, draft, padded, prompt_lengths=[5, 1, 3], **kwargs)
    b = speculative_sample(target, draft, PROMPTS, **kwargs)
    np.testing.assert_array_equal(np.asarray(a.tokens), np.asarray(b.tokens))


def test_same_shapes_compile_once():
    """New prompts, lengths, keys, settings, EOS and pad ids reuse the compiled loops."""
    target, draft = _pair()
    prompts = np.arange(1, 16, dtype=np.int32).reshape(3, 5)  # the shapes of PROMPTS: loops compiled above
    kwargs = dict(max_new_tokens=12, num_draft_tokens=4)
    speculative_sample(target, draft, prompts, key=jax.random.key(0), temperature=0.9, top_k=5, **kwargs)
    before = speculative._generate._cache_size()
    speculative_sample(
        target, draft, prompts + 7, key=jax.random.key(1), prompt_lengths=[2, 3, 5], temperature=0.5, **kwargs
    )
    speculative_sample(target, draft, prompts, key=jax.random.key(2), eos_token_id=3, pad_token_id=1, **kwargs)
    assert speculative._generate._cache_size() == before
    autoregressive_sample(target, prompts, key=jax.random.key(0), max_new_tokens=12)
    before = autoregressive._generate._cache_size()
    autoregressive_sample(target, prompts + 1, key=jax.random.key(3), max_new_tokens=12, eos_token_id=5)
    autoregressive_sample(target, prompts, key=jax.random.key(3), max_new_tokens=12, pad_token_id=2)
    assert autoregressive._generate._cache_size() == before


def test_draft_vocab_that_only_pads_the_target():
    target = random_model(tiny_config("gpt2", vocab_size=40), seed=5, scale=10.0)
    draft = random_model(tiny_config("opt", vocab_size=48), seed=6, scale=10.0)  # 40 rounded up to 16
    out = speculative_sample(target, draft, [[1, 2]], key=jax.random.key(0), max_new_tokens=16)
    assert np.asarray(out.tokens).max() < 40
    greedy = speculative_sample(target, draft, [[1, 2]], key=jax.random.key(0), max_new_tokens=16, temperature=0)
    ar = autoregressive_sample(target, [[1, 2]], key=jax.random.key(0), max_new_tokens=16, temperature=0)
    assert _rows(greedy) == _rows(ar)


def test_vocab_mismatch_is_refused_with_both_sizes():
    target = random_model(tiny_config("gpt2", vocab_size=40), seed=5)
    draft = random_model(tiny_config("opt", vocab_size=37), seed=6)
    with pytest.raises(ValueError, match="draft vocab_size=37 differs from target vocab_size=40"):
        speculative_sample(target, draft, [[1, 2]], key=jax.random.key(0), max_new_tokens=4)
    out = speculative_sample(target, draft, [[1, 2]], key=jax.random.key(0), max_new_tokens=4, shared_vocab_size=37)
    assert np.asarray(out.tokens).max() < 37


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(num_draft_tokens=0), "num_draft_tokens must be an integer >= 1, got 0"),
        (dict(max_new_tokens=0), "max_new_tokens must be an integer >= 1, got 0"),
        (dict(temperature=-0.5), "-0.5"),
        (dict(top_p=0.0), "top_p"),
        (dict(top_p=1.5), "1.5"),
        (dict(top_k=-1), "top_k"),
        (
            dict(max_new_tokens=41),
            "longest prompt \\+ max_new_tokens \\+ num_draft_tokens - 1 = 49 positions",
        ),
        (dict(eos_token_id=VOCAB), "eos_token_id=48 is outside the vocabulary"),
    ],
)
def test_bad_arguments_fail_before_compute(kwargs, message):
    target, draft = _pair()
    args = dict(key=jax.random.key(0), max_new_tokens=4, num_draft_tokens=4) | kwargs
    with pytest.raises(ValueError, match=message):
        speculative_sample(target, draft, [[1, 2, 3, 4, 5]], **args)


def test_bad_prompts_are_named():
    target, draft = _pair()
    kwargs = dict(key=jax.random.key(0), max_new_tokens=4)
    with pytest.raises(ValueError, match="prompt token id 99 .* outside the vocabulary 0..47"):
        speculative_sample(target, draft, [[1, 99]], **kwargs)
    with pytest.raises(ValueError, match="prompt_lengths must lie in 1..2"):
        speculative_sample(target, draft, [[1, 2]], prompt_lengths=[0], **kwargs)
    with pytest.raises(ValueError, match="context of 48"):
        autoregressive_sample(target, [[1] * 46], **kwargs)


def test_context_bound_is_exact():
    """prompt + N + K - 1 == max_positions fits; one more does not."""
    target, draft = _pair()
    out = speculative_sample(
        target, draft, [[1] * 40], key=jax.random.key(0), max_new_tokens=5, num_draft_tokens=4, temperature=0
    )
    assert (
        _rows(out)[0]
        == _rows(autoregressive_sample(target, [[1] * 40], key=jax.random.key(0), max_new_tokens=5, temperature=0))[0]
    )
    with pytest.raises(ValueError, match="= 49 positions"):
        speculative_sample(target, draft, [[1] * 40], key=jax.random.key(0), max_new_tokens=6, num_draft_tokens=4)
