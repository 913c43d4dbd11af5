"""The serving engine without HTTP: validation before batching, per-row settings, admission, lifecycle.

Generation tests use a tiny random GPT-2 target and OPT draft and check every
greedy row token for token against `autoregressive_sample`; the admission and
lifecycle tests replace the engine's generation call by a stub (no models, no
compiling) so that they can block it or run it many times quickly.
"""

import concurrent.futures
import queue
import threading
import time
import types

import jax
import numpy as np
import pytest

import jaxspec
from jaxspec import serving
from jaxspec.generation.provenance import BONUS
from jaxspec.sampling import SamplingConfig
from jaxspec.serving.validation import FLOAT32_TINY, MAX_SEED
from jaxspec.testing import random_model, tiny_config

VOCAB = 48
MAX_TOKENS = 6
PROMPT_CAP = 8
PROMPTS = [[1, 2, 3], [4, 5, 6, 7, 8], [9], [10, 11, 12, 13], [14, 15], [16, 17, 18, 19, 20, 21, 22, 23]]


@pytest.fixture(scope="module")
def models():
    target = random_model(tiny_config("gpt2", vocab_size=VOCAB, max_positions=32), 0, scale=5.0)
    draft = random_model(tiny_config("opt", vocab_size=VOCAB, max_positions=32), 1, scale=5.0)
    ref = jaxspec.autoregressive_sample(
        target, PROMPTS, key=jax.random.key(0), max_new_tokens=MAX_TOKENS, temperature=0
    )
    expected = [tuple(int(t) for t in row[:n]) for row, n in zip(np.asarray(ref.tokens), np.asarray(ref.lengths))]
    yield target, draft, expected


@pytest.fixture(scope="module")
def engine(models):
    target, draft, _ = models
    engine = serving.Engine(
        target,
        draft,
        num_draft_tokens=2,
        buckets=serving.Buckets(prompt=(PROMPT_CAP,), batch=(8,), tokens=(MAX_TOKENS,)),
        batch_window_s=0.2,
    )
    assert engine.warmup() == 1
    engine.start()
    yield engine
    engine.close()


def test_bad_requests_are_refused_at_submit_and_never_fail_their_neighbours(engine, models):
    expected = models[2]
    bad = [
        ([1, VOCAB, 2], {}, "prompt"),  # an id outside the vocabulary
        (PROMPTS[0], {"n": 1.5}, "n"),
        ([1, 2.0], {}, "prompt"),
        (PROMPTS[0], {"temperature": 1e-40}, "temperature"),
        ([True, 1], {}, "prompt"),
        (PROMPTS[0], {"max_tokens": 2.0}, "max_tokens"),
    ]
    futures = []
    for i, prompt in enumerate(PROMPTS):  # good and bad interleaved within one batch window
        futures.append(engine.submit(prompt, max_tokens=MAX_TOKENS, temperature=0))
        bad_prompt, kwargs, param = bad[i]
        with pytest.raises(serving.RequestError) as err:
            engine.submit(bad_prompt, **{"max_tokens": MAX_TOKENS, "temperature": 0, **kwargs})
        assert err.value.param == param
    completions = [f.result(timeout=120) for f in futures]
    for completion, want in zip(completions, expected):
        assert completion.choices[0].token_ids == want
    assert max(c.batch_size for c in completions) > 1  # they did share calls


def test_distinct_sampling_settings_share_calls_without_compiling(engine, models):
    expected = models[2]
    compiles, before = serving.xla_compiles(), engine.stats()
    futures = []
    for i in range(20):  # 20 distinct (temperature, top_k, top_p); every fifth greedy, beside sampled rows
        temperature = 0 if i % 5 == 0 else 0.2 + 0.1 * i
        prompt = PROMPTS[i % len(PROMPTS)]
        futures.append(engine.submit(prompt, max_tokens=MAX_TOKENS, temperature=temperature, top_k=i, top_p=1 - i / 40))
    completions = [f.result(timeout=120) for f in futures]
    for i, completion in enumerate(completions):
        ids = completion.choices[0].token_ids
        assert len(ids) == MAX_TOKENS and all(0 <= t < VOCAB for t in ids)
        if i % 5 == 0:
            assert ids == expected[i % len(PROMPTS)], i
    after = engine.stats()
    assert max(c.batch_size for c in completions) > 1
    assert after["batches"] - before["batches"] < 20
    assert serving.xla_compiles() == compiles
    assert after["xla_compiles_since_warmup"] == 0


# ---- validation (no models: a stub with a vocabulary) ------------------------------------------


def stub_engine(**kwargs) -> serving.Engine:
    model = types.SimpleNamespace(vocab_size=VOCAB, max_positions=64)
    kwargs.setdefault("buckets", serving.Buckets(prompt=(PROMPT_CAP,), batch=(4,), tokens=(4,)))
    return serving.Engine(model, model, **kwargs)


BAD_REQUESTS = [
    (dict(prompt_ids=[]), "prompt"),
    (dict(prompt_ids=[1] * (PROMPT_CAP + 1)), "prompt"),
    (dict(prompt_ids="abc"), "prompt"),
    (dict(prompt_ids=5), "prompt"),
    (dict(prompt_ids=[-1]), "prompt"),
    (dict(prompt_ids=[VOCAB]), "prompt"),
    (dict(prompt_ids=[1, 1.5]), "prompt"),
    (dict(prompt_ids=[1.0]), "prompt"),
    (dict(prompt_ids=[True]), "prompt"),
    (dict(prompt_ids=np.array([1.0, 2.0])), "prompt"),
    (dict(prompt_ids=np.array([[1, 2]])), "prompt"),
    (dict(max_tokens=0), "max_tokens"),
    (dict(max_tokens=5), "max_tokens"),
    (dict(max_tokens=True), "max_tokens"),
    (dict(max_tokens=2.0), "max_tokens"),
    (dict(n=1.5), "n"),
    (dict(n=True), "n"),
    (dict(n=0), "n"),
    (dict(n=5), "n"),
    (dict(temperature=1e-40), "temperature"),
    (dict(temperature=-0.5), "temperature"),
    (dict(temperature=float("nan")), "temperature"),
    (dict(temperature=float("inf")), "temperature"),
    (dict(temperature=1e39), "temperature"),  # overflows float32
    (dict(temperature=True), "temperature"),
    (dict(temperature="1"), "temperature"),
    (dict(top_k=-1), "top_k"),
    (dict(top_k=1.5), "top_k"),
    (dict(top_k=True), "top_k"),
    (dict(top_p=0), "top_p"),
    (dict(top_p=1.5), "top_p"),
    (dict(top_p=float("nan")), "top_p"),
    (dict(top_p=1e-45), "top_p"),  # underflows float32
    (dict(top_p=True), "top_p"),
    (dict(seed=-1), "seed"),
    (dict(seed=MAX_SEED + 1), "seed"),
    (dict(seed=1.5), "seed"),
    (dict(seed=True), "seed"),
    (dict(temperature=0, top_p=0), "top_p"),  # greedy still validates the rest
]


@pytest.mark.parametrize("fields,param", BAD_REQUESTS)
def test_every_field_is_validated(fields, param):
    request = dict(prompt_ids=[1, 2], max_tokens=4)
    request.update(fields)
    prompt = request.pop("prompt_ids")
    with pytest.raises(serving.RequestError) as err:
        stub_engine().check(prompt, **request)
    assert err.value.param == param and str(err.value)


def test_underflowing_temperature_says_use_zero_for_greedy():
    with pytest.raises(serving.RequestError, match="use 0.0 for greedy"):
        stub_engine().check([1], max_tokens=1, temperature=1e-40)


def test_good_values_are_normalised():
    engine = stub_engine()
    settings = engine.check(np.array([0, VOCAB - 1]), max_tokens=np.int64(4), n=np.int32(2), seed=MAX_SEED)
    assert settings == SamplingConfig(temperature=1.0, top_k=0, top_p=1.0)
    assert engine.check([1], max_tokens=1, temperature=0, top_k=5, top_p=0.5) == serving.GREEDY
    assert engine.check([1], max_tokens=1, temperature=FLOAT32_TINY).temperature == FLOAT32_TINY
    assert engine.check([1], max_tokens=1, temperature=np.float32(0.5), top_k=VOCAB).top_k == 0  # top_k >= vocab: off
    assert engine.check([1], max_tokens=1, top_k=3).top_k == 3


def test_shared_vocabulary_of_a_padded_draft():
    target = types.SimpleNamespace(vocab_size=50, max_positions=64)
    draft = types.SimpleNamespace(vocab_size=64, max_positions=64)  # pads the target's 50 ids
    engine = serving.Engine(target, draft, buckets=serving.Buckets((4,), (1,), (4,)))
    engine.check([49], max_tokens=1)
    with pytest.raises(serving.RequestError, match="0..49"):
        engine.check([50], max_tokens=1)


def test_names_moved_out_of_engine_stay_importable():
    from jaxspec.serving import batching, telemetry, validation
    from jaxspec.serving import engine as old

    for module, names in [
        (batching, ["Buckets", "Choice", "Completion", "powers_of_two"]),
        (validation, ["GREEDY", "MAX_SEED", "INT32_MAX", "FLOAT32_TINY", "FLOAT32_MAX", "RequestError", "normalise"]),
        (telemetry, ["xla_compiles"]),
    ]:
        for name in names:
            assert getattr(old, name) is getattr(module, name), name


# ---- admission and lifecycle (generation stubbed out) ------------------------------------------


def stub_generate(release: threading.Event | None = None):
    """A stand-in for Engine._generate: every row generates `tokens` ones; optionally waits for `release`."""
    entered = threading.Event()

    def generate(ids, lengths, tokens, settings, seed):
        entered.set()
        if release is not None:
            assert release.wait(30)
        batch = ids.shape[0]
        return dict(
            tokens=np.ones((batch, tokens), np.int32),
            lengths=np.full((batch,), tokens, np.int32),
            provenance=np.full((batch, tokens), BONUS, np.int8),
        )

    return generate, entered


def workers() -> int:
    return sum(t.name == "jaxspec-engine" and t.is_alive() for t in threading.enumerate())


def test_refused_requests_leave_no_trace(monkeypatch):
    engine = stub_engine(max_queue=1, batch_window_s=0)
    release = threading.Event()
    generate, entered = stub_generate(release)
    monkeypatch.setattr(engine, "_generate", generate)
    before = engine.stats()
    with pytest.raises(serving.Overloaded, match="not running"):  # not started
        engine.submit([1, 2], max_tokens=4, temperature=0.7, top_p=0.9)
    assert engine.stats() == before and engine._queue.qsize() == 0
    engine.start()
    try:
        running = engine.submit([1], max_tokens=4)  # taken by the worker, which blocks
        assert entered.wait(10)
        queued = engine.submit([2], max_tokens=4)  # fills the queue (max_queue=1)
        before = engine.stats()
        with pytest.raises(serving.Overloaded, match="already queued"):
            engine.submit([3], max_tokens=2, temperature=0.3, top_k=7, seed=5)
        assert engine.stats() == before and engine._queue.qsize() == 1
    finally:
        release.set()
    assert running.result(10).choices[0].token_ids == (1,) * 4
    assert queued.result(10).choices[0].token_ids == (1,) * 4
    assert engine.close(10)
    before = engine.stats()
    with pytest.raises(serving.Overloaded, match="not running"):  # closed
        engine.submit([1, 2], max_tokens=4, temperature=0.5)
    assert engine.stats() == before and before["requests"] == 2


def test_close_past_its_timeout_never_leaves_two_workers(monkeypatch):
    engine = stub_engine(batch_window_s=0)
    release = threading.Event()
    generate, entered = stub_generate(release)
    monkeypatch.setattr(engine, "_generate", generate)
    baseline = workers()
    engine.start()
    try:
        busy = engine.submit([1, 2], max_tokens=4)
        assert entered.wait(10)
        closed = engine.close(timeout=0.1)  # returns while the worker is still inside its batch
        try:
            engine.start()
            refusal = None
        except RuntimeError as err:
            refusal = str(err)
        assert workers() == baseline + 1, "start() ran a second worker beside the one still in its batch"
        assert refusal is not None and "close() again" in refusal
        assert closed is False
        with pytest.raises(serving.Overloaded):
            engine.submit([1], max_tokens=4)
    finally:
        release.set()
    assert busy.result(10).choices[0].token_ids == (1,) * 4  # the batch in flight is still answered
    assert engine.close(timeout=10) is True
    assert workers() == baseline
    engine.start()  # a clean restart
    assert workers() == baseline + 1
    assert engine.submit([3], max_tokens=2).result(10).choices[0].token_ids == (1, 1)
    assert engine.close(timeout=10) is True
    assert workers() == baseline


class SlowQueue(queue.Queue):
    """Widens the gap between a submit's checks and its enqueue, where a racing close can slip in."""

    def put(self, item, block=True, timeout=None):
        time.sleep(0.02)
        super().put(item, block, timeout)


def test_submit_racing_close_is_always_answered(monkeypatch):
    engine = stub_engine(batch_window_s=0)
    generate, _ = stub_generate()
    monkeypatch.setattr(engine, "_generate", generate)
    engine._queue = SlowQueue()
    engine.start()
    outcomes, lock = [], threading.Lock()
    barrier = threading.Barrier(9)

    def client():
        barrier.wait()
        while True:
            try:
                future = engine.submit([1], max_tokens=2)
            except serving.Overloaded:
                with lock:
                    outcomes.append(None)
                return
            with lock:
                outcomes.append(future)
            time.sleep(0.001)

    threads = [threading.Thread(target=client) for _ in range(8)]
    for t in threads:
        t.start()
    barrier.wait()
    time.sleep(0.2)
    engine.close(timeout=10)
    for t in threads:
        t.join(10)
        assert not t.is_alive()
    futures = [f for f in outcomes if f is not None]
    assert futures and outcomes.count(None) == 8  # every client ended refused, after some were accepted
    done, hanging = concurrent.futures.wait(futures, timeout=5)
    assert not hanging, f"{len(hanging)} of {len(futures)} accepted requests were never answered"
    for future in done:  # answered: a result, or refused because the engine shut down
        assert future.exception() is None or isinstance(future.exception(), serving.Overloaded)
