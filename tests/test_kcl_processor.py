"""KclRecordProcessor in this process: amazon-kclpy's real loop over in-memory pipes, fake time.

The daemon's side is scripted up front (its messages and its checkpoint replies, in order), which
the protocol allows: the processor reads a checkpoint reply right after each request.
"""

from __future__ import annotations

import io
import json
import uuid
from datetime import timedelta
from typing import Any

import pytest
from aws_lambda_powertools import Logger

from streams import Poison, RetryPolicy, StreamProcessor, Transient
from streams.backoff import Backoff
from streams.kcl.processor import KclRecordProcessor, StreamSource, run
from tests.factories import NOW, FakeClock, MemorySink, ScriptedHandler
from tests.kcl_handlers import (
    SHARD,
    STREAM_ARN,
    checkpoint_reply,
    checkpoint_request,
    kcl_record,
    kpl_aggregate,
    process_records,
    sequence,
    status,
)

INITIALIZE = {
    "action": "initialize",
    "shardId": SHARD,
    "sequenceNumber": "TRIM_HORIZON",
    "subSequenceNumber": 0,
}
ARRIVED = NOW - 1.5


def record(n: int, **kwargs: Any) -> dict[str, Any]:
    return kcl_record(n, arrived=ARRIVED, **kwargs)


def make(
    handler: Any,
    clock: FakeClock,
    *,
    sink: MemorySink | None = None,
    max_record_age: timedelta | None = timedelta(hours=6),
    concurrency: int = 1,
    **kwargs: Any,
) -> KclRecordProcessor:
    core = StreamProcessor(
        handler,
        dead_letters=sink if sink is not None else MemorySink(),
        retry=RetryPolicy(retries=0),
        max_record_age=max_record_age,
        concurrency=concurrency,
        clock=clock,
        sleep=clock.sleep,
        logger=Logger(service=f"test-{uuid.uuid4().hex}", stream=io.StringIO()),
    )
    return KclRecordProcessor(
        core,
        source=StreamSource(STREAM_ARN, "us-east-1"),
        sleep=clock.sleep,
        random=lambda: 0.5,
        **kwargs,
    )


def drive(processor: KclRecordProcessor, *messages: dict[str, Any]) -> list[dict[str, Any]]:
    """Everything the processor writes back, message by message."""
    stdin = io.StringIO("".join(json.dumps(message) + "\n" for message in (INITIALIZE, *messages)))
    stdout = io.StringIO()
    run(processor, stdin=stdin, stdout=stdout, stderr=io.StringIO())
    return [json.loads(line) for line in stdout.getvalue().splitlines() if line.strip()]


def transient_on_calls(*calls: int) -> Any:
    def action(call: int) -> None:
        if call in calls:
            raise Transient(f"call {call}")

    return action


def test_held_record_is_rerun_after_growing_waits_until_it_succeeds() -> None:
    clock = FakeClock()
    handler = ScriptedHandler({sequence(2): transient_on_calls(1, 2, 3)})
    processor = make(handler, clock, hold=Backoff(1.0, 30.0))

    written = drive(
        processor,
        process_records(record(1), record(2), record(3)),
        checkpoint_reply(checkpoint_request(1)),
        checkpoint_reply(checkpoint_request(3)),
    )

    assert written == [
        status("initialize"),
        checkpoint_request(1),  # what is done before the held record, before the first wait
        checkpoint_request(3),
        status("processRecords"),
    ]
    assert clock.sleeps == [0.5, 1.0, 2.0]
    assert handler.calls == [sequence(n) for n in (1, 2, 2, 2, 2, 3)]


def test_with_concurrency_keys_run_at_once_and_the_shard_is_held_on_the_earliest_record() -> None:
    # GIVEN records of three partition keys, and record 2 (key b) failing its first two tries
    clock = FakeClock()
    handler = ScriptedHandler({sequence(2): transient_on_calls(1, 2)})
    processor = make(handler, clock, hold=Backoff(1.0, 30.0), concurrency=3)
    keys = ["a", "b", "c", "a", "b", "c"]
    batch = [record(n, partition_key=keys[n - 1]) for n in range(1, 7)]

    written = drive(
        processor,
        process_records(*batch),
        checkpoint_reply(checkpoint_request(1)),
        checkpoint_reply(checkpoint_request(6)),
    )

    # THEN record 1 is checkpointed before the hold, and the batch after it
    assert written[1] == checkpoint_request(1)
    assert written[-2:] == [checkpoint_request(6), status("processRecords")]
    # each key's records ran in order; record 2 ran three times, and nothing was skipped
    for key in "abc":
        mine = [sequence(n) for n in range(1, 7) if keys[n - 1] == key]
        calls = [call for call in handler.calls if call in mine]
        assert sorted(set(calls), key=calls.index) == mine, key
    assert handler.calls.count(sequence(2)) == 3


def test_a_record_held_past_the_age_limit_is_parked_too_old_and_the_batch_goes_on() -> None:
    clock = FakeClock()
    sink = MemorySink()
    handler = ScriptedHandler({sequence(1): transient_on_calls(*range(1, 100))})
    processor = make(
        handler, clock, sink=sink, max_record_age=timedelta(seconds=60), hold=Backoff(16, 64)
    )

    written = drive(
        processor,
        process_records(record(1), record(2)),
        checkpoint_reply(checkpoint_request(2)),
    )

    assert written == [status("initialize"), checkpoint_request(2), status("processRecords")]
    # 1.5 s old, then 57.5 s after three waits: still held; 89.5 s after the fourth: parked.
    assert clock.sleeps == [8, 16, 32, 32]
    (letter,) = sink.kept
    assert (letter.reason, letter.record.sequence_number) == ("too-old", sequence(1))


def test_throttled_checkpoint_is_given_up_after_the_attempt_limit_and_the_batch_reported() -> None:
    clock = FakeClock()
    processor = make(
        ScriptedHandler(), clock, checkpoint_backoff=Backoff(0.5, 10), checkpoint_attempts=3
    )
    throttled = checkpoint_reply(checkpoint_request(1), "ThrottlingException")

    written = drive(processor, process_records(record(1)), throttled, throttled, throttled)

    assert written == [status("initialize"), *[checkpoint_request(1)] * 3, status("processRecords")]
    assert clock.sleeps == [0.25, 0.5]


def test_throttled_checkpoint_is_tried_8_times_by_default() -> None:
    clock = FakeClock()
    processor = make(ScriptedHandler(), clock, checkpoint_backoff=Backoff(0.5, 10))
    throttled = checkpoint_reply(checkpoint_request(1), "ThrottlingException")

    written = drive(processor, process_records(record(1)), *[throttled] * 8)

    assert written == [status("initialize"), *[checkpoint_request(1)] * 8, status("processRecords")]
    assert len(clock.sleeps) == 7


def test_poison_is_parked_with_the_lambda_record_and_the_shard_id_from_initialize() -> None:
    clock = FakeClock()
    sink = MemorySink()
    handler = ScriptedHandler({sequence(2): lambda call: _raise(Poison("bad"))})
    processor = make(handler, clock, sink=sink)

    drive(
        processor,
        process_records(record(1), record(2)),
        checkpoint_reply(checkpoint_request(2)),
    )

    (letter,) = sink.kept
    assert letter.reason == "poison"
    assert letter.record.shard_id == SHARD
    assert letter.record.event_source_arn == STREAM_ARN
    assert letter.record.raw["kinesis"]["approximateArrivalTimestamp"] == pytest.approx(ARRIVED)


def test_an_error_the_core_cannot_handle_ends_the_process_before_the_batch_is_reported() -> None:
    clock = FakeClock()
    handler = ScriptedHandler({sequence(1): lambda call: _raise(RuntimeError("bug"))})
    core = StreamProcessor(
        handler,
        dead_letters=MemorySink(),
        halt_after=1,
        clock=clock,
        logger=Logger(service=f"test-{uuid.uuid4().hex}", stream=io.StringIO()),
    )
    processor = KclRecordProcessor(core, sleep=clock.sleep)
    stdout = io.StringIO()
    messages = [INITIALIZE, process_records(record(1))]

    with pytest.raises(SystemExit) as exit_:
        run(
            processor,
            stdin=io.StringIO("".join(json.dumps(m) + "\n" for m in messages)),
            stdout=stdout,
            stderr=io.StringIO(),
        )

    assert exit_.value.code == 1
    written = [json.loads(line) for line in stdout.getvalue().splitlines() if line.strip()]
    assert written == [status("initialize")]


class TransientOnceAt:
    """A handler that fails once, transiently, at one user record; records every call."""

    def __init__(self, sequence_number: str, sub_sequence_number: int) -> None:
        self.at = (sequence_number, sub_sequence_number)
        self.calls: list[tuple[str, int | None]] = []

    def __call__(self, view: Any) -> None:
        self.calls.append((view.sequence_number, view.sub_sequence_number))
        if self.calls.count(self.at) == 1 and self.calls[-1] == self.at:
            raise Transient("once")


def test_an_aggregate_delivered_whole_is_checkpointed_only_at_positions_kcl_delivered() -> None:
    partition_key, data = kpl_aggregate([("a", b'{"n": 1}'), ("b", b'{"n": 2}')])
    handler = TransientOnceAt(sequence(2), 1)

    written = drive(
        make(handler, FakeClock()),
        process_records(record(1), record(2, data=data, partition_key=partition_key)),
        checkpoint_reply(checkpoint_request(1)),
        checkpoint_reply(checkpoint_request(2, 0)),
    )

    # Held inside the aggregate: KCL only knows (2, 0), which would also cover user record 1,
    # not done yet; so the checkpoint before the wait is record 1.
    assert written == [
        status("initialize"),
        checkpoint_request(1),
        checkpoint_request(2, 0),
        status("processRecords"),
    ]
    assert handler.calls == [(sequence(1), 0), (sequence(2), 0), (sequence(2), 1), (sequence(2), 1)]


def test_an_aggregate_held_first_in_the_shard_is_not_checkpointed_before_it_is_done() -> None:
    partition_key, data = kpl_aggregate([("a", b'{"n": 1}'), ("b", b'{"n": 2}')])

    written = drive(
        make(TransientOnceAt(sequence(2), 1), FakeClock()),
        process_records(record(2, data=data, partition_key=partition_key)),
        checkpoint_reply(checkpoint_request(2, 0)),
    )

    assert written == [status("initialize"), checkpoint_request(2, 0), status("processRecords")]


def test_shutdown_requested_before_any_record_checkpoints_nothing() -> None:
    processor = make(ScriptedHandler(), FakeClock())

    written = drive(processor, {"action": "shutdownRequested"})

    assert written == [status("initialize"), status("shutdownRequested")]


def _raise(error: BaseException) -> None:
    raise error


def test_no_log_line_of_the_worker_carries_a_record_value_or_an_error_message() -> None:
    """Parked records (Poison, an unclassified error, data that is not JSON) and a fatal halt
    whose cause repeats a value: the worker's log names ids, keys and error types only."""
    clock = FakeClock()
    log = io.StringIO()

    def handle(view: Any) -> None:
        body = view.json()
        raise (Poison if body["kind"] == "poison" else LookupError)(f"bad {body['value']}")

    core = StreamProcessor(
        handle,
        dead_letters=MemorySink(),
        retry=RetryPolicy(retries=0),
        halt_after=2,  # the second unclassified error in a row halts the worker
        clock=clock,
        sleep=clock.sleep,
        logger=Logger(service=f"test-{uuid.uuid4().hex}", stream=log),
    )
    processor = KclRecordProcessor(core, sleep=clock.sleep, random=lambda: 0.5)
    parked = [
        record(1, body={"kind": "poison", "value": "VALUE-kcl-poison-31f0"}),
        record(2, data=b"VALUE-kcl-not-json-8e02"),
        record(3, body={"kind": "other", "value": "VALUE-kcl-unclassified-c4d9"}),
    ]
    halting = record(4, body={"kind": "other", "value": "VALUE-kcl-halted-77a3"})
    messages = [
        INITIALIZE,
        process_records(*parked),
        checkpoint_reply(checkpoint_request(3)),
        process_records(halting),
    ]
    stdin = io.StringIO("".join(json.dumps(m) + "\n" for m in messages))
    stderr = io.StringIO()

    with pytest.raises(SystemExit):
        run(processor, stdin=stdin, stdout=io.StringIO(), stderr=stderr)

    lines = [json.loads(line) for line in log.getvalue().splitlines()]
    assert [line["message"] for line in lines].count("record parked") == 3
    fatal = lines[-1]
    assert fatal["message"].startswith("fatal error") and fatal["errorType"] == "Halted"
    assert "2 consecutive LookupError failures" in fatal["stackTrace"]  # our own words stay
    assert "\nbuiltins.LookupError\n" in fatal["stackTrace"]  # the cause: by its type only
    output = log.getvalue() + stderr.getvalue()
    assert [value for value in ("VALUE-kcl-", "bad VALUE") if value in output] == []
