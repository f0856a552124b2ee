"""Dead-letter rules the other dead-letter tests leave open (found by `make mutation`): what the
overflow pointer holds, what is logged when a large record cannot be parked, and what a reader
says of a message it will not follow."""

from __future__ import annotations

import io
import json
import logging
import uuid
from datetime import UTC, datetime
from typing import Any

import boto3
import pytest
from aws_lambda_powertools import Logger
from botocore.exceptions import ClientError

from streams import Poison, SqsDeadLetterQueue, StreamProcessor, read_dead_letter
from streams.deadletter import (
    OVERFLOW_PREFIX,
    DeadLetter,
    ErrorInfo,
    FunctionInfo,
    MalformedDeadLetter,
    _chunks,
    dead_letter_message,
)
from streams.errors import UserError
from streams.records import parse_records
from tests.factories import FakeClock, dynamodb_event, dynamodb_record
from tests.test_deadletter import RefuseEntries


def _processor(queue: SqsDeadLetterQueue, message: str = "bad record") -> StreamProcessor:
    def handle(record: Any) -> None:
        if record.sequence_number == "2":
            raise Poison(message)

    clock = FakeClock()
    return StreamProcessor(
        handle,
        dead_letters=queue,
        clock=clock,
        sleep=clock.sleep,
        logger=Logger(service=f"test-{uuid.uuid4().hex}", stream=io.StringIO()),
    )


def _big_event() -> dict[str, Any]:
    event = dynamodb_event(3)
    event["Records"][1]["dynamodb"]["NewImage"]["blob"] = {"S": "x" * 5000}
    return event


def _small_queue(sqs: Any, name: str, size: int = 1024) -> str:
    attributes = {"MaximumMessageSize": str(size)}
    return str(sqs.create_queue(QueueName=name, Attributes=attributes)["QueueUrl"])


def test_the_missing_queue_setting_is_one_line_saying_what_to_do() -> None:
    with pytest.raises(UserError) as raised:
        SqsDeadLetterQueue.from_environment({})

    assert str(raised.value) == (
        "DEAD_LETTER_QUEUE_URL is not set: poison records would have nowhere to go. "
        "Set it (the template does) or pass dead_letters= to StreamProcessor."
    )


def test_the_overflow_pointer_is_compact_json_with_the_error_cut_to_1000_characters(
    aws: boto3.Session, unique_name: str
) -> None:
    sqs, s3 = aws.client("sqs"), aws.client("s3")
    url = _small_queue(sqs, unique_name, size=2048)  # the record (5 KB) goes to the bucket
    s3.create_bucket(Bucket=unique_name)
    puts: list[str] = []
    s3.meta.events.register(
        "before-parameter-build.s3.PutObject", lambda params, **_: puts.append(params["Key"])
    )
    queue = SqsDeadLetterQueue(url, bucket=unique_name, sqs=sqs, s3=s3)

    assert _processor(queue, "e" * 1500).process(_big_event()) == {"batchItemFailures": []}

    (message,) = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10)["Messages"]
    body = message["Body"]
    pointer = json.loads(body)
    assert body == json.dumps(pointer, separators=(",", ":"))  # every byte counts against the limit
    assert pointer["error"] == {"type": "Poison", "message": "e" * 1000, "traceback": None}
    assert puts == [pointer["overflow"]["key"]]  # through the client it was given
    stored = s3.get_object(Bucket=unique_name, Key=pointer["overflow"]["key"])
    assert stored["ContentType"] == "application/json"
    assert json.loads(stored["Body"].read())["error"]["message"] == "e" * 1500


def test_a_large_record_with_no_bucket_is_logged_as_not_parked_with_its_ids(
    aws: boto3.Session, unique_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    sqs = aws.client("sqs")
    queue = SqsDeadLetterQueue(_small_queue(sqs, unique_name), sqs=sqs)
    event = _big_event()

    with caplog.at_level(logging.ERROR, logger="streams.deadletter"):
        _processor(queue).process(event)

    (entry,) = [r for r in caplog.records if r.name == "streams.deadletter"]
    assert entry.getMessage() == (
        "dead-letter message too large for the queue and DEAD_LETTER_BUCKET is not set: "
        "record not parked (it will be delivered again)"
    )
    assert entry.record["sequenceNumber"] == "2"  # type: ignore[attr-defined]
    assert entry.record["eventID"] == event["Records"][1]["eventID"]  # type: ignore[attr-defined]


def test_a_large_record_the_bucket_refuses_is_logged_with_the_error_and_its_ids(
    aws: boto3.Session, unique_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    sqs, s3 = aws.client("sqs"), aws.client("s3")
    missing_bucket = f"{unique_name}-missing"
    queue = SqsDeadLetterQueue(
        _small_queue(sqs, unique_name), bucket=missing_bucket, sqs=sqs, s3=s3
    )

    with caplog.at_level(logging.ERROR, logger="streams.deadletter"):
        response = _processor(queue).process(_big_event())

    assert response == {"batchItemFailures": [{"itemIdentifier": "2"}]}
    (entry,) = [r for r in caplog.records if r.name == "streams.deadletter"]
    assert entry.getMessage().startswith(
        "cannot store a large dead-letter message in the overflow bucket: "
    )
    assert "NoSuchBucket" in entry.getMessage()
    assert entry.record["sequenceNumber"] == "2"  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("not json", "the message body is not JSON"),
        ("[1]", "the message body is not a JSON object"),
        ('{"overflow": {"bucket": "b"}}', "an overflow pointer without a bucket and a key"),
        ('{"overflow": "s3://b/k"}', "an overflow pointer without a bucket and a key"),
    ],
)
def test_a_reader_refuses_a_message_it_cannot_read_saying_why(body: str, message: str) -> None:
    with pytest.raises(MalformedDeadLetter) as raised:
        read_dead_letter(body, bucket="b")

    assert str(raised.value) == message


def test_a_reader_given_no_bucket_follows_no_pointer() -> None:
    pointer = json.dumps({"overflow": {"bucket": "b", "key": f"{OVERFLOW_PREFIX}x.json"}})

    with pytest.raises(MalformedDeadLetter) as raised:
        read_dead_letter(pointer)

    assert str(raised.value) == "an overflow pointer, but no overflow bucket is known to follow"


@pytest.mark.parametrize(
    ("bucket", "key"),
    [("other", f"{OVERFLOW_PREFIX}x.json"), ("b", "elsewhere/x.json")],
    ids=["another bucket", "outside the prefix"],
)
def test_a_reader_follows_no_pointer_outside_the_bucket_and_prefix(
    aws: boto3.Session, bucket: str, key: str
) -> None:
    pointer = json.dumps({"overflow": {"bucket": bucket, "key": key}})

    with pytest.raises(MalformedDeadLetter) as raised:
        read_dead_letter(pointer, aws.client("s3"), bucket="b")

    assert (
        str(raised.value) == f"an overflow pointer outside s3://b/{OVERFLOW_PREFIX}: not followed"
    )


def _parked_pointer(aws: boto3.Session, name: str) -> tuple[str, dict[str, Any]]:
    """A record parked through the bucket `name`: the pointer's SQS body and the full message."""
    sqs, s3 = aws.client("sqs"), aws.client("s3")
    url = _small_queue(sqs, name)
    s3.create_bucket(Bucket=name)
    event = _big_event()
    _processor(SqsDeadLetterQueue(url, bucket=name, sqs=sqs, s3=s3)).process(event)
    (message,) = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10)["Messages"]
    return message["Body"], event["Records"][1]


def test_a_reader_uses_the_s3_client_it_is_given(aws: boto3.Session, unique_name: str) -> None:
    body, record = _parked_pointer(aws, unique_name)
    s3 = aws.client("s3")
    reads: list[str] = []
    s3.meta.events.register(
        "before-parameter-build.s3.GetObject", lambda params, **_: reads.append(params["Key"])
    )

    message = read_dead_letter(body, s3, bucket=unique_name)

    assert message["record"] == record
    assert reads == [json.loads(body)["overflow"]["key"]]


def test_a_reader_given_no_s3_client_makes_its_own(aws: boto3.Session, unique_name: str) -> None:
    body, record = _parked_pointer(aws, unique_name)

    assert read_dead_letter(body, bucket=unique_name)["record"] == record


def test_a_pointer_to_an_object_that_is_gone_is_malformed_and_other_s3_errors_are_raised(
    aws: boto3.Session, unique_name: str
) -> None:
    s3 = aws.client("s3")
    s3.create_bucket(Bucket=unique_name)
    gone = json.dumps({"overflow": {"bucket": unique_name, "key": f"{OVERFLOW_PREFIX}gone.json"}})
    missing_bucket = f"{unique_name}-missing"
    no_bucket = json.dumps(
        {"overflow": {"bucket": missing_bucket, "key": f"{OVERFLOW_PREFIX}x.json"}}
    )

    with pytest.raises(MalformedDeadLetter) as raised:
        read_dead_letter(gone, s3, bucket=unique_name)
    assert str(raised.value) == "its overflow object is missing"

    with pytest.raises(ClientError) as error:
        read_dead_letter(no_bucket, s3, bucket=missing_bucket)
    assert error.value.response["Error"]["Code"] == "NoSuchBucket"


# --- sending: sizes, chunks, retries --------------------------------------------------------------


def _letter(sequence: int, message: str = "bad record", *, created: object = None) -> DeadLetter:
    raw = dynamodb_record(sequence)
    if created is not None:
        raw["dynamodb"]["ApproximateCreationDateTime"] = created
    (record,) = parse_records({"Records": [raw]})
    return DeadLetter(
        record=record,
        reason="poison",
        error=ErrorInfo("Poison", message, "Traceback ..."),
        attempts=1,
        failed_at=datetime(2026, 12, 4, 21, 30, 15, 123456, tzinfo=UTC),
        function=FunctionInfo("processor", "$LATEST", "req-1"),
    )


def _size(letter: DeadLetter) -> int:
    """What SQS counts: the body, and each attribute's name, data type and value."""
    body = json.dumps(dead_letter_message(letter), separators=(",", ":"))
    attributes = {"reason": "poison", "errorType": "Poison", "source": "aws:dynamodb"}
    return len(body) + sum(len(name) + len("String") + len(v) for name, v in attributes.items())


def test_the_message_gives_times_in_utc_created_to_the_second_failed_to_the_millisecond() -> None:
    message = dead_letter_message(_letter(1, created=1_795_000_000.75))

    assert message["approximateCreationTime"] == "2026-11-18T11:06:40Z"
    assert message["failedAt"] == "2026-12-04T21:30:15.123Z"


def test_a_record_whose_time_is_unreadable_is_parked_with_no_creation_time() -> None:
    message = dead_letter_message(_letter(1, created="yesterday"))

    assert message["approximateCreationTime"] is None


@pytest.mark.parametrize(("over", "overflows"), [(0, False), (1, True)])
def test_a_message_overflows_only_when_body_and_attributes_exceed_the_queues_limit(
    aws: boto3.Session, unique_name: str, over: int, overflows: bool
) -> None:
    sqs, s3 = aws.client("sqs"), aws.client("s3")
    url = _small_queue(sqs, unique_name, size=2048)
    s3.create_bucket(Bucket=unique_name)
    letter = _letter(1, "")
    letter = _letter(1, "m" * (2048 - _size(letter) + over))
    assert _size(letter) == 2048 + over

    (message_id,) = SqsDeadLetterQueue(url, bucket=unique_name, sqs=sqs, s3=s3).park([letter])

    (message,) = sqs.receive_message(QueueUrl=url)["Messages"]
    assert message["MessageId"] == message_id
    body = json.loads(message["Body"])
    assert ("overflow" in body, "record" in body) == (overflows, not overflows)
    if not overflows:
        assert message["Body"] == json.dumps(body, separators=(",", ":"))  # compact, as counted


def test_a_letter_that_cannot_be_parked_does_not_keep_the_others_from_being_parked(
    aws: boto3.Session, unique_name: str
) -> None:
    sqs = aws.client("sqs")
    url = _small_queue(sqs, unique_name, size=2048)
    too_large, small = _letter(1, "x" * 3000), _letter(2)

    kept = SqsDeadLetterQueue(url, sqs=sqs).park([too_large, small])

    assert kept[0] is None
    assert kept[1] is not None


def _entries(sizes: list[int], limit: int) -> list[list[int]]:
    ready: list[Any] = [(n, {"Id": str(n)}, size) for n, size in enumerate(sizes)]
    return [[position for position, _, _ in chunk] for chunk in _chunks(ready, limit)]


def test_send_calls_hold_at_most_10_entries_and_at_most_the_limit_in_bytes() -> None:
    assert _entries([1] * 25, 1000) == [list(range(10)), list(range(10, 20)), list(range(20, 25))]
    assert _entries([400, 600, 1, 999, 1000, 1], 1000) == [[0, 1], [2, 3], [4], [5]]


def test_entries_sqs_refuses_are_sent_again_after_50_then_100_milliseconds(
    aws: boto3.Session, unique_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    sqs = aws.client("sqs")
    url = sqs.create_queue(QueueName=unique_name)["QueueUrl"]
    RefuseEntries(sqs, refusals=3)
    sleeps: list[float] = []
    queue = SqsDeadLetterQueue(url, sqs=sqs, sleep=sleeps.append)

    with caplog.at_level(logging.ERROR, logger="streams.deadletter"):
        kept = queue.park([_letter(1), _letter(2)])

    assert kept[0] is None and kept[1] is not None
    assert sleeps == [0.05, 0.1]
    refusals = [r.getMessage() for r in caplog.records if r.name == "streams.deadletter"]
    # Refused in the first call, and the refused entry alone in each call after it.
    assert refusals[0] == "the dead-letter queue refused a message: InternalError None"


def test_an_unreachable_queue_is_tried_three_times_and_each_failure_logged(
    aws: boto3.Session, unique_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    sqs = aws.client("sqs")
    url = f"{sqs.meta.endpoint_url}/123456789012/{unique_name}-missing"
    calls: list[int] = []
    sqs.meta.events.register(
        "before-parameter-build.sqs.SendMessageBatch", lambda params, **_: calls.append(1)
    )
    queue = SqsDeadLetterQueue(url, sqs=sqs, sleep=lambda seconds: None)

    with caplog.at_level(logging.ERROR, logger="streams.deadletter"):
        assert queue.park([_letter(1)]) == [None]

    assert len(calls) == 3
    lines = [r.getMessage() for r in caplog.records if r.name == "streams.deadletter"]
    assert len(lines) == 3
    assert all(
        line.startswith("cannot send to the dead-letter queue: An error occurred (")
        for line in lines
    )


def test_an_overflow_object_that_is_not_json_is_malformed(
    aws: boto3.Session, unique_name: str
) -> None:
    s3 = aws.client("s3")
    s3.create_bucket(Bucket=unique_name)
    key = f"{OVERFLOW_PREFIX}broken.json"
    s3.put_object(Bucket=unique_name, Key=key, Body=b"{broken")
    pointer = json.dumps({"overflow": {"bucket": unique_name, "key": key}})

    with pytest.raises(MalformedDeadLetter) as raised:
        read_dead_letter(pointer, s3, bucket=unique_name)

    assert str(raised.value) == "the overflow object is not JSON"
