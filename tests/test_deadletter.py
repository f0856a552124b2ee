"""Dead-letter messages read back from a real SQS queue (and S3 bucket) on moto's server."""

from __future__ import annotations

import io
import json
import uuid
from typing import Any

import boto3
import pytest
from aws_lambda_powertools import Logger

from streams import Poison, SqsDeadLetterQueue, StreamProcessor, read_dead_letter
from streams.cli import main
from streams.errors import UserError
from tests.factories import NOW, FakeClock, FakeContext, dynamodb_event, kinesis_record


def _raise_for(sequences: set[str]) -> Any:
    def handle(record: Any) -> None:
        if record.sequence_number in sequences:
            raise Poison(f"bad record {record.sequence_number}")

    return handle


def _processor(handler: Any, queue: SqsDeadLetterQueue) -> StreamProcessor:
    clock = FakeClock()
    return StreamProcessor(
        handler,
        dead_letters=queue,
        clock=clock,
        sleep=clock.sleep,
        logger=Logger(service=f"test-{uuid.uuid4().hex}", stream=io.StringIO()),
    )


def _drain(sqs: Any, url: str) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []
    while True:
        batch = sqs.receive_message(
            QueueUrl=url, MaxNumberOfMessages=10, MessageAttributeNames=["All"]
        ).get("Messages", [])
        if not batch:
            return messages
        messages.extend(batch)
        for message in batch:
            sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])


def test_parked_records_are_read_back_from_the_queue_as_version_1_messages(
    aws: boto3.Session, unique_name: str
) -> None:
    sqs = aws.client("sqs")
    url = sqs.create_queue(QueueName=unique_name)["QueueUrl"]
    processor = _processor(_raise_for({"2", "3"}), SqsDeadLetterQueue(url, sqs=sqs))
    event = dynamodb_event(4)
    clock_context = FakeContext(FakeClock(), deadline=NOW + 60)

    assert processor.process(event, clock_context) == {"batchItemFailures": []}

    messages = sorted(_drain(sqs, url), key=lambda m: json.loads(m["Body"])["sequenceNumber"])
    assert len(messages) == 2
    body = read_dead_letter(messages[0]["Body"])
    assert body["version"] == 1
    assert body["reason"] == "poison"
    assert body["source"] == "aws:dynamodb"
    assert body["eventSourceARN"] == event["Records"][1]["eventSourceARN"]
    assert body["shardId"] is None  # Lambda's DynamoDB records do not carry it
    assert body["sequenceNumber"] == "2"
    assert body["eventID"] == event["Records"][1]["eventID"]
    assert body["record"] == event["Records"][1]
    assert body["error"]["type"] == "Poison"
    assert body["error"]["message"] == "bad record 2"
    assert "Traceback" in body["error"]["traceback"]
    assert body["attempts"] == 1
    assert body["failedAt"].endswith("Z")
    assert body["approximateCreationTime"].endswith("Z")
    assert body["function"] == {"name": "processor", "version": "$LATEST", "requestId": "req-1"}
    attributes = {k: v["StringValue"] for k, v in messages[0]["MessageAttributes"].items()}
    assert attributes == {"reason": "poison", "errorType": "Poison", "source": "aws:dynamodb"}


def test_kinesis_dead_letters_carry_the_shard_from_the_event_id(
    aws: boto3.Session, unique_name: str
) -> None:
    sqs = aws.client("sqs")
    url = sqs.create_queue(QueueName=unique_name)["QueueUrl"]
    record = kinesis_record(7, shard="shardId-000000000003")
    processor = _processor(
        _raise_for({record["kinesis"]["sequenceNumber"]}), SqsDeadLetterQueue(url)
    )
    processor.process({"Records": [record]})
    (message,) = _drain(sqs, url)
    body = read_dead_letter(message["Body"])
    assert body["shardId"] == "shardId-000000000003"
    assert body["source"] == "aws:kinesis"
    assert body["record"] == record


def _big_event() -> dict[str, Any]:
    event = dynamodb_event(3)
    event["Records"][1]["dynamodb"]["NewImage"]["blob"] = {"S": "x" * 5000}
    return event


def test_a_message_over_the_queues_limit_goes_to_the_bucket_with_a_pointer(
    aws: boto3.Session, unique_name: str
) -> None:
    sqs, s3 = aws.client("sqs"), aws.client("s3")
    url = sqs.create_queue(QueueName=unique_name, Attributes={"MaximumMessageSize": "1024"})[
        "QueueUrl"
    ]
    s3.create_bucket(Bucket=unique_name)
    processor = _processor(_raise_for({"2"}), SqsDeadLetterQueue(url, bucket=unique_name))
    event = _big_event()

    assert processor.process(event) == {"batchItemFailures": []}

    (message,) = _drain(sqs, url)
    pointer = json.loads(message["Body"])
    assert "record" not in pointer
    assert pointer["overflow"]["bucket"] == unique_name
    assert pointer["sequenceNumber"] == "2"
    full = read_dead_letter(message["Body"], s3, bucket=unique_name)
    assert full["record"] == event["Records"][1]
    assert "Traceback" in full["error"]["traceback"]


def _sqs_size(message: dict[str, Any]) -> int:
    """A message's size as SQS counts it: the body, and each attribute's name, type and value."""
    attributes = message.get("MessageAttributes", {})
    return len(message["Body"].encode()) + sum(
        len(name) + len(value["DataType"]) + len(value["StringValue"].encode())
        for name, value in attributes.items()
    )


def test_a_message_over_256_kb_goes_to_the_bucket_and_one_of_256_kb_to_the_queue(
    aws: boto3.Session, unique_name: str
) -> None:
    sqs, s3 = aws.client("sqs"), aws.client("s3")
    url = sqs.create_queue(QueueName=unique_name, Attributes={"MaximumMessageSize": "262144"})[
        "QueueUrl"
    ]
    s3.create_bucket(Bucket=unique_name)

    def park(blob: int) -> dict[str, Any]:
        event = dynamodb_event(1)
        event["Records"][0]["dynamodb"]["NewImage"]["blob"] = {"S": "x" * blob}
        queue = SqsDeadLetterQueue(url, bucket=unique_name)
        assert _processor(_raise_for({"1"}), queue).process(event) == {"batchItemFailures": []}
        (message,) = _drain(sqs, url)
        return message

    # Everything but the blob is the same in each message: one character of it is one byte.
    small = park(1000)
    at_limit = 1000 + 262_144 - _sqs_size(small)

    inline = park(at_limit)
    assert _sqs_size(inline) == 262_144
    assert json.loads(inline["Body"])["record"]["dynamodb"]["NewImage"]["blob"]["S"] == (
        "x" * at_limit
    )
    assert "overflow" not in json.loads(inline["Body"])

    pointer = park(at_limit + 1)
    overflow = json.loads(pointer["Body"])
    assert "record" not in overflow
    full = read_dead_letter(pointer["Body"], s3, bucket=unique_name)
    assert full["record"]["dynamodb"]["NewImage"]["blob"]["S"] == "x" * (at_limit + 1)


def test_a_message_over_the_limit_without_a_bucket_is_not_acknowledged(
    aws: boto3.Session, unique_name: str
) -> None:
    sqs = aws.client("sqs")
    url = sqs.create_queue(QueueName=unique_name, Attributes={"MaximumMessageSize": "1024"})[
        "QueueUrl"
    ]
    processor = _processor(_raise_for({"2"}), SqsDeadLetterQueue(url))
    response = processor.process(_big_event())
    assert response == {"batchItemFailures": [{"itemIdentifier": "2"}]}
    assert _drain(sqs, url) == []


def test_an_unreachable_dead_letter_queue_checkpoints_at_the_poison_record(
    aws: boto3.Session, unique_name: str
) -> None:
    sqs = aws.client("sqs")
    url = f"{sqs.meta.endpoint_url}/123456789012/{unique_name}-missing"
    queue = SqsDeadLetterQueue(url, sleep=lambda seconds: None)
    processor = _processor(_raise_for({"2"}), queue)
    assert processor.process(dynamodb_event(3)) == {"batchItemFailures": [{"itemIdentifier": "2"}]}


class RefuseEntries:
    """SQS answering `SendMessageBatch` with entries in `Failed` (as on an internal error): the
    refused entries are taken out of the request before it is sent, so they really are not in
    the queue unless the sender tries them again."""

    def __init__(self, sqs: Any, refusals: int, position: int = 0) -> None:
        self.refusals = refusals  # calls in which the entry at `position` is refused
        self.position = position
        self.sent: list[list[str]] = []
        sqs.meta.events.register("before-parameter-build.sqs.SendMessageBatch", self._before)
        sqs.meta.events.register("after-call.sqs.SendMessageBatch", self._after)

    def _before(self, params: dict[str, Any], context: dict[str, Any], **_: Any) -> None:
        entries = params["Entries"]
        self.sent.append([entry["Id"] for entry in entries])
        if self.refusals > 0:
            self.refusals -= 1
            refused = entries[self.position]
            context["refused"] = refused["Id"]
            params["Entries"] = [entry for entry in entries if entry is not refused]

    def _after(self, parsed: dict[str, Any], context: dict[str, Any], **_: Any) -> None:
        if "refused" in context:
            parsed.setdefault("Failed", []).append(
                {"Id": context["refused"], "SenderFault": False, "Code": "InternalError"}
            )


def test_an_entry_sqs_lists_as_failed_is_sent_again_and_not_lost(
    aws: boto3.Session, unique_name: str
) -> None:
    sqs = aws.client("sqs")
    url = sqs.create_queue(QueueName=unique_name)["QueueUrl"]
    refuse = RefuseEntries(sqs, refusals=1)
    queue = SqsDeadLetterQueue(url, sqs=sqs, sleep=lambda seconds: None)

    response = _processor(_raise_for({"1", "3"}), queue).process(dynamodb_event(3))

    assert response == {"batchItemFailures": []}
    first, again = refuse.sent
    assert len(first) == 2
    assert again == first[:1]  # only the refused entry, once more
    parked = sorted(json.loads(m["Body"])["sequenceNumber"] for m in _drain(sqs, url))
    assert parked == ["1", "3"]


def test_an_entry_sqs_keeps_refusing_is_not_acknowledged(
    aws: boto3.Session, unique_name: str
) -> None:
    sqs = aws.client("sqs")
    url = sqs.create_queue(QueueName=unique_name)["QueueUrl"]
    # Record 3's entry (the last) is refused in every one of the 3 attempts; record 1's is taken.
    refuse = RefuseEntries(sqs, refusals=3, position=-1)
    sleeps: list[float] = []
    queue = SqsDeadLetterQueue(url, sqs=sqs, sleep=sleeps.append)

    response = _processor(_raise_for({"1", "3"}), queue).process(dynamodb_event(3))

    # Record 1 is parked and acknowledged; Lambda retries the batch from record 3, not before.
    assert response == {"batchItemFailures": [{"itemIdentifier": "3"}]}
    assert refuse.sent == [["0", "1"], ["1"], ["1"]]  # 3 attempts, only the refused entry again
    assert sleeps == [0.05, 0.1]  # retry_delay * 2**n between them
    assert [json.loads(m["Body"])["sequenceNumber"] for m in _drain(sqs, url)] == ["1"]


def test_the_queue_comes_from_the_environment_and_its_absence_is_a_clear_error() -> None:
    queue = SqsDeadLetterQueue.from_environment(
        {"DEAD_LETTER_QUEUE_URL": "https://q", "DEAD_LETTER_BUCKET": "b"}
    )
    assert (queue.queue_url, queue.bucket) == ("https://q", "b")
    with pytest.raises(UserError, match="DEAD_LETTER_QUEUE_URL is not set"):
        SqsDeadLetterQueue.from_environment({})


def test_the_parked_line_names_the_sqs_message_that_streams_dlq_show_prints_in_full(
    aws: boto3.Session,
    unique_name: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The log keeps the error's message out; its id leads to it (and to the traceback)."""
    sqs, s3 = aws.client("sqs"), aws.client("s3")
    url = sqs.create_queue(QueueName=unique_name, Attributes={"MaximumMessageSize": "1024"})[
        "QueueUrl"
    ]
    s3.create_bucket(Bucket=unique_name)
    log = io.StringIO()
    clock = FakeClock()

    def handle(record: Any) -> None:
        status = record.new_image["status"]
        if record.sequence_number in {"1", "2"}:  # 2 is over the queue's limit: via the bucket
            raise Poison(f"unknown status {status!r}")

    processor = StreamProcessor(
        handle,
        dead_letters=SqsDeadLetterQueue(url, bucket=unique_name, sqs=sqs, s3=s3),
        clock=clock,
        sleep=clock.sleep,
        logger=Logger(service=f"test-{uuid.uuid4().hex}", stream=log),
    )
    event = _big_event()
    for record in event["Records"]:
        record["dynamodb"]["NewImage"]["status"] = {"S": "VALUE-grumpy-e1f4"}

    assert processor.process(event) == {"batchItemFailures": []}

    assert "VALUE-grumpy-e1f4" not in log.getvalue()
    lines = [json.loads(line) for line in log.getvalue().splitlines()]
    ids = [line["deadLetterMessageId"] for line in lines if line["message"] == "record parked"]
    assert len(ids) == 2
    capsys.readouterr()
    monkeypatch.setenv("DEAD_LETTER_BUCKET", unique_name)  # the bucket pointers may lead into
    for message_id in ids:
        assert main(["dlq", "show", message_id, "--queue-url", url]) == 0
        shown = json.loads(capsys.readouterr().out)
        assert shown["error"]["message"] == "unknown status 'VALUE-grumpy-e1f4'"
        assert "Traceback" in shown["error"]["traceback"]
