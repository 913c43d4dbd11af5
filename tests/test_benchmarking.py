"""jaxspec.benchmarking: each metric against hand counts, timing order, tables, prompts, the cost model, HLO parsing."""

import dataclasses
import doctest
import time
import types

import jax.numpy as jnp
import numpy as np
import pytest

from jaxspec import benchmarking
from jaxspec.benchmarking import (
    configs,
    costs,
    drafting,
    hlo,
    load_test,
    metrics,
    prompts,
    sizes,
    sweeps,
    tables,
    timing,
)
from jaxspec.generation.tree_speculative import TREE_VERIFICATION_RULES
from jaxspec.sampling.accept import VERIFICATION_RULES
from jaxspec.serving import net
from jaxspec.testing import random_model, tiny_config


def _result(accepted, drafted, rounds, lengths, histogram):
    """A stand-in SpeculativeResult: the fields the metrics read, per row."""
    return types.SimpleNamespace(
        num_accepted=np.asarray(accepted),
        num_drafted=np.asarray(drafted),
        num_rounds=np.asarray(rounds),
        lengths=np.asarray(lengths),
        round_histogram=np.asarray(histogram),
    )


def test_acceptance_summary_is_a_ratio_of_sums_over_runs_and_rows():
    # K = 2. Row 0: 3 rounds that kept 0, 2, 2 drafts; row 1: 1 round that kept 1.
    first = _result([4, 1], [6, 2], [3, 1], [7, 2], [[1, 0, 2], [0, 1, 0]])
    # One more run, one row: 2 rounds that kept 2 and 1.
    second = _result([3], [4], [2], [5], [[0, 1, 1]])
    s = metrics.acceptance_summary([first, second])
    assert (s["accepted"], s["drafted"], s["rounds"]) == (8, 12, 6)
    assert s["rejections"] == 3  # rounds that kept fewer than K
    assert s["acceptance_rate"] == pytest.approx(8 / 12)
    assert s["alpha_per_draft"] == pytest.approx(8 / 11)
    assert s["tokens_per_target_call"] == pytest.approx(14 / 6)
    assert (s["accepted_per_round"], s["drafted_per_round"]) == (pytest.approx(8 / 6), pytest.approx(12 / 6))
    # Position 1: judged in 6 rounds, kept in 5; position 2: judged in 5, kept in 3.
    assert s["acceptance_by_position"] == pytest.approx([5 / 6, 3 / 5])
    # A mean of per-row ratios would differ: the one definition is the pooled one.
    assert s["acceptance_rate"] != pytest.approx(np.mean([4 / 6, 1 / 2, 3 / 4]))


def test_per_row_and_paired_figures():
    res = _result([4, 1], [6, 2], [3, 1], [7, 2], [[1, 0, 2], [0, 1, 0]])
    np.testing.assert_allclose(metrics.accepted_per_round_by_row(res), [4 / 3, 1.0])
    d = metrics.paired_difference([1.0, 2.0, 3.0], [2.0, 2.0, 5.0])
    assert d["difference"] == pytest.approx(1.0)
    assert d["difference_se"] == pytest.approx(np.std([1, 0, 2], ddof=1) / np.sqrt(3))
    assert d["z"] == pytest.approx(d["difference"] / d["difference_se"])
    s = metrics.paired_speedup([2.0, 3.0], [1.0, 1.0])
    assert s == pytest.approx(dict(speedup=2.5, speedup_mean=2.5, speedup_se=0.5))
    assert metrics.paired_speedup([2.0], [1.0])["speedup_se"] == 0.0
    assert np.isnan(metrics.percentile([], 50))


def test_time_interleaved_order_seeds_and_results():
    calls = []

    def method(name):
        return lambda seed: calls.append((name, seed)) or jnp.asarray(seed)

    out, results = benchmarking.time_interleaved(
        {"a": method("a"), "b": method("b")}, num_runs=2, warmup=1, keep_results=True
    )
    assert calls == [("a", 10_000), ("b", 10_000), ("a", 0), ("b", 0), ("a", 1), ("b", 1)]
    assert [int(r) for r in results["b"]] == [0, 1] and int(out["a"]["result"]) == 1
    assert len(out["a"]["times_s"]) == 2 and out["a"]["compile_and_first_s"] >= 0
    assert benchmarking.mean_std([1.0, 3.0]) == pytest.approx((2.0, np.sqrt(2)))
    assert benchmarking.mean_std([5.0]) == (5.0, 0.0)


def test_time_interleaved_repeats_keep_each_runs_fastest_call():
    calls = []

    def hiccup_on_first_call_of_a_run(seed):
        first = not calls or calls[-1] != seed
        calls.append(seed)
        if first:
            time.sleep(0.05)  # the stretched call a repeat should discard
        return jnp.asarray(seed)

    out = benchmarking.time_interleaved({"m": hiccup_on_first_call_of_a_run}, num_runs=2, repeats=3)
    assert calls == [10_000, 0, 0, 0, 1, 1, 1]
    assert max(out["m"]["times_s"]) < 0.05
    once = benchmarking.time_interleaved({"m": hiccup_on_first_call_of_a_run}, num_runs=1, warmup=0)
    assert once["m"]["times_s"][0] >= 0.05


def test_tables_and_report_files(tmp_path):
    rows = [{"name": "a", "x": 0.5}, {"name": "bb", "x": 12.25}]
    text = benchmarking.format_table(benchmarking.format_floats(rows, ".1f"), [("name", "name"), ("x", "x")])
    assert text.splitlines() == ["name  x   ", "----  ----", "a     0.5 ", "bb    12.2"]
    benchmarking.write_csv(rows, str(tmp_path / "out" / "r.csv"))
    assert (tmp_path / "out" / "r.csv").read_text().splitlines() == ["name,x", "a,0.5", "bb,12.25"]
    benchmarking.write_json({"rows": rows}, str(tmp_path / "r.json"))
    assert '"x": 12.25' in (tmp_path / "r.json").read_text()


class _CharTokenizer:
    """One token per character: enough for the prompt helpers."""

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [ord(c) % 256 for c in text]}


def test_heldout_prompts_and_a_clear_error_on_a_shortfall():
    got = benchmarking.heldout_prompts(_CharTokenizer(), 3, 16)
    assert got.shape == (3, 16) and got.dtype == np.int32
    assert len({tuple(row) for row in got}) == 3  # distinct files
    with pytest.raises(ValueError, match="held-out files have 10000000 tokens; ask for fewer or shorter prompts"):
        benchmarking.heldout_prompts(_CharTokenizer(), 2, 10_000_000)
    sets = benchmarking.ngram_prompt_sets(_CharTokenizer(), 2, 64)
    assert {name: p.shape for name, p in sets.items()} == {k: (2, 64) for k in ("quote", "code", "shuffled")}
    np.testing.assert_array_equal(np.sort(sets["shuffled"], axis=1), np.sort(sets["code"], axis=1))


def test_several_prompts_per_file_and_their_cluster_standard_error():
    one = benchmarking.heldout_prompts(_CharTokenizer(), 3, 16)
    got = benchmarking.heldout_prompts(_CharTokenizer(), 5, 16, per_file=2, spacing=40)
    assert got.shape == (5, 16)
    # Rows 0 and 1 come from one file: its start, then 40 tokens in; different files after.
    assert prompts.prompt_files(5, per_file=2).tolist() == [0, 0, 1, 1, 2]
    assert len({tuple(row) for row in got}) == 5 and tuple(got[0]) != tuple(got[2])
    if tuple(one[0]) == tuple(got[0]):  # the first file is long enough for both: same start
        assert tuple(got[1]) != tuple(got[0])
    with pytest.raises(ValueError, match="spacing=8 must be >= length=16"):
        benchmarking.heldout_prompts(_CharTokenizer(), 2, 16, per_file=2, spacing=8)
    with pytest.raises(ValueError, match="or fewer per file"):
        benchmarking.heldout_prompts(_CharTokenizer(), 2, 16, per_file=2, spacing=10_000_000)
    # Two identical halves: as independent runs the error halves by sqrt(2); as clusters of the
    # two copies of each run it is the error of the distinct runs.
    ratios = np.array([1.0, 2.0, 4.0, 3.0])
    distinct = metrics.paired_speedup(ratios, np.ones(4))["speedup_se"]
    doubled = np.concatenate([ratios, ratios])
    naive = metrics.paired_speedup(doubled, np.ones(8))["speedup_se"]
    clustered = metrics.paired_speedup(doubled, np.ones(8), clusters=np.tile(np.arange(4), 2))["speedup_se"]
    assert naive < 0.8 * distinct
    assert clustered == pytest.approx(distinct, rel=1e-12)


def test_prompts_by_file_use_every_file_and_label_it():
    fixed = benchmarking.heldout_prompts(_CharTokenizer(), 6, 16, per_file=2, spacing=40)
    got, files = prompts.heldout_prompts_by_file(_CharTokenizer(), 12, 16, max_per_file=3, spacing=40)
    assert got.shape == (12, 16) and got.dtype == np.int32 and files.shape == (12,)
    assert files[0] == 0 and np.all(np.diff(files) >= 0) and np.all(np.diff(files) <= 1)
    assert np.bincount(files).max() <= 3
    assert len({tuple(row) for row in got}) == 12
    # A file's first prompt is its start, as in the one-per-file layout; files whole enough for two
    # prompts give the fixed two-per-file layout's rows too.
    one, one_files = prompts.heldout_prompts_by_file(_CharTokenizer(), 5, 16, max_per_file=1, spacing=0)
    np.testing.assert_array_equal(one, benchmarking.heldout_prompts(_CharTokenizer(), 5, 16))
    assert one_files.tolist() == [0, 1, 2, 3, 4]
    assert {tuple(row) for row in fixed} <= {tuple(row) for row in got} | {
        tuple(row) for row in prompts.heldout_prompts_by_file(_CharTokenizer(), 40, 16, max_per_file=3, spacing=40)[0]
    }
    with pytest.raises(ValueError, match="hold only"):
        prompts.heldout_prompts_by_file(_CharTokenizer(), 10**7, 16, max_per_file=1, spacing=0)


def test_speedup_of_means_and_its_standard_error():
    rng = np.random.default_rng(0)
    base = rng.uniform(1.0, 2.0, 50)
    spec = rng.uniform(0.4, 1.0, 50)
    got = metrics.speedup_of_means(base, spec)
    ratio = base.mean() / spec.mean()
    assert got["speedup_of_means"] == pytest.approx(ratio, rel=1e-12)
    # Delta method by hand: var(R) ~ var(base - R * spec) / (n * mean(spec)^2).
    by_hand = np.std(base - ratio * spec, ddof=1) / np.sqrt(50) / spec.mean()
    assert got["speedup_of_means_se"] == pytest.approx(by_hand, rel=1e-9)
    # ... and it agrees with the spread of R over resampled prompt sets.
    boot = [base[i].mean() / spec[i].mean() for i in rng.integers(0, 50, (4000, 50))]
    assert got["speedup_of_means_se"] == pytest.approx(np.std(boot), rel=0.1)
    # Copies of the same runs, as clusters, carry no more information than the runs.
    doubled = metrics.speedup_of_means(np.tile(base, 2), np.tile(spec, 2), clusters=np.tile(np.arange(50), 2))
    assert doubled["speedup_of_means_se"] == pytest.approx(got["speedup_of_means_se"], rel=1e-12)


def test_cost_model_closed_forms():
    assert costs.tokens_per_round_tokenwise(0.0, 4) == 1.0
    assert costs.tokens_per_round_tokenwise(1.0, 4) == 5.0
    assert costs.tokens_per_round_tokenwise(0.8, 3) == pytest.approx(1 + 0.8 + 0.64 + 0.512)
    loop = costs.LoopCosts(
        target_step_ms=10,
        verify_ms=12,
        draft_step_ms=1,
        draft_first_ms=2,
        target_prefill_ms=5,
        draft_prefill_ms=1,
        ar_overhead_ms=0.5,
        round_overhead_ms=1,
    )
    assert loop.round_ms(3) == 2 + 2 * 1 + 12 + 1
    ar, spec = loop.predicted_times_ms(n=30, k=3, tokens_per_round=3.0)
    assert (ar, spec) == (5 + 30 * 10.5, 5 + 1 + 10 * 17)
    assert loop.predicted_speedup(30, 3, 3.0) == pytest.approx(ar / spec)
    fields = dict(target_step_ms=10, draft_step_ms=1, draft_first_ms=2, target_prefill_ms=5, draft_prefill_ms=1)
    built = costs.loop_costs(dict(fields, verify_ms={3: 12}), dict(ar_overhead_ms=0.5, round_overhead_ms=1), 3)
    assert built == loop
    # A round's calls timed together replace the isolated sum when measured.
    together = costs.loop_costs(
        dict(fields, verify_ms={3: 12}, round_calls_ms={3: 20.0}), dict(ar_overhead_ms=0.5, round_overhead_ms=1), 3
    )
    assert together.round_ms(3) == 20 + 1 and together.isolated_round_calls_ms(3) == 2 + 2 * 1 + 12


def test_round_calls_cost_runs_a_round_of_calls():
    target = random_model(tiny_config("gpt2", vocab_size=32), seed=0)
    draft = random_model(tiny_config("opt", vocab_size=32), seed=1)
    ms = costs.round_calls_cost_ms(target, draft, batch=2, k=3, position=5, capacity=12, reps=2)
    assert 0 < ms < 1000
    with pytest.raises(ValueError, match="capacity=8 must hold 4 tokens at position 5"):
        costs.round_calls_cost_ms(target, draft, batch=2, k=3, position=5, capacity=8)


def test_sizes_are_the_hub_architectures():
    assert sizes.HF_SIZES["opt-350m"] == dict(
        model_type="opt",
        hidden_size=1024,
        num_hidden_layers=24,
        num_attention_heads=16,
        ffn_dim=4096,
        word_embed_proj_dim=512,
        vocab_size=50272,
        do_layer_norm_before=False,
    )
    assert sizes.HF_SIZES["gpt2-xl"] == dict(model_type="gpt2", n_embd=1600, n_layer=48, n_head=25)
    config = benchmarking.sized_config("tiny-opt")
    assert (config.model_type, config.vocab_size, config.num_layers) == ("opt", 64, 2)
    with pytest.raises(ValueError, match="unknown size 'gpt5'"):
        benchmarking.sized_config("gpt5")


def test_benchmark_config_checks_and_settings():
    config = sweeps.BenchmarkConfig(target_model="t", draft_model="d", mode="acceptance", temperatures=(0.0,))
    with pytest.raises(ValueError, match="--mode=acceptance needs a --temperatures value > 0"):
        sweeps.check_config(config)
    sweeps.check_config(sweeps.BenchmarkConfig(target_model="t", draft_model="d", mode="acceptance"))
    calls = []
    lib = types.SimpleNamespace(
        autoregressive_sample=lambda *a, **kw: calls.append(("ar", kw)),
        speculative_sample=lambda *a, **kw: calls.append(("spec", kw)),
    )
    methods = sweeps.settings_methods(
        "T", "D", np.zeros((2, 3), np.int32), ["0:1:1"], lib=lib, prefix="x ", max_new_tokens=4, num_draft_tokens=2
    )
    assert list(methods) == ["x 0:1:1 autoregressive", "x 0:1:1 speculative"]
    methods["x 0:1:1 speculative"](5)
    kind, kw = calls[0]
    assert kind == "spec" and kw["num_draft_tokens"] == 2 and kw["max_new_tokens"] == 4 and kw["top_k"] == 1


_HLO = """HloModule m

%body.1 (p: (s32[], f32[4])) -> (s32[], f32[4]) {
  %a = f32[4] all-reduce(f32[4] %x), replica_groups={}
  %b = f32[4] all-gather-start(f32[2] %y)
  %c = f32[4] all-gather-done(f32[4] %b)
}

ENTRY %main (x: f32[4]) -> f32[4] {
  %w = (s32[], f32[4]) while((s32[], f32[4]) %t), body=%body.1, backend_config={"known_trip_count":{"n":"6"}}
  %r = f32[4] all-reduce(f32[4] %z)
}
"""


def test_hlo_collectives_by_loop():
    out = hlo.collectives_by_loop(_HLO)
    (loop,) = out["loops"]
    assert loop["body"] == "body.1" and loop["trip_count"] == 6
    assert loop["counts"]["all-reduce"] == 1 and loop["counts"]["all-gather"] == 1  # start/done counts once
    assert out["outside"]["all-reduce"] == 1
    assert out["total_executed"]["all-reduce"] == 7 and out["total_executed"]["all-gather"] == 6


def test_is_loopback():
    assert net.is_loopback("127.0.0.2") and net.is_loopback("::1") and net.is_loopback("localhost")
    assert not net.is_loopback("10.1.2.3") and not net.is_loopback("") and not net.is_loopback("localhost.evil")


def test_load_test_report_text():
    phase = dict(
        concurrency=4,
        ok=3,
        sent=4,
        not_sent=0,
        failures=1,
        p50_ms=12.0,
        p99_ms=30.0,
        requests_per_s=2.5,
        tokens_per_s=40.0,
        mean_batch_size=2.0,
        errors=["HTTP 503: busy"],
    )
    report = dict(
        url="http://127.0.0.1:1",
        requests=4,
        max_tokens=8,
        temperature=0.0,
        phases={"concurrent": phase},
        xla_compiles_during_test=0,
    )
    text = load_test.format_report(report)
    assert "3/4" in text and "  concurrent error: HTTP 503: busy" in text
    assert text.endswith("XLA compilations during the test: 0")


@pytest.mark.parametrize("module", [configs, metrics, timing, tables, costs, sweeps, net, prompts])
def test_docstring_examples(module):
    assert doctest.testmod(module).failed == 0


def test_from_flags_reads_each_field_from_its_flag():
    values = dict(
        target_model="t",
        draft_model="d",
        mode="size",
        settings=["0:0:1"],
        settings_K=2,
        acceptance_rows=4,
        K=["1", "3"],
        temperatures=["0", "0.5"],
        batch_sizes=["2"],
        ngram_K=3,
        verify=["block"],
        N=8,
        prompt_tokens=4,
        num_runs=1,
        repeats=2,
        prompts_per_file=3,
    )
    flag_values = {name: types.SimpleNamespace(value=v) for name, v in values.items()}
    config = benchmarking.from_flags(sweeps.BenchmarkConfig, flag_values, size_pairs=("gpt2:gpt2",))
    assert config.K == (1, 3) and config.temperatures == (0.0, 0.5) and config.batch_sizes == (2,)
    assert config.verify == ("block",) and config.size_pairs == ("gpt2:gpt2",) and config.mode == "size"
    assert config.repeats == 2 and config.prompts_per_file == 3
    with pytest.raises(KeyError):
        benchmarking.from_flags(sweeps.BenchmarkConfig, flag_values)  # no size_pairs flag


def test_from_flags_check_failures_are_usage_errors():
    from absl import app

    flag_values = {"K": types.SimpleNamespace(value=["0"])}

    @dataclasses.dataclass(frozen=True)
    class Run:
        K: tuple[int, ...]

    def check(config):
        if 0 in config.K:
            raise ValueError("--K must be positive")

    with pytest.raises(app.UsageError, match="--K must be positive"):
        benchmarking.from_flags(Run, flag_values, check=check)


@pytest.mark.parametrize(
    ("spec", "named"),
    [
        ("tree:block:2x2", "'block' is not a tree verification rule"),
        ("chain:traversal:4", "'traversal' is not a chain verification rule"),
        ("dynamic:recursive:8:0.4", "'recursive' is not a chain verification rule"),
    ],
)
def test_drafting_methods_take_their_rules_from_the_registries(spec, named):
    """A rule of the other family is refused when the flag is parsed, before any model loads."""
    with pytest.raises(ValueError, match=named):
        drafting.parse_method(spec)
    for rule in VERIFICATION_RULES:
        assert drafting.parse_method(f"chain:{rule}:3").rule == rule
    for rule in TREE_VERIFICATION_RULES:
        assert drafting.parse_method(f"tree:{rule}:2x2").rule == rule
