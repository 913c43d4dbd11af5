"""jaxspec.distillation: divergence values against numpy and closed forms, the pool, one tiny distillation step."""

import doctest

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxspec import distillation
from jaxspec.distillation import losses
from jaxspec.sampling import SamplingConfig
from jaxspec.testing import random_model, tiny_config


def _log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def _numpy_divergence(p_lp, q_lp, kind):
    p, q = np.exp(p_lp), np.exp(q_lp)
    if kind == "fkl":
        return np.sum(p * (p_lp - q_lp), -1)
    if kind == "rkl":
        return np.sum(q * (q_lp - p_lp), -1)
    return 0.5 * np.sum(np.abs(p - q), -1)


@pytest.mark.parametrize("kind", ["fkl", "rkl", "tv"])
def test_divergence_matches_numpy_with_mask(kind):
    rng = np.random.default_rng(0)
    p_lp = _log_softmax(rng.normal(size=(3, 5, 7)) * 2)
    q_lp = _log_softmax(rng.normal(size=(3, 5, 7)) * 2)
    mask = rng.random((3, 5)) < 0.6
    mask[0, 0] = True
    per_position = _numpy_divergence(p_lp, q_lp, kind)
    expected = per_position[mask].mean()
    got = distillation.divergence(jnp.asarray(p_lp), jnp.asarray(q_lp), kind, jnp.asarray(mask))
    np.testing.assert_allclose(float(got), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        np.asarray(distillation.pointwise_divergence(p_lp, q_lp, kind)), per_position, rtol=1e-5, atol=1e-6
    )
    # Masked-out positions do not count, whatever their values.
    wild = np.where(mask[..., None], q_lp, _log_softmax(rng.normal(size=(3, 5, 7)) * 10))
    np.testing.assert_allclose(float(distillation.divergence(p_lp, wild, kind, mask)), expected, rtol=1e-5)
    assert float(distillation.divergence(p_lp, q_lp, kind, np.zeros((3, 5), bool))) == 0.0


@pytest.mark.parametrize("kind", ["fkl", "rkl", "tv"])
def test_divergence_is_zero_iff_equal_and_handles_zero_mass(kind):
    rng = np.random.default_rng(1)
    p_lp = _log_softmax(rng.normal(size=(4, 9)))
    assert abs(float(distillation.divergence(p_lp, p_lp, kind))) < 1e-6
    q_lp = _log_softmax(rng.normal(size=(4, 9)))
    assert float(distillation.divergence(p_lp, q_lp, kind)) > 1e-3
    # p with zero mass on some tokens (top-k style -inf): 0 log 0 = 0, finite values and gradients.
    p_cut = np.where(np.arange(9) < 4, p_lp, -np.inf)
    p_cut = p_cut - np.log(np.exp(p_cut).sum(-1, keepdims=True))
    if kind == "fkl":
        expected = np.sum(np.exp(p_cut[:, :4]) * (p_cut[:, :4] - q_lp[:, :4]), -1).mean()
        np.testing.assert_allclose(float(distillation.divergence(p_cut, q_lp, kind)), expected, rtol=1e-5)
    if kind == "rkl":  # KL(q||p) is infinite when q puts mass where p has none
        assert float(distillation.divergence(p_cut, q_lp, kind)) == np.inf
        return

    grad = jax.grad(lambda q: distillation.divergence(jnp.asarray(p_cut), jax.nn.log_softmax(q), kind))(
        jnp.asarray(q_lp, jnp.float32)
    )
    assert np.isfinite(np.asarray(grad)).all()


def test_tv_is_one_minus_acceptance_closed_form():
    """Speculative acceptance at a position is sum_v min(p, q) = 1 - TV(p, q)."""
    rng = np.random.default_rng(2)
    p_lp, q_lp = _log_softmax(rng.normal(size=(6, 11))), _log_softmax(rng.normal(size=(6, 11)))
    tv = np.asarray(distillation.pointwise_divergence(p_lp, q_lp, "tv"))
    np.testing.assert_allclose(1 - tv, np.minimum(np.exp(p_lp), np.exp(q_lp)).sum(-1), rtol=1e-5)


def test_pool_is_a_fifo_of_chunks():
    def chunk(value):
        return np.full((2, 3), value, np.int32), np.full((2, 1, 4), value, np.float32), np.ones((2, 1), bool)

    pool = distillation.Pool([chunk(0), chunk(1)])
    assert len(pool) == 4 and pool.num_chunks == 2
    pool.replace_oldest(chunk(7))
    pool.replace_oldest(chunk(8))
    pool.replace_oldest(chunk(9))
    np.testing.assert_array_equal(pool.tokens[:, 0], [9, 9, 8, 8])
    tokens, p_logprobs, mask = pool.batch(np.random.default_rng(0), 4)
    assert sorted(np.asarray(tokens)[:, 0].tolist()) == [8, 8, 9, 9]  # without replacement
    assert p_logprobs.shape == (4, 1, 4) and mask.shape == (4, 1)


def test_distill_loss_is_zero_for_the_target_itself_and_has_finite_gradients():
    # Jitted as the trainer runs them (eager layers and their gradients compile op by op).
    sequence_logprobs = jax.jit(distillation.sequence_logprobs, static_argnums=(2, 3))
    static = ("prompt_len", "config", "kind")
    loss_fn = jax.jit(distillation.distill_loss, static_argnames=static)
    grad_fn = jax.jit(jax.grad(distillation.distill_loss), static_argnames=static)
    model = random_model(tiny_config("gpt2", vocab_size=16, max_positions=16), 0, scale=3.0)
    config = SamplingConfig(temperature=0.8)
    tokens_BxL = jnp.asarray(np.random.default_rng(0).integers(0, 16, (2, 7)), jnp.int32)
    p = sequence_logprobs(model, tokens_BxL, 3, config)
    assert p.shape == (2, 4, 16)
    mask = jnp.ones((2, 4), bool)
    loss = loss_fn(model.params, model, tokens_BxL, p, mask, prompt_len=3, config=config, kind="fkl")
    assert abs(float(loss)) < 1e-5
    other = random_model(model.config, 1, scale=3.0)
    grads = grad_fn(other.params, model, tokens_BxL, p, mask, prompt_len=3, config=config, kind="tv")
    assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree.leaves(grads))


def test_docstring_examples():
    assert doctest.testmod(losses).failed == 0
