"""Batching policy as pure functions: which requests share a call, and at what padded shape.

Requests (see `jaxspec.serving.validation.Request`) become `speculative_sample`
calls in four steps, none of which touches a thread or a compiled program:

- `group`: requests are grouped by what is static to the compiled loop --
  only the max_tokens bucket (a request with a `seed` always runs alone) --
  and each group is split into calls of at most the largest batch bucket rows;
- `pack`: the prompts are right-padded to the smallest prompt-length bucket
  that fits the longest one, each row keeping its own length, and the batch is
  padded to a batch bucket with copies of its first row (prompt and settings;
  a copy ends when that row ends, so padding never prolongs the loop).
  Sampling settings are per row (`settings_arrays`), traced by the loop, so a
  new setting never compiles anything;
- `unpack`: every row ran to the max_tokens *bucket* and is cut back to its
  request's `max_tokens` (a prefix of a longer run is distributed exactly as a
  shorter run); its speculative counts are recounted on the kept tokens;
- `Counters`: the engine's running totals.

So the compiled programs are bounded by the `Buckets` alone, all known up front.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from jaxspec.generation.provenance import ACCEPTED_DRAFT, BONUS, RESAMPLED
from jaxspec.sampling.processing import SamplingConfig
from jaxspec.serving.validation import GREEDY, Request


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
        """The smallest of `values` that is >= n.

        Raises:
          ValueError: n exceeds the largest (validation keeps requests within the caps).
        """
        fitting = next((v for v in values if v >= n), None)
        if fitting is None:
            raise ValueError(f"{n} exceeds the largest bucket, {values[-1]}.")
        return fitting

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


@dataclasses.dataclass(frozen=True)
class Batch:
    """The inputs of one padded call.

    Attributes:
      ids: int32 [B, W] prompts, right-padded; rows past `rows` copy row 0.
      lengths: int32 [B] prompt lengths.
      settings: B sampling settings, one per row.
      max_new_tokens: the max_tokens bucket every row runs to.
      rows: real rows (B - rows are padding).
    """

    ids: np.ndarray
    lengths: np.ndarray
    settings: tuple[SamplingConfig, ...]
    max_new_tokens: int
    rows: int

    @property
    def shape(self) -> tuple[int, int, int]:
        """(padded batch, prompt width, max_new_tokens)."""
        return (*self.ids.shape, self.max_new_tokens)


def group(requests: Sequence[Request], buckets: Buckets) -> list[list[int]]:
    """Indices of `requests` per call: same max_tokens bucket (seeded requests alone), <= max batch rows each.

    Order is kept within each call; a request's n rows are never split.
    """
    groups: dict[tuple, list[int]] = {}
    for i, request in enumerate(requests):
        tokens = Buckets.fit(buckets.tokens, request.max_tokens)
        groups.setdefault((tokens, i if request.seed is not None else None), []).append(i)
    calls = []
    for members in groups.values():
        call, rows = [], 0
        for i in members:
            if call and rows + requests[i].n > buckets.batch[-1]:
                calls.append(call)
                call, rows = [], 0
            call.append(i)
            rows += requests[i].n
        calls.append(call)
    return calls


def pack(requests: Sequence[Request], buckets: Buckets, pad_token_id: int) -> Batch:
    """One call's padded inputs: each request's n rows in order, then copies of row 0 up to a batch bucket."""
    rows = [(r.prompt_ids, r.sampling) for r in requests for _ in range(r.n)]
    batch = Buckets.fit(buckets.batch, len(rows))
    width = Buckets.fit(buckets.prompt, max(len(p) for p, _ in rows))
    tokens = Buckets.fit(buckets.tokens, max(r.max_tokens for r in requests))
    ids = np.full((batch, width), pad_token_id, np.int32)
    lengths = np.empty((batch,), np.int32)
    settings = []
    for i in range(batch):
        prompt, sampling = rows[i] if i < len(rows) else rows[0]
        ids[i, : len(prompt)] = prompt
        lengths[i] = len(prompt)
        settings.append(sampling)
    return Batch(ids=ids, lengths=lengths, settings=tuple(settings), max_new_tokens=tokens, rows=len(rows))


def blank(shape: tuple[int, int, int], pad_token_id: int) -> Batch:
    """A greedy batch of full-width padding prompts at `shape` (batch, width, max_new_tokens): for warmup."""
    batch, width, tokens = shape
    ids = np.full((batch, width), pad_token_id, np.int32)
    return Batch(ids, np.full((batch,), width, np.int32), (GREEDY,) * batch, tokens, batch)


def settings_arrays(settings: Sequence[SamplingConfig]) -> dict[str, np.ndarray]:
    """Per-row settings as the [B] arrays `speculative_sample` traces (temperature, top_k, top_p)."""
    return dict(
        temperature=np.array([s.temperature for s in settings], np.float32),
        top_k=np.array([s.top_k for s in settings], np.int32),
        top_p=np.array([s.top_p for s in settings], np.float32),
    )


def row_choice(
    out: dict[str, np.ndarray], row: int, max_tokens: int, *, eos_token_id: int | None, num_draft_tokens: int
) -> Choice:
    """Row `row` of a call's output, cut to `max_tokens`, with its counts recounted on the kept tokens.

    Args:
      out: the call's "tokens" [B, T], "lengths" [B], "provenance" [B, T] and,
        optionally, "nonfinite_logits" [B].
    """
    length = min(int(out["lengths"][row]), max_tokens)
    ids = out["tokens"][row, :length].tolist()
    provenance = out["provenance"][row, :length]
    stopped = eos_token_id is not None and length > 0 and ids[-1] == eos_token_id
    # Each round ends with one resampled or bonus token; a round cut short
    # (by max_tokens or EOS) ends with an accepted draft instead.
    ends = int(np.isin(provenance, (RESAMPLED, BONUS)).sum())
    calls = ends + int(length > 0 and provenance[-1] == ACCEPTED_DRAFT)
    if "nonfinite_logits" in out and bool(out["nonfinite_logits"][row]) and length < max_tokens:
        reason = "error"  # stopped early at logits without a distribution, before this request's end
    else:
        reason = "stop" if stopped else "length"
    return Choice(
        token_ids=tuple(ids[:-1] if stopped else ids),
        finish_reason=reason,
        generated=length,
        drafted=calls * num_draft_tokens,
        accepted=int((provenance == ACCEPTED_DRAFT).sum()),
        target_calls=calls,
    )


def unpack(
    out: dict[str, np.ndarray],
    requests: Sequence[Request],
    batch: Batch,
    *,
    eos_token_id: int | None,
    num_draft_tokens: int,
    queue_ms: Sequence[float],
    generate_ms: float,
) -> list[Completion]:
    """Each request's `Completion` from the output of the call `pack(requests, ...)` made.

    Args:
      out: as for `row_choice`.
      queue_ms: per request, enqueue -> start of the call.
      generate_ms: wall time of the call.
    """
    completions, row = [], 0
    for request, waited in zip(requests, queue_ms, strict=True):
        choices = tuple(
            row_choice(out, row + j, request.max_tokens, eos_token_id=eos_token_id, num_draft_tokens=num_draft_tokens)
            for j in range(request.n)
        )
        row += request.n
        completions.append(
            Completion(
                choices=choices,
                prompt_tokens=len(request.prompt_ids),
                queue_ms=waited,
                generate_ms=generate_ms,
                batch_size=batch.rows,
                padded_batch=batch.ids.shape[0],
                shape=batch.shape,
            )
        )
    return completions


class Counters(NamedTuple):
    """The engine's running totals (immutable: `add` and `add_failure` return new ones)."""

    requests: int = 0
    rows: int = 0
    batches: int = 0
    failed_batches: int = 0
    padded_rows: int = 0
    generated_tokens: int = 0

    def add(self, batch: Batch, completions: Sequence[Completion]) -> Counters:
        """After a call that answered `completions`."""
        return self._replace(
            requests=self.requests + len(completions),
            rows=self.rows + batch.rows,
            batches=self.batches + 1,
            padded_rows=self.padded_rows + batch.ids.shape[0] - batch.rows,
            generated_tokens=self.generated_tokens + sum(c.generated for done in completions for c in done.choices),
        )

    def add_failure(self) -> Counters:
        """After a call that failed (its requests are not counted)."""
        return self._replace(batches=self.batches + 1, failed_batches=self.failed_batches + 1)

    def summary(self) -> dict[str, float]:
        """The totals and mean_batch_size (real rows per successful call)."""
        ok_batches = self.batches - self.failed_batches
        return dict(self._asdict(), mean_batch_size=self.rows / ok_batches if ok_batches else 0.0)
