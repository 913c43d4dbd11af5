"""Load test of experiments/serve.py: concurrent clients, then the same requests one at a time.

    python experiments/load_test.py                                   # starts its own server (shipped pair)
    python experiments/load_test.py --url http://127.0.0.1:8000 --requests 200 --concurrency 16
    python experiments/load_test.py --serve_flags=--K=3,--max_batch=16

Sends --requests POST /v1/completions requests (prompt i is PROMPTS[i % len]) from
--concurrency client threads (stdlib http.client, one connection per request),
then the same requests from one client. Reports failures, latency p50/p99,
requests/s and completion tokens/s for both phases and their ratio; with
--temperature 0 it also counts requests whose text differs between the phases
(batching must not change greedy output). Loopback servers only. Bounded: at
most 10,000 requests, --timeout per request and --max_phase_s per phase
(requests not started by then count as not sent). Writes JSON under results/serve/.
"""

from __future__ import annotations

import http.client
import ipaddress
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.parse

from absl import app, flags

# Standard library only (no jax import): the client must not compete with the server for the CPU.
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
URL = flags.DEFINE_string("url", None, "Base URL of a running server; default: start experiments/serve.py.")
TARGET = flags.DEFINE_string(
    "target_model", None, "Target of the server this script starts (default: serve.py's, the shipped pair)."
)
DRAFT = flags.DEFINE_string("draft_model", None, "Draft of the server this script starts (default: serve.py's).")
SERVE_FLAGS = flags.DEFINE_list("serve_flags", [], "Extra flags for the server this script starts.")
STARTUP_S = flags.DEFINE_float("startup_timeout_s", 900.0, "Wait this long for a started server (warm-up).")
REQUESTS = flags.DEFINE_integer("requests", 200, "Requests per phase.", lower_bound=1, upper_bound=10_000)
CONCURRENCY = flags.DEFINE_integer("concurrency", 16, "Concurrent clients.", lower_bound=1, upper_bound=256)
MAX_TOKENS = flags.DEFINE_integer("max_tokens", 64, "max_tokens of each request.", lower_bound=1)
TEMPERATURE = flags.DEFINE_float("temperature", 0.0, "Sampling temperature (0 = greedy).", lower_bound=0.0)
PROMPT_CHARS = flags.DEFINE_integer("prompt_chars", 0, "Cut each prompt to this many characters (0 = whole).")
TIMEOUT = flags.DEFINE_float("timeout", 120.0, "Seconds per request.", lower_bound=0.1)
MAX_PHASE_S = flags.DEFINE_float("max_phase_s", 1800.0, "No new requests after this many seconds in a phase.")
SEQUENTIAL = flags.DEFINE_bool("sequential", True, "Also run the requests one at a time for the ratio.")
OUTPUT_JSON = flags.DEFINE_string("output_json", None, "Default: results/serve/load_test_<time>.json.")

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


def is_loopback(host: str | None) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host or "").is_loopback
    except ValueError:
        return False


def call(base: str, method: str, path: str, body: dict | None, timeout: float) -> tuple[int, dict]:
    parts = urllib.parse.urlsplit(base)
    conn = http.client.HTTPConnection(parts.hostname, parts.port or 80, timeout=timeout)
    try:
        data = None if body is None else json.dumps(body).encode()
        conn.request(method, path, body=data, headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        return response.status, json.loads(response.read() or b"{}")
    finally:
        conn.close()


def run_phase(base: str, bodies: list[dict], concurrency: int) -> dict:
    """Sends `bodies` from `concurrency` threads; returns per-request records and totals."""
    records: list[dict | None] = [None] * len(bodies)
    next_index, lock = [0], threading.Lock()
    start = time.perf_counter()

    def client():
        while True:
            with lock:
                i = next_index[0]
                next_index[0] += 1
            if i >= len(bodies) or time.perf_counter() - start > MAX_PHASE_S.value:
                return
            t0 = time.perf_counter()
            try:
                status, out = call(base, "POST", "/v1/completions", bodies[i], TIMEOUT.value)
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


def format_table(rows: list[dict], columns: list[tuple[str, str]]) -> str:
    """A plain-text table (as experiments/harness.py's, which would import jax)."""
    cells = [[h for _, h in columns]] + [[str(r.get(k, "")) for k, _ in columns] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    rank = min(len(sorted_values) - 1, max(0, round(q / 100 * len(sorted_values) + 0.5) - 1))
    return sorted_values[rank]


def start_server() -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    command = [
        sys.executable,
        os.path.join(os.path.dirname(os.path.abspath(__file__)), "serve.py"),
        "--host=127.0.0.1",
        f"--port={port}",
        *([f"--target_model={TARGET.value}"] if TARGET.value else []),
        *([f"--draft_model={DRAFT.value}"] if DRAFT.value else []),
        *SERVE_FLAGS.value,
    ]
    print("starting:", " ".join(command), flush=True)
    proc = subprocess.Popen(command)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + STARTUP_S.value
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
    raise SystemExit(f"error: the server did not answer /health within {STARTUP_S.value:g} s")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    if URL.value and not is_loopback(urllib.parse.urlsplit(URL.value).hostname):
        raise app.UsageError(f"--url {URL.value} is not a loopback address; this tool only loads local servers.")
    proc, base = (None, URL.value.rstrip("/")) if URL.value else start_server()
    try:
        report = measure(base)
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=30)
    print_report(report)
    path = OUTPUT_JSON.value or os.path.join(
        REPO, "results", "serve", f"load_test_{time.strftime('%Y%m%d_%H%M%S')}.json"
    )
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(report, f, indent=2)
    print(f"\nwrote {path}")
    if any(p["failures"] or p["not_sent"] for p in report["phases"].values()):
        sys.exit(1)


def measure(base: str) -> dict:
    cut = PROMPT_CHARS.value or None
    bodies = [
        dict(prompt=PROMPTS[i % len(PROMPTS)][:cut], max_tokens=MAX_TOKENS.value, temperature=TEMPERATURE.value)
        for i in range(REQUESTS.value)
    ]
    stats_before = call(base, "GET", "/stats", None, TIMEOUT.value)[1]
    phases = {"concurrent": run_phase(base, bodies, CONCURRENCY.value)}
    stats_mid = call(base, "GET", "/stats", None, TIMEOUT.value)[1]
    if SEQUENTIAL.value:
        phases["sequential"] = run_phase(base, bodies, 1)
    stats_after = call(base, "GET", "/stats", None, TIMEOUT.value)[1]
    report = dict(
        url=base,
        requests=REQUESTS.value,
        max_tokens=MAX_TOKENS.value,
        temperature=TEMPERATURE.value,
        server_stats_before=stats_before,
        server_stats_after=stats_after,
        xla_compiles_during_concurrent=stats_mid["xla_compiles"] - stats_before["xla_compiles"],
        xla_compiles_during_test=stats_after["xla_compiles"] - stats_before["xla_compiles"],
        phases=phases,
    )
    if "sequential" in phases:
        conc, seq = phases["concurrent"], phases["sequential"]
        report["throughput_ratio"] = conc["requests_per_s"] / seq["requests_per_s"] if seq["requests_per_s"] else None
        if TEMPERATURE.value == 0:
            report["greedy_mismatches"] = sum(
                a is not None
                and b is not None
                and a["text"] is not None
                and b["text"] is not None
                and a["text"] != b["text"]
                for a, b in zip(conc["records"], seq["records"])
            )
    return report


def print_report(report: dict) -> None:
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
    print(
        f"{report['url']}: {report['requests']} requests, max_tokens {report['max_tokens']}, "
        f"temperature {report['temperature']}"
    )
    print(format_table(rows, columns))
    for name, p in report["phases"].items():
        for e in p["errors"]:
            print(f"  {name} error: {e}")
    if report.get("throughput_ratio"):
        print(f"throughput concurrent / one at a time: {report['throughput_ratio']:.2f}x")
    if "greedy_mismatches" in report:
        print(f"greedy texts that differ between phases: {report['greedy_mismatches']}")
    print(f"XLA compilations during the test: {report['xla_compiles_during_test']}")


if __name__ == "__main__":
    app.run(main)
