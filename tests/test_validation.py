"""Request validation goes through the library's own checks, with the field named for the HTTP layer.

The engine-level cases (every field, through `Engine.check`) are in test_engine.py;
these pin the shared path: the same settings check as `SamplingConfig`, the
same prompt and integer checks as `generation.common`.
"""

import numpy as np
import pytest

from jaxspec.generation.inputs import check_int, check_prompt
from jaxspec.sampling import SamplingConfig
from jaxspec.sampling.processing import SettingError, check_settings
from jaxspec.serving import validation
from jaxspec.serving.validation import GREEDY, Request, RequestError

CAPS = dict(prompt_cap=4, tokens_cap=8, n_cap=2, vocab_size=10)


def test_a_good_request_is_normalised():
    got = validation.validate(np.array([0, 9]), max_tokens=np.int64(8), n=2, temperature=0, top_k=3, seed=5, **CAPS)
    assert got == Request(prompt_ids=(0, 9), n=2, max_tokens=8, sampling=GREEDY, seed=5)
    assert type(got.prompt_ids[0]) is int and type(got.max_tokens) is int
    hot = validation.validate([1], max_tokens=1, temperature=0.5, top_k=10, top_p=0.9, **CAPS)
    assert hot.sampling == SamplingConfig(temperature=0.5, top_k=0, top_p=0.9)  # top_k >= vocab: off


@pytest.mark.parametrize(
    "kwargs, param, message",
    [
        (dict(temperature=-1.0), "temperature", "temperature must be finite and >= 0, got -1.0; use 0.0 for greedy"),
        (dict(temperature=1e-40), "temperature", "temperature=1e-40 underflows float32"),
        (dict(top_k=2.5), "top_k", "top_k must be an int, got 2.5 (type float); use 0 to turn top-k off"),
        (dict(top_p=0.0), "top_p", "top_p must lie in (0, 1], got 0.0; use 1.0 to turn top-p off"),
        (dict(top_p=1e-45), "top_p", "top_p 1e-45 underflows float32"),
        (dict(n=3), "n", "n must lie in 1..2 (rows of one batch), got 3."),
        (dict(n=1.0), "n", "n must be an integer, got 1.0 (float)."),
        (dict(max_tokens=9), "max_tokens", "max_tokens must lie in 1..8, got 9."),
        (dict(seed=-1), "seed", "seed must lie in 0..2147483647, got -1."),
        (dict(prompt_ids=[1] * 5), "prompt", "the prompt is 5 tokens, more than the cap of 4"),
        (dict(prompt_ids=[3, 10]), "prompt", "prompt token 1 is 10, outside the vocabulary 0..9; encode the prompt"),
        (dict(prompt_ids=[3, True]), "prompt", "prompt token 1 is True (bool); token ids must be integers."),
        (dict(prompt_ids="hi"), "prompt", "the prompt must be a sequence of token ids, got str; tokenize it first."),
    ],
)
def test_refusals_name_the_field_the_value_and_the_fix(kwargs, param, message):
    args = dict(prompt_ids=[1, 2], max_tokens=4) | kwargs
    with pytest.raises(RequestError) as err:
        validation.validate(args.pop("prompt_ids"), **args, **CAPS)
    assert err.value.param == param and str(err.value).startswith(message)
    assert "SamplingConfig" not in str(err.value)


def test_settings_are_checked_once_for_the_library_and_the_server():
    # The same check, with SamplingConfig's prefix in the library and none in the server.
    for bad in [dict(temperature=float("nan")), dict(top_k=-1), dict(top_p=1.5)]:
        args = dict(temperature=1.0, top_k=0, top_p=1.0) | bad
        with pytest.raises(SettingError) as library:
            SamplingConfig(**args)
        with pytest.raises(RequestError) as server:
            validation.normalise(args["temperature"], args["top_k"], args["top_p"])
        (name,) = bad
        assert library.value.name == server.value.param == name
        assert str(library.value) == "SamplingConfig." + str(server.value)
    assert check_settings(np.float32(0.5), np.int64(3), 1) == (0.5, 3, 1.0)


def test_shared_integer_and_prompt_checks():
    assert check_int("n", np.int32(2), 1, 4) == 2
    assert check_prompt([1, np.int64(2)], None) == (1, 2)
    with pytest.raises(ValueError, match=r"outside the vocabulary 0\.\.2147483647"):
        check_prompt([-1], None)
    assert validation.vocab_size(type("M", (), {"vocab_size": 50})(), type("M", (), {"vocab_size": 64})()) == 50
