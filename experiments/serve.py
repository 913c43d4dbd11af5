"""HTTP server for speculative sampling that batches concurrent requests.

    python experiments/serve.py                                   # shipped pair on 127.0.0.1:8000
    python experiments/serve.py --port 8080 --K 3 --max_batch 16 --batch_window_ms 10
    python experiments/serve.py --max_prompt_tokens 64 --token_buckets 64

    curl -s localhost:8000/v1/completions -H 'Content-Type: application/json' \\
        -d '{"prompt": "def main(argv):", "max_tokens": 32, "temperature": 0}'

Endpoints, limits and batching: see `jaxspec.serving` (engine.py, app.py). Before
serving it compiles every bucket shape once; sampling settings are per-row runtime
values, so steady traffic with any temperature / top_k / top_p never recompiles
(GET /stats: xla_compiles_since_warmup).
Needs the `serve` extra: pip install -e '.[serve]'.
"""

from __future__ import annotations

import os
import sys
import time

import jax.numpy as jnp
from absl import app, flags

import jaxspec
from jaxspec import benchmarking, serving
from jaxspec.sampling.accept import VERIFICATION_RULES
from jaxspec.serving.net import is_loopback

CHECKPOINTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "checkpoints")

HOST = flags.DEFINE_string("host", "127.0.0.1", "Address to bind; non-loopback needs --allow_remote.")
PORT = flags.DEFINE_integer("port", 8000, "Port to bind (0 = any free port).", lower_bound=0, upper_bound=65535)
ALLOW_REMOTE = flags.DEFINE_bool(
    "allow_remote", False, "Permit a non-loopback --host. The server has no authentication and no TLS."
)
TARGET = flags.DEFINE_string("target_model", os.path.join(CHECKPOINTS, "gpt2-target"), "Target: a folder or hub id.")
DRAFT = flags.DEFINE_string(
    "draft_model", os.path.join(CHECKPOINTS, "gpt2-draft-distilled"), "Draft: a folder or hub id."
)
DRAFTER = flags.DEFINE_enum(
    "drafter",
    "model",
    ["model", "ngram", "self"],
    "model: --draft_model proposes; ngram: prompt lookup, no draft model; self: the target's first "
    "--self_draft_layers layers.",
)
NGRAM = flags.DEFINE_integer("max_ngram", 3, "Longest suffix prompt lookup matches (--drafter=ngram).", lower_bound=1)
SELF_LAYERS = flags.DEFINE_integer(
    "self_draft_layers", 1, "Target layers a self-draft runs (--drafter=self).", lower_bound=1
)
DTYPE = flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Parameter/compute dtype.")
K = flags.DEFINE_integer("K", 4, "Draft tokens per round.", lower_bound=1)
VERIFY = flags.DEFINE_enum("verify", "tokenwise", list(VERIFICATION_RULES), "Verification rule.")
MAX_BATCH = flags.DEFINE_integer("max_batch", 8, "Most rows in one generation call.", lower_bound=1)
MAX_TOKENS = flags.DEFINE_integer("max_tokens", 64, "Largest max_tokens a request may ask for.", lower_bound=1)
MAX_PROMPT = flags.DEFINE_integer("max_prompt_tokens", 64, "Longest prompt accepted, in tokens.", lower_bound=1)
WINDOW_MS = flags.DEFINE_float("batch_window_ms", 10.0, "How long to collect requests into a batch.", lower_bound=0)
PROMPT_BUCKETS = flags.DEFINE_list("prompt_buckets", None, "Prompt widths (default 16, 32, ... up to the cap).")
BATCH_BUCKETS = flags.DEFINE_list("batch_buckets", None, "Batch sizes (default 1, 2, 4, ... up to --max_batch).")
TOKEN_BUCKETS = flags.DEFINE_list("token_buckets", None, "max_tokens buckets (default 16, 64, ... up to the cap).")
WARMUP = flags.DEFINE_bool("warmup", True, "Compile every bucket shape once before serving.")
WARMUP_SETTINGS = flags.DEFINE_list(
    "warmup_settings",
    None,
    "Deprecated and ignored: sampling settings are per-row runtime values that never compile, "
    "so warm-up compiles each bucket shape once whatever the settings. Accepted so old command lines still run.",
)
MAX_QUEUE = flags.DEFINE_integer("max_queue", 1024, "Queued requests beyond this get 503.", lower_bound=1)
MAX_BODY = flags.DEFINE_integer("max_body_bytes", 64 * 1024, "Larger request bodies get 413.", lower_bound=1024)
TIMEOUT = flags.DEFINE_float("request_timeout_s", 300.0, "Requests not served within this get 504.", lower_bound=1)
SEED = flags.DEFINE_integer("seed", 0, "Seeds the keys of requests without a seed.")


def _ints(values, name):
    try:
        return tuple(int(v) for v in values)
    except ValueError as err:
        raise app.UsageError(f"--{name} takes comma-separated integers, got {','.join(values)}") from err


def build_buckets() -> serving.Buckets:
    default = serving.Buckets.default(MAX_PROMPT.value, MAX_BATCH.value, MAX_TOKENS.value)
    pick = lambda flag, name, fallback: _ints(flag.value, name) if flag.value else fallback
    return serving.Buckets(
        prompt=pick(PROMPT_BUCKETS, "prompt_buckets", default.prompt),
        batch=pick(BATCH_BUCKETS, "batch_buckets", default.batch),
        tokens=pick(TOKEN_BUCKETS, "token_buckets", default.tokens),
    )


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    if not is_loopback(HOST.value) and not ALLOW_REMOTE.value:
        raise app.UsageError(
            f"--host {HOST.value} is not a loopback address; the server has no authentication. "
            "Pass --allow_remote to bind it anyway."
        )
    benchmarking.quiet_logs()
    import uvicorn  # the `serve` extra

    buckets = build_buckets()
    if WARMUP_SETTINGS.value:
        print("note: --warmup_settings is ignored; sampling settings no longer compile separately.", flush=True)
    try:
        dtype = jnp.float32 if DTYPE.value == "float32" else jnp.bfloat16
        target = jaxspec.load_model(TARGET.value, dtype=dtype)
        if DRAFTER.value == "model":
            draft = jaxspec.load_model(DRAFT.value, dtype=dtype)
        elif DRAFTER.value == "self":
            draft = jaxspec.SelfDrafter.first_layers(target, SELF_LAYERS.value)
        else:
            draft = jaxspec.NgramDrafter(max_ngram=NGRAM.value)
        tokenizer = jaxspec.load_tokenizer(TARGET.value)
        engine = serving.Engine(
            target,
            draft,
            num_draft_tokens=K.value,
            verify=VERIFY.value,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id or 0,
            buckets=buckets,
            batch_window_s=WINDOW_MS.value / 1000,
            max_queue=MAX_QUEUE.value,
            seed=SEED.value,
        )
    except (ValueError, FileNotFoundError, jaxspec.CheckpointError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    print(f"buckets: prompt {buckets.prompt}, batch {buckets.batch}, max_tokens {buckets.tokens}", flush=True)
    if WARMUP.value:
        count = len(list(buckets.all_shapes()))
        print(
            f"warm-up: compiling {count} programs (batch x prompt x max_tokens buckets); "
            "narrow them with --*_buckets, or skip with --nowarmup",
            flush=True,
        )
        start = time.perf_counter()
        count = engine.warmup()
        print(f"warm-up: {count} programs compiled in {time.perf_counter() - start:.1f} s", flush=True)
    application = serving.create_app(
        engine,
        tokenizer,
        model_name=os.path.basename(os.path.normpath(TARGET.value)),
        max_body_bytes=MAX_BODY.value,
        request_timeout_s=TIMEOUT.value,
    )
    print(f"serving on http://{HOST.value}:{PORT.value}", flush=True)
    uvicorn.run(application, host=HOST.value, port=PORT.value, log_level="warning", timeout_graceful_shutdown=10)


if __name__ == "__main__":
    app.run(main)
