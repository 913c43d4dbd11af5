"""A load test of the HTTP server: concurrent clients, then the same requests one at a time.

Sends POST /v1/completions requests (prompt i is PROMPTS[i % len]) from
`concurrency` client threads (http.client, one connection per request), then
the same requests from one client. Reports failures, latency p50/p99,
requests/s and completion tokens/s for both phases and their ratio; at
temperature 0 it also counts requests whose text differs between the phases
(batching must not change greedy output), and the XLA compilations the server
made meanwhile (GET /stats). Bounded: `timeout` per request and `max_phase_s`
per phase (requests not started by then count as not sent).

The client runs no jax computation: it only sends requests, so it does not
compete with the server for the CPU.
"""

from __future__ import annotations

import dataclasses
import http.client
import json
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.parse

from jaxspec.benchmarking.metrics import percentile
from jaxspec.benchmarking.tables import format_table

PROMPTS = [
    "import os\nimport sys\n\n\ndef main(argv):\n    ",
    "def fibonacci(n):\n    ",
    "class Stack:\n    def __init__(self):\n        ",
    "import numpy as np\n\n\ndef normalize(x):\n    ",
    "def read_lines(path):\n    with open(path) as f:\n        ",
    "for i in range(10):\n    ",
    "import json\n\n\ndef load_config(path):\n    ",
    "def is_prime(n):\n    if n < 2:\n        return False\n    ",
    "class Point:\n    def __init__(self, x, y):\n        self.x = x\n        ",
    "def merge(a, b):\n    out = []\n    ",
    "import argparse\n\nparser = argparse.ArgumentParser()\n",
    "def test_add():\n    assert ",
]


@dataclasses.dataclass(frozen=True)
class LoadTestConfig:
    """A load test (the flags of experiments/load_test.py).

    Attributes:
      requests: requests per phase.
      concurrency: concurrent clients of the first phase.
      max_tokens, temperature: of each request.
      prompt_chars: cut each prompt to this many characters (0 = whole).
      timeout: seconds per request.
      max_phase_s: no new requests after this many seconds in a phase.
      sequential: also run the requests one at a time, for the ratio.
    """

    requests: int = 200
    concurrency: int = 16
    max_tokens: int = 64
    temperature: float = 0.0
    prompt_chars: int = 0
    timeout: float = 120.0
    max_phase_s: float = 1800.0
    sequential: bool = True


def call(base: str, method: str, path: str, body: dict | None, timeout: float) -> tuple[int, dict]:
    """One HTTP request with a JSON body (or none); returns (status, decoded JSON body)."""
    parts = urllib.parse.urlsplit(base)
    conn = http.client.HTTPConnection(parts.hostname, parts.port or 80, timeout=timeout)
    try:
        data = None if body is None else json.dumps(body).encode()
        conn.request(method, path, body=data, headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        return response.status, json.loads(response.read() or b"{}")
    finally:
        conn.close()


def run_phase(base: str, bodies: list[dict], concurrency: int, *, timeout: float, max_phase_s: float) -> dict:
    """Sends `bodies` from `concurrency` threads; returns per-request records and totals."""
    records: list[dict | None] = [None] * len(bodies)
    next_index, lock = [0], threading.Lock()
    start = time.perf_counter()

    def client():
        while True:
            with lock:
                i = next_index[0]
                next_index[0] += 1
            if i >= len(bodies) or time.perf_counter() - start > max_phase_s:
                return
            t0 = time.perf_counter()
            try:
                status, out = call(base, "POST", "/v1/completions", bodies[i], timeout)
                error = None if status == 200 else f"HTTP {status}: {out.get('error', out)}"
            except (OSError, ValueError, http.client.HTTPException) as err:
                status, out, error = None, {}, f"{type(err).__name__}: {err}"
            records[i] = dict(
                latency_s=time.perf_counter() - t0,
                status=status,
                error=error,
                text=out["choices"][0]["text"] if error is None else None,
                completion_tokens=out.get("usage", {}).get("completion_tokens", 0) if error is None else 0,
                batch_size=out.get("timing", {}).get("batch_size") if error is None else None,
            )

    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    done = [r for r in records if r is not None]
    ok = [r for r in done if r["error"] is None]
    latencies = sorted(r["latency_s"] for r in ok)
    tokens = sum(r["completion_tokens"] for r in ok)
    return dict(
        concurrency=concurrency,
        sent=len(done),
        not_sent=len(bodies) - len(done),
        ok=len(ok),
        failures=len(done) - len(ok),
        errors=sorted({r["error"] for r in done if r["error"]})[:10],
        wall_s=wall,
        p50_ms=1000 * percentile(latencies, 50),
        p99_ms=1000 * percentile(latencies, 99),
        requests_per_s=len(ok) / wall,
        tokens_per_s=tokens / wall,
        completion_tokens=tokens,
        mean_batch_size=statistics.fmean(r["batch_size"] for r in ok) if ok else 0.0,
        records=records,
    )


def start_server(script: str, args: list[str], startup_timeout_s: float) -> tuple[subprocess.Popen, str]:
    """Starts `python script --host=127.0.0.1 --port=<free> *args`; returns it and its base URL once /health answers.

    Raises:
      SystemExit: the server exited, or did not answer within `startup_timeout_s`.
    """
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    command = [sys.executable, script, "--host=127.0.0.1", f"--port={port}", *args]
    print("starting:", " ".join(command), flush=True)
    proc = subprocess.Popen(command)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + startup_timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"error: the server exited with code {proc.returncode} before serving")
        try:
            if call(base, "GET", "/health", None, 2.0)[0] == 200:
                return proc, base
        except OSError:
            pass
        time.sleep(0.5)
    proc.terminate()
    raise SystemExit(f"error: the server did not answer /health within {startup_timeout_s:g} s")


def measure(base: str, config: LoadTestConfig) -> dict:
    """Both phases against the server at `base`; returns the report."""
    cut = config.prompt_chars or None
    bodies = [
        dict(prompt=PROMPTS[i % len(PROMPTS)][:cut], max_tokens=config.max_tokens, temperature=config.temperature)
        for i in range(config.requests)
    ]
    limits = dict(timeout=config.timeout, max_phase_s=config.max_phase_s)
    stats_before = call(base, "GET", "/stats", None, config.timeout)[1]
    phases = {"concurrent": run_phase(base, bodies, config.concurrency, **limits)}
    stats_mid = call(base, "GET", "/stats", None, config.timeout)[1]
    if config.sequential:
        phases["sequential"] = run_phase(base, bodies, 1, **limits)
    stats_after = call(base, "GET", "/stats", None, config.timeout)[1]
    report = dict(
        url=base,
        requests=config.requests,
        max_tokens=config.max_tokens,
        temperature=config.temperature,
        server_stats_before=stats_before,
        server_stats_after=stats_after,
        xla_compiles_during_concurrent=stats_mid["xla_compiles"] - stats_before["xla_compiles"],
        xla_compiles_during_test=stats_after["xla_compiles"] - stats_before["xla_compiles"],
        phases=phases,
    )
    if "sequential" in phases:
        conc, seq = phases["concurrent"], phases["sequential"]
        report["throughput_ratio"] = conc["requests_per_s"] / seq["requests_per_s"] if seq["requests_per_s"] else None
        if config.temperature == 0:
            report["greedy_mismatches"] = sum(
                a is not None
                and b is not None
                and a["text"] is not None
                and b["text"] is not None
                and a["text"] != b["text"]
                for a, b in zip(conc["records"], seq["records"])
            )
    return report


def format_report(report: dict) -> str:
    """The load test as text: a table of the phases, their errors, the throughput ratio, compilations."""
    rows = [
        dict(
            phase=name,
            clients=p["concurrency"],
            ok=f"{p['ok']}/{p['sent'] + p['not_sent']}",
            failures=p["failures"] + p["not_sent"],
            p50=f"{p['p50_ms']:.0f}",
            p99=f"{p['p99_ms']:.0f}",
            rps=f"{p['requests_per_s']:.2f}",
            tps=f"{p['tokens_per_s']:.0f}",
            batch=f"{p['mean_batch_size']:.2f}",
        )
        for name, p in report["phases"].items()
    ]
    columns = [
        ("phase", "phase"),
        ("clients", "clients"),
        ("ok", "ok"),
        ("failures", "failures"),
        ("p50", "p50 ms"),
        ("p99", "p99 ms"),
        ("rps", "requests/s"),
        ("tps", "tokens/s"),
        ("batch", "mean batch"),
    ]
    lines = [
        f"{report['url']}: {report['requests']} requests, max_tokens {report['max_tokens']}, "
        f"temperature {report['temperature']}",
        format_table(rows, columns),
    ]
    for name, p in report["phases"].items():
        lines += [f"  {name} error: {e}" for e in p["errors"]]
    if report.get("throughput_ratio"):
        lines.append(f"throughput concurrent / one at a time: {report['throughput_ratio']:.2f}x")
    if "greedy_mismatches" in report:
        lines.append(f"greedy texts that differ between phases: {report['greedy_mismatches']}")
    lines.append(f"XLA compilations during the test: {report['xla_compiles_during_test']}")
    return "\n".join(lines)
