"""The exact-law harness of the end-to-end exactness tests, shared by every test file that uses it.

A tiny random GPT-2 target and OPT draft over an 8-token vocabulary, a fixed
3-token prompt, and the exact law of the first three new tokens, enumerated
with full passes (`sequence_law`); `check` runs the Pearson chi-square at
alpha = 1e-3 and asserts its power >= 0.99 against 5% of the mass following
the draft. tests/test_exactness.py explains the design.
"""

import dataclasses
import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
from stats import chi_square_power, chi_square_test

from jaxspec.generation.provenance import ACCEPTED_DRAFT
from jaxspec.sampling.processing import SamplingConfig, SamplingParams, processed_probs
from jaxspec.testing import random_model, tiny_config

# int8 weights: logits stay within this fraction of max|logit| (tests/test_quantize.py, test_llama_generation.py).
INT8_LOGIT_RTOL = 0.03

VOCAB = 8
PROMPT = (3, 1, 4)
NUM_TOKENS = 3
ROWS = 40_000
ALPHA = 1e-3


@functools.cache
def pair():
    target = random_model(tiny_config("gpt2", vocab_size=VOCAB), seed=0, scale=10.0)
    draft = random_model(tiny_config("opt", vocab_size=VOCAB), seed=1, scale=10.0)
    return target, draft


@jax.jit
def _processed_full_pass(model, seqs, cache, sampling: SamplingParams):
    """The settings traced (`SamplingConfig.as_params`): one compile per model and shape, whatever
    the setting (static settings compiled once per setting, ~1 s each, most of a law's cost)."""
    logits, _ = model(seqs, cache)
    return processed_probs(logits, sampling)


# Laws already enumerated, by (id of the model, settings): the models come from cached
# constructors, and one law serves every test that checks against it.
_LAWS = {}


def sequence_law(model, sampling: SamplingConfig) -> np.ndarray:
    """Exact P(y1, y2, y3) [V, V, V] under `model`'s processed law, by full passes."""
    key = (id(model), sampling)
    if key in _LAWS and _LAWS[key][0] is model:
        return _LAWS[key][1]
    conts = np.array(list(itertools.product(range(VOCAB), repeat=NUM_TOKENS)), np.int32)
    seqs = np.concatenate([np.tile(PROMPT, (len(conts), 1)), conts], axis=1)
    cache = model.init_cache(len(seqs), seqs.shape[1])
    probs = np.asarray(_processed_full_pass(model, jnp.asarray(seqs), cache, sampling.as_params()), np.float64)
    first = len(PROMPT) - 1
    law = np.ones(len(conts))
    for i in range(NUM_TOKENS):
        law *= probs[np.arange(len(conts)), first + i, conts[:, i]]
    law = law.reshape((VOCAB,) * NUM_TOKENS)
    law.setflags(write=False)
    _LAWS[key] = (model, law)  # the model is kept, so its id is never reused for another
    return law


def counts(tokens: np.ndarray) -> np.ndarray:
    codes = np.ravel_multi_index(tuple(tokens[:, :NUM_TOKENS].T), (VOCAB,) * NUM_TOKENS)
    return np.bincount(codes, minlength=VOCAB**NUM_TOKENS)


SETTINGS = {
    "t1": dict(temperature=1.0),
    "t0.7_topk3": dict(temperature=0.7, top_k=3),
    "topp0.7": dict(top_p=0.7),
}


def check(tokens, law, draft_law, label):
    observed = counts(np.asarray(tokens))
    stat, p_value, df = chi_square_test(law.ravel(), observed)
    power = chi_square_power(law.ravel(), 0.95 * law.ravel() + 0.05 * draft_law.ravel(), ROWS, ALPHA)
    assert power >= 0.99, f"{label}: test too weak (power {power:.3f})"
    assert p_value > ALPHA, f"{label}: chi2={stat:.1f} df={df} p={p_value:.2e}"


def first_token_laws(target, draft, sampling):
    """p1 under `sampling`, q1 under the draft's default settings (the target's, without top-p)."""
    draft_sampling = dataclasses.replace(sampling, top_p=1.0)
    return [_last_position_law(target, sampling), _last_position_law(draft, draft_sampling)]


def _last_position_law(model, sampling: SamplingConfig) -> np.ndarray:
    """float64 [V]: the processed law after PROMPT (one jitted pass: eager layers compile op by op)."""
    prompt = jnp.asarray([PROMPT])
    probs = _processed_full_pass(model, prompt, model.init_cache(1, len(PROMPT)), sampling.as_params())
    return np.asarray(probs[0, -1], np.float64)


def check_first_acceptance(out, target, draft, sampling):
    """The first draft token is accepted with probability sum(min(p1, q1)) exactly.

    Two-sided binomial z-test at alpha = 1e-3 (|z| < 3.29). A "sample-match"
    rule (lablup/mlxcel #902) would reach only sum(p1 * q1); the test asserts
    that value lies far outside the acceptance band, so it has power against it.
    """
    p1, q1 = first_token_laws(target, draft, sampling)
    alpha1 = float(np.minimum(p1, q1).sum())
    sigma = np.sqrt(alpha1 * (1 - alpha1) / ROWS)
    measured = float(np.mean(np.asarray(out.provenance)[:, 0] == ACCEPTED_DRAFT))
    assert abs(measured - alpha1) < 3.29 * sigma, (measured, alpha1, sigma)
    assert abs(float((p1 * q1).sum()) - alpha1) > 10 * sigma
