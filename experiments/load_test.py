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
The client is `jaxspec.benchmarking.load_test`.
"""

from __future__ import annotations

import os
import sys
import time
import urllib.parse

from absl import app, flags

# The client runs no jax computation (importing jaxspec starts no backend): it does not compete with
# the server for the CPU.
from jaxspec.benchmarking import load_test
from jaxspec.benchmarking.configs import from_flags
from jaxspec.benchmarking.tables import write_json
from jaxspec.serving.net import is_loopback

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
URL = flags.DEFINE_string("url", None, "Base URL of a running server; default: start experiments/serve.py.")
TARGET = flags.DEFINE_string(
    "target_model", None, "Target of the server this script starts (default: serve.py's, the shipped pair)."
)
DRAFT = flags.DEFINE_string("draft_model", None, "Draft of the server this script starts (default: serve.py's).")
SERVE_FLAGS = flags.DEFINE_list("serve_flags", [], "Extra flags for the server this script starts.")
STARTUP_S = flags.DEFINE_float("startup_timeout_s", 900.0, "Wait this long for a started server (warm-up).")
flags.DEFINE_integer("requests", 200, "Requests per phase.", lower_bound=1, upper_bound=10_000)
flags.DEFINE_integer("concurrency", 16, "Concurrent clients.", lower_bound=1, upper_bound=256)
flags.DEFINE_integer("max_tokens", 64, "max_tokens of each request.", lower_bound=1)
flags.DEFINE_float("temperature", 0.0, "Sampling temperature (0 = greedy).", lower_bound=0.0)
flags.DEFINE_integer("prompt_chars", 0, "Cut each prompt to this many characters (0 = whole).")
flags.DEFINE_float("timeout", 120.0, "Seconds per request.", lower_bound=0.1)
flags.DEFINE_float("max_phase_s", 1800.0, "No new requests after this many seconds in a phase.")
flags.DEFINE_bool("sequential", True, "Also run the requests one at a time for the ratio.")
OUTPUT_JSON = flags.DEFINE_string("output_json", None, "Default: results/serve/load_test_<time>.json.")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    if URL.value and not is_loopback(urllib.parse.urlsplit(URL.value).hostname):
        raise app.UsageError(f"--url {URL.value} is not a loopback address; this tool only loads local servers.")
    config = from_flags(load_test.LoadTestConfig, flags.FLAGS)
    if URL.value:
        proc, base = None, URL.value.rstrip("/")
    else:
        models = [f"--target_model={TARGET.value}"] if TARGET.value else []
        models += [f"--draft_model={DRAFT.value}"] if DRAFT.value else []
        serve = os.path.join(os.path.dirname(os.path.abspath(__file__)), "serve.py")
        proc, base = load_test.start_server(serve, [*models, *SERVE_FLAGS.value], STARTUP_S.value)
    try:
        report = load_test.measure(base, config)
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=30)
    print(load_test.format_report(report))
    path = OUTPUT_JSON.value or os.path.join(
        REPO, "results", "serve", f"load_test_{time.strftime('%Y%m%d_%H%M%S')}.json"
    )
    write_json(report, path)
    print(f"\nwrote {path}")
    if any(p["failures"] or p["not_sent"] for p in report["phases"].values()):
        sys.exit(1)


if __name__ == "__main__":
    app.run(main)
