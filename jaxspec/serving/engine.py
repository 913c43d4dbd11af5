"""`Engine`: concurrent generation requests become a few padded `speculative_sample` calls.

One background thread owns the accelerator. It takes the first queued request,
keeps collecting for `batch_window_s` (or until `max_batch` rows), groups what
it has by everything static to the compiled loop -- the sampling settings and
the max_tokens bucket -- and runs one `speculative_sample` per group:

- prompts are right-padded to the smallest prompt-length bucket that fits the
  longest one, and each row keeps its own `prompt_lengths` entry;
- the batch is padded to a batch bucket with copies of its first row (a copy
  ends when that row ends, so padding never prolongs the loop);
- every row runs to the max_tokens *bucket* and is cut back to its request's
  `max_tokens` afterwards (a prefix of a longer run is distributed exactly as a
  shorter run); its speculative counts are recounted on the kept tokens.

So the compiled programs are bounded by buckets x sampling settings, all known
up front; `warmup` compiles them before traffic arrives and `stats()` reports
every XLA compilation seen since the engine started. Nothing here knows about
HTTP or text: requests are token ids (see `jaxspec.serving.app` for the API).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import itertools
import math
import queue
import threading
import time
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from jaxspec.generation import common
from jaxspec.generation.speculative import speculative_sample
from jaxspec.sampling.processing import SamplingConfig

GREEDY = SamplingConfig(temperature=0.0, top_k=0, top_p=1.0)
MAX_SEED = 2**31 - 1

# Process-wide count of XLA backend compilations (jax.monitoring has no
# per-function hook; the worker is the only caller that compiles in a server).
_compiles = 0
_compiles_lock = threading.Lock()
_listener_installed = False


def _on_event_duration(event: str, duration: float, **_: Any) -> None:
    global _compiles
    if event == "/jax/core/compile/backend_compile_duration":
        with _compiles_lock:
            _compiles += 1


def _install_compile_listener() -> None:
    global _listener_installed
    with _compiles_lock:
        if _listener_installed:
            return
        _listener_installed = True
    jax.monitoring.register_event_duration_secs_listener(_on_event_duration)


def xla_compiles() -> int:
    """XLA compilations in this process since the first `Engine` was built."""
    with _compiles_lock:
        return _compiles


class RequestError(ValueError):
    """A request the engine refuses before queueing it; `param` names the field."""

    def __init__(self, param: str, message: str):
        super().__init__(message)
        self.param = param


class Overloaded(RuntimeError):
    """The queue is full (or the engine is stopped); retry later."""


class GenerationError(RuntimeError):
    """Generation failed for the batch this request was in (its neighbours in other batches are unaffected)."""


def powers_of_two(low: int, high: int) -> tuple[int, ...]:
    """low, 2 low, 4 low, ... below high, then high itself (high >= 1)."""
    out, v = [], max(1, low)
    while v < high:
        out.append(v)
        v *= 2
    return (*out, high)


@dataclasses.dataclass(frozen=True)
class Buckets:
    """The padded shapes the engine compiles for; each tuple ascends and its last entry is the cap.

    Attributes:
      prompt: prompt widths (tokens); the last is the longest prompt accepted.
      batch: batch sizes (rows); the last is the most rows in one call.
      tokens: max_new_tokens values; the last is the most tokens a request may ask for.
    """

    prompt: tuple[int, ...]
    batch: tuple[int, ...]
    tokens: tuple[int, ...]

    def __post_init__(self):
        for name in ("prompt", "batch", "tokens"):
            values = getattr(self, name)
            if not values or any(int(v) < 1 for v in values) or list(values) != sorted(set(values)):
                raise ValueError(f"Buckets.{name} must be distinct ascending integers >= 1, got {values!r}.")

    @classmethod
    def default(cls, max_prompt_tokens: int, max_batch: int, max_tokens: int) -> Buckets:
        """Prompts 16, 32, ... up to the cap; batches 1, 2, 4, ...; max_tokens 16, 64, 256, ... (x4)."""
        tokens, v = [], 16
        while v < max_tokens:
            tokens.append(v)
            v *= 4
        return cls(
            prompt=powers_of_two(16, max_prompt_tokens) if max_prompt_tokens > 16 else (max_prompt_tokens,),
            batch=powers_of_two(1, max_batch),
            tokens=(*tokens, max_tokens),
        )

    @staticmethod
    def fit(values: tuple[int, ...], n: int) -> int:
        return next(v for v in values if v >= n)

    def all_shapes(self):
        """Every (batch, prompt width, max_new_tokens) the engine can run."""
        return itertools.product(self.batch, self.prompt, self.tokens)


@dataclasses.dataclass(frozen=True)
class Choice:
    """One generated row, cut to its request's max_tokens.

    Attributes:
      token_ids: generated ids, without the EOS token.
      finish_reason: "stop" (EOS) or "length" (max_tokens reached).
      generated: tokens generated (EOS included).
      target_calls: verification rounds that produced a kept token.
      drafted: num_draft_tokens x target_calls.
      accepted: kept tokens that were accepted drafts. (`speculative_sample`'s
        own counter also counts drafts its last round accepted past the cut.)
    """

    token_ids: tuple[int, ...]
    finish_reason: str
    generated: int
    drafted: int
    accepted: int
    target_calls: int


@dataclasses.dataclass(frozen=True)
class Completion:
    """What a request's future resolves to.

    Attributes:
      choices: its n rows.
      prompt_tokens: length of its prompt.
      queue_ms: enqueue -> start of its batch's generation call.
      generate_ms: wall time of that call (shared by the whole batch).
      batch_size: real rows in that call; padded_batch: rows after padding.
      shape: (padded batch, prompt width, max_new_tokens) of the call.
    """

    choices: tuple[Choice, ...]
    prompt_tokens: int
    queue_ms: float
    generate_ms: float
    batch_size: int
    padded_batch: int
    shape: tuple[int, int, int]


@dataclasses.dataclass(eq=False)
class _Request:
    prompt_ids: tuple[int, ...]
    n: int
    max_tokens: int
    sampling: SamplingConfig
    seed: int | None
    future: concurrent.futures.Future
    enqueued: float = dataclasses.field(default_factory=time.monotonic)


class Engine:
    """Batches generation requests onto one `speculative_sample` call per group.

    Thread-safe: `submit` may be called from any thread (an asyncio server's
    event loop included: it validates and enqueues, never blocks on compute).

    Reproducibility: `speculative_sample` takes one PRNG key per call, and a
    row's random stream depends on the call's shapes and its position in the
    batch. A request with a `seed` is therefore never batched with other
    requests: it runs alone (its n rows together) with key(seed), so the same
    request with the same seed gives the same output on an engine with the same
    buckets and models. Unseeded requests share calls and draw a fresh key per
    call. Greedy requests (temperature 0) are deterministic either way.
    """

    def __init__(
        self,
        target,
        draft,
        *,
        num_draft_tokens: int = 4,
        verify: str = "tokenwise",
        eos_token_id: int | None = None,
        pad_token_id: int = 0,
        max_batch: int = 8,
        max_prompt_tokens: int = 256,
        max_tokens: int = 256,
        buckets: Buckets | None = None,
        batch_window_s: float = 0.01,
        max_queue: int = 1024,
        max_sampling_settings: int = 16,
        seed: int = 0,
    ):
        """Builds the engine (the worker starts with `start`).

        Args:
          target, draft: the `Model`s (or a `Drafter` as draft), as for `speculative_sample`.
          num_draft_tokens, verify, eos_token_id, pad_token_id: passed to every call.
          max_batch, max_prompt_tokens, max_tokens: caps; they define the default buckets.
          buckets: explicit buckets (their last entries then are the caps).
          batch_window_s: how long the worker collects after the first request arrives.
          max_queue: queued requests beyond this are refused with `Overloaded`.
          max_sampling_settings: distinct (temperature, top_k, top_p) settings
            accepted over the engine's life; each compiles its own programs, so
            an unbounded number would let clients force endless compilation.
          seed: seeds the keys of unseeded calls.

        Raises:
          ValueError: buckets whose longest prompt + max tokens + K - 1 exceed
            either model's context, or bad settings.
        """
        self.target, self.draft = target, draft
        self.num_draft_tokens = common.check_positive_int("num_draft_tokens", num_draft_tokens)
        self.verify = verify
        self.eos_token_id = eos_token_id
        self.pad_token_id = pad_token_id
        self.buckets = buckets or Buckets.default(max_prompt_tokens, max_batch, max_tokens)
        self.max_batch = self.buckets.batch[-1]
        self.max_prompt_tokens = self.buckets.prompt[-1]
        self.max_tokens = self.buckets.tokens[-1]
        needed = self.max_prompt_tokens + self.max_tokens + self.num_draft_tokens - 1
        for role, model in (("target", target), ("draft", draft)):
            limit = getattr(model, "max_positions", None)
            if limit is not None and needed > limit:
                raise ValueError(
                    f"max_prompt_tokens {self.max_prompt_tokens} + max_tokens {self.max_tokens} + K - 1 = {needed} "
                    f"positions exceed the {role}'s context of {limit}; lower the caps."
                )
        if batch_window_s < 0 or max_queue < 1 or max_sampling_settings < 1:
            raise ValueError("batch_window_s must be >= 0, max_queue and max_sampling_settings >= 1.")
        self.batch_window_s = batch_window_s
        self.max_queue = max_queue
        self.max_sampling_settings = max_sampling_settings
        self._rng = np.random.default_rng(seed)
        self._queue: queue.Queue[_Request] = queue.Queue()
        self._lock = threading.Lock()
        self._settings: set[SamplingConfig] = set()
        self._programs: set[tuple] = set()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._counts = dict(requests=0, rows=0, batches=0, failed_batches=0, padded_rows=0, generated_tokens=0)
        _install_compile_listener()
        self._compiles_at_start = xla_compiles()
        self._compiles_after_warmup: int | None = None

    # ---- client side -------------------------------------------------------------------------

    def check(
        self,
        prompt_ids: Sequence[int],
        *,
        max_tokens: int,
        n: int = 1,
        temperature: float = 1.0,
        top_k: int = 0,
        top_p: float = 1.0,
        seed: int | None = None,
    ) -> SamplingConfig:
        """Validates a request without queueing it; returns its normalised sampling settings.

        Raises:
          RequestError: naming the offending field.
        """
        if len(prompt_ids) < 1:
            raise RequestError("prompt", "the prompt encodes to no tokens; give a non-empty prompt.")
        if len(prompt_ids) > self.max_prompt_tokens:
            raise RequestError(
                "prompt", f"the prompt is {len(prompt_ids)} tokens; the server's cap is {self.max_prompt_tokens}."
            )
        if not 1 <= max_tokens <= self.max_tokens:
            raise RequestError("max_tokens", f"max_tokens must lie in 1..{self.max_tokens}, got {max_tokens}.")
        if not 1 <= n <= self.max_batch:
            raise RequestError("n", f"n must lie in 1..{self.max_batch} (rows of one batch), got {n}.")
        if seed is not None and not 0 <= seed <= MAX_SEED:
            raise RequestError("seed", f"seed must lie in 0..{MAX_SEED}, got {seed}.")
        sampling = normalise(temperature, top_k, top_p, getattr(self.target, "vocab_size", None))
        with self._lock:
            if sampling not in self._settings and len(self._settings) >= self.max_sampling_settings:
                known = ", ".join(_describe(s) for s in sorted(self._settings, key=_describe))
                raise RequestError(
                    "temperature",
                    f"this server compiles one program set per (temperature, top_k, top_p) and already holds "
                    f"{self.max_sampling_settings}; reuse one of: {known}.",
                )
            self._settings.add(sampling)
        return sampling

    def submit(
        self,
        prompt_ids: Sequence[int],
        *,
        max_tokens: int,
        n: int = 1,
        temperature: float = 1.0,
        top_k: int = 0,
        top_p: float = 1.0,
        seed: int | None = None,
    ) -> concurrent.futures.Future:
        """Validates and queues a request; the future resolves to a `Completion`.

        The future fails with `GenerationError` if its batch failed. Cancelling
        it before its batch starts drops the request.

        Raises:
          RequestError: a bad request (nothing was queued).
          Overloaded: the queue is full or the engine is stopped.
        """
        sampling = self.check(
            prompt_ids, max_tokens=max_tokens, n=n, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed
        )
        if self._stop.is_set() or self._thread is None:
            raise Overloaded("the engine is not running.")
        if self._queue.qsize() >= self.max_queue:
            raise Overloaded(f"{self.max_queue} requests are already queued; retry later.")
        request = _Request(
            prompt_ids=tuple(int(t) for t in prompt_ids),
            n=n,
            max_tokens=max_tokens,
            sampling=sampling,
            seed=seed,
            future=concurrent.futures.Future(),
        )
        self._queue.put(request)
        return request.future

    def stats(self) -> dict[str, Any]:
        """Counters since start: requests, batches, mean batch size, compiles."""
        with self._lock:
            counts = dict(self._counts)
            programs = len(self._programs)
            settings = sorted(_describe(s) for s in self._settings)
        compiles = xla_compiles() - self._compiles_at_start
        ok_batches = counts["batches"] - counts["failed_batches"]
        return dict(
            counts,
            mean_batch_size=counts["rows"] / ok_batches if ok_batches else 0.0,
            queued=self._queue.qsize(),
            programs=programs,
            sampling_settings=settings,
            xla_compiles=compiles,
            xla_compiles_since_warmup=None
            if self._compiles_after_warmup is None
            else xla_compiles() - self._compiles_after_warmup,
            buckets=dataclasses.asdict(self.buckets),
        )

    # ---- lifecycle ---------------------------------------------------------------------------

    def warmup(self, settings: Sequence[SamplingConfig] = (GREEDY,), shapes=None) -> int:
        """Compiles every bucket shape (or `shapes`) for each of `settings`; returns the programs run.

        Call before `start` (it runs on the caller's thread).
        """
        shapes = list(self.buckets.all_shapes() if shapes is None else shapes)
        for sampling in settings:
            sampling = self.check(
                [0], max_tokens=1, temperature=sampling.temperature, top_k=sampling.top_k, top_p=sampling.top_p
            )
            for batch, width, tokens in shapes:
                ids = np.full((batch, width), self.pad_token_id, np.int32)
                self._generate(ids, np.full((batch,), width, np.int32), tokens, sampling, seed=0)
        self._compiles_after_warmup = xla_compiles()
        return len(settings) * len(shapes)

    def start(self) -> None:
        """Starts the worker thread (idempotent)."""
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._loop, name="jaxspec-engine", daemon=True)
            self._thread.start()
        if self._compiles_after_warmup is None:
            self._compiles_after_warmup = xla_compiles()

    def close(self, timeout: float = 30.0) -> None:
        """Stops the worker after its current batch; queued requests fail with `Overloaded`."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        while True:
            try:
                request = self._queue.get_nowait()
            except queue.Empty:
                break
            if request.future.set_running_or_notify_cancel():
                request.future.set_exception(Overloaded("the server is shutting down."))

    # ---- worker ------------------------------------------------------------------------------

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                first = self._queue.get(timeout=0.05)
            except queue.Empty:
                continue
            pending, rows = [first], first.n
            deadline = first.enqueued + self.batch_window_s
            while rows < self.max_batch:
                remaining = deadline - time.monotonic()
                try:
                    request = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
                except queue.Empty:
                    break
                pending.append(request)
                rows += request.n
            try:
                chunks = self._chunks(pending)
            except Exception as err:  # noqa: BLE001 - never let the worker die with requests waiting.
                chunks = []
                for request in pending:
                    if request.future.set_running_or_notify_cancel():
                        request.future.set_exception(GenerationError(f"could not batch: {type(err).__name__}: {err}"))
            for chunk in chunks:
                self._run(chunk)

    def _chunks(self, pending: list[_Request]) -> list[list[_Request]]:
        """Groups by static settings (seeded requests alone), then splits into <= max_batch rows."""
        groups: dict[tuple, list[_Request]] = {}
        for request in pending:
            tokens = Buckets.fit(self.buckets.tokens, request.max_tokens)
            key = (request.sampling, tokens, id(request) if request.seed is not None else None)
            groups.setdefault(key, []).append(request)
        chunks = []
        for group in groups.values():
            chunk, rows = [], 0
            for request in group:
                if chunk and rows + request.n > self.max_batch:
                    chunks.append(chunk)
                    chunk, rows = [], 0
                chunk.append(request)
                rows += request.n
            chunks.append(chunk)
        return chunks

    def _run(self, chunk: list[_Request]) -> None:
        chunk = [r for r in chunk if r.future.set_running_or_notify_cancel()]
        if not chunk:
            return
        start = time.monotonic()
        try:
            rows = [r.prompt_ids for r in chunk for _ in range(r.n)]
            batch = Buckets.fit(self.buckets.batch, len(rows))
            width = Buckets.fit(self.buckets.prompt, max(len(p) for p in rows))
            tokens = Buckets.fit(self.buckets.tokens, max(r.max_tokens for r in chunk))
            ids = np.full((batch, width), self.pad_token_id, np.int32)
            lengths = np.empty((batch,), np.int32)
            for i in range(batch):
                prompt = rows[i] if i < len(rows) else rows[0]
                ids[i, : len(prompt)] = prompt
                lengths[i] = len(prompt)
            seed = chunk[0].seed if chunk[0].seed is not None else int(self._rng.integers(MAX_SEED))
            out = self._generate(ids, lengths, tokens, chunk[0].sampling, seed)
            generate_ms = 1000 * (time.monotonic() - start)
            completions, row = [], 0
            for request in chunk:
                choices = tuple(self._choice(out, row + j, request.max_tokens) for j in range(request.n))
                row += request.n
                completions.append(
                    Completion(
                        choices=choices,
                        prompt_tokens=len(request.prompt_ids),
                        queue_ms=1000 * (start - request.enqueued),
                        generate_ms=generate_ms,
                        batch_size=len(rows),
                        padded_batch=batch,
                        shape=(batch, width, tokens),
                    )
                )
        except Exception as err:  # noqa: BLE001 - any failure goes to this batch's requests only.
            with self._lock:
                self._counts["batches"] += 1
                self._counts["failed_batches"] += 1
            failure = GenerationError(f"generation failed for this batch: {type(err).__name__}: {err}")
            for request in chunk:
                request.future.set_exception(failure)
            return
        with self._lock:
            self._counts["batches"] += 1
            self._counts["requests"] += len(chunk)
            self._counts["rows"] += len(rows)
            self._counts["padded_rows"] += batch - len(rows)
            self._counts["generated_tokens"] += sum(c.generated for done in completions for c in done.choices)
        for request, completion in zip(chunk, completions):
            request.future.set_result(completion)

    def _generate(self, ids, lengths, tokens: int, sampling: SamplingConfig, seed: int) -> dict[str, np.ndarray]:
        result = speculative_sample(
            self.target,
            self.draft,
            ids,
            prompt_lengths=lengths,
            key=jax.random.key(seed),
            max_new_tokens=tokens,
            num_draft_tokens=self.num_draft_tokens,
            temperature=sampling.temperature,
            top_k=sampling.top_k,
            top_p=sampling.top_p,
            eos_token_id=self.eos_token_id,
            pad_token_id=self.pad_token_id,
            verify=self.verify,
        )
        with self._lock:
            self._programs.add((ids.shape, tokens, sampling))
        return {name: np.asarray(getattr(result, name)) for name in ("tokens", "lengths", "provenance")}

    def _choice(self, out: dict[str, np.ndarray], row: int, max_tokens: int) -> Choice:
        length = min(int(out["lengths"][row]), max_tokens)
        ids = out["tokens"][row, :length].tolist()
        provenance = out["provenance"][row, :length]
        stopped = self.eos_token_id is not None and length > 0 and ids[-1] == self.eos_token_id
        # Each round ends with one resampled or bonus token; a round cut short
        # (by max_tokens or EOS) ends with an accepted draft instead.
        ends = int(np.isin(provenance, (common.RESAMPLED, common.BONUS)).sum())
        calls = ends + int(length > 0 and provenance[-1] == common.ACCEPTED_DRAFT)
        return Choice(
            token_ids=tuple(ids[:-1] if stopped else ids),
            finish_reason="stop" if stopped else "length",
            generated=length,
            drafted=calls * self.num_draft_tokens,
            accepted=int((provenance == common.ACCEPTED_DRAFT).sum()),
            target_calls=calls,
        )


def normalise(t: float, k: int, p: float, vocab_size: int | None = None) -> SamplingConfig:
    """Validated settings; equivalent ones share one compiled program (greedy ignores top-k/top-p,
    top_k >= vocab is off).

    Raises:
      RequestError: naming the out-of-range field.
    """
    if isinstance(t, bool) or not (isinstance(t, (int, float)) and math.isfinite(t) and t >= 0):
        raise RequestError("temperature", f"temperature must be a finite number >= 0, got {t!r}.")
    if isinstance(k, bool) or not isinstance(k, int) or k < 0:
        raise RequestError("top_k", f"top_k must be an integer >= 0, got {k!r}.")
    if isinstance(p, bool) or not (isinstance(p, (int, float)) and 0 < p <= 1):
        raise RequestError("top_p", f"top_p must lie in (0, 1], got {p!r}.")
    if t == 0:
        return GREEDY
    if vocab_size is not None and k >= vocab_size:
        k = 0
    return SamplingConfig(temperature=float(t), top_k=int(k), top_p=float(p))


def _describe(s: SamplingConfig) -> str:
    return f"temperature={s.temperature:g} top_k={s.top_k} top_p={s.top_p:g}"
