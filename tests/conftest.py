"""Shared fixtures: the golden tiny checkpoints made by tests/make_golden.py."""

import os

import numpy as np
import pytest

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")
GOLDEN_MODELS = ("gpt2_tiny", "opt_tiny", "opt_350m_style", "opt_proj_preln")
# Llama family (tests/test_llama.py): see tests/make_golden.py for what each covers.
LLAMA_GOLDEN_MODELS = ("llama_gqa", "llama_mha_linear", "llama3_rope", "qwen2_tiny", "mistral_tiny")


_RUN_CACHE_ENV = "JAXSPEC_TEST_COMPILATION_CACHE"


# The suite's compile settings: "fast" (the default) or "full" (XLA exactly as users run it).
_XLA_TIER_ENV = "JAXSPEC_TEST_XLA"
# Fast tier: every module not marked `optimized` compiles with LLVM at -O0 (`_compile_tier`) and
# XLA:CPU's older elemental fusion codegen; together ~3x faster compiles of a generation loop
# (BUILD_NOTES, "Test suite time"). The old codegen runs 50,257-id sampling ~2.7x slower, so it is
# set per compile (like `jax.jit(compiler_options=...)`), never process-wide through XLA_FLAGS.
_FAST_COMPILER_OPTIONS = {"xla_cpu_use_fusion_emitters": False}
# Tests marked `run_bound` (the 40,000-row exact-law loops) spend more time running their loops than
# compiling them, and LLVM at -O0 runs those ~2.4x slower: in the fast tier they compile with LLVM
# at -O1 without its expensive passes (and the old codegen), which costs ~1 s more per loop and
# saves ~1.5 s per 40,000-row call (BUILD_NOTES, "Test suite time").
_RUN_BOUND_COMPILER_OPTIONS = {
    "xla_backend_optimization_level": 1,
    "xla_llvm_disable_expensive_passes": True,
    "xla_cpu_use_fusion_emitters": False,
}
# The options added to every compile while a `run_bound` test runs (set by `_run_bound_tier`).
_RUN_BOUND_ACTIVE = {"on": False}


def _fast_xla() -> bool:
    tier = os.environ.get(_XLA_TIER_ENV, "fast")
    if tier not in ("fast", "full"):
        raise pytest.UsageError(f"{_XLA_TIER_ENV}={tier!r}: use 'fast' (the default) or 'full'.")
    return tier == "fast"


def _use_fast_codegen_under_disabled_optimizations() -> None:
    """Adds `_FAST_COMPILER_OPTIONS` to every compile made while `jax_disable_most_optimizations` is on.

    JAX has no public setting for per-compile XLA options other than each `jax.jit`'s own, and the
    library's jits are not the tests' to change: this wraps JAX's internal
    `get_compile_options`. If a JAX release renames it, the suite runs without the old codegen
    (slower compiles, same results); nothing else depends on it. The options are part of the
    compilation cache's key.
    """
    import functools

    import jax

    try:
        from jax._src import compiler
    except ImportError:
        return
    original = getattr(compiler, "get_compile_options", None)
    if original is None or getattr(original, "_jaxspec_fast_codegen", False):
        return

    @functools.wraps(original)
    def get_compile_options(*args, env_options_overrides=None, **kwargs):
        if jax.config.read("jax_disable_most_optimizations"):
            env_options_overrides = {**_FAST_COMPILER_OPTIONS, **(env_options_overrides or {})}
        elif _RUN_BOUND_ACTIVE["on"]:
            env_options_overrides = {**_RUN_BOUND_COMPILER_OPTIONS, **(env_options_overrides or {})}
        return original(*args, env_options_overrides=env_options_overrides, **kwargs)

    get_compile_options._jaxspec_fast_codegen = True
    compiler.get_compile_options = get_compile_options


def _pin_worker_to_one_core() -> None:
    """With one xdist worker per core, worker i runs on core i only (every thread of the process).

    Each worker's XLA:CPU would otherwise size its thread pools for every core and the workers'
    threads would contend for the same cores (BUILD_NOTES, "Test suite time"). Before JAX creates
    its CPU client, so its pools see one core. Not Linux, or not one worker per core: nothing.
    """
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    if not worker.startswith("gw") or not hasattr(os, "sched_setaffinity"):
        return
    cores = sorted(os.sched_getaffinity(0))
    if int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0")) != len(cores):
        return
    core = {cores[int(worker[2:]) % len(cores)]}
    for thread in os.listdir("/proc/self/task"):  # threads already started (e.g. a BLAS pool) too
        try:
            os.sched_setaffinity(int(thread), core)
        except OSError:
            pass


# glibc's malloc asks for transparent huge pages on the memory it maps (glibc >= 2.35; older ones
# ignore the tunable). XLA:CPU's buffers come from malloc, and every vocabulary-sized array (e.g.
# [512, 50,257] float32, 103 MB) is a fresh mmap whose 4 KiB pages each fault on first write: with
# 2 MiB pages `processed_probs` at that shape took 38 ms instead of 88 on one core, and the default
# tier ~17% less time (BUILD_NOTES, "Test suite time"). Results are unchanged.
_MALLOC_HUGE_PAGES = "glibc.malloc.hugetlb=1"


def _ask_workers_for_huge_pages() -> None:
    """Adds `_MALLOC_HUGE_PAGES` to GLIBC_TUNABLES for the xdist workers this process starts.

    glibc reads its tunables once, at process start: this process keeps its own setting, the
    workers (started after `pytest_configure`) inherit the new one. A tunable set by the user wins.
    """
    if os.environ.get("PYTEST_XDIST_WORKER") or not os.path.exists("/sys/kernel/mm/transparent_hugepage"):
        return
    tunables = os.environ.get("GLIBC_TUNABLES", "")
    if "glibc.malloc.hugetlb" not in tunables:
        os.environ["GLIBC_TUNABLES"] = f"{tunables}:{_MALLOC_HUGE_PAGES}" if tunables else _MALLOC_HUGE_PAGES


def pytest_addoption(parser):
    parser.addoption(
        "--compile-report",
        metavar="PATH",
        default=None,
        help="report JAX's tracing, lowering and compile seconds per test file (tests/compile_report.py) "
        "and write every test's numbers to PATH (JSON)",
    )


def pytest_configure(config):
    """The fast tier's compile options, and one compilation cache per test run, shared by the xdist
    workers and across test modules.

    XLA's compiles are most of the suite's time (BUILD_NOTES, "Test suite time"), and the same
    programs are compiled again in later modules (`_release_compiled_programs` drops them) and in
    the other worker. A run starts with an empty cache (the timings stay those of a fresh
    machine) and removes it at the end; set JAX_COMPILATION_CACHE_DIR to keep one across runs.
    """
    import tempfile

    _pin_worker_to_one_core()
    _ask_workers_for_huge_pages()

    import jax

    if _fast_xla():
        _use_fast_codegen_under_disabled_optimizations()
    if config.getoption("compile_report"):
        import compile_report

        compile_report.register(config, config.getoption("compile_report"))

    if os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        return  # the user's own cache, used as is
    if _RUN_CACHE_ENV not in os.environ:  # the controller (or a run without workers): the workers inherit it
        os.environ[_RUN_CACHE_ENV] = tempfile.mkdtemp(prefix="jaxspec-test-xla-")
        config._jaxspec_run_cache = os.environ[_RUN_CACHE_ENV]
    jax.config.update("jax_compilation_cache_dir", os.environ[_RUN_CACHE_ENV])
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def pytest_unconfigure(config):
    import shutil

    run_cache = getattr(config, "_jaxspec_run_cache", None)
    if run_cache:
        shutil.rmtree(run_cache, ignore_errors=True)
        os.environ.pop(_RUN_CACHE_ENV, None)


def pytest_xdist_auto_num_workers(config):
    """`-n auto` (pyproject's addopts): one worker per core, at most 4 (each worker holds its own
    compiled programs, ~1-2 GB on the large-vocabulary tests)."""
    del config
    return max(1, min(4, len(os.sched_getaffinity(0))))


def fixture_path(name: str) -> str:
    return os.path.join(FIXTURES, name)


def golden(name: str):
    data = np.load(os.path.join(FIXTURES, name, "golden.npz"))
    return data["tokens"], data["logits"]


@pytest.fixture(params=GOLDEN_MODELS)
def golden_name(request):
    return request.param


@pytest.fixture(autouse=True, scope="module")
def _compile_tier(request):
    """LLVM at -O0 (`jax_disable_most_optimizations`) for every module not marked `optimized`.

    Set up before the module's other fixtures (autouse, module scope), so module-scoped models and
    servers compile in the same tier as the tests. Off under JAXSPEC_TEST_XLA=full.
    """
    import jax

    fast = _fast_xla() and request.node.get_closest_marker("optimized") is None
    jax.config.update("jax_disable_most_optimizations", fast)
    yield
    jax.config.update("jax_disable_most_optimizations", False)


@pytest.fixture(autouse=True)
def _run_bound_tier(request):
    """LLVM at -O1 without its expensive passes (`_RUN_BOUND_COMPILER_OPTIONS`) for tests marked
    `run_bound`, in the fast tier; the module's tier is restored after the test."""
    if not (_fast_xla() and request.node.get_closest_marker("run_bound")):
        yield
        return
    import jax

    module_tier = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", False)
    _RUN_BOUND_ACTIVE["on"] = True
    try:
        yield
    finally:
        _RUN_BOUND_ACTIVE["on"] = False
        jax.config.update("jax_disable_most_optimizations", module_tier)


# `_release_compiled_programs` drops every compiled program once a worker holds this many memory
# maps: XLA:CPU maps ~18 regions per executable (measured: 300 small jitted functions added 5,530
# maps), and the kernel's limit here is vm.max_map_count = 65,530.
_MAP_BUDGET = 32_000


def _memory_maps() -> int:
    try:
        with open("/proc/self/maps") as maps:
            return sum(1 for _ in maps)
    except OSError:  # not Linux: no count to read, so always release
        return _MAP_BUDGET


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs():
    """Drops every compiled program after a test module once the process holds many memory maps.

    XLA:CPU keeps each executable's code mapped for the life of the process; the
    whole suite in one process compiles thousands of small programs and once ran
    past the kernel's memory-map limit (vm.max_map_count, 65530 here) and died
    with a segmentation fault. Below `_MAP_BUDGET` the programs (and JAX's
    traces of them) are kept: later modules that build the same models or run
    the same loops reuse them instead of tracing and compiling again.
    """
    yield
    if _memory_maps() >= _MAP_BUDGET:
        import jax

        jax.clear_caches()
