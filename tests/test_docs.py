"""The examples in the public docstrings run, and print what they say (doctest)."""

import doctest
import importlib

import pytest

MODULES = [
    "jaxspec.benchmarking.drafting",
    "jaxspec.generation.autoregressive",
    "jaxspec.generation.drafters",
    "jaxspec.generation.self_drafter",
    "jaxspec.generation.speculative",
    "jaxspec.sampling.accept",
    "jaxspec.sampling.processing",
    "jaxspec.testing",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0, f"{name} has no examples"
    assert result.failed == 0
