"""`Engine`: concurrent generation requests become a few padded `speculative_sample` calls.

This module is the engine's lifecycle only: a queue, one background thread
that owns the accelerator, and `start` / `submit` / `close`. The worker takes
the first queued request, keeps collecting for `batch_window_s` (or until the
largest batch bucket is full), and runs one `speculative_sample` per call that
`batching.group` forms. The rest lives in modules with one job each:

- `jaxspec.serving.validation`: every check of a request, run in `submit`
  before it is queued (a bad request is refused on its own and never reaches,
  or fails, a batch), through the library's own prompt and sampling checks;
- `jaxspec.serving.batching`: the pure batching policy (buckets, grouping,
  padding, cutting rows back, counters);
- `jaxspec.serving.telemetry`: compile counting (`warmup` compiles every bucket
  shape before traffic arrives; `stats()` reports every compilation since).

Nothing here knows about HTTP or text: requests are token ids (see
`jaxspec.serving.app` for the API). The names that moved out of this module
(`Buckets`, `Choice`, `RequestError`, `xla_compiles`, ...) are re-exported
here by the `X as X` imports below, so old imports keep working.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import queue
import threading
import time
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from jaxspec.generation.inputs import check_positive_int
from jaxspec.generation.speculative import speculative_sample
from jaxspec.sampling.processing import SamplingConfig
from jaxspec.serving import batching, validation
from jaxspec.serving.batching import Buckets
from jaxspec.serving.batching import Choice as Choice
from jaxspec.serving.batching import Completion as Completion
from jaxspec.serving.batching import powers_of_two as powers_of_two
from jaxspec.serving.telemetry import CompileCounter
from jaxspec.serving.telemetry import xla_compiles as xla_compiles
from jaxspec.serving.validation import FLOAT32_MAX as FLOAT32_MAX
from jaxspec.serving.validation import FLOAT32_TINY as FLOAT32_TINY
from jaxspec.serving.validation import GREEDY as GREEDY
from jaxspec.serving.validation import INT32_MAX as INT32_MAX
from jaxspec.serving.validation import MAX_SEED, Request
from jaxspec.serving.validation import RequestError as RequestError
from jaxspec.serving.validation import normalise as normalise


class Overloaded(RuntimeError):
    """The queue is full (or the engine is stopped); retry later."""


class GenerationError(RuntimeError):
    """Generation failed for the batch this request was in (its neighbours in other batches are unaffected)."""


@dataclasses.dataclass(eq=False)
class _Queued:
    request: Request
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
        self.num_draft_tokens = check_positive_int("num_draft_tokens", num_draft_tokens)
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
        self.vocab_size = validation.vocab_size(target, draft)
        self._rng = np.random.default_rng(seed)
        self._queue: queue.Queue[_Queued] = queue.Queue()
        self._lock = threading.Lock()  # guards _counts
        # Guards the lifecycle: _running, _stop and _thread change together, and
        # `submit` checks _running and enqueues while holding it, so `close` never
        # misses a request that `submit` accepted.
        self._life = threading.Lock()
        self._running = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._counts = batching.Counters()
        self._telemetry = CompileCounter()

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

        Checks (`validation.validate` against this engine's caps and vocabulary):
        the prompt is a non-empty sequence of at most the prompt cap integer
        token ids (not bools, not floats), each in 0..vocab_size - 1 (the
        vocabulary both models sample over); max_tokens, n, top_k and seed are
        integers (not bools or floats) in range; temperature is finite and 0
        (greedy) or at least the smallest normal float32; top_p lies in (0, 1].
        Nothing is registered: a refused or merely checked request leaves no trace.

        Raises:
          RequestError: naming the offending field.
        """
        return self._validate(prompt_ids, max_tokens, n, temperature, top_k, top_p, seed).sampling

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
        request = self._validate(prompt_ids, max_tokens, n, temperature, top_k, top_p, seed)
        with self._life:
            if not self._running:
                raise Overloaded("the engine is not running (not started yet, or shutting down); retry later.")
            if self._queue.qsize() >= self.max_queue:
                raise Overloaded(f"{self.max_queue} requests are already queued; retry later.")
            queued = _Queued(request, concurrent.futures.Future())
            self._queue.put(queued)
        return queued.future

    def stats(self) -> dict[str, Any]:
        """Counters since start: requests, batches, mean batch size, compiles."""
        with self._lock:
            counts = self._counts
        telemetry = self._telemetry.stats()
        return dict(
            counts.summary(),
            queued=self._queue.qsize(),
            programs=telemetry["programs"],
            xla_compiles=telemetry["xla_compiles"],
            xla_compiles_since_warmup=telemetry["xla_compiles_since_warmup"],
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
        for shape in shapes:
            batch = batching.blank(shape, self.pad_token_id)
            self._generate(batch.ids, batch.lengths, batch.max_new_tokens, batch.settings, seed=0)
        self._telemetry.warmed_up()
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
            self._telemetry.warmed_up(keep_earlier=True)

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
                queued = self._queue.get_nowait()
            except queue.Empty:
                break
            if queued.future.set_running_or_notify_cancel():
                queued.future.set_exception(Overloaded("the server is shutting down."))
        return stopped

    # ---- worker ------------------------------------------------------------------------------

    def _loop(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                first = self._queue.get(timeout=0.05)
            except queue.Empty:
                continue
            pending, rows = [first], first.request.n
            try:
                deadline = first.enqueued + self.batch_window_s
                while rows < self.max_batch:
                    remaining = deadline - time.monotonic()
                    try:
                        queued = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
                    except queue.Empty:
                        break
                    pending.append(queued)
                    rows += queued.request.n
                calls = batching.group([q.request for q in pending], self.buckets)
            except Exception as err:  # noqa: BLE001 - never let the worker die with requests waiting.
                calls = []
                for queued in pending:
                    if queued.future.set_running_or_notify_cancel():
                        queued.future.set_exception(GenerationError(f"could not batch: {type(err).__name__}: {err}"))
            for call in calls:
                self._run([pending[i] for i in call])

    def _run(self, call: list[_Queued]) -> None:
        call = [q for q in call if q.future.set_running_or_notify_cancel()]
        if not call:
            return
        start = time.monotonic()
        requests = [q.request for q in call]
        try:
            batch = batching.pack(requests, self.buckets, self.pad_token_id)
            seed = requests[0].seed if requests[0].seed is not None else int(self._rng.integers(MAX_SEED))
            out = self._generate(batch.ids, batch.lengths, batch.max_new_tokens, batch.settings, seed)
            completions = batching.unpack(
                out,
                requests,
                batch,
                eos_token_id=self.eos_token_id,
                num_draft_tokens=self.num_draft_tokens,
                queue_ms=[1000 * (start - q.enqueued) for q in call],
                generate_ms=1000 * (time.monotonic() - start),
            )
        except Exception as err:  # noqa: BLE001 - any failure goes to this batch's requests only.
            with self._lock:
                self._counts = self._counts.add_failure()
            failure = GenerationError(f"generation failed for this batch: {type(err).__name__}: {err}")
            for queued in call:
                queued.future.set_exception(failure)
            return
        with self._lock:
            self._counts = self._counts.add(batch, completions)
        for queued, completion in zip(call, completions):
            queued.future.set_result(completion)

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
            **batching.settings_arrays(settings),
            eos_token_id=self.eos_token_id,
            pad_token_id=self.pad_token_id,
            verify=self.verify,
        )
        self._telemetry.ran((ids.shape, tokens))
        out = {name: np.asarray(getattr(result, name)) for name in ("tokens", "lengths", "provenance")}
        nonfinite = getattr(result, "nonfinite_logits", None)  # absent in older `speculative_sample`s
        if nonfinite is not None:
            out["nonfinite_logits"] = np.asarray(nonfinite)
        return out

    def _validate(self, prompt_ids, max_tokens, n, temperature, top_k, top_p, seed) -> Request:
        return validation.validate(
            prompt_ids,
            max_tokens=max_tokens,
            n=n,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            seed=seed,
            prompt_cap=self.max_prompt_tokens,
            tokens_cap=self.max_tokens,
            n_cap=self.max_batch,
            vocab_size=self.vocab_size,
        )
