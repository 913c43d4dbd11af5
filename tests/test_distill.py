"""experiments/distill_draft.py as a script: a tiny end-to-end run, clean flag errors (units: test_distillation.py)."""

import json
import os
import subprocess
import sys

import pytest

import jaxspec
from jaxspec.testing import random_model, tiny_config
from jaxspec.training import train_tokenizer

pytestmark = pytest.mark.integration  # subprocess runs: the integration tier

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXPERIMENTS = os.path.join(REPO, "experiments")


@pytest.fixture(scope="module")
def tiny_pair(tmp_path_factory):
    """A tokenizer + tiny GPT-2 target + tiny GPT-2 draft saved as HF folders (as in test_experiments.py)."""
    root = tmp_path_factory.mktemp("distill_pair")
    texts = ["def f(x):\n    return x + 1\n", "import os\nprint(os.getcwd())\n"] * 20
    tokenizer = train_tokenizer(texts, 300, str(root / "tok"))
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
    # Tiny models: compile time dominates, so trade run time for faster compiles (as tests/conftest.py's fast tier).
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
