"""The experiment scripts run end to end on tiny models, and reject bad flags cleanly."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import jaxspec
from jaxspec.testing import random_model, tiny_config
from jaxspec.training import train_tokenizer

pytestmark = pytest.mark.integration  # subprocess runs: the integration tier

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXPERIMENTS = os.path.join(REPO, "experiments")


@pytest.fixture(scope="module")
def tiny_pair(tmp_path_factory):
    """A tokenizer + tiny GPT-2 target + tiny OPT draft (+ a tiny Llama target) saved as HF folders."""
    root = tmp_path_factory.mktemp("pair")
    texts = ["def f(x):\n    return x + 1\n", "import os\nprint(os.getcwd())\n"] * 20
    tokenizer = train_tokenizer(texts, 300, str(root / "tok"))
    vocab = len(tokenizer)
    eos = tokenizer.eos_token_id
    folders = {}
    for name, kind, seed in (("target", "gpt2", 0), ("draft", "opt", 1), ("llama_target", "llama", 2)):
        config = tiny_config(kind, vocab_size=vocab, max_positions=128, eos_token_id=eos)
        folder = root / name
        jaxspec.save_model(random_model(config, seed, scale=5.0), folder)
        tokenizer.save_pretrained(folder)
        folders[name] = str(folder)
    return folders


def _run(script, *args, timeout=300):
    env = dict(os.environ, PYTHONPATH=REPO)
    return subprocess.run(
        [sys.executable, os.path.join(EXPERIMENTS, script), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=REPO,
    )


def test_compare_end_to_end(tiny_pair, tmp_path):
    out = tmp_path / "c.json"
    proc = _run(
        "compare.py",
        f"--target_model={tiny_pair['target']}",
        f"--draft_model={tiny_pair['draft']}",
        "--input_str=def f(x):",
        "--num_runs=2",
        "--N=8",
        "--K=3",
        "--batch_size=2",
        "-v",
        f"--output_json={out}",
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    for header in (
        "time (mean ± std)",
        "tokens/s",
        "ms/token",
        "speedup",
        "acceptance",
        "tokens/target call",
    ):
        assert header in proc.stdout
    assert "legend: plain = accepted draft token" in proc.stdout  # not a terminal: markers, no colour codes
    assert "\033[" not in proc.stdout
    report = json.loads(out.read_text())
    spec = report["methods"]["speculative"]
    assert spec["generated_tokens"] == 16 and len(spec["times_s"]) == 2
    assert 0.0 <= spec["acceptance_rate"] <= 1.0 and spec["speedup"] > 0

    # report.py renders the README table from exactly this file.
    (tmp_path / "results" / "compare").mkdir(parents=True)
    (tmp_path / "results" / "compare" / "compare.json").write_text(out.read_text())
    proc = _run("report.py", f"--results_dir={tmp_path / 'results'}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "### Comparison (compare.py)" in proc.stdout
    assert f"| speculative | {1000 * spec['mean_s']:.1f} ± {1000 * spec['std_s']:.1f} ms |" in proc.stdout
    assert "### Sweep" not in proc.stdout  # absent results are skipped, not invented


def test_compare_on_heldout_prompts_pairs_runs_and_reports_alpha(tiny_pair, tmp_path):
    out = tmp_path / "c.json"
    proc = _run(
        "compare.py",
        f"--target_model={tiny_pair['target']}",
        f"--draft_model={tiny_pair['draft']}",
        "--num_prompts=3",
        "--prompt_tokens=8",
        "--N=6",
        "--K=2",
        "--temperature=1",
        f"--output_json={out}",
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "3 held-out prompts of 8 tokens" in proc.stdout and "acceptance by draft position" in proc.stdout
    report = json.loads(out.read_text())
    spec = report["methods"]["speculative"]
    assert report["num_runs"] == 3 and len(spec["speedups"]) == 3
    assert spec["speedup"] == pytest.approx(float(np.median(spec["speedups"])))
    assert spec["speedup_se"] >= 0 and len(spec["acceptance_by_position"]) == 2
    # alpha per draft ignores the drafts never judged, so it is >= accepted / drafted.
    assert spec["acceptance_rate"] <= spec["alpha_per_draft"] <= 1
    assert spec["accepted"] + spec["rejections"] >= spec["rounds"]


def test_benchmark_settings_mode(tiny_pair, tmp_path):
    proc = _run(
        "benchmark.py",
        "--mode=settings",
        f"--target_model={tiny_pair['target']}",
        f"--draft_model={tiny_pair['draft']}",
        "--settings=0.6:0:1,0.6:5:0.9",
        "--settings_K=2",
        "--N=6",
        "--num_runs=2",
        "--prompt_tokens=8",
        f"--out_dir={tmp_path}",
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = json.loads((tmp_path / "settings.json").read_text())["rows"]
    assert [r["setting"] for r in rows] == ["0.6:0:1", "0.6:5:0.9"]
    assert rows[0]["ar_vs_baseline"] == 1.0 and all(r["spec_tokens_per_s"] > 0 for r in rows)


def test_compare_ngram_drafter_with_block_verification(tiny_pair, tmp_path):
    out = tmp_path / "c.json"
    proc = _run(
        "compare.py",
        f"--target_model={tiny_pair['target']}",
        "--draft_model=/not/needed/for/ngram",
        "--input_str=def f(x):\n    return x\ndef f(x):",
        "--num_runs=1",
        "--N=8",
        "--K=2",
        "--drafter=ngram",
        "--verify=block",
        "--method=speculative",
        f"--output_json={out}",
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(out.read_text())
    assert report["verify"] == "block" and report["draft_model"].startswith("prompt lookup")
    assert report["methods"]["speculative"]["generated_tokens"] == 8


@pytest.mark.parametrize(
    "flag, message",
    [
        ("--verify=tree", "--verify=tree"),
        ("--drafter=medusa", "--drafter=medusa"),
        ("--K=0", "--K=0: 0 is not a positive integer"),
        ("--top_p=1.5", "--top_p must lie in (0, 1]"),
        ("--temperature=-1", "--temperature=-1: -1.0 is not a non-negative number"),
        ("--N=0", "--N=0"),
        ("--method=beam", "--method=beam"),
        ("--target_model=/does/not/exist", "no checkpoint folder at '/does/not/exist'"),
    ],
)
def test_compare_bad_flags_give_one_clear_line(flag, message):
    proc = _run("compare.py", flag, "--num_runs=1", "--N=4")
    assert proc.returncode != 0
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr


def test_compare_self_drafter(tiny_pair, tmp_path):
    out = tmp_path / "c.json"
    proc = _run(
        "compare.py",
        f"--target_model={tiny_pair['target']}",
        "--input_str=def f(x):",
        "--num_runs=1",
        "--N=8",
        "--K=2",
        "--drafter=self",
        "--self_draft_layers=1",
        f"--output_json={out}",
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(out.read_text())
    assert report["draft_model"].startswith("self-draft")
    assert report["methods"]["speculative"]["generated_tokens"] == 8


@pytest.mark.parametrize("drafter", ["model", "self"])
def test_compare_with_a_llama_target(tiny_pair, tmp_path, drafter):
    """A Llama folder as --target_model, with the OPT draft (across families) or its own first layer."""
    out = tmp_path / "c.json"
    proc = _run(
        "compare.py",
        f"--target_model={tiny_pair['llama_target']}",
        f"--draft_model={tiny_pair['draft']}",
        f"--drafter={drafter}",
        "--input_str=def f(x):",
        "--num_runs=1",
        "--N=8",
        "--K=2",
        f"--output_json={out}",
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(out.read_text())["methods"]["speculative"]["generated_tokens"] == 8


def test_benchmark_settings_mode_with_a_llama_target(tiny_pair, tmp_path):
    proc = _run(
        "benchmark.py",
        "--mode=settings",
        f"--target_model={tiny_pair['llama_target']}",
        f"--draft_model={tiny_pair['draft']}",
        "--settings=0.6:0:1",
        "--settings_K=2",
        "--N=6",
        "--num_runs=2",
        "--prompt_tokens=8",
        f"--out_dir={tmp_path}",
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads((tmp_path / "settings.json").read_text())["rows"][0]["spec_tokens_per_s"] > 0


def test_drafting_end_to_end(tiny_pair, tmp_path):
    proc = _run(
        "drafting.py",
        f"--target_model={tiny_pair['target']}",
        f"--draft_model={tiny_pair['draft']}",
        "--methods=chain:block:2,tree:traversal:2x1,tree:recursive:2x1,self:1,dynamic:block:3:0.3",
        "--temperatures=0,1",
        "--num_prompts=2",
        "--prompt_tokens=4",
        "--N=6",
        f"--out_dir={tmp_path}",
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads((tmp_path / "drafting.json").read_text())
    assert {(r["method"], r["temperature"]) for r in report["rows"]} == {
        (m, t)
        for m in ("chain:block:2", "tree:traversal:2x1", "tree:recursive:2x1", "self:1", "dynamic:block:3:0.3")
        for t in (0.0, 1.0)
    }
    assert {r["verify_positions"] for r in report["rows"] if r["method"].startswith("tree")} == {5}
    dynamic = [r for r in report["rows"] if r["method"].startswith("dynamic")]
    assert all(1 <= r["drafted_per_round"] <= 3 and r["verify_positions"] == 4 for r in dynamic)
    assert len(report["traversal_minus_recursive"]) == 2
    assert (tmp_path / "drafting.png").exists()
    bad = _run("drafting.py", "--methods=tree:traversal", f"--out_dir={tmp_path}")
    assert bad.returncode != 0 and "tree:<rule>" in bad.stderr and "Traceback" not in bad.stderr


def test_compare_prompt_too_long_for_context(tiny_pair):
    proc = _run(
        "compare.py",
        f"--target_model={tiny_pair['target']}",
        f"--draft_model={tiny_pair['draft']}",
        "--N=200",
        "--num_runs=1",
    )
    assert proc.returncode == 2
    assert "context of 128" in proc.stderr and "Traceback" not in proc.stderr


def test_benchmark_sweep_end_to_end(tiny_pair, tmp_path):
    proc = _run(
        "benchmark.py",
        f"--target_model={tiny_pair['target']}",
        f"--draft_model={tiny_pair['draft']}",
        "--K=1,2",
        "--temperatures=0,1",
        "--batch_sizes=1",
        "--N=6",
        "--num_runs=1",
        "--prompt_tokens=4",
        f"--out_dir={tmp_path}",
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads((tmp_path / "sweep.json").read_text())
    assert len(report["rows"]) == 8  # K x T x {tokenwise, block}
    assert set(report["interleaved_costs"]) == {"1/0.0", "1/1.0"}
    assert {r["verify"] for r in report["rows"]} == {"tokenwise", "block"}
    for row in report["rows"]:
        assert 0 <= row["alpha"] <= 1 and row["predicted_speedup"] > 0 and row["efficiency"] > 0
        assert row["round_overhead_ms"] >= 0 and len(row["acceptance_by_position"]) == row["K"]
        assert row["round_calls_ms"] > 0 and row["isolated_round_calls_ms"] > 0
    assert (tmp_path / "speedup.png").stat().st_size > 1000
    assert (tmp_path / "acceptance.png").stat().st_size > 1000
    assert (tmp_path / "sweep.csv").exists()


def test_benchmark_ngram_end_to_end(tiny_pair, tmp_path):
    proc = _run(
        "benchmark.py",
        "--mode=ngram",
        f"--target_model={tiny_pair['target']}",
        f"--draft_model={tiny_pair['draft']}",
        "--temperatures=0",
        "--ngram_K=2",
        "--N=6",
        "--num_runs=1",
        "--prompt_tokens=24",
        f"--out_dir={tmp_path}",
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads((tmp_path / "ngram.json").read_text())
    assert {(r["prompts"], r["method"]) for r in report["rows"]} == {
        (p, m) for p in ("quote", "code", "shuffled") for m in ("ngram tokenwise", "ngram block", "draft model")
    }
    for row in report["rows"]:
        assert 0 <= row["alpha"] <= 1 and row["speedup"] > 0


def test_benchmark_acceptance_end_to_end(tiny_pair, tmp_path):
    proc = _run(
        "benchmark.py",
        "--mode=acceptance",
        f"--target_model={tiny_pair['target']}",
        f"--draft_model={tiny_pair['draft']}",
        "--K=1,3",
        "--temperatures=0,1",
        "--N=6",
        "--prompt_tokens=4",
        "--acceptance_rows=8",
        f"--out_dir={tmp_path}",
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = json.loads((tmp_path / "acceptance.json").read_text())["rows"]
    assert [(r["temperature"], r["K"]) for r in rows] == [(1.0, 1), (1.0, 3)]  # greedy skipped: rules coincide
    assert rows[0]["difference"] == 0.0  # K = 1: the two kernels are identical for the same key
    assert all(r["rows"] == 8 and r["difference_se"] >= 0 for r in rows)


def test_benchmark_acceptance_refuses_greedy_only(tmp_path):
    proc = _run("benchmark.py", "--mode=acceptance", "--temperatures=0", f"--out_dir={tmp_path}")
    assert proc.returncode != 0
    assert "--mode=acceptance needs a --temperatures value > 0" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_benchmark_size_end_to_end(tmp_path):
    """Size mode on the smallest real architecture (random weights): costs and ratios are positive."""
    proc = _run("benchmark.py", "--mode=size", "--size_pairs=gpt2:gpt2", f"--out_dir={tmp_path}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    (row,) = json.loads((tmp_path / "size.json").read_text())["rows"]
    assert round(row["target_params_M"]) == 124  # GPT-2 small, as on the hub
    assert row["target_step_ms"] > 0 and row["c"] > 0
    assert all(row[f"verify_ratio_K{k}"] > 0 for k in (2, 4, 8))


def test_vs_transformers_end_to_end(tiny_pair, tmp_path):
    pytest.importorskip("torch")
    out = tmp_path / "v.json"
    proc = _run(
        "vs_transformers.py",
        f"--target_model={tiny_pair['target']}",
        f"--draft_model={tiny_pair['draft']}",
        "--input_str=def f(x):",
        "--N=8",
        "--K=2",
        "--num_runs=1",
        "--batch_sizes=2",
        f"--output_json={out}",
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    report = json.loads(out.read_text())
    assert report["greedy_identical"], report
    assert report["batched"]["2"]["hf_assisted"].startswith("refused")
    assert "identical token for token" in proc.stdout


def test_train_pair_smoke(tmp_path):
    """The whole pipeline (corpus, BPE, four models, save, model cards) at toy size."""
    proc = _run(
        "train_pair.py",
        f"--out_dir={tmp_path}",
        "--max_files=6",
        "--vocab_size=300",
        "--context=16",
        "--batch_size=2",
        "--target_shape=1,16,2",
        "--draft_shape=1,8,2",
        "--target_minutes=0.01",
        "--draft_minutes=0.01",
        "--min_steps=3",
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    for name in ("gpt2-target", "gpt2-draft", "opt-draft", "llama-draft"):
        folder = tmp_path / name
        model = jaxspec.load_model(folder)
        assert model.config.max_positions == 16
        card = (folder / "README.md").read_text()
        assert "Held-out loss" in card and "Training command" in card
        assert jaxspec.load_tokenizer(folder)("def f():")["input_ids"]
    summary = json.loads((tmp_path / "training_summary.json").read_text())
    assert set(summary["models"]) == {"gpt2-target", "gpt2-draft", "opt-draft", "llama-draft"}
    assert jaxspec.load_model(tmp_path / "llama-draft").config.model_type == "llama"

    # Retraining one model keeps the others (weights and tokenizer) and rewrites every card's table;
    # entries other tools added to the summary (e.g. a distilled draft's) survive.
    summary["models"]["some-distilled-draft"] = {"heldout_loss": 1.5}
    (tmp_path / "training_summary.json").write_text(json.dumps(summary))
    kept = (tmp_path / "opt-draft" / "model.safetensors").read_bytes()
    tokenizer_before = (tmp_path / "gpt2-draft" / "tokenizer.json").read_text()
    proc = _run(
        "train_pair.py",
        f"--out_dir={tmp_path}",
        "--max_files=6",
        "--context=16",
        "--batch_size=2",
        "--target_shape=1,16,2",
        "--target_minutes=0.01",
        "--min_steps=3",
        "--target_lr=1e-2",
        "--models=gpt2-target",
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert (tmp_path / "opt-draft" / "model.safetensors").read_bytes() == kept
    assert (tmp_path / "gpt2-target" / "tokenizer.json").read_text() == tokenizer_before
    again = json.loads((tmp_path / "training_summary.json").read_text())
    assert again["models"]["opt-draft"]["heldout_loss"] == summary["models"]["opt-draft"]["heldout_loss"]
    assert again["models"]["some-distilled-draft"] == {"heldout_loss": 1.5}
    assert "--models=gpt2-target" in again["models"]["gpt2-target"]["command"]
    new_loss = f"{again['models']['gpt2-target']['heldout_loss']:.3f}"
    assert f"| gpt2-target | {new_loss} |" in (tmp_path / "opt-draft" / "README.md").read_text()


def test_quantization_end_to_end(tmp_path, monkeypatch):
    """experiments/quantization.py on the golden tiny fixtures (no tokenizer: fixed ids)."""
    monkeypatch.setenv("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")  # tiny models: compile time dominates
    fixtures = os.path.join(REPO, "tests", "fixtures")
    proc = _run(
        "quantization.py",
        f"--target_model={fixtures}/opt_tiny",
        f"--draft_model={fixtures}/gpt2_tiny",
        "--precisions=int8",
        "--N=8",
        "--prompt_tokens=6",
        "--num_runs=1",
        "--reps=1",
        f"--out_dir={tmp_path}",
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    report = json.loads((tmp_path / "quantization.json").read_text())
    rows = {r["precision"]: r for r in report["rows"]}
    assert set(rows) == {"fp32", "int8"}
    assert rows["fp32"]["agreement_vs_fp32"] == 1.0 and rows["fp32"]["spec_equals_ar"]
    assert rows["int8"]["spec_equals_ar"]  # greedy speculative == greedy autoregressive, quantized
    assert 0.4 < rows["int8"]["target_bytes_vs_fp32"] < 0.6  # tiny models: the float embeddings weigh a lot
    for row in rows.values():
        assert row["step_ms"] > 0 and row["verify_ms"] > 0 and row["spec_tok_s"] > 0 and row["ar_tok_s"] > 0
    assert (tmp_path / "quantization.csv").exists() and "int8" in proc.stdout


def test_quantization_rejects_unknown_precision():
    proc = _run("quantization.py", "--precisions=int4", "--size=gpt2")
    assert proc.returncode != 0 and "int4" in proc.stderr and "int8" in proc.stderr
