"""End to end: the joint law of the first 3 generated tokens is exactly the target's.

Target: a tiny random GPT-2, draft: a tiny random OPT (different architecture
and weights; total-variation distance between their next-token laws ~0.3),
vocabulary 8, a fixed 3-token prompt. The exact law of the first three new
tokens, P(y1, y2, y3) = p(y1|x) p(y2|x,y1) p(y3|x,y1,y2) under the *processed*
target distribution, is enumerated over all 8^3 = 512 continuations with full
(cache-free) forward passes. One call of the sampler with 40,000 identical
rows (one large batch) gives 40,000 independent draws of (y1, y2, y3).

Test: Pearson chi-square over the 512 cells (cells with expected count < 5
pooled), significance alpha = 1e-3, fixed seeds (deterministic). Power: each
test also computes, and asserts >= 0.99, the power against "5% of the
emitted mass follows the uncorrected draft instead of the target" (the
signature of a broken residual or a wrong q) with Patnaik's approximation of
the noncentral chi-square. With K = 2 the three tokens span more than one
round whenever a draft is rejected, so cache rollback and the draft-cache
catch-up after a fully accepted block are exercised too.
"""

import functools

import jax
import numpy as np
import pytest
from exact_law import (
    ALPHA,
    NUM_TOKENS,
    PROMPT,
    ROWS,
    SETTINGS,
    check,
    check_first_acceptance,
    counts,
    pair,
    sequence_law,
)
from stats import chi_square_test

from jaxspec import NgramDrafter, autoregressive_sample, speculative_sample
from jaxspec.sampling.processing import SamplingConfig

# 40,000-row loops: their run time, not their compiles, is this module's cost (tests/conftest.py).
pytestmark = pytest.mark.run_bound


MIXED = [dict(temperature=1.0), dict(temperature=0.7, top_k=3), dict(top_p=0.7), dict(temperature=0.0)]
MIXED_ROWS = 4 * ROWS


@functools.cache
def _mixed_run():
    """MIXED_ROWS rows, block verification, K = 2, row i under MIXED[i % 4] (per-row settings)."""
    target, draft = pair()
    settings = {
        name: np.array([MIXED[i % 4].get(name, default) for i in range(MIXED_ROWS)])
        for name, default in (("temperature", 1.0), ("top_k", 0), ("top_p", 1.0))
    }
    return speculative_sample(
        target,
        draft,
        np.tile(PROMPT, (MIXED_ROWS, 1)),
        key=jax.random.key(13),
        max_new_tokens=NUM_TOKENS,
        num_draft_tokens=2,
        verify="block",  # the settings plumbing is the same for both rules
        **settings,
    )


@functools.cache
def _tokenwise_run(setting):
    """ROWS rows, token-wise, K = 2, under SETTINGS[setting] (one call per setting in this module)."""
    target, draft = pair()
    prompts = np.tile(PROMPT, (ROWS, 1))
    return speculative_sample(
        target,
        draft,
        prompts,
        key=jax.random.key(7),
        max_new_tokens=NUM_TOKENS,
        num_draft_tokens=2,
        **SETTINGS[setting],
    )


@pytest.mark.parametrize("setting", SETTINGS)
def test_speculative_matches_exact_target_law(setting):
    target, draft = pair()
    sampling = SamplingConfig(**SETTINGS[setting])
    law = sequence_law(target, sampling)
    out = _tokenwise_run(setting)
    assert np.all(np.asarray(out.lengths) == NUM_TOKENS)
    check(out.tokens, law, sequence_law(draft, sampling), setting)
    check_first_acceptance(out, target, draft, sampling)


@pytest.mark.parametrize("setting", SETTINGS)
def test_autoregressive_matches_exact_target_law(setting):
    """The checker checked: plain sampling passes the same test."""
    target, draft = pair()
    kwargs = SETTINGS[setting]
    sampling = SamplingConfig(**kwargs)
    law = sequence_law(target, sampling)
    out = autoregressive_sample(
        target, np.tile(PROMPT, (ROWS, 1)), key=jax.random.key(8), max_new_tokens=NUM_TOKENS, **kwargs
    )
    check(out.tokens, law, sequence_law(draft, sampling), setting)


@pytest.mark.parametrize(
    "draft_kwargs",
    [dict(draft_temperature=0.0), dict(draft_temperature=1.6, draft_top_k=0)],
    ids=["greedy_draft", "hotter_draft"],
)
def test_exact_with_other_draft_settings(draft_kwargs):
    """q must be what the draft sampled from: one-hot for a greedy draft
    (transformers #32867 used its softmax), the hotter law for a hotter one."""
    target, draft = pair()
    law = sequence_law(target, SamplingConfig())
    out = speculative_sample(
        target,
        draft,
        np.tile(PROMPT, (ROWS, 1)),
        key=jax.random.key(9),
        max_new_tokens=NUM_TOKENS,
        num_draft_tokens=2,
        **draft_kwargs,
    )
    check(out.tokens, law, sequence_law(draft, SamplingConfig()), str(draft_kwargs))


def test_the_checker_rejects_a_biased_sampler():
    """Negative control: ROWS draws from the draft's own law must fail the test.

    Drawn with numpy from the draft's enumerated law (what `autoregressive_sample` on the
    draft gives, as the test above checks for the target), so the control needs no loop of its own.
    """
    target, draft = pair()
    law = sequence_law(target, SamplingConfig())
    draft_law = sequence_law(draft, SamplingConfig()).ravel()
    codes = np.random.default_rng(10).choice(draft_law.size, size=ROWS, p=draft_law / draft_law.sum())
    tokens = np.stack(np.unravel_index(codes, law.shape), axis=1)
    _, p_value, _ = chi_square_test(law.ravel(), counts(tokens))
    assert p_value < ALPHA


@pytest.mark.parametrize("k", [2, 3])
def test_block_verification_matches_exact_target_law(k):
    """Block verification (Sun et al. 2024) keeps the law exact, and on average
    accepts at least as many drafts as the token-wise rule.

    K = 2: the ROWS rows at T = 1 of the mixed-settings call below (block, K = 2; row i
    uses MIXED[i % 4]) against the token-wise rows at T = 1 of the first test, two loops
    this module runs anyway (independent keys: block keeps ~0.77 drafts per round here,
    token-wise ~0.72, standard errors ~0.003). K = 3: both rules, same key, same rows.
    """
    target, draft = pair()
    law = sequence_law(target, SamplingConfig())
    if k == 2:
        assert MIXED[0] == SETTINGS["t1"]
        block = jax.tree.map(lambda x: x[0::4], _mixed_run())  # its T = 1 rows
        tokenwise = _tokenwise_run("t1")
    else:
        prompts = np.tile(PROMPT, (ROWS, 1))
        run = lambda verify: speculative_sample(
            target, draft, prompts, key=jax.random.key(11), max_new_tokens=NUM_TOKENS, num_draft_tokens=k, verify=verify
        )
        block, tokenwise = run("block"), run("tokenwise")
    check(block.tokens, law, sequence_law(draft, SamplingConfig()), f"block K={k}")
    per_round = lambda out: float(np.sum(out.num_accepted) / np.sum(out.num_rounds))
    assert per_round(block) >= per_round(tokenwise) - 0.01, (per_round(block), per_round(tokenwise))


@pytest.mark.parametrize("verify", ["tokenwise", "block"])
def test_dynamic_draft_length_matches_exact_target_law(verify):
    """min_draft_confidence: rows stop drafting on the draft's own confidence (K = 3 at most).

    The threshold 0.25 is chosen so that rows stop at every length (checked: the
    drafted count per round lies strictly between 1 and K). Skipped draft steps
    (every row stopped) are tested at batch 1 in test_dynamic_length.py.
    """
    target, draft = pair()
    law = sequence_law(target, SamplingConfig())
    out = speculative_sample(
        target,
        draft,
        np.tile(PROMPT, (ROWS, 1)),
        key=jax.random.key(13),
        max_new_tokens=NUM_TOKENS,
        num_draft_tokens=3,
        verify=verify,
        min_draft_confidence=0.25,
    )
    check(out.tokens, law, sequence_law(draft, SamplingConfig()), f"dynamic length {verify}")
    drafted_per_round = float(np.sum(out.num_drafted) / np.sum(out.num_rounds))
    assert 1.2 < drafted_per_round < 2.8, drafted_per_round


@pytest.mark.parametrize("verify", ["tokenwise", "block"])
def test_ngram_drafter_matches_exact_target_law(verify):
    """Prompt lookup proposes deterministically (one-hot q); the law stays exact.
    With vocabulary 8 and a 3-token prompt most rounds find a match, so both the
    match and the no-match paths are exercised (checked via the acceptance count)."""
    target, draft = pair()
    law = sequence_law(target, SamplingConfig())
    out = speculative_sample(
        target,
        NgramDrafter(max_ngram=2),
        np.tile(PROMPT, (ROWS, 1)),
        key=jax.random.key(12),
        max_new_tokens=NUM_TOKENS,
        num_draft_tokens=2,
        verify=verify,
    )
    check(out.tokens, law, sequence_law(draft, SamplingConfig()), f"ngram {verify}")
    assert 0 < float(np.mean(out.acceptance_rate)) < 1


def test_mixed_per_row_settings_in_one_batch():
    """One call, one compiled program, four settings side by side (row i uses MIXED[i % 4]):
    each group of rows follows its own exact law, greedy rows give the greedy sequence."""
    target, draft = pair()
    out = _mixed_run()
    tokens = np.asarray(out.tokens)
    for group, kwargs in enumerate(MIXED):
        rows = tokens[group::4]
        sampling = SamplingConfig(**kwargs)
        law = sequence_law(target, sampling)
        if sampling.is_greedy:
            expected = np.unravel_index(np.argmax(law), law.shape)
            np.testing.assert_array_equal(rows[:, :NUM_TOKENS], np.tile(expected, (len(rows), 1)))
            continue
        check(rows, law, sequence_law(draft, sampling), f"mixed {kwargs}")
