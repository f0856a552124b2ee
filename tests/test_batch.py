"""The batch core's rules (docs/esm.md section 3, README "What the batch core does")."""

from __future__ import annotations

import copy
import io
import json
import re
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from aws_lambda_powertools import Logger
from botocore.exceptions import ClientError, EndpointConnectionError, ReadTimeoutError

from streams import Halted, Poison, RecordDecodeError, RetryPolicy, StreamProcessor, Transient
from streams.batch import TransientErrors
from streams.errors import EventError
from streams.records import parse_records
from tests.factories import (
    NOW,
    FakeClock,
    FakeContext,
    MemorySink,
    ScriptedHandler,
    dynamodb_event,
    dynamodb_record,
    kinesis_record,
)

EVENTS = Path(__file__).parent / "events"


def _raise(error: BaseException) -> Any:
    def action(call: int) -> None:
        raise error

    return action


def make(
    handler: Any,
    *,
    sink: MemorySink | None = None,
    clock: FakeClock | None = None,
    log: io.StringIO | None = None,
    **kwargs: Any,
) -> tuple[StreamProcessor, MemorySink, FakeClock]:
    sink = sink if sink is not None else MemorySink()
    clock = clock if clock is not None else FakeClock()
    processor = StreamProcessor(
        handler,
        dead_letters=sink,
        clock=clock,
        sleep=clock.sleep,
        random=lambda: 1.0,
        logger=Logger(
            service=f"test-{uuid.uuid4().hex}", stream=log if log is not None else io.StringIO()
        ),
        **kwargs,
    )
    return processor, sink, clock


def failures(response: dict[str, Any]) -> list[str]:
    return [item["itemIdentifier"] for item in response["batchItemFailures"]]


# --- the matrix ----------------------------------------------------------------------------------


def test_ok_poison_ok_transient_ok_parks_2_stops_at_4_and_never_touches_5() -> None:
    handler = ScriptedHandler(
        {"2": _raise(ValueError("bad status")), "4": _raise(Transient("downstream busy"))}
    )
    processor, sink, clock = make(handler)
    event = dynamodb_event(5)

    response = processor.process(event, FakeContext(clock, deadline=NOW + 60))

    retries = processor.retry.retries
    assert handler.calls == ["1", "2", "3"] + ["4"] * (retries + 1)  # 5 never touched
    assert failures(response) == ["4"]
    assert [letter.record.sequence_number for letter in sink.kept] == ["2"]
    parked = sink.kept[0]
    assert parked.reason == "poison"
    assert parked.record.raw == event["Records"][1]  # the full record, as received
    assert parked.error.type == "ValueError"
    assert "bad status" in parked.error.traceback

    # Lambda resumes at record 4; the downstream has recovered.
    handler.script.clear()
    handler.calls.clear()
    again = {"Records": event["Records"][3:]}
    assert failures(processor.process(again, FakeContext(clock, deadline=clock.now + 60))) == []
    assert handler.calls == ["4", "5"]


def test_a_fully_successful_batch_reports_no_failures() -> None:
    handler = ScriptedHandler()
    processor, sink, _ = make(handler)
    assert processor.process(dynamodb_event(3)) == {"batchItemFailures": []}
    assert handler.calls == ["1", "2", "3"]
    assert sink.calls == []


def test_an_empty_records_list_is_a_success() -> None:
    processor, _, _ = make(ScriptedHandler())
    assert processor.process({"Records": []}) == {"batchItemFailures": []}


# --- poison --------------------------------------------------------------------------------------


def test_explicit_poison_is_parked_and_the_batch_goes_on() -> None:
    handler = ScriptedHandler({"1": _raise(Poison("unknown status"))})
    processor, sink, _ = make(handler)
    assert failures(processor.process(dynamodb_event(2))) == []
    assert handler.calls == ["1", "2"]  # poison is not retried
    assert [(p.reason, p.attempts, p.error.type) for p in sink.kept] == [("poison", 1, "Poison")]


def test_a_parked_record_is_logged_with_keys_and_its_dead_letter_id_never_with_its_images() -> None:
    log = io.StringIO()
    processor, _, _ = make(ScriptedHandler({"1": _raise(ValueError("boom"))}), log=log)
    processor.process(dynamodb_event(1, child="c-42"))
    entry = json.loads(log.getvalue().splitlines()[0])
    assert entry["message"] == "record parked"
    assert entry["level"] == "ERROR"
    assert entry["reason"] == "poison"
    assert entry["errorType"] == "ValueError"
    assert entry["deadLetterMessageId"] == "memory-1"
    assert "errorMessage" not in entry
    assert entry["sequenceNumber"] == "1"
    assert entry["eventID"] == f"{1:032x}"
    assert entry["keys"] == {"childId": "c-42"}
    assert "do not log me" not in log.getvalue()


# Attribute values no log line may carry: each is distinctive, so a match is a leak.
_BAD_VALUES: dict[str, dict[str, Any]] = {
    "number": {"N": "VALUE-number-5e1c"},
    "base64": {"B": "VALUE-base64-0f2a!"},
    "bool": {"BOOL": "VALUE-bool-77d1"},
    "null": {"NULL": "VALUE-null-9b3e"},
    "type": {"VALUE-type-41c7": "x"},
    "shape": {"S": "VALUE-shape-a0d2", "N": "1"},
    "members": {"NS": ["1", "VALUE-members-c3f8"]},
    "list": {"L": [{"BOOL": "VALUE-list-6e20"}]},
}
_HANDLER_VALUES = ("VALUE-poison-grumpy", "VALUE-unclassified-3d9f", "VALUE-too-old-8a4b")


def _record_with(sequence: int, attribute: dict[str, Any]) -> dict[str, Any]:
    return dynamodb_record(
        sequence,
        child=f"c-{sequence}",
        new_image={"childId": {"S": f"c-{sequence}"}, "address": attribute},
    )


def test_no_log_line_carries_an_attribute_value_or_an_error_message() -> None:
    """Customer data stays in the dead-letter queue: decode errors of every kind, Poison and
    unclassified errors whose message repeats a value, a record parked too old, and one the
    queue refuses are logged by ids, keys, reason and error type only."""
    records = [_record_with(n, value) for n, value in enumerate(_BAD_VALUES.values(), start=1)]
    first = len(records) + 1
    for offset, value in enumerate(_HANDLER_VALUES):
        records.append(_record_with(first + offset, {"S": value}))
    records[-1]["dynamodb"]["ApproximateCreationDateTime"] = NOW - 7 * 3600
    records.append(_record_with(first + 3, {"S": "VALUE-refused-2c55"}))

    def handle(record: Any) -> None:
        address = dict(record.new_image)["address"]  # decodes every attribute
        if address == "VALUE-poison-grumpy":
            raise Poison(f"unknown status {address!r}")
        if address == "VALUE-unclassified-3d9f":
            raise KeyError(address)
        if address == "VALUE-too-old-8a4b":
            raise Transient(f"partner refused {address}")
        if address == "VALUE-refused-2c55":
            raise ValueError(f"no such address {address}")

    log = io.StringIO()
    sink = MemorySink(refuse=lambda letter: letter.record.sequence_number == str(first + 3))
    processor, _, clock = make(handle, sink=sink, log=log)

    response = processor.process({"Records": records}, FakeContext(clock, deadline=NOW + 60))

    assert failures(response) == [str(first + 3)]  # the refused record is not acknowledged
    lines = [json.loads(line) for line in log.getvalue().splitlines()]
    parked = [line for line in lines if line["message"] == "record parked"]
    assert len(parked) == len(records) - 1
    assert all(line["deadLetterMessageId"].startswith("memory-") for line in parked)
    assert {line["errorType"] for line in parked} == {
        "RecordDecodeError",
        "Poison",
        "KeyError",
        "Transient",
    }
    assert any(line["message"].startswith("record not parked") for line in lines)
    leaked = [
        value
        for value in [*_HANDLER_VALUES, "VALUE-refused-2c55", *_flatten(_BAD_VALUES)]
        if value in log.getvalue()
    ]
    assert leaked == []
    # ... and the messages stay in the dead-letter messages, where `streams dlq show` finds them.
    messages = " ".join(letter.error.message for letter in sink.kept)
    for value in ("VALUE-number-5e1c", "VALUE-bool-77d1", "VALUE-poison-grumpy"):
        assert value in messages


def _flatten(values: dict[str, dict[str, Any]]) -> list[str]:
    """Every distinctive string in the bad attribute values (type names included)."""
    text = json.dumps(values)
    return sorted(set(re.findall(r"VALUE-[a-z]+-[0-9a-f]+", text)))


def read_everything(record: Any) -> None:
    dict(record.keys)
    for image in (record.new_image, record.old_image):
        if image is not None:
            dict(image)


def _malformed(sequence: int, change: Any) -> dict[str, Any]:
    record = dynamodb_record(sequence)
    change(record["dynamodb"])
    return record


MALFORMED = {
    "missing keys": lambda d: d.pop("Keys"),
    "bad base64": lambda d: d["NewImage"].update(photo={"B": "%%%"}),
    "unknown type": lambda d: d["NewImage"].update(x={"Q": "1"}),
    "number as a JSON number": lambda d: d["NewImage"].update(age={"N": 7}),
    "image not an object": lambda d: d.update(NewImage=["x"]),
    "set with a wrong member": lambda d: d["NewImage"].update(tags={"SS": ["a", 1]}),
    "bad creation time": lambda d: d.update(ApproximateCreationDateTime="yesterday"),
}


def test_malformed_records_are_parked_as_poison_and_never_stop_the_batch() -> None:
    records = [dynamodb_record(1)]
    for offset, change in enumerate(MALFORMED.values()):
        records.append(_malformed(2 + offset, change))
    records.append(dynamodb_record(2 + len(MALFORMED)))

    def handle(record: Any) -> None:
        read_everything(record)
        _ = record.approximate_creation_time

    processor, sink, _ = make(handle)
    assert failures(processor.process({"Records": records})) == []
    parked = {p.record.sequence_number: p for p in sink.kept}
    assert sorted(parked, key=int) == [str(2 + i) for i in range(len(MALFORMED))]
    assert {p.reason for p in parked.values()} == {"poison"}
    assert {p.error.type for p in parked.values()} == {"RecordDecodeError"}


def test_kinesis_data_that_is_not_base64_is_poison() -> None:
    bad = kinesis_record(2)
    bad["kinesis"]["data"] = "%%%"
    processor, sink, _ = make(lambda record: record.data)
    event = {"Records": [kinesis_record(1), bad, kinesis_record(3)]}
    assert failures(processor.process(event)) == []
    assert [p.record.sequence_number for p in sink.kept] == [bad["kinesis"]["sequenceNumber"]]
    assert sink.kept[0].record.shard_id == "shardId-000000000000"


# --- transient -----------------------------------------------------------------------------------


def _client_error(code: str, status: int) -> ClientError:
    return ClientError(
        {"Error": {"Code": code, "Message": "x"}, "ResponseMetadata": {"HTTPStatusCode": status}},
        "PutItem",
    )


class PartnerBusy(Exception):
    pass


@pytest.mark.parametrize(
    ("error", "transient"),
    [
        (Transient("x"), True),
        (_client_error("ProvisionedThroughputExceededException", 400), True),
        (_client_error("ThrottlingException", 400), True),
        (_client_error("RequestLimitExceeded", 400), True),
        (_client_error("InternalServerError", 500), True),
        (_client_error("ServiceUnavailable", 503), True),
        (ReadTimeoutError(endpoint_url="http://x"), True),
        (EndpointConnectionError(endpoint_url="http://x"), True),
        (ConnectionResetError(), True),
        (TimeoutError(), True),
        (PartnerBusy(), True),  # listed by the user
        (_client_error("ConditionalCheckFailedException", 400), False),
        (_client_error("ValidationException", 400), False),
        (_client_error("AccessDeniedException", 400), False),
        (ValueError("x"), False),
        (KeyError("x"), False),
        (FileNotFoundError(), False),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, BaseException) else str(v),
)
def test_transient_errors_are_throttling_5xx_timeouts_connections_and_listed_types(
    error: BaseException, transient: bool
) -> None:
    assert TransientErrors([PartnerBusy])(error) is transient


def test_transient_failures_retry_in_place_with_exponential_backoff_and_jitter() -> None:
    clock = FakeClock()
    attempts = {"n": 0}

    def handle(record: Any) -> None:
        attempts["n"] += 1
        if attempts["n"] <= 3:
            raise _client_error("ProvisionedThroughputExceededException", 400)

    processor = StreamProcessor(
        handle,
        dead_letters=MemorySink(),
        retry=RetryPolicy(retries=3, base_delay=0.1, max_delay=0.3),
        clock=clock,
        sleep=clock.sleep,
        random=lambda: 0.5,
        logger=Logger(service=f"test-{uuid.uuid4().hex}", stream=io.StringIO()),
    )
    result = processor.run(processor_records(1))
    assert result.done == 1
    assert result.retries == 3
    # rand * min(base * 2**i, max): 0.5 * [0.1, 0.2, 0.3 (capped)]
    assert clock.sleeps == pytest.approx([0.05, 0.1, 0.15])


def processor_records(count: int) -> Any:
    return parse_records(dynamodb_event(count))


def test_by_default_transient_failures_are_retried_3_times_after_0_2_s_doubling_up_to_2_s() -> None:
    # make() draws the jitter as 1.0: each sleep is its bound, min(0.2 * 2**i, 2.0) seconds.
    handler = ScriptedHandler({"1": _raise(Transient("busy"))})
    processor, _, clock = make(handler)
    processor.process(dynamodb_event(1), FakeContext(clock, deadline=NOW + 60))
    assert handler.calls == ["1"] * 4
    assert clock.sleeps == pytest.approx([0.2, 0.4, 0.8])

    # More retries, the default delays: the doubling stops at 2 s.
    processor, _, clock = make(
        ScriptedHandler({"1": _raise(Transient("busy"))}), retry=RetryPolicy(retries=6)
    )
    processor.process(dynamodb_event(1), FakeContext(clock, deadline=NOW + 60))
    assert clock.sleeps == pytest.approx([0.2, 0.4, 0.8, 1.6, 2.0, 2.0])


def test_transient_retries_never_sleep_past_the_invocations_time() -> None:
    handler = ScriptedHandler({"1": _raise(Transient("busy"))})
    processor, _, clock = make(handler, retry=RetryPolicy(retries=5, base_delay=1, max_delay=8))
    # 6.5 s left with a 5 s margin: only the 1 s sleep fits, the 2 s one would not.
    response = processor.process(dynamodb_event(2), FakeContext(clock, deadline=NOW + 6.5))
    assert clock.sleeps == [1.0]
    assert failures(response) == ["1"]
    assert handler.calls == ["1", "1"]


def test_a_record_failing_transiently_past_the_age_limit_is_parked_as_too_old() -> None:
    handler = ScriptedHandler({"1": _raise(Transient("busy"))})
    processor, sink, _ = make(handler, max_record_age=timedelta(hours=6))
    old = dynamodb_event(2, created=NOW - 6 * 3600 - 1)
    assert failures(processor.process(old)) == []
    assert handler.calls == ["1"] * 4 + ["2"]
    assert [(p.reason, p.attempts) for p in sink.kept] == [("too-old", 4)]


def test_the_age_limit_comes_from_the_environment_unless_given(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("STREAMS_MAX_RECORD_AGE_SECONDS", "120")
    assert make(ScriptedHandler())[0].max_record_age == timedelta(seconds=120)
    given = make(ScriptedHandler(), max_record_age=timedelta(hours=1))[0]
    assert given.max_record_age == timedelta(hours=1)
    monkeypatch.delenv("STREAMS_MAX_RECORD_AGE_SECONDS")
    assert make(ScriptedHandler())[0].max_record_age == timedelta(hours=6)
    monkeypatch.setenv("STREAMS_MAX_RECORD_AGE_SECONDS", "six hours")
    with pytest.raises(ValueError, match="not a number of seconds"):
        make(ScriptedHandler())


def test_a_young_record_failing_transiently_is_not_parked() -> None:
    handler = ScriptedHandler({"1": _raise(Transient("busy"))})
    processor, sink, _ = make(handler, max_record_age=timedelta(hours=6))
    assert failures(processor.process(dynamodb_event(2, created=NOW - 6 * 3600 + 60))) == ["1"]
    assert sink.kept == []


# --- the dead-letter queue ----------------------------------------------------------------------


def test_a_record_the_dead_letter_queue_refuses_is_not_acknowledged() -> None:
    poison = {str(n): _raise(ValueError("bad")) for n in (2, 4)}
    sink = MemorySink(refuse=lambda letter: letter.record.sequence_number == "4")
    processor, sink, _ = make(ScriptedHandler(poison), sink=sink)
    result = processor.run(processor_records(6))
    assert result.stop_cause == "dead-letter"
    assert result.lambda_response() == {"batchItemFailures": [{"itemIdentifier": "4"}]}
    assert [p.record.sequence_number for p in result.parked] == ["2"]


def test_dead_letters_are_sent_ten_per_call_and_all_before_the_response() -> None:
    processor, sink, _ = make(ScriptedHandler({str(n): _raise(Poison()) for n in range(1, 26)}))
    assert failures(processor.process(dynamodb_event(25))) == []
    assert sink.calls == [10, 10, 5]
    assert len(sink.kept) == 25


def test_a_refused_batch_of_dead_letters_stops_the_batch_at_its_first_record() -> None:
    sink = MemorySink(refuse=lambda letter: True)
    handler = ScriptedHandler({str(n): _raise(Poison()) for n in range(3, 20)})
    processor, _, _ = make(handler, sink=sink)
    result = processor.run(processor_records(30))
    assert result.done == 2  # records 1 and 2 were fine; 3 is the first unparked
    assert failures(result.lambda_response()) == ["3"]
    assert handler.calls[-1] == "12"  # it stopped as soon as the first send of ten failed


# --- the time budget ----------------------------------------------------------------------------


def test_no_record_starts_when_the_remaining_time_is_below_the_margin() -> None:
    clock = FakeClock()

    def slow(record: Any) -> None:
        clock.now += 4

    processor, _, _ = make(slow, clock=clock, time_margin=5.0)
    result = processor.run(processor_records(5), FakeContext(clock, deadline=NOW + 14))
    # 14 s: record 1 starts (14 left), 2 starts (10 left), 3 would start with 6 left: ok; 4 with 2.
    assert result.done == 3
    assert result.stop_cause == "time"
    assert failures(result.lambda_response()) == ["4"]


def test_without_a_context_there_is_no_time_limit() -> None:
    processor, _, _ = make(ScriptedHandler())
    assert processor.run(processor_records(3)).done == 3


# --- halt_after -----------------------------------------------------------------------------------


def test_halt_after_n_consecutive_failures_of_one_type_fails_the_invocation() -> None:
    processor, _, _ = make(
        ScriptedHandler({str(n): _raise(KeyError("address")) for n in range(1, 10)}),
        halt_after=3,
    )
    with pytest.raises(Halted, match="3 consecutive KeyError"):
        processor.process(dynamodb_event(5))
    # Counted across invocations of the warm process: the next one halts at its first record.
    with pytest.raises(Halted, match="4 consecutive KeyError"):
        processor.process(dynamodb_event(1, first=6))


def test_halt_after_is_reset_by_a_success_and_ignores_explicit_poison_and_bad_content() -> None:
    script = {
        "1": _raise(KeyError("x")),
        "2": _raise(KeyError("x")),
        "3": _raise(Poison("explicit")),
        "4": _raise(RecordDecodeError("bad")),
        # 5 succeeds: the count starts again
        "6": _raise(KeyError("x")),
        "7": _raise(KeyError("x")),
        "8": _raise(TypeError("other type")),
        "9": _raise(KeyError("x")),
    }
    processor, sink, _ = make(ScriptedHandler(script), halt_after=3)
    assert failures(processor.process(dynamodb_event(9))) == []
    assert len(sink.kept) == 8


def test_halt_after_is_off_by_default() -> None:
    processor, sink, _ = make(ScriptedHandler({str(n): _raise(KeyError()) for n in range(1, 51)}))
    assert failures(processor.process(dynamodb_event(50))) == []
    assert len(sink.kept) == 50


# --- the envelope -------------------------------------------------------------------------------


def test_envelope_errors_raise_instead_of_being_parked() -> None:
    processor, sink, _ = make(ScriptedHandler())
    with pytest.raises(EventError):
        processor.process({"Records": [{"eventSource": "aws:sqs"}]})
    with pytest.raises(EventError, match="tumbling-window"):
        processor.process(
            {"Records": [], "window": {}, "state": {}, "isFinalInvokeForWindow": False}
        )
    assert sink.calls == []


# --- the real sample events ---------------------------------------------------------------------


def test_every_sample_event_is_processed_with_every_field_read() -> None:
    seen: list[str] = []

    def handle(record: Any) -> None:
        if record.source == "aws:dynamodb":
            read_everything(record)
            _ = (record.event_name, record.approximate_creation_time, record.size_bytes)
        else:
            _ = (record.data, record.partition_key, record.approximate_arrival_time)
        seen.append(record.sequence_number)

    processor, sink, _ = make(handle)
    expected: list[str] = []
    for path in sorted(EVENTS.glob("*.json")):
        event = json.loads(path.read_text())
        arns = {r["eventSourceARN"] for r in event["Records"]}
        # powertools-dynamoStreamEvent mixes two ARNs in one event; Lambda delivers one
        # source per event, so its records go in one at a time.
        events = [event] if len(arns) == 1 else [{"Records": [r]} for r in event["Records"]]
        for one in events:
            assert processor.process(copy.deepcopy(one)) == {"batchItemFailures": []}
        for record in event["Records"]:
            data = record.get("dynamodb") or record["kinesis"]
            expected.append(data.get("SequenceNumber") or data.get("sequenceNumber"))
    assert seen == expected
    assert sink.kept == []


# --- metrics ------------------------------------------------------------------------------------


def test_metrics_are_published_as_emf_with_parked_counts_by_reason(
    capsys: pytest.CaptureFixture[str],
) -> None:
    script = {"2": _raise(Poison()), "3": _raise(Transient()), "4": _raise(Transient())}
    processor, _, clock = make(ScriptedHandler(script))
    capsys.readouterr()
    records = dynamodb_event(4, created=NOW - 10)["Records"]
    records[2]["dynamodb"]["ApproximateCreationDateTime"] = NOW - 7 * 3600  # too old
    processor.process({"Records": records})
    documents = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    batch = documents[0]
    names = {m["Name"] for m in batch["_aws"]["CloudWatchMetrics"][0]["Metrics"]}
    assert names == {
        "RecordsProcessed",
        "RecordsParked",
        "TransientRetries",
        "EarlyCheckpoints",
        "IteratorAge",
    }
    assert batch["_aws"]["CloudWatchMetrics"][0]["Namespace"] == "StreamProcessor"
    assert batch["RecordsProcessed"] == [1.0]
    assert batch["RecordsParked"] == [2.0]
    assert batch["TransientRetries"] == [6.0]
    assert batch["EarlyCheckpoints"] == [1.0]
    assert batch["IteratorAge"] == [pytest.approx(10_000 + sum(clock.sleeps) * 1000)]
    by_reason = {d["reason"]: d["RecordsParked"] for d in documents[1:]}
    assert by_reason == {"poison": [1.0], "too-old": [1.0]}
    assert all(
        ["service", "reason"] in d["_aws"]["CloudWatchMetrics"][0]["Dimensions"]
        for d in documents[1:]
    )


def test_iterator_age_uses_the_last_records_creation_time(
    capsys: pytest.CaptureFixture[str],
) -> None:
    processor, _, _ = make(ScriptedHandler())
    records = dynamodb_event(2)["Records"]
    records[0]["dynamodb"]["ApproximateCreationDateTime"] = NOW - 100
    records[1]["dynamodb"]["ApproximateCreationDateTime"] = NOW - 3
    capsys.readouterr()
    processor.process({"Records": records})
    batch = json.loads(capsys.readouterr().out.splitlines()[0])
    assert batch["IteratorAge"] == [3000.0]


def test_kinesis_binary_payload_reaches_the_handler_as_bytes() -> None:
    seen: list[bytes] = []
    processor, _, _ = make(lambda record: seen.append(record.data))
    record = kinesis_record(1, b"\x00\xffraw")
    assert record["kinesis"]["data"] == "AP9yYXc="  # as Lambda delivers it: base64 text
    processor.process({"Records": [record]})
    assert seen == [b"\x00\xffraw"]
    assert type(seen[0]) is bytes  # not a bytearray or memoryview, which compare equal
