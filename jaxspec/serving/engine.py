"""`Engine`: concurrent generation requests become a few padded `speculative_sample` calls.

One background thread owns the accelerator. It takes the first queued request,
keeps collecting for `batch_window_s` (or until `max_batch` rows), groups what
it has by what is static to the compiled loop -- only the max_tokens bucket
(and a request with a `seed` always runs alone) -- and runs one
`speculative_sample` per group:

- prompts are right-padded to the smallest prompt-length bucket that fits the
  longest one, and each row keeps its own `prompt_lengths` entry;
- sampling settings are per row: each row passes its request's temperature,
  top_k and top_p as entries of [batch] arrays, which the compiled loop traces,
  so greedy and sampled requests with any settings share one call and a new
  setting never compiles anything;
- the batch is padded to a batch bucket with copies of its first row (prompt
  and settings; a copy ends when that row ends, so padding never prolongs the
  loop);
- every row runs to the max_tokens *bucket* and is cut back to its request's
  `max_tokens` afterwards (a prefix of a longer run is distributed exactly as a
  shorter run); its speculative counts are recounted on the kept tokens.

So the compiled programs are bounded by the buckets alone, all known up front;
`warmup` compiles them before traffic arrives and `stats()` reports every XLA
compilation seen since the engine started. Every request is validated
completely in `submit` before it is queued, so a bad request is refused on its
own and never reaches (or fails) a batch. Nothing here knows about HTTP or
text: requests are token ids (see `jaxspec.serving.app` for the API).
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
INT32_MAX = 2**31 - 1
# Settings travel to the device as float32: a positive value below the smallest
# normal float32 (1.1754944e-38) underflows there, one above its max overflows.
FLOAT32_TINY = float(np.finfo(np.float32).tiny)
FLOAT32_MAX = float(np.finfo(np.float32).max)

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
      finish_reason: "stop" (EOS), "length" (max_tokens reached) or "error"
        (the row stopped before max_tokens because the target's logits had no
        distribution there, e.g. NaN; the tokens before that point are valid.
        Reported where `speculative_sample` has `nonfinite_logits`).
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
    event loop included: it validates and enqueues, never blocks on compute),
    also while another thread calls `close`: every submitted request is either
    refused at `submit` (`Overloaded`) or answered through its future.

    Sampling settings: each row carries its own (temperature, top_k, top_p) into
    the call as traced per-row arrays, so requests with different settings
    share calls and no setting is ever compiled for.

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
        if batch_window_s < 0 or max_queue < 1:
            raise ValueError(f"batch_window_s must be >= 0 and max_queue >= 1, got {batch_window_s}, {max_queue}.")
        self.batch_window_s = batch_window_s
        self.max_queue = max_queue
        self.vocab_size = _vocab_size(target, draft)
        self._rng = np.random.default_rng(seed)
        self._queue: queue.Queue[_Request] = queue.Queue()
        self._lock = threading.Lock()  # counters and programs
        # Guards the lifecycle: _running, _stop and _thread change together, and
        # `submit` checks _running and enqueues while holding it, so `close` never
        # misses a request that `submit` accepted.
        self._life = threading.Lock()
        self._running = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._programs: set[tuple] = set()
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
        """Validates a request completely without queueing it; returns its normalised sampling settings.

        Checks: the prompt is a non-empty sequence of at most the prompt cap
        integer token ids (not bools, not floats), each in 0..vocab_size - 1
        (the vocabulary both models sample over); max_tokens, n, top_k and seed
        are integers (not bools or floats) in range; temperature is finite and
        0 (greedy) or at least the smallest normal float32; top_p lies in (0, 1].
        Nothing is registered: a refused or merely checked request leaves no trace.

        Raises:
          RequestError: naming the offending field.
        """
        return self._validate(prompt_ids, max_tokens, n, temperature, top_k, top_p, seed)[1]

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
        """Validates (see `check`) and queues a request; the future resolves to a `Completion`.

        The future fails with `GenerationError` if its batch failed, or with
        `Overloaded` if the engine closed before its batch started. Cancelling
        it before its batch starts drops the request.

        Raises:
          RequestError: a bad request (nothing was queued or counted).
          Overloaded: the queue is full or the engine is not running (nothing
            was queued or counted).
        """
        prompt, sampling = self._validate(prompt_ids, max_tokens, n, temperature, top_k, top_p, seed)
        with self._life:
            if not self._running:
                raise Overloaded("the engine is not running (not started yet, or shutting down); retry later.")
            if self._queue.qsize() >= self.max_queue:
                raise Overloaded(f"{self.max_queue} requests are already queued; retry later.")
            request = _Request(
                prompt_ids=prompt,
                n=int(n),
                max_tokens=int(max_tokens),
                sampling=sampling,
                seed=None if seed is None else int(seed),
                future=concurrent.futures.Future(),
            )
            self._queue.put(request)
        return request.future

    def stats(self) -> dict[str, Any]:
        """Counters since start: requests, batches, mean batch size, compiles."""
        with self._lock:
            counts = dict(self._counts)
            programs = len(self._programs)
        compiles = xla_compiles() - self._compiles_at_start
        ok_batches = counts["batches"] - counts["failed_batches"]
        return dict(
            counts,
            mean_batch_size=counts["rows"] / ok_batches if ok_batches else 0.0,
            queued=self._queue.qsize(),
            programs=programs,
            xla_compiles=compiles,
            xla_compiles_since_warmup=None
            if self._compiles_after_warmup is None
            else xla_compiles() - self._compiles_after_warmup,
            buckets=dataclasses.asdict(self.buckets),
        )

    # ---- lifecycle ---------------------------------------------------------------------------

    def warmup(self, shapes=None) -> int:
        """Compiles every bucket shape (or each (batch, width, max_new_tokens) of `shapes`) once.

        Sampling settings are traced per-row values, so one run per shape covers
        every setting. Call before `start` (it runs on the caller's thread).

        Returns:
          The number of shapes run.
        """
        shapes = list(self.buckets.all_shapes() if shapes is None else shapes)
        for batch, width, tokens in shapes:
            ids = np.full((batch, width), self.pad_token_id, np.int32)
            self._generate(ids, np.full((batch,), width, np.int32), tokens, [GREEDY] * batch, seed=0)
        self._compiles_after_warmup = xla_compiles()
        return len(shapes)

    def start(self) -> None:
        """Starts the worker thread (a no-op while it runs).

        Raises:
          RuntimeError: the worker of an earlier `close` whose timeout ran out is
            still finishing its batch; call `close()` again (it waits for that
            worker), then `start()`. Two workers never run at once.
        """
        with self._life:
            if self._running:
                return
            if self._thread is not None and self._thread.is_alive():
                raise RuntimeError(
                    "the previous worker is still finishing its batch (close() returned when its timeout ran out); "
                    "call close() again to wait for it, then start()."
                )
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._loop, args=(self._stop,), name="jaxspec-engine", daemon=True)
            self._running = True
            self._thread.start()
            if self._compiles_after_warmup is None:
                self._compiles_after_warmup = xla_compiles()

    def close(self, timeout: float = 30.0) -> bool:
        """Stops taking requests and stops the worker after its current batch.

        From the moment `close` is called, `submit` raises `Overloaded`.
        Requests still queued fail with `Overloaded`; the batch being generated
        completes and its futures resolve, even if that takes past `timeout`.

        Args:
          timeout: seconds to wait for the worker's current batch.

        Returns:
          True if the worker has exited; False if it is still finishing its
          batch (it exits right after; `start` refuses until it has, and calling
          `close` again waits for it).
        """
        with self._life:
            self._running = False
            self._stop.set()
            thread = self._thread
        stopped = True
        if thread is not None:
            thread.join(timeout)
            stopped = not thread.is_alive()
            with self._life:
                if stopped and self._thread is thread:
                    self._thread = None
        while True:
            try:
                request = self._queue.get_nowait()
            except queue.Empty:
                break
            if request.future.set_running_or_notify_cancel():
                request.future.set_exception(Overloaded("the server is shutting down."))
        return stopped

    # ---- worker ------------------------------------------------------------------------------

    def _loop(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                first = self._queue.get(timeout=0.05)
            except queue.Empty:
                continue
            pending, rows = [first], first.n
            try:
                deadline = first.enqueued + self.batch_window_s
                while rows < self.max_batch:
                    remaining = deadline - time.monotonic()
                    try:
                        request = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
                    except queue.Empty:
                        break
                    pending.append(request)
                    rows += request.n
                chunks = self._chunks(pending)
            except Exception as err:  # noqa: BLE001 - never let the worker die with requests waiting.
                chunks = []
                for request in pending:
                    if request.future.set_running_or_notify_cancel():
                        request.future.set_exception(GenerationError(f"could not batch: {type(err).__name__}: {err}"))
            for chunk in chunks:
                self._run(chunk)

    def _chunks(self, pending: list[_Request]) -> list[list[_Request]]:
        """Groups by max_tokens bucket (seeded requests alone), then splits into <= max_batch rows."""
        groups: dict[tuple, list[_Request]] = {}
        for request in pending:
            tokens = Buckets.fit(self.buckets.tokens, request.max_tokens)
            key = (tokens, id(request) if request.seed is not None else None)
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
            rows = [(r.prompt_ids, r.sampling) for r in chunk for _ in range(r.n)]
            batch = Buckets.fit(self.buckets.batch, len(rows))
            width = Buckets.fit(self.buckets.prompt, max(len(p) for p, _ in rows))
            tokens = Buckets.fit(self.buckets.tokens, max(r.max_tokens for r in chunk))
            ids = np.full((batch, width), self.pad_token_id, np.int32)
            lengths = np.empty((batch,), np.int32)
            settings = []
            for i in range(batch):
                prompt, sampling = rows[i] if i < len(rows) else rows[0]
                ids[i, : len(prompt)] = prompt
                lengths[i] = len(prompt)
                settings.append(sampling)
            seed = chunk[0].seed if chunk[0].seed is not None else int(self._rng.integers(MAX_SEED))
            out = self._generate(ids, lengths, tokens, settings, seed)
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

    def _generate(
        self, ids, lengths, tokens: int, settings: Sequence[SamplingConfig], seed: int
    ) -> dict[str, np.ndarray]:
        """One `speculative_sample` call; `settings` holds one entry per row of `ids`."""
        result = speculative_sample(
            self.target,
            self.draft,
            ids,
            prompt_lengths=lengths,
            key=jax.random.key(seed),
            max_new_tokens=tokens,
            num_draft_tokens=self.num_draft_tokens,
            temperature=np.array([s.temperature for s in settings], np.float32),
            top_k=np.array([s.top_k for s in settings], np.int32),
            top_p=np.array([s.top_p for s in settings], np.float32),
            eos_token_id=self.eos_token_id,
            pad_token_id=self.pad_token_id,
            verify=self.verify,
        )
        with self._lock:
            self._programs.add((ids.shape, tokens))
        out = {name: np.asarray(getattr(result, name)) for name in ("tokens", "lengths", "provenance")}
        nonfinite = getattr(result, "nonfinite_logits", None)  # absent in older `speculative_sample`s
        if nonfinite is not None:
            out["nonfinite_logits"] = np.asarray(nonfinite)
        return out

    def _choice(self, out: dict[str, np.ndarray], row: int, max_tokens: int) -> Choice:
        length = min(int(out["lengths"][row]), max_tokens)
        ids = out["tokens"][row, :length].tolist()
        provenance = out["provenance"][row, :length]
        stopped = self.eos_token_id is not None and length > 0 and ids[-1] == self.eos_token_id
        # Each round ends with one resampled or bonus token; a round cut short
        # (by max_tokens or EOS) ends with an accepted draft instead.
        ends = int(np.isin(provenance, (common.RESAMPLED, common.BONUS)).sum())
        calls = ends + int(length > 0 and provenance[-1] == common.ACCEPTED_DRAFT)
        if "nonfinite_logits" in out and bool(out["nonfinite_logits"][row]) and length < max_tokens:
            reason = "error"  # stopped early at logits without a distribution, before this request's end
        else:
            reason = "stop" if stopped else "length"
        return Choice(
            token_ids=tuple(ids[:-1] if stopped else ids),
            finish_reason=reason,
            generated=length,
            drafted=calls * self.num_draft_tokens,
            accepted=int((provenance == common.ACCEPTED_DRAFT).sum()),
            target_calls=calls,
        )

    def _validate(self, prompt_ids, max_tokens, n, temperature, top_k, top_p, seed):
        """(prompt as a tuple of ints, normalised settings); see `check`."""
        prompt = _prompt(prompt_ids, self.max_prompt_tokens, self.vocab_size)
        max_tokens = _integer("max_tokens", max_tokens)
        if not 1 <= max_tokens <= self.max_tokens:
            raise RequestError("max_tokens", f"max_tokens must lie in 1..{self.max_tokens}, got {max_tokens}.")
        n = _integer("n", n)
        if not 1 <= n <= self.max_batch:
            raise RequestError("n", f"n must lie in 1..{self.max_batch} (rows of one batch), got {n}.")
        if seed is not None:
            seed = _integer("seed", seed)
            if not 0 <= seed <= MAX_SEED:
                raise RequestError("seed", f"seed must lie in 0..{MAX_SEED}, got {seed}.")
        return prompt, normalise(temperature, top_k, top_p, self.vocab_size)


def _vocab_size(target, draft) -> int | None:
    """The ids both models sample over (None if unknown, e.g. models stubbed out in tests)."""
    if hasattr(draft, "vocab_size_for") and target is not None:
        return int(draft.vocab_size_for(target))  # a `Drafter`; raises for incompatible vocabularies
    sizes = [getattr(m, "vocab_size", None) for m in (target, draft)]
    sizes = [int(v) for v in sizes if v is not None]
    # A draft whose embedding pads the target's vocabulary samples only the target's ids.
    return min(sizes) if sizes else None


def _is_integer(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _is_real(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))


def _integer(param: str, value: Any) -> int:
    if not _is_integer(value):
        raise RequestError(param, f"{param} must be an integer, got {value!r} ({type(value).__name__}).")
    return int(value)


def _prompt(prompt_ids: Any, cap: int, vocab_size: int | None) -> tuple[int, ...]:
    """The prompt as a tuple of ints, checked against the cap and the vocabulary."""
    if isinstance(prompt_ids, (str, bytes)) or not isinstance(prompt_ids, (Sequence, np.ndarray)):
        raise RequestError(
            "prompt", f"the prompt must be a sequence of token ids, got {type(prompt_ids).__name__}; tokenize it first."
        )
    if isinstance(prompt_ids, np.ndarray) and prompt_ids.ndim != 1:
        raise RequestError("prompt", f"the prompt must be one sequence of token ids, got shape {prompt_ids.shape}.")
    if len(prompt_ids) < 1:
        raise RequestError("prompt", "the prompt encodes to no tokens; give a non-empty prompt.")
    if len(prompt_ids) > cap:
        raise RequestError("prompt", f"the prompt is {len(prompt_ids)} tokens; the server's cap is {cap}.")
    high = INT32_MAX if vocab_size is None else vocab_size - 1
    out = []
    for i, token in enumerate(prompt_ids):
        if not _is_integer(token):
            raise RequestError(
                "prompt", f"prompt token {i} is {token!r} ({type(token).__name__}); token ids must be integers."
            )
        token = int(token)
        if not 0 <= token <= high:
            raise RequestError(
                "prompt",
                f"prompt token {i} is {token}, outside the vocabulary 0..{high}; "
                "encode the prompt with the model's tokenizer.",
            )
        out.append(token)
    return tuple(out)


def normalise(t: float, k: int, p: float, vocab_size: int | None = None) -> SamplingConfig:
    """Validated settings, normalised: greedy ignores top-k/top-p, and top_k >= vocab is off.

    Raises:
      RequestError: naming the out-of-range field.
    """
    if not _is_real(t) or not math.isfinite(t) or t < 0 or t > FLOAT32_MAX:
        raise RequestError(
            "temperature", f"temperature must be a finite number >= 0 (0 = greedy), got {t!r} ({type(t).__name__})."
        )
    if 0 < t < FLOAT32_TINY:
        raise RequestError(
            "temperature",
            f"temperature {t!r} underflows float32 (smallest normal {FLOAT32_TINY:.8g}); use 0 for greedy.",
        )
    k = _integer("top_k", k)
    if k < 0:
        raise RequestError("top_k", f"top_k must be an integer >= 0 (0 = off), got {k}.")
    if not _is_real(p) or not 0 < p <= 1:
        raise RequestError("top_p", f"top_p must lie in (0, 1] (1 = off), got {p!r} ({type(p).__name__}).")
    if p < FLOAT32_TINY:
        raise RequestError(
            "top_p", f"top_p {p!r} underflows float32 (smallest normal {FLOAT32_TINY:.8g}); use a larger value."
        )
    if t == 0:
        return GREEDY
    if k >= (INT32_MAX if vocab_size is None else vocab_size):
        k = 0
    return SamplingConfig(temperature=float(t), top_k=k, top_p=float(p))
