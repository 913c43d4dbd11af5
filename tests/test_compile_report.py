"""The opt-in compile report (tests/compile_report.py): names, per-test phases, the tables."""

import jax
import numpy as np
import pytest
from compile_report import PHASES, CompileReport, function_name, summary_lines

EVENT = {phase: event for event, phase in PHASES.items()}
TRACE, LOWER, COMPILE = EVENT["trace"], EVENT["lower"], EVENT["compile"]


@pytest.mark.parametrize("raw", ["jit(_generate)", "jit__generate", "_generate"])
def test_function_names_are_the_jitted_functions_own(raw):
    assert function_name(raw) == "_generate"


def test_phases_are_charged_to_the_running_test_and_summed_by_file():
    report = CompileReport(path=None)
    report._current = "tests/test_a.py::test_one"
    report.listen(TRACE, 0.5, fun_name="_generate")
    report.listen(LOWER, 0.25, fun_name="jit(_generate)")
    report.listen(COMPILE, 2.0, fun_name="jit__generate")
    report.listen("/jax/some/other/event", 9.0, fun_name="x")  # not a phase: ignored
    report.tests["tests/test_a.py::test_one"]["wall"] = 3.0
    report._current = "tests/test_a.py::test_two"
    report.listen(COMPILE, 1.0, fun_name="jit(add)")
    report.tests["tests/test_a.py::test_two"]["wall"] = 1.5

    one = report.tests["tests/test_a.py::test_one"]
    assert (one["trace"], one["lower"], one["compile"], one["compiles"]) == (0.5, 0.25, 2.0, 1)
    assert one["functions"]["_generate"] == {"trace": 0.5, "lower": 0.25, "compile": 2.0, "compiles": 1}
    lines = summary_lines(report.tests)
    file_row = next(line for line in lines if line.startswith("tests/test_a.py"))
    # wall 4.5 = trace 0.5 + lower 0.25 + compiles 3.0 (2 of them) + rest 0.75
    assert file_row.split()[1:] == ["4.5", "0.5", "0.2", "3.0", "2", "0.8"]
    assert next(line for line in lines if line.startswith("_generate")).split()[1:] == ["0.5", "0.2", "2.0", "1"]


def test_a_real_compile_is_seen_by_the_listener():
    report = CompileReport(path=None)
    jax.monitoring.register_event_duration_secs_listener(report.listen)
    try:
        report._current = "here"
        jax.jit(lambda x: x * 3 + 1)(np.arange(7.0, dtype=np.float32)).block_until_ready()
    finally:
        jax.monitoring.unregister_event_duration_listener(report.listen)
    record = report.tests["here"]
    assert record["compiles"] == 1 and record["compile"] > 0 and record["trace"] > 0 and record["lower"] > 0
    assert list(record["functions"]) == ["<lambda>"]
