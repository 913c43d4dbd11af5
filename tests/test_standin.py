"""The loops on `jaxspec.testing.MarkovModel` stand-ins: no transformer compiled or enumerated.

Exactness in closed form: the law of the first 3 tokens after the prompt is a
product of processed table rows (`markov_sequence_law`); 40,000 rows of one
call, Pearson chi-square at alpha = 1e-3 with asserted power >= 0.99 against
5% of the mass following the draft. Bookkeeping: the per-row counts agree with
each other and with the provenance, for ragged prompts, EOS and both rules.
"""

import jax
import numpy as np
import pytest
from stats import chi_square_power, chi_square_test

from jaxspec import autoregressive_sample, speculative_sample
from jaxspec.generation.provenance import ACCEPTED_DRAFT, BONUS, NOT_GENERATED, RESAMPLED
from jaxspec.sampling.processing import SamplingConfig
from jaxspec.testing import MarkovModel, markov_model, markov_sequence_law

# Tiny models: compiles dominate, so trade run time for faster compiles (conftest).

VOCAB, NUM_TOKENS, ROWS, ALPHA = 8, 3, 40_000, 1e-3
PROMPT = (5, 2)


def _pair():
    return markov_model(VOCAB, seed=0, scale=2.0), markov_model(VOCAB, seed=1, scale=2.0)


@pytest.mark.parametrize("verify", ["tokenwise", "block"])
@pytest.mark.parametrize(
    "settings", [dict(temperature=1.0), dict(temperature=0.8, top_k=3, top_p=0.8)], ids=["t1", "t0.8_k3_p0.8"]
)
def test_speculative_law_is_the_closed_form_target_law(verify, settings):
    target, draft = _pair()
    assert isinstance(target, MarkovModel)
    sampling = SamplingConfig(**settings)
    law = markov_sequence_law(target, PROMPT[-1], NUM_TOKENS, sampling).ravel()
    draft_law = markov_sequence_law(draft, PROMPT[-1], NUM_TOKENS, sampling).ravel()
    out = speculative_sample(
        target, draft, np.tile(PROMPT, (ROWS, 1)), key=jax.random.key(3), max_new_tokens=NUM_TOKENS,
        num_draft_tokens=2, verify=verify, **settings,
    )  # fmt: skip
    tokens = np.asarray(out.tokens)
    counts = np.bincount(np.ravel_multi_index(tuple(tokens.T), (VOCAB,) * NUM_TOKENS), minlength=VOCAB**NUM_TOKENS)
    stat, p_value, df = chi_square_test(law, counts)
    assert chi_square_power(law, 0.95 * law + 0.05 * draft_law, ROWS, ALPHA) >= 0.99
    assert p_value > ALPHA, f"chi2={stat:.1f} df={df} p={p_value:.2e}"


def test_the_closed_form_test_sees_a_broken_rule():
    """Negative control: accepting every draft (sampling from q) fails the same test."""
    target, draft = _pair()
    sampling = SamplingConfig()
    law = markov_sequence_law(target, PROMPT[-1], NUM_TOKENS, sampling).ravel()
    out = autoregressive_sample(draft, np.tile(PROMPT, (ROWS, 1)), key=jax.random.key(4), max_new_tokens=NUM_TOKENS)
    tokens = np.asarray(out.tokens)
    counts = np.bincount(np.ravel_multi_index(tuple(tokens.T), (VOCAB,) * NUM_TOKENS), minlength=VOCAB**NUM_TOKENS)
    assert chi_square_test(law, counts)[1] < ALPHA


@pytest.mark.parametrize("verify", ["tokenwise", "block"])
def test_counts_agree_with_each_other_and_the_provenance(verify):
    target, draft = _pair()
    prompts = [[1, 2, 3, 4, 5], [6], [7, 0, 7]]
    out = speculative_sample(
        target, draft, prompts, key=jax.random.key(5), max_new_tokens=20, num_draft_tokens=4, verify=verify,
        eos_token_id=3, temperature=0.9,
    )  # fmt: skip
    hist = np.asarray(out.round_histogram)
    provenance, lengths = np.asarray(out.provenance), np.asarray(out.lengths)
    for row in range(len(prompts)):
        n = lengths[row]
        assert np.all(provenance[row, n:] == NOT_GENERATED) and np.all(provenance[row, :n] != NOT_GENERATED)
        assert (np.asarray(out.tokens)[row, :n] == 3).sum() <= 1  # nothing after EOS
        # Every round ends with one resample or bonus token, except a round cut by EOS / N.
        ends = (provenance[row, :n] == RESAMPLED).sum() + (provenance[row, :n] == BONUS).sum()
        assert out.num_rounds[row] - 1 <= ends <= out.num_rounds[row]
        assert (provenance[row, :n] == ACCEPTED_DRAFT).sum() <= out.num_accepted[row]
        assert hist[row].sum() == out.num_rounds[row] and out.num_drafted[row] == 4 * out.num_rounds[row]
        assert out.num_accepted[row] == (np.arange(5) * hist[row]).sum()
