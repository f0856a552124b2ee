"""The mapping's rules over an in-memory shard source (docs/esm.md sections 1-3, 6, 8).

Lineage, time and throttling cannot be shown on moto (ENVIRONMENT.md), so these tests use
`MemorySource`, our own implementation of the shard-source seam, and `FastClock`, under which
minutes pass in milliseconds; tests whose rule hangs on exact times (record age, retry pauses,
the 1 MB window state, iterator age) use `VirtualClock`, which moves only when every thread of
the mapping waits, so they hold on a machine of any speed. The function runs in-process
(`Recorder`). On-failure records go
to real SQS queues on moto's server; `tests/test_mapping_moto.py` runs the same rules against
real streams.
"""

from __future__ import annotations

import itertools
import json
import logging
import threading
from datetime import UTC, datetime
from typing import Any

import boto3
import pytest

from streams.backoff import Backoff
from streams.mapping import (
    EventSourceMapping,
    MappingSettings,
    MemoryCheckpointStore,
    NotInvoked,
)
from streams.mapping.invoke import InvokeResult
from streams.sources.base import Shard
from tests.test_mapping_support import (
    FUNCTION_ARN,
    START,
    FastClock,
    MemorySource,
    Recorder,
    VirtualClock,
    dynamodb_record,
    kinesis_record,
    mapping,
    messages,
    order_key,
    queue,
    run,
    seq,
    sequence_number,
)


def _source(
    *records: dict[str, Any], shard: str = "s1", kind: str = "aws:dynamodb"
) -> MemorySource:
    source = MemorySource(kind)  # type: ignore[arg-type]
    source.add_shard(shard)
    source.put(shard, *records)
    return source


def _records(count: int, *, first: int = 1, **options: Any) -> list[dict[str, Any]]:
    return [dynamodb_record(first + i, **options) for i in range(count)]


def _fails_for(*numbers: int) -> Any:
    """A function that raises when its batch holds one of these records."""
    poison = set(seq(*numbers))

    def function(event: dict[str, Any]) -> None:
        if poison & {sequence_number(record) for record in event["Records"]}:
            raise ValueError("poison record")

    return function


# --- batching -----------------------------------------------------------------------------


def test_batches_hold_at_most_batch_size_records_in_sequence_order() -> None:
    recorder = Recorder()

    run({"BatchSize": 10}, _source(*_records(25)), recorder)

    assert [len(batch) for batch in recorder.batches()] == [10, 10, 5]
    assert recorder.delivered() == seq(*range(1, 26))


def test_a_full_batch_is_sent_without_waiting_for_the_batching_window() -> None:
    clock = FastClock()
    recorder = Recorder(clock=clock)

    run(
        {"BatchSize": 5, "MaximumBatchingWindowInSeconds": 300},
        _source(*_records(5)),
        recorder,
        clock=clock,
    )

    ((sent, _),) = recorder.times
    assert sent < START + 300


def test_the_batching_window_holds_a_short_batch_until_it_passes() -> None:
    clock = FastClock()
    recorder = Recorder(clock=clock)

    run(
        {"BatchSize": 100, "MaximumBatchingWindowInSeconds": 30},
        _source(*_records(3)),
        recorder,
        clock=clock,
    )

    assert recorder.batches() == [seq(1, 2, 3)]
    ((sent, _),) = recorder.times
    assert sent >= START + 30


def test_the_next_batching_window_opens_when_the_previous_invocation_ends() -> None:
    clock = FastClock()
    recorder = Recorder(clock=clock)

    run(
        {"BatchSize": 2, "MaximumBatchingWindowInSeconds": 30},
        _source(*_records(3)),
        recorder,
        clock=clock,
    )

    assert recorder.batches() == [seq(1, 2), seq(3)]
    (_, first_ended), (second_sent, _) = recorder.times
    assert second_sent >= first_ended + 30


def test_a_batch_stops_before_its_event_would_pass_6_mb() -> None:
    big = {"pk": {"S": "k"}, "blob": {"S": "x" * 1_000_000}}
    recorder = Recorder()

    run({"BatchSize": 100}, _source(*_records(10, new_image=big)), recorder)

    sizes = [len(json.dumps(event).encode()) for event in recorder.events]
    assert len(sizes) == 2
    assert all(size <= 6 * 1024 * 1024 for size in sizes)
    assert recorder.delivered() == seq(*range(1, 11))


def _pace(source: MemorySource, clock: FastClock) -> tuple[Any, list[tuple[int, float]]]:
    """A sleep that logs the poller's pace: per read, (records returned, seconds slept after)."""
    pace: list[tuple[int, float]] = []
    lock = threading.Lock()

    def on_read(shard_id: str, limit: int, returned: int) -> None:
        with lock:
            pace.append((returned, 0.0))

    def sleep(seconds: float) -> None:
        if threading.current_thread().name.startswith("poll-"):
            with lock:
                returned, slept = pace[-1]
                pace[-1] = (returned, slept + seconds)
        clock.sleep(seconds)

    source.on_read = on_read
    return sleep, pace


def test_a_read_that_filled_its_batch_is_followed_at_once_and_a_short_one_waits_the_pace() -> None:
    clock = FastClock()
    source = _source(*_records(30))
    sleep, pace = _pace(source, clock)

    run({"BatchSize": 10}, source, Recorder(), clock=clock, sleep=sleep)

    assert pace[:3] == [(10, 0.0)] * 3
    # Caught up, a DynamoDB shard is read 4 times a second.
    assert {slept for _, slept in pace[3:-1]} == {0.25}


def test_a_caught_up_kinesis_shard_is_read_once_a_second() -> None:
    clock = FastClock()
    source = _source(kinesis_record(1), kind="aws:kinesis")
    sleep, pace = _pace(source, clock)

    run({}, source, Recorder(), clock=clock, sleep=sleep)

    assert pace[0] == (1, 1.0)
    assert {slept for _, slept in pace[:-1]} == {1.0}


def test_memory_stays_bounded_whatever_the_backlog() -> None:
    source = _source(*_records(3000))
    completed = 0
    held: list[int] = []
    read_so_far = 0

    def on_read(shard_id: str, limit: int, returned: int) -> None:
        nonlocal read_so_far
        read_so_far += returned
        held.append(read_so_far - completed)

    def function(event: dict[str, Any]) -> None:
        nonlocal completed
        completed += len(event["Records"])

    source.on_read = on_read

    run({"BatchSize": 10}, source, Recorder(function))

    assert completed == 3000
    assert max(limit for _, limit, _ in source.reads) <= 10
    # Read and not done never exceeds twice what the shard's one lane can have in flight.
    assert max(held) <= 20


def test_memory_in_flight_is_bounded_in_bytes_at_twice_6_mb_per_lane() -> None:
    """1.5 MB records, `BatchSize` 10: the record count allows 20 read and not done (30 MB);
    the byte bound (2 x 6 MB x factor 1) stops reading once 12 MB are held, so at most one
    more read (10 records) can land on top of less than 12 MB."""
    size = 1_500_000
    big = {"pk": {"S": "k"}, "blob": {"S": "x" * size}}
    source = _source(*_records(40, new_image=big))
    read = completed = 0
    held: list[int] = []
    first_invocation = threading.Event()

    def on_read(shard_id: str, limit: int, returned: int) -> None:
        nonlocal read
        read += returned
        held.append(read - completed)

    def function(event: dict[str, Any]) -> None:
        nonlocal completed
        if not first_invocation.is_set():
            first_invocation.set()
            # Hold the first batch a moment: a poller bounded only by the record count reads
            # on to 20 records meanwhile (a slow machine can only make that harder to see).
            threading.Event().wait(0.5)
        completed += len(event["Records"])

    source.on_read = on_read

    run({"BatchSize": 10}, source, Recorder(function))

    assert completed == 40
    # Under 12 MB (7 records) before the last read, plus one read of at most 10.
    assert max(held) <= 12 * 1024 * 1024 // size + 10
    assert max(held) < 20


def test_throttled_reads_are_tried_again_and_lose_nothing() -> None:
    source = _source(*_records(5))
    source.throttle("s1", 3)
    recorder = Recorder()

    run({}, source, recorder)

    assert recorder.delivered() == seq(1, 2, 3, 4, 5)


# --- starting positions and checkpoints ----------------------------------------------------


def test_latest_delivers_only_records_written_after_the_start() -> None:
    source = _source(*_records(3))
    source.after_reads("s1", 1, lambda: source.put("s1", *_records(2, first=4)))
    recorder = Recorder()

    run({"StartingPosition": "LATEST"}, source, recorder)

    assert recorder.delivered() == seq(4, 5)


def test_at_timestamp_starts_at_the_first_record_that_arrived_then() -> None:
    source = _source(
        *[kinesis_record(i, arrival=START - 100 + 10 * i) for i in range(1, 6)], kind="aws:kinesis"
    )
    recorder = Recorder()

    run(
        {"StartingPosition": "AT_TIMESTAMP", "StartingPositionTimestamp": START - 70},
        source,
        recorder,
    )

    assert recorder.delivered() == seq(3, 4, 5, kind="aws:kinesis")


def test_a_restarted_mapping_resumes_after_its_checkpoint() -> None:
    source = _source(*_records(4))
    store = MemoryCheckpointStore()
    first = Recorder()
    run({"BatchSize": 3}, source, first, checkpoints=store)
    source.put("s1", *_records(2, first=5))
    second = Recorder()

    run({"BatchSize": 3}, source, second, checkpoints=store)

    assert first.delivered() == seq(1, 2, 3, 4)
    assert second.delivered() == seq(5, 6)
    assert store.get("s1") == seq(6)[0]


def test_a_disabled_mapping_reads_nothing_and_keeps_the_checkpoint() -> None:
    source = _source(*_records(3))
    store = MemoryCheckpointStore()
    store.put("s1", seq(1)[0], False)
    recorder = Recorder()

    run({"Enabled": False}, source, recorder, checkpoints=store)
    assert (source.opened, recorder.events, store.get("s1")) == ([], [], seq(1)[0])

    run({"Enabled": True}, source, recorder, checkpoints=store)
    assert recorder.delivered() == seq(2, 3)


def test_the_checkpoint_never_passes_a_record_not_done() -> None:
    """With two lanes finishing out of order, every checkpoint has all records up to it done."""
    keys = ["a", "b"]
    records = [dynamodb_record(i, key=keys[i % 2]) for i in range(1, 41)]
    done: set[str] = set()
    violations: list[str] = []

    class Watching(MemoryCheckpointStore):
        def put(self, shard_id: str, sequence_number: str | None, shard_finished: bool) -> None:
            assert sequence_number is not None
            behind = [n for n in seq(*range(1, 41)) if n <= sequence_number and n not in done]
            violations.extend(behind)
            super().put(shard_id, sequence_number, shard_finished)

    def function(event: dict[str, Any]) -> None:
        done.update(sequence_number(record) for record in event["Records"])

    store = Watching()
    run(
        {"BatchSize": 3, "ParallelizationFactor": 2},
        _source(*records),
        Recorder(function),
        checkpoints=store,
    )

    assert violations == []
    assert store.get("s1") == seq(40)[0]


# --- lineage and discovery -----------------------------------------------------------------


def test_a_parent_shard_is_finished_before_any_of_its_children_starts() -> None:
    source = MemorySource()
    source.add_shard("parent")
    source.put("parent", *_records(5, first=1))
    source.close("parent")
    for index, child in enumerate(("left", "right")):
        source.add_shard(child, parents=["parent"])
        source.put(child, *_records(4, first=10 + 10 * index))
        source.close(child)
    source.add_shard("merged", parents=["left", "right"])
    source.put("merged", *_records(3, first=40))
    recorder = Recorder()

    result = run({"BatchSize": 2}, source, recorder)

    owner = {
        n: shard
        for shard, numbers in {
            "parent": seq(*range(1, 6)),
            "left": seq(*range(10, 14)),
            "right": seq(*range(20, 24)),
            "merged": seq(*range(40, 43)),
        }.items()
        for n in numbers
    }
    order = [owner[n] for n in recorder.delivered()]
    last = {shard: max(i for i, s in enumerate(order) if s == shard) for shard in owner.values()}
    first = {shard: order.index(shard) for shard in owner.values()}
    assert last["parent"] < min(first["left"], first["right"])
    assert max(last["left"], last["right"]) < first["merged"]
    assert sorted(recorder.delivered()) == sorted(owner)
    assert all(result.checkpoints.finished(shard) for shard in ("parent", "left", "right"))
    assert not result.checkpoints.finished("merged")


class _SlowSecondListing(MemorySource):
    """A source whose listing after the first finished shard is slow: it returns only once the
    second shard has finished too, and many fake seconds later (kinesis-mock's ListShards can
    take longer than a FastClock idle period). "right" is read only after "left" finished."""

    def __init__(self, clock: FastClock) -> None:
        super().__init__()
        self.finished: list[str] = []
        self._clock = clock
        self._cond = threading.Condition()

    def shard_finished(self, shard_id: str) -> None:
        with self._cond:
            self.finished.append(shard_id)
            self._cond.notify_all()

    def hold_right_until_left_finished(self, shard_id: str, limit: int, returned: int) -> None:
        if shard_id == "right":
            with self._cond:
                self._cond.wait_for(lambda: "left" in self.finished, timeout=10)
            self._clock.sleep(5)  # the mapping sees "left" finished and lists the stream

    def list_shards(self) -> list[Shard]:
        with self._cond:
            if len(self.finished) == 1:
                self._cond.wait_for(lambda: len(self.finished) == 2, timeout=10)
                self._clock.sleep(60)  # a minute of fake time: far past the idle period
        return super().list_shards()


class _FinishJournal(MemoryCheckpointStore):
    def __init__(self, source: _SlowSecondListing) -> None:
        super().__init__()
        self._source = source

    def put(self, shard_id: str, sequence_number: str | None, shard_finished: bool) -> None:
        super().put(shard_id, sequence_number, shard_finished)
        if shard_finished:
            self._source.shard_finished(shard_id)


def test_a_shard_finishing_while_the_stream_is_listed_still_gets_its_child_started() -> None:
    # Both parents of a merge finish, the second while the stream is being listed after the
    # first: the mapping must start their child before it may count as idle.
    clock = FastClock()
    source = _SlowSecondListing(clock)
    for index, parent in enumerate(("left", "right")):
        source.add_shard(parent)
        source.put(parent, *_records(2, first=10 * (index + 1)))
        source.close(parent)
    source.add_shard("merged", parents=["left", "right"])
    source.put("merged", *_records(2, first=40))
    source.on_read = source.hold_right_until_left_finished
    recorder = Recorder()

    run({}, source, recorder, clock=clock, checkpoints=_FinishJournal(source))

    assert sorted(source.finished) == ["left", "right"]
    assert sorted(recorder.delivered()) == seq(10, 11, 20, 21, 40, 41)


def test_shards_that_appear_while_running_are_read_from_their_start_even_at_latest() -> None:
    source = _source(*_records(2))

    def reshard() -> None:
        source.put("s1", *_records(1, first=3))
        source.close("s1")
        source.add_shard("s2", parents=["s1"])
        source.put("s2", *_records(2, first=10))

    source.after_reads("s1", 1, reshard)
    recorder = Recorder()

    run({"StartingPosition": "LATEST"}, source, recorder)

    assert recorder.delivered() == seq(3, 10, 11)


def test_at_latest_a_shard_closed_before_the_start_is_skipped() -> None:
    source = MemorySource()
    source.add_shard("old")
    source.put("old", *_records(3))
    source.close("old")
    source.add_shard("new", parents=["old"])
    source.put("new", *_records(2, first=10))
    source.after_reads("new", 1, lambda: source.put("new", *_records(1, first=20)))
    recorder = Recorder()

    run({"StartingPosition": "LATEST"}, source, recorder)

    assert [shard for shard, _ in source.opened] == ["new"]
    assert recorder.delivered() == seq(20)


# --- parallelization -------------------------------------------------------------------------


def test_concurrency_reaches_and_never_exceeds_shards_times_factor_and_keys_stay_in_order() -> None:
    shards, factor = 2, 3
    source = MemorySource()
    for shard in range(shards):
        source.add_shard(f"s{shard}")
        source.put(
            f"s{shard}",
            *[dynamodb_record(1000 * shard + i, key=f"k{shard}-{i % 30}") for i in range(90)],
        )
    target = shards * factor
    gate = threading.Condition()
    in_flight_keys: set[str] = set()
    overlaps: list[str] = []
    reached = threading.Event()

    def function(event: dict[str, Any]) -> None:
        keys = {order_key(record) for record in event["Records"]}
        with gate:
            overlaps.extend(keys & in_flight_keys)
            in_flight_keys.update(keys)
            if recorder.in_flight >= target:
                reached.set()
                gate.notify_all()
            # Hold each invocation until the target is reached once (or a generous bound).
            gate.wait_for(reached.is_set, timeout=5)
            in_flight_keys.difference_update(keys)

    recorder = Recorder(function)

    run({"BatchSize": 4, "ParallelizationFactor": factor}, source, recorder)

    assert recorder.max_in_flight == target
    assert overlaps == []
    per_key: dict[str, list[str]] = {}
    for event in recorder.events:
        for record in event["Records"]:
            per_key.setdefault(order_key(record), []).append(sequence_number(record))
    assert all(numbers == sorted(numbers) for numbers in per_key.values())
    assert len(recorder.delivered()) == 180


# --- errors and retries --------------------------------------------------------------------


def test_a_failing_batch_is_retried_then_given_up_with_invoke_count_retries_plus_one(
    aws: boto3.Session, unique_name: str
) -> None:
    url, arn = queue(aws, unique_name)
    recorder = Recorder(_fails_for(1))

    result = run(
        {
            "BatchSize": 2,
            "MaximumRetryAttempts": 2,
            "DestinationConfig": {"OnFailure": {"Destination": arn}},
        },
        _source(*_records(4)),
        recorder,
        session=aws,
    )

    # The shard waits: the failing batch three times, then the next batch.
    assert recorder.batches() == [seq(1, 2)] * 3 + [seq(3, 4)]
    (record,) = messages(aws, url)
    assert record["requestContext"]["condition"] == "RetryAttemptsExhausted"
    assert record["requestContext"]["approximateInvokeCount"] == 3
    assert record["requestContext"]["requestId"] == recorder.results[2].request_id
    assert record["responseContext"] == {
        "statusCode": 200,
        "executedVersion": "$LATEST",
        "functionError": "Unhandled",
    }
    info = record["DDBStreamBatchInfo"]
    assert (info["startSequenceNumber"], info["endSequenceNumber"], info["batchSize"]) == (
        *seq(1, 2),
        2,
    )
    assert result.checkpoints.get("s1") == seq(4)[0]


def test_without_a_destination_given_up_records_are_skipped_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    recorder = Recorder(_fails_for(1))

    with caplog.at_level(logging.WARNING, logger="streams.mapping"):
        run({"BatchSize": 1, "MaximumRetryAttempts": 0}, _source(*_records(2)), recorder)

    assert recorder.batches() == [seq(1), seq(2)]
    assert "gave up on 1 records" in caplog.text
    assert "no on-failure destination" in caplog.text


def test_errors_before_the_function_runs_use_no_retry() -> None:
    attempts = 0

    def invoker(event: Any, deadline_seconds: float) -> InvokeResult:
        nonlocal attempts
        attempts += 1
        if attempts <= 2:
            raise NotInvoked("throttled")
        return recorder(event, deadline_seconds)

    recorder = Recorder()

    run({"MaximumRetryAttempts": 0}, _source(*_records(2)), invoker)

    assert attempts == 3
    assert recorder.batches() == [seq(1, 2)]


def test_with_unlimited_retries_a_failing_record_is_retried_until_it_expires(
    aws: boto3.Session, unique_name: str
) -> None:
    url, arn = queue(aws, unique_name)
    clock = VirtualClock()
    recorder = Recorder(_fails_for(1), clock=clock)

    run(
        {
            "MaximumRetryAttempts": -1,
            "MaximumRecordAgeInSeconds": 60,
            "DestinationConfig": {"OnFailure": {"Destination": arn}},
        },
        _source(dynamodb_record(1, arrival=START - 30)),
        recorder,
        session=aws,
        clock=clock,
    )

    # Pauses of 1, 2, 4, 8, 8 s (the run's backoff): the record turns 61 s old at START + 31,
    # before the seventh try, and only the clock's own waits moved it there.
    assert [started - START for started, _ in recorder.times] == [0, 1, 3, 7, 15, 23]
    (record,) = messages(aws, url)
    assert record["requestContext"]["condition"] == "RecordAgeExceeded"
    # The attempt refused for age counts, as in AWS's recording (1 for a record never invoked).
    assert record["requestContext"]["approximateInvokeCount"] == 7
    assert "responseContext" not in record


def test_records_past_the_streams_retention_are_skipped_without_an_on_failure_record(
    aws: boto3.Session, unique_name: str
) -> None:
    url, arn = queue(aws, unique_name)
    clock = VirtualClock()
    recorder = Recorder(_fails_for(1), clock=clock)

    result = run(
        {
            "MaximumRetryAttempts": -1,
            "DestinationConfig": {"OnFailure": {"Destination": arn}},
            "MetricsConfig": {"Metrics": ["EventCount"]},
        },
        _source(dynamodb_record(1, arrival=START - 60), dynamodb_record(2)),
        recorder,
        session=aws,
        clock=clock,
        retention_seconds=120,
    )

    # Pauses of 1, 2, 4, 8, 8, ... s: at START + 63 record 1 is 123 s old, past the stream's
    # 120 s, and has left it; record 2 (63 s old) is still there and goes on alone.
    assert recorder.batches() == [seq(1, 2)] * 10 + [seq(2)]
    assert [started - START for started, _ in recorder.times] == [
        0, 1, 3, 7, 15, 23, 31, 39, 47, 55, 63
    ]  # fmt: skip
    assert messages(aws, url) == []
    assert result.metrics.count("DroppedEventCount") == 0
    assert result.checkpoints.get("s1") == seq(2)[0]


# --- bisect ----------------------------------------------------------------------------------


def test_bisect_splits_a_failed_batch_in_halves_down_to_the_poison_record(
    aws: boto3.Session, unique_name: str
) -> None:
    url, arn = queue(aws, unique_name)
    recorder = Recorder(_fails_for(5))

    run(
        {
            "BatchSize": 8,
            "BisectBatchOnFunctionError": True,
            "MaximumRetryAttempts": 0,
            "DestinationConfig": {"OnFailure": {"Destination": arn}},
        },
        _source(*_records(8)),
        recorder,
        session=aws,
    )

    assert recorder.batches() == [
        seq(1, 2, 3, 4, 5, 6, 7, 8),
        seq(1, 2, 3, 4),
        seq(5, 6, 7, 8),
        seq(5, 6),
        seq(5),
        seq(6),
        seq(7, 8),
    ]
    (record,) = messages(aws, url)
    info = record["DDBStreamBatchInfo"]
    assert (info["batchSize"], info["startSequenceNumber"], info["endSequenceNumber"]) == (
        1,
        *seq(5, 5),
    )
    # Splitting uses no retry; record 5 travelled in 4 invocations.
    assert record["requestContext"]["approximateInvokeCount"] == 4


def test_each_half_keeps_its_own_retry_counter_starting_from_its_parents_count() -> None:
    """A partial failure uses the batch's one retry; its halves start from that count (1 of 1).

    So the half holding the bad record, and then that record alone, get no retry of their own.
    """
    calls = 0

    def function(event: dict[str, Any]) -> Any:
        nonlocal calls
        calls += 1
        numbers = [sequence_number(record) for record in event["Records"]]
        if calls == 1:
            return {"batchItemFailures": [{"itemIdentifier": numbers[0]}]}
        if seq(1)[0] in numbers:
            raise ValueError("poison record")
        return {}

    recorder = Recorder(function)

    run(
        {
            "BatchSize": 4,
            "BisectBatchOnFunctionError": True,
            "MaximumRetryAttempts": 1,
            "FunctionResponseTypes": ["ReportBatchItemFailures"],
        },
        _source(*_records(4)),
        recorder,
    )

    assert recorder.batches() == [
        seq(1, 2, 3, 4),  # partial failure from record 1: retry 1 of 1
        seq(1, 2, 3, 4),  # function error: split, each half at retry 1
        seq(1, 2),  # function error: split again
        seq(1),  # function error, retries used up: given up
        seq(2),
        seq(3, 4),
    ]


def test_with_bisect_a_partial_failure_is_retried_from_the_reported_record_not_split() -> None:
    calls = 0

    def function(event: dict[str, Any]) -> Any:
        nonlocal calls
        calls += 1
        return {"batchItemFailures": [{"itemIdentifier": seq(3)[0]}] if calls == 1 else []}

    recorder = Recorder(function)

    run(
        {
            "BatchSize": 6,
            "BisectBatchOnFunctionError": True,
            "FunctionResponseTypes": ["ReportBatchItemFailures"],
        },
        _source(*_records(6)),
        recorder,
    )

    assert recorder.batches() == [seq(1, 2, 3, 4, 5, 6), seq(3, 4, 5, 6)]


# --- record age ------------------------------------------------------------------------------


def test_expired_records_are_given_up_without_response_context_and_fresh_ones_still_delivered(
    aws: boto3.Session, unique_name: str
) -> None:
    url, arn = queue(aws, unique_name)
    recorder = Recorder()
    # On the virtual clock the batch is sent at START exactly: 61 s is past the limit, 60 s is
    # not ("older than" the limit is given up).
    old = [dynamodb_record(i, arrival=START - 61) for i in (1, 2)]
    fresh = [dynamodb_record(i, arrival=START - 60) for i in (3, 4)]

    result = run(
        {
            "MaximumRecordAgeInSeconds": 60,
            "DestinationConfig": {"OnFailure": {"Destination": arn}},
            "MetricsConfig": {"Metrics": ["EventCount"]},
        },
        _source(*old, *fresh),
        recorder,
        session=aws,
        clock=VirtualClock(),
    )

    assert recorder.batches() == [seq(3, 4)]
    (record,) = messages(aws, url)
    assert record["requestContext"]["condition"] == "RecordAgeExceeded"
    assert record["requestContext"]["approximateInvokeCount"] == 1
    assert "responseContext" not in record
    info = record["DDBStreamBatchInfo"]
    assert (info["startSequenceNumber"], info["endSequenceNumber"], info["batchSize"]) == (
        *seq(1, 2),
        2,
    )
    assert result.metrics.count("DroppedEventCount") == 2
    assert result.metrics.count("OnFailureDestinationDeliveredEventCount") == 2


# --- partial batch responses -----------------------------------------------------------------


def test_a_partial_response_listing_records_3_and_7_rewinds_to_3() -> None:
    calls = 0

    def function(event: dict[str, Any]) -> Any:
        nonlocal calls
        calls += 1
        if calls == 1:
            return {"batchItemFailures": [{"itemIdentifier": n} for n in seq(7, 3)]}
        return {"batchItemFailures": []}

    recorder = Recorder(function)

    result = run(
        {"BatchSize": 10, "FunctionResponseTypes": ["ReportBatchItemFailures"]},
        _source(*_records(10)),
        recorder,
    )

    assert recorder.batches() == [seq(*range(1, 11)), seq(*range(3, 11))]
    assert result.checkpoints.get("s1") == seq(10)[0]


@pytest.mark.parametrize(
    "response",
    [
        {"batchItemFailures": [{"itemIdentifier": 123}]},
        {"batchItemFailures": [{"itemIdentifier": "no-such-record"}]},
        {"batchItemFailures": [{"itemIdentifier": ""}]},
        {"batchItemFailures": [{"itemIdentifier": None}]},
        {"batchItemFailures": [{"foo": 123}]},
        {"batchItemFailures": [{"foo": None}]},
    ],
    ids=["not-present", "unknown", "empty-string", "null", "other-key", "other-key-null"],
)
def test_an_invalid_item_identifier_fails_the_whole_batch(response: dict[str, Any]) -> None:
    calls = 0

    def function(event: dict[str, Any]) -> Any:
        nonlocal calls
        calls += 1
        return response if calls == 1 else None

    recorder = Recorder(function)

    run(
        {"BatchSize": 3, "FunctionResponseTypes": ["ReportBatchItemFailures"]},
        _source(*_records(3)),
        recorder,
    )

    assert recorder.batches() == [seq(1, 2, 3)] * 2


def test_partial_failures_use_retries_and_the_record_covers_the_reported_record_onward(
    aws: boto3.Session, unique_name: str
) -> None:
    url, arn = queue(aws, unique_name)
    recorder = Recorder(lambda event: {"batchItemFailures": [{"itemIdentifier": seq(3)[0]}]})

    run(
        {
            "BatchSize": 5,
            "MaximumRetryAttempts": 1,
            "FunctionResponseTypes": ["ReportBatchItemFailures"],
            "DestinationConfig": {"OnFailure": {"Destination": arn}},
        },
        _source(*_records(5)),
        recorder,
        session=aws,
    )

    assert recorder.batches() == [seq(1, 2, 3, 4, 5), seq(3, 4, 5)]
    (record,) = messages(aws, url)
    assert record["requestContext"]["approximateInvokeCount"] == 2
    assert record["responseContext"]["functionError"] is None
    info = record["DDBStreamBatchInfo"]
    assert (info["startSequenceNumber"], info["endSequenceNumber"], info["batchSize"]) == (
        *seq(3, 5),
        3,
    )


def test_without_report_batch_item_failures_the_response_is_ignored() -> None:
    recorder = Recorder(lambda event: {"batchItemFailures": [{"itemIdentifier": "x"}]})

    run({"BatchSize": 3}, _source(*_records(3)), recorder)

    assert recorder.batches() == [seq(1, 2, 3)]


# --- filters ---------------------------------------------------------------------------------


def test_filtered_records_are_never_delivered_nor_retried_and_are_counted() -> None:
    records = [dynamodb_record(i, event_name="INSERT" if i % 2 else "MODIFY") for i in range(1, 7)]
    recorder = Recorder(_fails_for(1))

    result = run(
        {
            "BatchSize": 10,
            "MaximumRetryAttempts": 1,
            "FilterCriteria": {"Filters": [{"Pattern": '{"eventName": ["INSERT"]}'}]},
            "MetricsConfig": {"Metrics": ["EventCount"]},
        },
        _source(*records),
        recorder,
    )

    assert recorder.batches() == [seq(1, 3, 5)] * 2
    assert result.metrics.count("FilteredOutEventCount") == 3
    assert result.metrics.count("PolledEventCount") == 6
    assert result.checkpoints.get("s1") == seq(6)[0]


def test_a_shard_of_filtered_records_only_still_moves_its_checkpoint() -> None:
    recorder = Recorder()

    result = run(
        {"FilterCriteria": {"Filters": [{"Pattern": '{"eventName": ["REMOVE"]}'}]}},
        _source(*_records(4)),
        recorder,
    )

    assert recorder.events == []
    assert result.checkpoints.get("s1") == seq(4)[0]


# --- tumbling windows --------------------------------------------------------------------------

_WINDOW = 60
_BASE = START - START % _WINDOW  # the window the fake clock starts in begins here


def _iso(epoch_seconds: float) -> str:
    return datetime.fromtimestamp(epoch_seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _counting(event: dict[str, Any]) -> dict[str, Any]:
    state = dict(event["state"])
    state["count"] = state.get("count", 0) + len(event["Records"])
    return {"state": state}


def _windows(recorder: Recorder) -> list[tuple[list[str], dict[str, Any], bool, str]]:
    return [
        (
            [sequence_number(record) for record in event["Records"]],
            event["state"],
            event["isFinalInvokeForWindow"],
            event["window"]["start"],
        )
        for event in recorder.events
    ]


def test_window_state_passes_between_invocations_and_the_last_one_is_final() -> None:
    # Two windows ahead of the clock, so neither can end before its records are read.
    a, b = _BASE + 60, _BASE + 120
    records = [dynamodb_record(i, arrival=a + i) for i in (1, 2, 3)]
    records.append(dynamodb_record(4, arrival=b + 1))
    recorder = Recorder(_counting)

    run({"BatchSize": 2, "TumblingWindowInSeconds": _WINDOW}, _source(*records), recorder)

    assert _windows(recorder) == [
        (seq(1, 2), {}, False, _iso(a)),
        # The next record read is in a later window: this batch is the window's last.
        (seq(3), {"count": 2}, True, _iso(a)),
        (seq(4), {}, False, _iso(b)),
        # Window b ends with no record after it: a final invocation without records.
        ([], {"count": 1}, True, _iso(b)),
    ]
    event = recorder.events[0]
    assert event["window"] == {"start": _iso(a), "end": _iso(b)}
    assert (event["shardId"], event["eventSourceARN"], event["isWindowTerminatedEarly"]) == (
        "s1",
        records[0]["eventSourceARN"],
        False,
    )


def test_each_lane_of_a_parallelization_factor_keeps_its_own_window_state() -> None:
    a = _BASE + 60
    children = [f"c-{n}" for n in range(8)]
    records = [dynamodb_record(i, arrival=a + i / 10, key=children[i % 8]) for i in range(1, 41)]

    def seen(event: dict[str, Any]) -> dict[str, Any]:
        state = dict(event["state"])
        keys = {record["dynamodb"]["Keys"]["pk"]["S"] for record in event["Records"]}
        state["children"] = sorted(set(state.get("children", [])) | keys)
        state["count"] = state.get("count", 0) + len(event["Records"])
        return {"state": state}

    recorder = Recorder(seen)

    run(
        {"BatchSize": 3, "TumblingWindowInSeconds": _WINDOW, "ParallelizationFactor": 2},
        _source(*records),
        recorder,
    )

    finals = [event["state"] for event in recorder.events if event["isFinalInvokeForWindow"]]
    assert len(finals) == 2  # one window, closed once per lane
    first, second = (set(state["children"]) for state in finals)
    assert first and second and not first & second  # a key's lane never sees the other's state
    assert first | second == set(children)
    assert sum(state["count"] for state in finals) == 40


def test_a_record_of_a_later_window_closes_the_open_one_with_a_final_invocation() -> None:
    a, b = _BASE + 60, _BASE + 120
    source = _source(*[dynamodb_record(i, arrival=a + i) for i in (1, 2)])

    def function(event: dict[str, Any]) -> dict[str, Any]:
        if len(recorder.events) == 1:  # written while window a's first batch is in flight
            source.put("s1", dynamodb_record(3, arrival=b + 1))
        return _counting(event)

    recorder = Recorder(function)

    run({"TumblingWindowInSeconds": _WINDOW}, source, recorder)

    assert _windows(recorder)[:3] == [
        (seq(1, 2), {}, False, _iso(a)),
        ([], {"count": 2}, True, _iso(a)),
        (seq(3), {}, False, _iso(b)),
    ]


def test_a_failed_final_invocation_is_tried_again_until_it_succeeds() -> None:
    failures = 0

    def function(event: dict[str, Any]) -> dict[str, Any]:
        nonlocal failures
        if event["isFinalInvokeForWindow"] and failures < 2:
            failures += 1
            raise ValueError("final step failed")
        return _counting(event)

    recorder = Recorder(function)

    run(
        {"TumblingWindowInSeconds": _WINDOW, "MaximumRetryAttempts": 0},
        _source(dynamodb_record(1, arrival=_BASE - 100)),
        recorder,
    )

    # The batch with the window's last record fails and is given up (no retries); the
    # window's final invocation is then made without records, and holds the shard until it
    # succeeds (AWS: "Lambda pauses further processing until a successful invocation").
    finals = [(len(e["Records"]), e["isFinalInvokeForWindow"]) for e in recorder.events]
    assert finals == [(1, True), (0, True), (0, True)]


def test_a_response_without_state_fails_the_invocation() -> None:
    recorder = Recorder(lambda event: {"batchItemFailures": []})

    run(
        {"TumblingWindowInSeconds": _WINDOW, "MaximumRetryAttempts": 1},
        _source(dynamodb_record(1, arrival=_BASE - 100)),
        recorder,
    )

    # Tried twice (one retry), given up, and the window still gets its final invocation.
    assert [len(e["Records"]) for e in recorder.events] == [1, 1, 0]
    assert recorder.events[-1]["isFinalInvokeForWindow"] is True


def _state_of(size: int) -> dict[str, str]:
    """A window state whose JSON is `size` bytes."""
    return {"blob": "x" * (size - len(json.dumps({"blob": ""})))}


def test_a_state_over_1_mb_ends_the_window_early_and_it_goes_on_with_a_fresh_state() -> None:
    over, limit = _state_of(1024 * 1024 + 1), _state_of(1024 * 1024)

    def function(event: dict[str, Any]) -> dict[str, Any]:
        numbers = [sequence_number(record) for record in event["Records"]]
        if numbers == seq(1):
            return {"state": over}
        return {"state": limit if numbers == seq(2) else event["state"]}

    clock = VirtualClock()
    recorder = Recorder(function)
    window = _BASE + 60  # ahead of the clock: it ends only when the clock passes its end

    run(
        {"BatchSize": 1, "TumblingWindowInSeconds": _WINDOW},
        _source(*[dynamodb_record(i, arrival=window + i) for i in (1, 2)]),
        recorder,
        clock=clock,
    )

    calls = [
        (
            [sequence_number(record) for record in e["Records"]],
            e["isFinalInvokeForWindow"],
            e["isWindowTerminatedEarly"],
            e["state"],
        )
        for e in recorder.events
    ]
    assert calls == [
        (seq(1), False, False, {}),
        ([], True, True, over),  # ended early, with the state that was too large
        (seq(2), False, False, {}),  # the same window goes on with a fresh state
        ([], True, False, limit),  # 1 MB itself is allowed: the window ends at its end
    ]
    assert {e["window"]["start"] for e in recorder.events} == {_iso(window)}
    assert clock() >= window + _WINDOW  # the window ended by the clock, not by the shard


def test_a_closing_shard_ends_its_window_and_its_children_start_with_empty_state() -> None:
    source = MemorySource()
    source.add_shard("parent")
    source.put("parent", dynamodb_record(1, arrival=START))
    source.close("parent")
    source.add_shard("child", parents=["parent"])
    source.put("child", dynamodb_record(2, arrival=START))
    recorder = Recorder(_counting)

    run({"TumblingWindowInSeconds": _WINDOW}, source, recorder)

    calls = [(e["shardId"], len(e["Records"]), e["state"]) for e in recorder.events]
    # Same window by the clock, but the parent's ended with the parent: final, with its record.
    assert recorder.events[0]["isFinalInvokeForWindow"] is True
    assert calls[:2] == [("parent", 1, {}), ("child", 1, {})]
    assert recorder.events[-1]["isFinalInvokeForWindow"] is True


# --- metrics, logs, stopping, errors -------------------------------------------------------------


def test_event_counts_are_emitted_only_with_metrics_config_and_retries_count_again() -> None:
    recorder = Recorder(_fails_for(1))
    counted = run(
        {"BatchSize": 2, "MaximumRetryAttempts": 1, "MetricsConfig": {"Metrics": ["EventCount"]}},
        _source(*_records(4)),
        recorder,
    )
    silent = run(
        {"BatchSize": 2, "MaximumRetryAttempts": 1}, _source(*_records(4)), Recorder(_fails_for(1))
    )

    metrics = counted.metrics
    assert metrics.count("PolledEventCount") == 4
    assert metrics.count("InvokedEventCount") == 6  # 2 + its retry 2 + 2
    assert metrics.count("FailedInvokeEventCount") == 4
    assert metrics.count("DroppedEventCount") == 2
    assert silent.metrics.count("PolledEventCount") == 0
    assert silent.metrics.iterator_age("s1") is not None


def test_iterator_age_is_the_age_of_the_batchs_last_record_when_sent() -> None:
    # Sent at START on the virtual clock: the last record is 100 s old, the first 500 s (their
    # average would be 300 s).
    records = [dynamodb_record(1, arrival=START - 500), dynamodb_record(2, arrival=START - 100)]

    result = run({}, _source(*records), Recorder(), clock=VirtualClock())

    assert result.metrics.iterator_age("s1") == 100_000


def test_each_invocation_logs_one_line_with_shard_batch_size_outcome_and_duration(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.INFO, logger="streams.mapping"):
        run(
            {"BatchSize": 2, "MaximumRetryAttempts": 0},
            _source(*_records(3)),
            Recorder(_fails_for(3)),
        )

    lines = [r.getMessage() for r in caplog.records if " records: " in r.getMessage()]
    assert len(lines) == 2
    assert lines[0].startswith("shard s1: 2 records: ok (")
    assert lines[1].startswith("shard s1: 1 records: function error ValueError (")
    assert all(" ms, request " in line for line in lines)


def test_stop_lets_the_invocation_under_way_finish_and_checkpoint() -> None:
    started = threading.Event()
    release = threading.Event()

    def function(event: dict[str, Any]) -> None:
        started.set()
        release.wait(timeout=10)

    source = _source(*_records(6))
    result = mapping({"BatchSize": 2}, source, Recorder(function))
    runner = threading.Thread(target=result.mapping.run)
    runner.start()
    assert started.wait(timeout=10)

    result.mapping.stop()
    release.set()
    runner.join(timeout=10)

    assert not runner.is_alive()
    assert result.checkpoints.get("s1") == seq(2)[0]


def test_settings_and_source_must_be_of_the_same_event_source() -> None:
    with pytest.raises(ValueError, match="settings are for aws:kinesis"):
        EventSourceMapping(
            MappingSettings("aws:kinesis", "LATEST"),
            MemorySource("aws:dynamodb"),
            Recorder(),
            function_arn=FUNCTION_ARN,
        )


def test_an_error_reading_a_shard_stops_the_mapping_and_is_raised() -> None:
    source = _source(*_records(2))
    source.break_shard("s1", RuntimeError("stream deleted"))

    with pytest.raises(RuntimeError, match="stream deleted"):
        run({}, source, Recorder())


def test_ctrl_c_lets_the_invocation_under_way_finish_and_checkpoint_then_propagates() -> None:
    started = threading.Event()
    release = threading.Event()
    clock = FastClock()

    def function(event: dict[str, Any]) -> None:
        started.set()
        release.wait(timeout=10)

    def sleep(seconds: float) -> None:
        if threading.current_thread() is threading.main_thread() and started.is_set():
            raise KeyboardInterrupt
        clock.sleep(seconds)

    class ReleasedOnStop(EventSourceMapping):
        def stop(self) -> None:
            super().stop()
            release.set()  # the function returns only once the mapping is stopping

    recorder = Recorder(function)
    store = MemoryCheckpointStore()
    engine = ReleasedOnStop(
        MappingSettings.from_properties(
            {"StartingPosition": "TRIM_HORIZON", "BatchSize": 2}, "aws:dynamodb"
        ),
        _source(*_records(6)),
        recorder,
        function_arn=FUNCTION_ARN,
        checkpoints=store,
        clock=clock,
        sleep=sleep,
    )

    with pytest.raises(KeyboardInterrupt):
        engine.run()

    assert recorder.batches() == [seq(1, 2)]
    assert store.get("s1") == seq(2)[0]
    with pytest.raises(RuntimeError, match="runs once"):
        engine.run()


def test_retries_pause_twice_as_long_each_time_up_to_the_cap() -> None:
    clock = FastClock()
    steps: list[tuple[str, float]] = []

    def sleep(seconds: float) -> None:
        if threading.current_thread().name.startswith("lane-"):
            steps.append(("sleep", seconds))
        clock.sleep(seconds)

    def function(event: dict[str, Any]) -> None:
        steps.append(("invoke", 0))
        raise ValueError("always")

    run(
        {"MaximumRetryAttempts": 4},
        _source(*_records(1)),
        Recorder(function),
        clock=clock,
        sleep=sleep,
        backoff=Backoff(base=1.0, cap=4.0, jitter=False),
    )

    pauses: list[float] = []
    for kind, seconds in steps:
        if kind == "invoke":
            pauses.append(0.0)
        else:
            pauses[-1] += seconds
    assert pauses == [1.0, 2.0, 4.0, 4.0, 0.0]


def test_by_default_retry_n_of_a_failed_batch_waits_min_2_to_the_n_and_60_seconds() -> None:
    clock = VirtualClock()
    recorder = Recorder(_fails_for(1), clock=clock)
    engine = EventSourceMapping(  # no `backoff`: the engine's own default
        MappingSettings.from_properties(
            {"StartingPosition": "TRIM_HORIZON", "MaximumRetryAttempts": 8}, "aws:dynamodb"
        ),
        _source(*_records(1)),
        recorder,
        function_arn=FUNCTION_ARN,
        clock=clock,
        sleep=clock.sleep,
    )

    engine.run(exit_when_idle=5.0)

    started = [at for at, _ in recorder.times]
    pauses = [later - earlier for earlier, later in itertools.pairwise(started)]
    assert pauses == [1, 2, 4, 8, 16, 32, 60, 60]
