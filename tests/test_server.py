"""The HTTP server: exact greedy answers, batching, SSE format, validation, isolation, no recompiles.

One server (uvicorn in a thread, a tiny random GPT-2 target + OPT draft and a
small trained tokenizer) serves the whole module; every greedy answer is
checked token for token (after decoding) against `autoregressive_sample`.
"""

import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import jax
import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

import uvicorn  # noqa: E402

import jaxspec  # noqa: E402
from jaxspec import serving  # noqa: E402
from jaxspec.testing import random_model, tiny_config  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXPERIMENTS = os.path.join(REPO, "experiments")
MAX_TOKENS = 8
PROMPT_CAP = 32
PROMPTS = [
    "def f(x):",
    "import os",
    "print(os.getcwd())",
    "def f(x):\n    return x",
    "x",
    "import os\nprint(os.",
    "return x + 1\n",
    "def g(y):\n    return y + 1\nprint(",
]


def post(base, path, body, timeout=60):
    """(status, parsed JSON or raw text); `body` is a dict or raw bytes."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(base + path, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            raw = response.read().decode()
            status, kind = response.status, response.headers.get("Content-Type", "")
    except urllib.error.HTTPError as err:
        raw, status, kind = err.read().decode(), err.code, err.headers.get("Content-Type", "")
    return status, (json.loads(raw) if kind.startswith("application/json") else raw)


def get(base, path):
    with urllib.request.urlopen(base + path, timeout=30) as response:
        return json.loads(response.read())


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from jaxspec import training

    texts = ["def f(x):\n    return x + 1\n", "import os\nprint(os.getcwd())\n", "def g(y):\n    return y * 2\n"] * 20
    tokenizer = training.train_tokenizer(texts, 300, str(tmp_path_factory.mktemp("tok")))
    eos = tokenizer.eos_token_id
    vocab = len(tokenizer)
    target = random_model(tiny_config("gpt2", vocab_size=vocab, max_positions=64, eos_token_id=eos), 0, scale=5.0)
    draft = random_model(tiny_config("opt", vocab_size=vocab, max_positions=64, eos_token_id=eos), 1, scale=5.0)
    engine = serving.Engine(
        target,
        draft,
        num_draft_tokens=3,
        eos_token_id=eos,
        buckets=serving.Buckets(prompt=(PROMPT_CAP,), batch=(8,), tokens=(MAX_TOKENS,)),
        batch_window_s=0.15,
    )
    engine.warmup()
    # Reference: the target's own greedy decoding, one batched call for all prompts.
    ids = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in PROMPTS]
    ref = jaxspec.autoregressive_sample(
        target, ids, key=jax.random.key(0), max_new_tokens=MAX_TOKENS, temperature=0.0, eos_token_id=eos
    )
    tokens, lengths = np.asarray(ref.tokens), np.asarray(ref.lengths)
    expected = {}
    for p, row, n in zip(PROMPTS, tokens, lengths):
        expected[p] = [int(t) for t in row[:n]]

    def expect(prompt, max_tokens):
        out = expected[prompt][:max_tokens]
        stop = bool(out) and out[-1] == eos
        kept = out[:-1] if stop else out
        return tokenizer.decode(kept), ("stop" if stop else "length"), len(kept)

    app = serving.create_app(engine, tokenizer, model_name="tiny", max_body_bytes=64 * 1024)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    base = f"http://127.0.0.1:{sock.getsockname()[1]}"
    uv = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=uv.run, kwargs=dict(sockets=[sock]), daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not uv.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert uv.started
    yield dict(base=base, engine=engine, expect=expect, tokenizer=tokenizer, target=target, draft=draft, eos=eos)
    uv.should_exit = True
    thread.join(15)
    sock.close()


def test_health_and_predict(server):
    assert get(server["base"], "/health")["status"] == "ok"
    status, out = post(server["base"], "/predict", {"prompt": PROMPTS[0], "max_tokens": 6, "temperature": 0})
    assert status == 200, out
    text, reason, _ = server["expect"](PROMPTS[0], 6)
    assert out["generated_text"] == text and out["finish_reason"] == reason
    assert set(out) >= {"usage", "speculative", "timing"}
    assert out["usage"]["prompt_tokens"] == len(server["tokenizer"](PROMPTS[0], add_special_tokens=False)["input_ids"])


def test_completions_greedy(server):
    body = {"prompt": PROMPTS[3], "max_tokens": MAX_TOKENS, "temperature": 0, "n": 2, "model": "anything"}
    status, out = post(server["base"], "/v1/completions", body)
    assert status == 200, out
    assert out["object"] == "text_completion" and out["id"].startswith("cmpl-") and out["model"] == "tiny"
    assert isinstance(out["created"], int)
    text, reason, count = server["expect"](PROMPTS[3], MAX_TOKENS)
    assert [c["text"] for c in out["choices"]] == [text, text]
    assert [c["index"] for c in out["choices"]] == [0, 1]
    assert all(c["finish_reason"] == reason for c in out["choices"])
    usage, spec = out["usage"], out["speculative"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert usage["completion_tokens"] == 2 * count
    assert 0 <= spec["acceptance_rate"] <= 1 and spec["accepted"] <= spec["drafted"]
    assert spec["drafted"] % 3 == 0 and spec["tokens_per_target_call"] >= 1
    assert out["timing"]["batch_size"] == 2 and out["timing"]["generate_ms"] > 0


def test_stream_sse_format(server):
    body = {"prompt": PROMPTS[5], "max_tokens": 7, "temperature": 0, "stream": True}
    status, raw = post(server["base"], "/v1/completions", body)
    assert status == 200 and isinstance(raw, str)
    assert raw.endswith("data: [DONE]\n\n")
    events = raw.split("\n\n")[:-1]
    assert all(e.startswith("data: ") and "\n" not in e for e in events)
    chunks = [json.loads(e[len("data: ") :]) for e in events[:-1]]
    assert all(c["object"] == "text_completion" and c["id"] == chunks[0]["id"] for c in chunks)
    text, reason, _ = server["expect"](PROMPTS[5], 7)
    pieces = [c["choices"][0] for c in chunks if c["choices"]]
    assert "".join(p["text"] for p in pieces) == text
    assert [p["finish_reason"] for p in pieces][-1] == reason and all(p["finish_reason"] is None for p in pieces[:-1])
    assert chunks[-1]["choices"] == [] and {"usage", "speculative", "timing"} <= set(chunks[-1])


def _burst(base, bodies):
    results = [None] * len(bodies)
    barrier = threading.Barrier(len(bodies))

    def send(i):
        barrier.wait()
        results[i] = post(base, "/v1/completions", bodies[i])

    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(bodies))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    return results


def test_concurrent_requests_are_batched_exactly_without_recompiling(server):
    engine, before = server["engine"], server["engine"].stats()
    max_tokens = [8, 5, 8, 3, 8, 1, 6, 8]
    bodies = [{"prompt": p, "max_tokens": m, "temperature": 0} for p, m in zip(PROMPTS, max_tokens)]
    results = _burst(server["base"], bodies)
    for (status, out), p, m in zip(results, PROMPTS, max_tokens):
        assert status == 200, out
        text, reason, count = server["expect"](p, m)
        assert out["choices"][0]["text"] == text and out["choices"][0]["finish_reason"] == reason
        assert out["usage"]["completion_tokens"] == count <= m
    sizes = [out["timing"]["batch_size"] for _, out in results]
    assert max(sizes) > 1, sizes
    after = engine.stats()
    assert after["batches"] - before["batches"] < len(bodies)
    assert after["mean_batch_size"] > 1
    # Steady traffic over the warmed bucket compiles nothing.
    assert post(server["base"], "/predict", {"prompt": PROMPTS[7], "max_tokens": 2, "temperature": 0})[0] == 200
    assert engine.stats()["xla_compiles"] == before["xla_compiles"]
    stats = get(server["base"], "/stats")
    assert stats["xla_compiles_since_warmup"] is not None and stats["requests"] >= len(bodies)


BAD = [
    (b'{"prompt": "x", ', "body"),
    (b"[1, 2]", "body"),
    ({"prompt": 5}, "prompt"),
    ({"prompt": "x", "max_tokens": "5"}, "max_tokens"),
    ({"prompt": "x", "max_tokens": True}, "max_tokens"),
    ({"prompt": "x", "top_p": 0}, "top_p"),
    ({"prompt": "x", "top_p": 1.5}, "top_p"),
    ({"prompt": "x", "temperature": -1}, "temperature"),
    ({"prompt": "x", "temperature": 1e-40}, "temperature"),  # underflows float32: use 0 for greedy
    ({"prompt": "x", "top_k": -1}, "top_k"),
    ({"prompt": "x", "max_tokens": MAX_TOKENS + 1}, "max_tokens"),
    ({"prompt": "x", "max_tokens": 0}, "max_tokens"),
    ({"prompt": "x", "n": 9}, "n"),
    ({"prompt": "x", "n": 0}, "n"),
    ({"prompt": "x", "seed": -1}, "seed"),
    ({"prompt": "x", "frequency_penalty": 0.5}, "frequency_penalty"),
    ({"prompt": ""}, "prompt"),
    ({"prompt": "x" * 200}, "prompt"),  # > 32 tokens
    ({"prompt": "x" * 70_000}, "body"),  # > 64 KiB
]


def test_bad_requests_get_4xx_json_and_do_not_hurt_a_concurrent_good_one(server):
    good = {}
    body = {"prompt": PROMPTS[1], "max_tokens": MAX_TOKENS, "temperature": 0}
    thread = threading.Thread(target=lambda: good.update(r=post(server["base"], "/v1/completions", body)))
    thread.start()
    for bad, param in BAD:
        status, out = post(server["base"], "/v1/completions", bad)
        assert 400 <= status < 500, (bad, status, out)
        assert out["error"]["param"] == param, (bad, out)
        assert out["error"]["message"]
    thread.join(60)
    status, out = good["r"]
    assert status == 200 and out["choices"][0]["text"] == server["expect"](PROMPTS[1], MAX_TOKENS)[0]
    assert post(server["base"], "/v1/completions", {"prompt": "x" * 70_000})[0] == 413


def test_distinct_sampling_settings_share_calls_and_never_compile(server):
    # Settings are per-row traced values: any mix of them shares the one warmed program.
    before = server["engine"].stats()
    bodies = [
        {"prompt": p, "max_tokens": MAX_TOKENS, "temperature": 0.3 + 0.1 * i, "top_p": 1.0 - 0.05 * i, "top_k": i}
        for i, p in enumerate(PROMPTS)
    ]
    bodies[2] = {"prompt": PROMPTS[2], "max_tokens": MAX_TOKENS, "temperature": 0}  # greedy beside sampled rows
    results = _burst(server["base"], bodies)
    assert all(status == 200 for status, _ in results), results
    assert max(out["timing"]["batch_size"] for _, out in results) > 1
    assert results[2][1]["choices"][0]["text"] == server["expect"](PROMPTS[2], MAX_TOKENS)[0]
    after = server["engine"].stats()
    assert after["xla_compiles"] == before["xla_compiles"]
    assert after["batches"] - before["batches"] < len(bodies)


def test_seeded_requests_run_alone(server):
    # A row's random stream depends on its batch, so a seeded request never shares a call.
    bodies = [{"prompt": p, "max_tokens": 4, "temperature": 0, "seed": 11, "n": 2} for p in PROMPTS[:3]]
    for status, out in _burst(server["base"], bodies):
        assert status == 200 and out["timing"]["batch_size"] == 2, out


def test_failing_batch_returns_500_and_server_keeps_serving(server, monkeypatch):
    engine = server["engine"]
    real = engine._generate
    calls = []

    def flaky(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("device on fire")
        return real(*args, **kwargs)

    monkeypatch.setattr(engine, "_generate", flaky)
    status, out = post(server["base"], "/predict", {"prompt": PROMPTS[2], "max_tokens": 4, "temperature": 0})
    assert status == 500 and "device on fire" in out["error"]["message"]
    status, out = post(server["base"], "/predict", {"prompt": PROMPTS[2], "max_tokens": 4, "temperature": 0})
    assert status == 200 and out["generated_text"] == server["expect"](PROMPTS[2], 4)[0]
    assert engine.stats()["failed_batches"] == 1


def _script(name, *args, timeout=120):
    env = dict(os.environ, PYTHONPATH=REPO)
    return subprocess.run(
        [sys.executable, os.path.join(EXPERIMENTS, name), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=REPO,
    )


@pytest.mark.integration
def test_load_test_script(server, tmp_path):
    out = tmp_path / "load.json"
    proc = _script(
        "load_test.py",
        f"--url={server['base']}",
        "--requests=12",
        "--concurrency=4",
        f"--max_tokens={MAX_TOKENS}",
        "--prompt_chars=20",
        "--timeout=60",
        f"--output_json={out}",
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "requests/s" in proc.stdout and "p99 ms" in proc.stdout
    report = json.loads(out.read_text())
    assert report["phases"]["concurrent"]["ok"] == 12 and report["phases"]["sequential"]["ok"] == 12
    assert report["greedy_mismatches"] == 0 and report["xla_compiles_during_test"] == 0


@pytest.mark.integration
def test_scripts_refuse_non_loopback_hosts():
    proc = _script("load_test.py", "--url=http://10.1.2.3:8000", "--requests=1")
    assert proc.returncode != 0 and "loopback" in proc.stderr
    proc = _script("serve.py", "--host=0.0.0.0")
    assert proc.returncode != 0 and "loopback" in proc.stderr
