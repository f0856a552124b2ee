"""`streams dlq hydrate`: on-failure metadata turned back into full records, on moto."""

from __future__ import annotations

import importlib
import json
from typing import Any

import boto3
import pytest
from botocore.client import BaseClient
from botocore.exceptions import ClientError

from streams.cli import main
from streams.cli.endpoint import Endpoint
from streams.deadletter import SqsDeadLetterQueue
from streams.hydrate import Hydrator, NotAnOnFailureRecord, parse_on_failure
from streams.ops.dlq import DeadLetterQueueReader
from streams.sources import DynamoDBStreamSource, Position
from tests.aws_hooks import Hooks


def on_failure_record(
    stream_arn: str, shard_id: str, first: str, last: str, size: int, **changes: Any
) -> dict[str, Any]:
    """The shape AWS delivers (fixtures/aws-recorded, DynamoDB on-failure destination)."""
    record: dict[str, Any] = {
        "requestContext": {
            "requestId": "0b7e1a2c-0000-4000-8000-000000000001",
            "functionArn": "arn:aws:lambda:us-east-1:123456789012:function:processor",
            "condition": "RetryAttemptsExhausted",
            "approximateInvokeCount": 4,
        },
        "responseContext": {
            "statusCode": 200,
            "executedVersion": "$LATEST",
            "functionError": "Unhandled",
        },
        "version": "1.0",
        "timestamp": "2026-11-22T00:13:49.717Z",
        "DDBStreamBatchInfo": {
            "shardId": shard_id,
            "startSequenceNumber": first,
            "endSequenceNumber": last,
            "approximateArrivalOfFirstRecord": "2026-11-22T00:13:19Z",
            "approximateArrivalOfLastRecord": "2026-11-22T00:13:19Z",
            "batchSize": size,
            "streamArn": stream_arn,
        },
    }
    record.update(changes)
    return record


@pytest.fixture
def stream(aws: boto3.Session, unique_name: str) -> tuple[str, str, list[dict[str, Any]]]:
    """A table with a stream and five changes in it: (stream ARN, shard id, Lambda records)."""
    dynamodb = aws.client("dynamodb")
    table = dynamodb.create_table(
        TableName=unique_name,
        KeySchema=[{"AttributeName": "childId", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "childId", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
        StreamSpecification={"StreamEnabled": True, "StreamViewType": "NEW_AND_OLD_IMAGES"},
    )["TableDescription"]
    for n in range(5):
        dynamodb.put_item(
            TableName=unique_name,
            Item={"childId": {"S": f"c-{n}"}, "status": {"S": "nice"}, "photo": {"B": b"\x00\x01"}},
        )
    arn = table["LatestStreamArn"]
    source = DynamoDBStreamSource(arn, client=aws.client("dynamodbstreams"))
    (shard,) = source.list_shards()
    records = source.open(shard.shard_id, Position("TRIM_HORIZON")).read(100).records
    assert len(records) == 5
    return arn, shard.shard_id, records


@pytest.fixture
def queues(aws: boto3.Session, unique_name: str) -> tuple[str, str]:
    sqs = aws.client("sqs")
    return (
        sqs.create_queue(QueueName=f"{unique_name}-dlq")["QueueUrl"],
        sqs.create_queue(QueueName=f"{unique_name}-onfailure")["QueueUrl"],
    )


def test_hydrate_parks_the_records_an_on_failure_record_points_to_and_deletes_it(
    aws: boto3.Session,
    stream: tuple[str, str, list[dict[str, Any]]],
    queues: tuple[str, str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    arn, shard, records = stream
    dlq, on_failure = queues
    sqs = aws.client("sqs")
    first, last = (records[i]["dynamodb"]["SequenceNumber"] for i in (1, 3))
    sqs.send_message(
        QueueUrl=on_failure, MessageBody=json.dumps(on_failure_record(arn, shard, first, last, 3))
    )

    assert main(["dlq", "hydrate", "--queue-url", dlq, "--from-queue", on_failure]) == 0
    assert "hydrated 3 records from 1 on-failure records; expired 0" in capsys.readouterr().out

    parked = sorted(DeadLetterQueueReader(dlq, sqs=sqs).receive_all(), key=lambda m: m.order())
    assert [m.body["record"] for m in parked] == records[1:4]  # full records, Lambda's shape
    body = parked[0].body
    assert body["reason"] == "hydrated"
    assert body["shardId"] == shard
    assert body["attempts"] == 4
    assert body["error"]["type"] == "RetryAttemptsExhausted"
    assert body["error"]["message"] == "Unhandled"
    assert body["function"]["name"] == "processor"
    assert body["failedAt"] == "2026-11-22T00:13:49.717Z"
    assert sqs.receive_message(QueueUrl=on_failure).get("Messages", []) == []


def test_an_on_failure_record_is_kept_when_its_records_cannot_be_parked(
    aws: boto3.Session,
    stream: tuple[str, str, list[dict[str, Any]]],
    queues: tuple[str, str],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    arn, shard, records = stream
    dlq, on_failure = queues
    sqs = aws.client("sqs")
    first, last = (records[i]["dynamodb"]["SequenceNumber"] for i in (1, 3))
    sqs.send_message(
        QueueUrl=on_failure, MessageBody=json.dumps(on_failure_record(arn, shard, first, last, 3))
    )
    make_api_call = BaseClient._make_api_call

    def dead_letter_queue_down(client: BaseClient, operation: str, params: dict[str, Any]) -> Any:
        if operation == "SendMessageBatch":
            raise ClientError({"Error": {"Code": "InternalError", "Message": "down"}}, operation)
        return make_api_call(client, operation, params)

    monkeypatch.setattr(BaseClient, "_make_api_call", dead_letter_queue_down)
    code = main(["dlq", "hydrate", "--queue-url", dlq, "--from-queue", on_failure])
    monkeypatch.undo()

    assert code == 1
    assert "on-failure records kept for a retry 1" in capsys.readouterr().out
    assert list(DeadLetterQueueReader(dlq, sqs=sqs).receive_all()) == []
    attributes = sqs.get_queue_attributes(QueueUrl=on_failure, AttributeNames=["All"])["Attributes"]
    kept = int(attributes["ApproximateNumberOfMessages"]) + int(
        attributes["ApproximateNumberOfMessagesNotVisible"]
    )
    assert kept == 1  # not deleted: it comes back after its visibility timeout


def test_records_the_stream_answers_are_trimmed_are_reported_as_expired(
    aws: boto3.Session,
    stream: tuple[str, str, list[dict[str, Any]]],
    queues: tuple[str, str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Proof that records are gone: the stream answers TrimmedDataAccessException for the
    batch's start and its oldest record is past the batch (records 0 and 1 trimmed, as after
    24 hours; moto never trims, so the hook does what the retention would)."""
    arn, shard, records = stream
    dlq, on_failure = queues
    numbers = [r["dynamodb"]["SequenceNumber"] for r in records]
    session = boto3.Session(region_name=aws.region_name)
    hooks = Hooks(session, "dynamodb-streams")

    def trimmed(params: dict[str, Any]) -> str | None:
        number = params.get("SequenceNumber")
        if number is None:
            return None
        # The first position still in the shard: AT records[2], or AFTER records[1].
        after = params["ShardIteratorType"] == "AFTER_SEQUENCE_NUMBER"
        gone = int(number) < int(numbers[1]) if after else int(number) < int(numbers[2])
        return "TrimmedDataAccessException" if gone else None

    def oldest_left(params: dict[str, Any]) -> None:
        if params["ShardIteratorType"] == "TRIM_HORIZON":
            params["ShardIteratorType"] = "AFTER_SEQUENCE_NUMBER"
            params["SequenceNumber"] = numbers[1]

    hooks.fail_when("GetShardIterator", trimmed)
    hooks.edit_requests("GetShardIterator", oldest_left)
    monkeypatch.setattr(Endpoint, "session", lambda self: session)
    aws.client("sqs").send_message(
        QueueUrl=on_failure,
        MessageBody=json.dumps(on_failure_record(arn, shard, numbers[0], numbers[1], 2)),
    )
    assert main(["dlq", "hydrate", "--queue-url", dlq, "--from-queue", on_failure]) == 1
    captured = capsys.readouterr()
    assert "2 of 2 records" in captured.err and "cannot be recovered" in captured.err
    assert "expired 2" in captured.out and "kept for a retry 0" in captured.out
    assert aws.client("sqs").receive_message(QueueUrl=on_failure).get("Messages", []) == []


def test_records_not_found_in_an_open_shard_are_kept_not_reported_lost(
    aws: boto3.Session,
    stream: tuple[str, str, list[dict[str, Any]]],
    queues: tuple[str, str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A range the shard does not show (yet) is no proof that it is gone: nothing is reported
    expired, the on-failure record stays (visible again when the run ends) and the run ends."""
    arn, shard, records = stream
    dlq, on_failure = queues
    last = records[-1]["dynamodb"]["SequenceNumber"]
    beyond = [str(int(last) + 100), str(int(last) + 101)]
    sqs = aws.client("sqs")
    sqs.send_message(
        QueueUrl=on_failure, MessageBody=json.dumps(on_failure_record(arn, shard, *beyond, 2))
    )
    assert main(["dlq", "hydrate", "--queue-url", dlq, "--from-queue", on_failure]) == 1
    captured = capsys.readouterr()
    assert "expired 0" in captured.out and "kept for a retry 1" in captured.out
    assert "did not finish" in captured.err
    assert len(sqs.receive_message(QueueUrl=on_failure).get("Messages", [])) == 1


def test_a_record_age_exceeded_record_has_no_response_context() -> None:
    record = on_failure_record("arn:aws:dynamodb:x:1:table/t/stream/s", "shard-1", "10", "12", 3)
    record["requestContext"]["condition"] = "RecordAgeExceeded"
    del record["responseContext"]
    batch = parse_on_failure(json.dumps(record))
    assert batch.condition == "RecordAgeExceeded"
    assert batch.function_error is None
    assert (batch.start_sequence_number, batch.end_sequence_number, batch.batch_size) == (
        "10",
        "12",
        3,
    )


def test_an_sns_destination_is_unwrapped_and_kinesis_batch_info_is_read() -> None:
    record = on_failure_record(
        "arn:aws:kinesis:us-east-1:1:stream/s", "shardId-000000000001", "5", "9", 2
    )
    record["KinesisBatchInfo"] = record.pop("DDBStreamBatchInfo")
    notification = {"Type": "Notification", "Message": json.dumps(record)}
    batch = parse_on_failure(json.dumps(notification))
    assert batch.source == "aws:kinesis"
    assert batch.shard_id == "shardId-000000000001"


def test_a_message_that_is_not_an_on_failure_record_is_refused() -> None:
    with pytest.raises(NotAnOnFailureRecord):
        parse_on_failure('{"hello": "world"}')


# --- a failed read is never evidence that records are gone --------------------------------


def _parked_records(aws: boto3.Session, queue_url: str) -> list[dict[str, Any]]:
    reader = DeadLetterQueueReader(queue_url, sqs=aws.client("sqs"))
    return [m.body["record"] for m in sorted(reader.receive_all(), key=lambda m: m.order())]


def test_throttled_reads_leave_the_on_failure_record_for_the_next_try_of_the_function(
    aws: boto3.Session,
    stream: tuple[str, str, list[dict[str, Any]]],
    queues: tuple[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The template's HydrateFunction, its stream throttled: the message comes back (a batch
    item failure) and nothing is reported lost; the next try reads again and parks all five."""
    arn, shard, records = stream
    dlq, _ = queues
    client = aws.client("dynamodbstreams")
    throttled = [True]
    Hooks(client).fail_when(
        "GetRecords", lambda params: "LimitExceededException" if throttled[0] else None
    )
    monkeypatch.setenv("DEAD_LETTER_QUEUE_URL", dlq)
    function = importlib.import_module("processor.hydrate")
    hydrator = Hydrator(SqsDeadLetterQueue(dlq, sqs=aws.client("sqs")), dynamodbstreams=client)
    monkeypatch.setattr(function, "hydrator", hydrator)
    first, last = (records[i]["dynamodb"]["SequenceNumber"] for i in (0, -1))
    body = json.dumps(on_failure_record(arn, shard, first, last, 5))
    event = {"Records": [{"messageId": "m-1", "body": body}]}

    assert function.lambda_handler(event, None) == {
        "batchItemFailures": [{"itemIdentifier": "m-1"}]
    }
    assert _parked_records(aws, dlq) == []

    throttled[0] = False
    assert function.lambda_handler(event, None) == {"batchItemFailures": []}
    assert _parked_records(aws, dlq) == records


def test_streams_dlq_hydrate_keeps_an_on_failure_record_whose_reads_were_throttled(
    aws: boto3.Session,
    stream: tuple[str, str, list[dict[str, Any]]],
    queues: tuple[str, str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    arn, shard, records = stream
    dlq, on_failure = queues
    # The command makes its own clients: the hook goes on the session it makes them from.
    session = boto3.Session(region_name=aws.region_name)
    throttled = [True]
    Hooks(session, "dynamodb-streams").fail_when(
        "GetRecords", lambda params: "LimitExceededException" if throttled[0] else None
    )
    monkeypatch.setattr(Endpoint, "session", lambda self: session)
    first, last = (records[i]["dynamodb"]["SequenceNumber"] for i in (0, -1))
    aws.client("sqs").send_message(
        QueueUrl=on_failure, MessageBody=json.dumps(on_failure_record(arn, shard, first, last, 5))
    )
    command = ["dlq", "hydrate", "--queue-url", dlq, "--from-queue", on_failure]

    assert main(command) == 1
    out = capsys.readouterr().out
    assert "hydrated 0 records" in out and "expired 0" in out and "kept for a retry 1" in out

    throttled[0] = False
    assert main(command) == 0
    assert "hydrated 5 records from 1 on-failure records; expired 0" in capsys.readouterr().out
    assert _parked_records(aws, dlq) == records
