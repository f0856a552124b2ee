"""`streams dlq hydrate`: on-failure metadata turned back into full records, on moto."""

from __future__ import annotations

import json
from typing import Any

import boto3
import pytest

from streams.cli import main
from streams.hydrate import NotAnOnFailureRecord, parse_on_failure
from streams.ops.dlq import DeadLetterQueueReader
from streams.sources import DynamoDBStreamSource, Position


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


def test_records_no_longer_in_the_stream_are_reported_as_expired(
    aws: boto3.Session,
    stream: tuple[str, str, list[dict[str, Any]]],
    queues: tuple[str, str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    arn, shard, records = stream
    dlq, on_failure = queues
    last = records[-1]["dynamodb"]["SequenceNumber"]
    beyond = [str(int(last) + 100), str(int(last) + 101)]
    aws.client("sqs").send_message(
        QueueUrl=on_failure, MessageBody=json.dumps(on_failure_record(arn, shard, *beyond, 2))
    )
    assert main(["dlq", "hydrate", "--queue-url", dlq, "--from-queue", on_failure]) == 1
    captured = capsys.readouterr()
    assert "2 of 2 records" in captured.err and "cannot be recovered" in captured.err
    assert "expired 2" in captured.out


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
