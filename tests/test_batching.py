"""The serving batching policy as pure functions: buckets, grouping, packing, unpacking, counters.

No model, no thread, no compile: requests are `Request`s and a call's output is
a dict of numpy arrays built by hand.
"""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxspec.generation.provenance import ACCEPTED_DRAFT as A
from jaxspec.generation.provenance import BONUS as B
from jaxspec.generation.provenance import RESAMPLED as R
from jaxspec.sampling import SamplingConfig
from jaxspec.serving import batching
from jaxspec.serving.batching import Buckets, Counters
from jaxspec.serving.validation import GREEDY, Request

HOT = SamplingConfig(temperature=0.7, top_k=5, top_p=0.9)


def request(prompt, n=1, max_tokens=4, sampling=GREEDY, seed=None) -> Request:
    return Request(prompt_ids=tuple(prompt), n=n, max_tokens=max_tokens, sampling=sampling, seed=seed)


# ---- buckets -----------------------------------------------------------------------------------


def test_default_buckets_end_at_the_caps():
    assert batching.powers_of_two(16, 100) == (16, 32, 64, 100)
    assert batching.powers_of_two(1, 1) == (1,)
    buckets = Buckets.default(max_prompt_tokens=100, max_batch=8, max_tokens=256)
    assert buckets == Buckets(prompt=(16, 32, 64, 100), batch=(1, 2, 4, 8), tokens=(16, 64, 256))
    assert Buckets.default(8, 3, 10) == Buckets(prompt=(8,), batch=(1, 2, 3), tokens=(10,))
    assert len(list(buckets.all_shapes())) == 4 * 4 * 3


@pytest.mark.parametrize("prompt", [(), (0, 4), (8, 4), (4, 4)])
def test_buckets_must_be_distinct_ascending_positive(prompt):
    with pytest.raises(ValueError, match=r"Buckets.prompt must be distinct ascending integers >= 1"):
        Buckets(prompt=prompt, batch=(1,), tokens=(1,))


def test_fit_picks_the_smallest_bucket_that_fits():
    assert [Buckets.fit((2, 4, 8), n) for n in (1, 2, 3, 8)] == [2, 2, 4, 8]
    with pytest.raises(ValueError, match="9 exceeds the largest bucket, 8"):
        Buckets.fit((2, 4, 8), 9)


# ---- group -------------------------------------------------------------------------------------


def test_group_by_tokens_bucket_seeded_alone_and_split_at_the_batch_cap():
    buckets = Buckets(prompt=(8,), batch=(2, 4), tokens=(4, 16))
    reqs = [
        request([1], max_tokens=3),  # 0: bucket 4
        request([1], max_tokens=10),  # 1: bucket 16
        request([1], max_tokens=4, n=2),  # 2: bucket 4
        request([1], max_tokens=2, seed=7),  # 3: alone
        request([1], max_tokens=1, n=2),  # 4: bucket 4, would make 5 rows with 0 and 2: next call
        request([1], max_tokens=16, seed=7),  # 5: alone, even with the same seed
    ]
    assert batching.group(reqs, buckets) == [[0, 2], [4], [1], [3], [5]]


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(1, 4), st.integers(1, 20), st.booleans()),  # (n, max_tokens, seeded)
        min_size=1,
        max_size=12,
    )
)
def test_group_invariants(specs):
    buckets = Buckets(prompt=(8,), batch=(1, 2, 4), tokens=(4, 8, 20))
    reqs = [request([1], n=n, max_tokens=m, seed=0 if seeded else None) for n, m, seeded in specs]
    calls = batching.group(reqs, buckets)
    assert sorted(i for call in calls for i in call) == list(range(len(reqs)))  # each request exactly once
    for call in calls:
        assert call == sorted(call)  # arrival order kept
        assert sum(reqs[i].n for i in call) <= buckets.batch[-1]
        assert len({Buckets.fit(buckets.tokens, reqs[i].max_tokens) for i in call}) == 1
        assert len(call) == 1 or all(reqs[i].seed is None for i in call)


# ---- pack, unpack ------------------------------------------------------------------------------


def test_pack_pads_prompts_and_rows_with_copies_of_row_zero():
    buckets = Buckets(prompt=(4, 8), batch=(2, 4, 8), tokens=(4, 16))
    reqs = [request([5, 6, 7], n=2, sampling=HOT), request([9, 8, 7, 6, 5], max_tokens=5)]
    batch = batching.pack(reqs, buckets, pad_token_id=0)
    np.testing.assert_array_equal(
        batch.ids,
        [
            [5, 6, 7, 0, 0, 0, 0, 0],
            [5, 6, 7, 0, 0, 0, 0, 0],
            [9, 8, 7, 6, 5, 0, 0, 0],
            [5, 6, 7, 0, 0, 0, 0, 0],  # padding row: a copy of row 0, prompt and settings
        ],
    )
    assert batch.ids.dtype == np.int32 and batch.lengths.dtype == np.int32
    np.testing.assert_array_equal(batch.lengths, [3, 3, 5, 3])
    assert batch.settings == (HOT, HOT, GREEDY, HOT)
    assert (batch.rows, batch.max_new_tokens, batch.shape) == (3, 16, (4, 8, 16))


def test_blank_is_a_greedy_batch_of_padding():
    batch = batching.blank((2, 4, 16), pad_token_id=3)
    np.testing.assert_array_equal(batch.ids, np.full((2, 4), 3))
    np.testing.assert_array_equal(batch.lengths, [4, 4])
    assert batch.settings == (GREEDY, GREEDY) and batch.shape == (2, 4, 16) and batch.rows == 2


def test_settings_arrays_are_per_row():
    arrays = batching.settings_arrays([GREEDY, HOT])
    np.testing.assert_array_equal(arrays["temperature"], np.array([0.0, 0.7], np.float32))
    np.testing.assert_array_equal(arrays["top_k"], [0, 5])
    np.testing.assert_array_equal(arrays["top_p"], np.array([1.0, 0.9], np.float32))
    assert [a.dtype for a in arrays.values()] == [np.float32, np.int32, np.float32]


def fake_output(batch: batching.Batch) -> dict[str, np.ndarray]:
    """Row r generates max_new_tokens copies of 100 + r, each a bonus token."""
    rows, tokens = batch.ids.shape[0], batch.max_new_tokens
    return dict(
        tokens=np.repeat(100 + np.arange(rows)[:, None], tokens, axis=1),
        lengths=np.full((rows,), tokens),
        provenance=np.full((rows, tokens), B),
    )


def test_unpack_gives_each_request_its_own_rows_cut_to_its_max_tokens():
    buckets = Buckets(prompt=(8,), batch=(8,), tokens=(6,))
    reqs = [request([1, 2], n=2, max_tokens=3), request([3], max_tokens=6), request([4, 5, 6], n=3, max_tokens=1)]
    batch = batching.pack(reqs, buckets, pad_token_id=0)
    done = batching.unpack(
        fake_output(batch),
        reqs,
        batch,
        eos_token_id=None,
        num_draft_tokens=2,
        queue_ms=[1.0, 2.0, 3.0],
        generate_ms=9.0,
    )
    assert [[c.token_ids for c in d.choices] for d in done] == [
        [(100,) * 3, (101,) * 3],
        [(102,) * 6],
        [(103,), (104,), (105,)],
    ]
    assert [c.generated for d in done for c in d.choices] == [3, 3, 6, 1, 1, 1]
    assert [d.prompt_tokens for d in done] == [2, 1, 3]
    assert [d.queue_ms for d in done] == [1.0, 2.0, 3.0]
    for d in done:
        assert (d.generate_ms, d.batch_size, d.padded_batch, d.shape) == (9.0, 6, 8, (8, 8, 6))
        assert all(c.finish_reason == "length" for c in d.choices)


def test_rows_cut_to_max_tokens_count_only_what_they_keep():
    # Row 0: rounds [A A R] [A A A B] [A]; row 1: [A R] then EOS (9) as an accepted draft, 3 tokens generated.
    out = dict(
        tokens=np.array([[1, 2, 3, 4, 5, 6, 7, 8], [1, 2, 9, 0, 0, 0, 0, 0]]),
        lengths=np.array([8, 3]),
        provenance=np.array([[A, A, R, A, A, A, B, A], [A, R, A, 0, 0, 0, 0, 0]]),
    )

    def choice(row, max_tokens):
        return batching.row_choice(out, row, max_tokens, eos_token_id=9, num_draft_tokens=3)

    cut = choice(0, 5)  # ends inside round 2: 2 target calls
    assert (cut.token_ids, cut.finish_reason, cut.generated) == ((1, 2, 3, 4, 5), "length", 5)
    assert (cut.accepted, cut.target_calls, cut.drafted) == (4, 2, 6)
    whole = choice(0, 8)
    assert (whole.accepted, whole.target_calls, whole.drafted) == (6, 3, 9)
    stopped = choice(1, 8)
    assert (stopped.token_ids, stopped.finish_reason, stopped.generated) == ((1, 2), "stop", 3)
    assert (stopped.accepted, stopped.target_calls) == (2, 2)


def test_non_finite_logits_finish_with_error():
    out = dict(
        tokens=np.array([[1, 2, 3, 4], [1, 2, 0, 0]]),
        lengths=np.array([4, 2]),
        provenance=np.array([[B] * 4, [B, B, 0, 0]]),
        nonfinite_logits=np.array([False, True]),
    )

    def choice(row, max_tokens):
        return batching.row_choice(out, row, max_tokens, eos_token_id=None, num_draft_tokens=2)

    assert choice(0, 4).finish_reason == "length"
    error = choice(1, 4)  # stopped after 2 of its 4 tokens: the 2 are valid
    assert (error.finish_reason, error.token_ids) == ("error", (1, 2))
    assert choice(1, 2).finish_reason == "length"  # it stopped only past this request's end


# ---- counters ----------------------------------------------------------------------------------


def test_counters_count_calls_rows_padding_and_tokens():
    buckets = Buckets(prompt=(8,), batch=(4,), tokens=(4,))
    reqs = [request([1], n=2, max_tokens=3), request([2], max_tokens=4)]
    batch = batching.pack(reqs, buckets, pad_token_id=0)
    done = batching.unpack(
        fake_output(batch), reqs, batch, eos_token_id=None, num_draft_tokens=2, queue_ms=[0, 0], generate_ms=1
    )
    counts = Counters().add(batch, done).add_failure().add(batch, done)
    assert counts == Counters(requests=4, rows=6, batches=3, failed_batches=1, padded_rows=2, generated_tokens=20)
    summary = counts.summary()
    assert summary["mean_batch_size"] == 3.0 and summary["failed_batches"] == 1
    assert Counters().add_failure().summary()["mean_batch_size"] == 0.0
