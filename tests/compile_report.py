"""Where the suite's time goes: JAX tracing, lowering and XLA compiles per test (opt-in).

    python -m pytest -q --compile-report=report.json

Each test's wall time (setup, call and teardown) is split into JAX's tracing,
its lowering to MLIR and XLA's backend compile, read from `jax.monitoring`'s
duration events with the name of the jitted function; the rest is run time
(and Python). With xdist each worker collects its own tests and hands them to
the controller (`workeroutput`). At the end the run prints one table by test
file and the functions whose compiles cost most, and writes every test's
numbers to the JSON file. BUILD_NOTES ("Test suite time") cites its output.
"""

from __future__ import annotations

import collections
import json
import re
import time

import pytest

# jax.monitoring duration events (jax/_src/dispatch.py) -> the report's three phases.
PHASES = {
    "/jax/core/compile/jaxpr_trace_duration": "trace",
    "/jax/core/compile/jaxpr_to_mlir_module_duration": "lower",
    "/jax/core/compile/backend_compile_duration": "compile",
}
_WORKER_OUTPUT_KEY = "jaxspec_compile_report"


def function_name(fun_name: str) -> str:
    """The jitted function's own name: "jit(_generate)", "jit__generate" and "_generate" all give "_generate"."""
    name = re.sub(r"^jit\((.*)\)$", r"\1", fun_name)
    return re.sub(r"^jit_", "", name)


def new_test_record() -> dict:
    return {"wall": 0.0, "trace": 0.0, "lower": 0.0, "compile": 0.0, "compiles": 0, "functions": {}}


def new_function_record() -> dict:
    return {"trace": 0.0, "lower": 0.0, "compile": 0.0, "compiles": 0}


class CompileReport:
    """Per-test JAX compile phases. `listen` is a `jax.monitoring` duration listener."""

    def __init__(self, path: str | None):
        self.path = path
        self.tests: dict[str, dict] = {}
        self._current: str | None = None

    def listen(self, event: str, duration: float, fun_name: str = "?", **kwargs) -> None:
        del kwargs
        phase = PHASES.get(event)
        if phase is None:
            return
        record = self.tests.setdefault(self._current or "<outside tests>", new_test_record())
        record[phase] += duration
        per_function = record["functions"].setdefault(function_name(fun_name), new_function_record())
        per_function[phase] += duration
        if phase == "compile":
            record["compiles"] += 1
            per_function["compiles"] += 1

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_protocol(self, item, nextitem):
        del nextitem
        self._current = item.nodeid
        start = time.perf_counter()
        yield
        self.tests.setdefault(item.nodeid, new_test_record())["wall"] += time.perf_counter() - start
        self._current = None

    def pytest_sessionfinish(self, session):
        workeroutput = getattr(session.config, "workeroutput", None)
        if workeroutput is not None:  # an xdist worker: the controller merges
            workeroutput[_WORKER_OUTPUT_KEY] = json.dumps(self.tests)

    @pytest.hookimpl(optionalhook=True)
    def pytest_testnodedown(self, node, error):
        del error
        output = getattr(node, "workeroutput", {}).get(_WORKER_OUTPUT_KEY)
        if output:
            self.tests.update(json.loads(output))

    def pytest_terminal_summary(self, terminalreporter):
        if getattr(terminalreporter.config, "workeroutput", None) is not None:
            return
        for line in summary_lines(self.tests):
            terminalreporter.write_line(line)
        if self.path:
            with open(self.path, "w") as f:
                json.dump(self.tests, f, indent=1, sort_keys=True)
            terminalreporter.write_line(f"compile report: every test's numbers in {self.path}")


def _row(label: str, numbers: dict, with_wall: bool) -> str:
    jax_s = numbers["trace"] + numbers["lower"] + numbers["compile"]
    row = f"{label[:44]:44s}" + (f" {numbers['wall']:7.1f}" if with_wall else "")
    row += f" {numbers['trace']:6.1f} {numbers['lower']:6.1f} {numbers['compile']:7.1f} {numbers['compiles']:5d}"
    return row + (f" {numbers['wall'] - jax_s:7.1f}" if with_wall else "")


def summary_lines(tests: dict[str, dict], top: int = 12) -> list[str]:
    """The report's tables: seconds by test file (descending wall time), then the costliest functions."""
    fields = ("wall", "trace", "lower", "compile", "compiles")
    by_file = collections.defaultdict(new_test_record)
    by_function = collections.defaultdict(new_function_record)
    totals = new_test_record()
    for nodeid, record in tests.items():
        for row in (by_file[nodeid.split("::")[0]], totals):
            for field in fields:
                row[field] += record[field]
        for name, numbers in record["functions"].items():
            for field, value in numbers.items():
                by_function[name][field] += value
    columns = f"{'trace':>6s} {'lower':>6s} {'compile':>7s} {'n':>5s}"
    lines = ["", f"{'seconds by test file':44s} {'wall':>7s} {columns} {'rest':>7s}"]
    for name, row in sorted(by_file.items(), key=lambda kv: -kv[1]["wall"]):
        lines.append(_row(name, row, with_wall=True))
    lines.append(_row("total (worker-seconds)", totals, with_wall=True))
    lines += ["", f"{'jitted functions, by trace + lower + compile':44s} {columns}"]
    ranked = sorted(by_function.items(), key=lambda kv: -(kv[1]["trace"] + kv[1]["lower"] + kv[1]["compile"]))
    lines += [_row(name, numbers, with_wall=False) for name, numbers in ranked[:top]]
    return lines


def count_compiles(fn) -> int:
    """How many XLA backend compiles `fn()` makes (read from jax.monitoring, like the report)."""
    import jax

    compiles = []

    def listener(event, duration, **kwargs):
        del duration, kwargs
        if PHASES.get(event) == "compile":
            compiles.append(event)

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        fn()
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
    return len(compiles)


def register(config, path: str) -> None:
    """Installs the report: the pytest hooks, and the JAX listener in every process that runs tests."""
    import os

    import jax

    report = CompileReport(path)
    if os.environ.get("PYTEST_XDIST_WORKER") or not getattr(config.option, "numprocesses", None):
        jax.monitoring.register_event_duration_secs_listener(report.listen)
    config.pluginmanager.register(report, "jaxspec-compile-report")
