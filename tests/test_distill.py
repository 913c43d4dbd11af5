"""experiments/distill_draft.py: divergence values against numpy, a tiny end-to-end run, clean flag errors."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxspec
from jaxspec.testing import random_model, tiny_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXPERIMENTS = os.path.join(REPO, "experiments")
sys.path.insert(0, EXPERIMENTS)

import distill_draft  # noqa: E402


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
    got = distill_draft.divergence(jnp.asarray(p_lp), jnp.asarray(q_lp), kind, jnp.asarray(mask))
    np.testing.assert_allclose(float(got), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        np.asarray(distill_draft.pointwise_divergence(p_lp, q_lp, kind)), per_position, rtol=1e-5, atol=1e-6
    )
    # Masked-out positions do not count, whatever their values.
    wild = np.where(mask[..., None], q_lp, _log_softmax(rng.normal(size=(3, 5, 7)) * 10))
    np.testing.assert_allclose(float(distill_draft.divergence(p_lp, wild, kind, mask)), expected, rtol=1e-5)
    assert float(distill_draft.divergence(p_lp, q_lp, kind, np.zeros((3, 5), bool))) == 0.0


@pytest.mark.parametrize("kind", ["fkl", "rkl", "tv"])
def test_divergence_is_zero_iff_equal_and_handles_zero_mass(kind):
    rng = np.random.default_rng(1)
    p_lp = _log_softmax(rng.normal(size=(4, 9)))
    assert abs(float(distill_draft.divergence(p_lp, p_lp, kind))) < 1e-6
    q_lp = _log_softmax(rng.normal(size=(4, 9)))
    assert float(distill_draft.divergence(p_lp, q_lp, kind)) > 1e-3
    # p with zero mass on some tokens (top-k style -inf): 0 log 0 = 0, finite values and gradients.
    p_cut = np.where(np.arange(9) < 4, p_lp, -np.inf)
    p_cut = p_cut - np.log(np.exp(p_cut).sum(-1, keepdims=True))
    if kind == "fkl":
        expected = np.sum(np.exp(p_cut[:, :4]) * (p_cut[:, :4] - q_lp[:, :4]), -1).mean()
        np.testing.assert_allclose(float(distill_draft.divergence(p_cut, q_lp, kind)), expected, rtol=1e-5)
    if kind == "rkl":  # KL(q||p) is infinite when q puts mass where p has none
        assert float(distill_draft.divergence(p_cut, q_lp, kind)) == np.inf
        return

    grad = jax.grad(lambda q: distill_draft.divergence(jnp.asarray(p_cut), jax.nn.log_softmax(q), kind))(
        jnp.asarray(q_lp, jnp.float32)
    )
    assert np.isfinite(np.asarray(grad)).all()


def test_tv_is_one_minus_acceptance_closed_form():
    """Speculative acceptance at a position is sum_v min(p, q) = 1 - TV(p, q)."""
    rng = np.random.default_rng(2)
    p_lp, q_lp = _log_softmax(rng.normal(size=(6, 11))), _log_softmax(rng.normal(size=(6, 11)))
    tv = np.asarray(distill_draft.pointwise_divergence(p_lp, q_lp, "tv"))
    np.testing.assert_allclose(1 - tv, np.minimum(np.exp(p_lp), np.exp(q_lp)).sum(-1), rtol=1e-5)


@pytest.fixture(scope="module")
def tiny_pair(tmp_path_factory):
    """A tokenizer + tiny GPT-2 target + tiny GPT-2 draft saved as HF folders (as in test_experiments.py)."""
    import training

    root = tmp_path_factory.mktemp("distill_pair")
    texts = ["def f(x):\n    return x + 1\n", "import os\nprint(os.getcwd())\n"] * 20
    tokenizer = training.train_tokenizer(texts, 300, str(root / "tok"))
    folders = {}
    for name, hidden, seed in (("target", 16, 0), ("draft", 8, 1)):
        config = tiny_config(
            "gpt2", vocab_size=len(tokenizer), hidden_size=hidden, max_positions=64, eos_token_id=tokenizer.eos_token_id
        )
        folder = root / name
        jaxspec.save_model(random_model(config, seed, scale=5.0), folder)
        tokenizer.save_pretrained(folder)
        folders[name] = str(folder)
    return folders


def _run(*args, timeout=300):
    # Tiny models: compile time dominates, so trade run time for faster compiles (as the fast_compile fixture).
    env = dict(os.environ, PYTHONPATH=REPO, JAX_DISABLE_MOST_OPTIMIZATIONS="1")
    return subprocess.run(
        [sys.executable, os.path.join(EXPERIMENTS, "distill_draft.py"), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=REPO,
    )


def test_distill_end_to_end(tiny_pair, tmp_path):
    out = tmp_path / "distilled"
    proc = _run(
        f"--target_model={tiny_pair['target']}",
        f"--draft_model={tiny_pair['draft']}",
        f"--out_dir={out}",
        "--divergence=tv",
        "--temperature=0.8",
        "--minutes=0.0001",
        "--min_steps=2",
        "--batch_size=2",
        "--prompt_tokens=4",
        "--gen_tokens=6",
        "--pool_size=4",
        "--gen_batch=2",
        "--refresh_every=1",
        "--eval_prompts=2",
        "--eval_temperatures=0.8",
        "--eval_K=2",
        "--eval_N=5",
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    model = jaxspec.load_model(out)
    assert model.config.hidden_size == 8
    assert jaxspec.load_tokenizer(out)("def f():")["input_ids"]
    report = json.loads((out / "distill.json").read_text())
    assert report["divergence"] == "tv" and report["temperature"] == 0.8
    dist = report["distillation"]
    assert dist["steps"] == 2 and dist["pool_refreshes"] == 1 and dist["distilled_tokens"] == 2 * 2 * 6
    for field in ("divergence_before", "divergence_after", "tv_before", "tv_after"):
        assert 0 <= dist["heldout"][field] <= 1
    (row,) = report["eval"]
    assert row["temperature"] == 0.8 and row["K"] == 2
    for field in ("acceptance_before", "acceptance_after"):
        assert 0 <= row[field] <= 1
    for field in ("speedup_before", "speedup_after"):
        assert row[field] > 0
    card = (out / "README.md").read_text()
    assert "distill_draft.py" in card and "acceptance before" in card and "tv" in card
    assert "accept before" in proc.stdout


@pytest.mark.parametrize(
    "flag, message",
    [
        ("--temperature=0", "--temperature must be a finite number > 0"),
        ("--divergence=js", "--divergence=js: value should be one of <fkl|rkl|tv>"),
        ("--eval_temperatures=0.6,hot", "--eval_temperatures must be numbers >= 0"),
        ("--target_model=/does/not/exist", "no checkpoint folder at '/does/not/exist'"),
    ],
)
def test_bad_flags_give_one_clear_line(flag, message):
    proc = _run(flag, "--minutes=0.0001")
    assert proc.returncode != 0
    assert message in proc.stderr.splitlines()[0]
    assert "Traceback" not in proc.stderr
