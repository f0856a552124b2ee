"""On-failure records have exactly the shape recorded from AWS, and reach SQS, SNS and S3.

The oracle is what AWS wrote to on-failure destinations, recorded in LocalStack's
AWS-validated snapshots (`/work/shared/fixtures/aws-recorded/`). Each scenario is replayed
through the mapping on moto's real streams, and the record it writes is compared with AWS's
key by key: the same keys in the same order at every level, the same literal values, and the
same formats where the snapshot replaced a value with a `<placeholder>`.
"""

from __future__ import annotations

import base64
import json
import re
import time
from typing import Any

import boto3

from streams.mapping import MetricCounters
from streams.mapping.state import MetricName
from tests.test_mapping_support import (
    FastClock,
    Recorder,
    dynamodb_stream,
    kinesis_stream,
    messages,
    queue,
    run,
)

_DDB_STREAM = (
    "arn:<partition>:dynamodb:<region>:111111111111:table/<resource:1>/stream/<resource:2>"
)
_FUNCTION = "arn:<partition>:lambda:<region>:111111111111:function:<resource:4>"
_KINESIS_STREAM = "arn:<partition>:kinesis:<region>:111111111111:stream/<resource:2>"

# test_dynamodb_event_source_mapping_with_on_failure_destination_config: destination_queue_messages
RECORDED_DYNAMODB_RETRIES_EXHAUSTED: dict[str, Any] = {
    "requestContext": {
        "requestId": "<uuid:3>",
        "functionArn": _FUNCTION,
        "condition": "RetryAttemptsExhausted",
        "approximateInvokeCount": 2,
    },
    "responseContext": {
        "statusCode": 200,
        "executedVersion": "$LATEST",
        "functionError": "Unhandled",
    },
    "version": "1.0",
    "timestamp": "<timestamp:2022-07-13T13:48:01.000Z>",
    "DDBStreamBatchInfo": {
        "shardId": "<shard-id:1>",
        "startSequenceNumber": "<start-sequence-number:1>",
        "endSequenceNumber": "<start-sequence-number:1>",
        "approximateArrivalOfFirstRecord": "<timestamp:2022-07-13T13:48:01Z>",
        "approximateArrivalOfLastRecord": "<timestamp:2022-07-13T13:48:01Z>",
        "batchSize": 1,
        "streamArn": _DDB_STREAM,
    },
}
# test_kinesis_report_batch_item_failures: sqs_payload (a partial failure: functionError null)
RECORDED_KINESIS_PARTIAL_FAILURE: dict[str, Any] = {
    "requestContext": {
        "requestId": "<uuid:2>",
        "functionArn": "arn:<partition>:lambda:<region>:111111111111:function:<resource:3>",
        "condition": "RetryAttemptsExhausted",
        "approximateInvokeCount": 4,
    },
    "responseContext": {"statusCode": 200, "executedVersion": "$LATEST", "functionError": None},
    "version": "1.0",
    "timestamp": "<timestamp:2022-07-13T13:48:01.000Z>",
    "KinesisBatchInfo": {
        "shardId": "shardId-000000000000",
        "startSequenceNumber": "<sequence-number:6>",
        "endSequenceNumber": "<sequence-number:6>",
        "approximateArrivalOfFirstRecord": "<timestamp:2022-07-13T13:48:01.000Z>",
        "approximateArrivalOfLastRecord": "<timestamp:2022-07-13T13:48:01.000Z>",
        "batchSize": 1,
        "streamArn": _KINESIS_STREAM,
    },
}
# test_kinesis_maximum_record_age_exceeded[expire-before-ingestion]: no responseContext
RECORDED_KINESIS_RECORD_AGE_EXCEEDED: dict[str, Any] = {
    "requestContext": {
        "requestId": "<uuid:2>",
        "functionArn": "arn:<partition>:lambda:<region>:111111111111:function:<resource:3>",
        "condition": "RecordAgeExceeded",
        "approximateInvokeCount": 1,
    },
    "version": "1.0",
    "timestamp": "<timestamp:2022-07-13T13:48:01.000Z>",
    "KinesisBatchInfo": {
        "shardId": "shardId-000000000000",
        "startSequenceNumber": "<start-sequence-number:1>",
        "endSequenceNumber": "<start-sequence-number:1>",
        "approximateArrivalOfFirstRecord": "<timestamp:2022-07-13T13:48:01.000Z>",
        "approximateArrivalOfLastRecord": "<timestamp:2022-07-13T13:48:01.000Z>",
        "batchSize": 1,
        "streamArn": _KINESIS_STREAM,
    },
}

_PLACEHOLDER = re.compile(r"<([a-z0-9-]+)(?::([^>]*))?>")


def _pattern(recorded: str) -> re.Pattern[str]:
    """A recorded string as a regex: a `<timestamp:...>` keeps its example's format, another
    placeholder stands for any text, LocalStack's account 111111111111 for any account."""
    parts: list[str] = []
    position = 0
    for match in _PLACEHOLDER.finditer(recorded):
        parts.append(re.escape(recorded[position : match.start()]))
        name, example = match.groups()
        if name == "timestamp" and example:
            parts.append(re.sub(r"\d", r"\\d", re.escape(example)))
        else:
            parts.append(r"[^:]+" if name in ("partition", "region") else ".+")
        position = match.end()
    parts.append(re.escape(recorded[position:]))
    return re.compile("".join(parts).replace("111111111111", r"\d{12}"))


def assert_conforms(ours: Any, recorded: Any, path: str = "$") -> None:
    """`ours` has the recorded keys in the recorded order, values or formats (see module)."""
    if isinstance(recorded, dict):
        assert isinstance(ours, dict), path
        assert list(ours) == list(recorded), path
        for key, value in recorded.items():
            assert_conforms(ours[key], value, f"{path}.{key}")
    elif isinstance(recorded, str) and "<" in recorded:
        assert isinstance(ours, str), path
        assert _pattern(recorded).fullmatch(ours), f"{path}: {ours!r} is not like {recorded!r}"
    else:
        assert ours == recorded, path
        assert type(ours) is type(recorded), path


def _clock() -> FastClock:
    return FastClock(start=time.time())


def _raise(event: dict[str, Any]) -> None:
    raise RuntimeError("Unhandled test error")


def test_a_dynamodb_record_given_up_after_retries_matches_awss_record(
    aws: boto3.Session, unique_name: str
) -> None:
    source = dynamodb_stream(aws, unique_name, view="NEW_IMAGE", key="my_partition_key")
    aws.client("dynamodb").put_item(
        TableName=unique_name, Item={"my_partition_key": {"S": "hello world"}}
    )
    url, arn = queue(aws, unique_name)
    recorder = Recorder(_raise)

    run(
        {
            "BatchSize": 1,
            "MaximumBatchingWindowInSeconds": 1,
            "MaximumRetryAttempts": 1,
            "DestinationConfig": {"OnFailure": {"Destination": arn}},
        },
        source,
        recorder,
        clock=_clock(),
        session=aws,
    )

    (record,) = messages(aws, url)
    assert_conforms(record, RECORDED_DYNAMODB_RETRIES_EXHAUSTED)
    (delivered,) = recorder.events[0]["Records"]
    info = record["DDBStreamBatchInfo"]
    assert info["startSequenceNumber"] == delivered["dynamodb"]["SequenceNumber"]
    assert info["streamArn"] == source.source_arn
    assert info["shardId"] == source.list_shards()[0].shard_id
    assert record["requestContext"]["requestId"] == recorder.results[-1].request_id


def test_an_sns_destination_gets_the_same_record_as_its_message(
    aws: boto3.Session, unique_name: str
) -> None:
    source = dynamodb_stream(aws, unique_name, view="NEW_IMAGE", key="my_partition_key")
    aws.client("dynamodb").put_item(
        TableName=unique_name, Item={"my_partition_key": {"S": "hello world"}}
    )
    sns = aws.client("sns")
    topic = sns.create_topic(Name=unique_name)["TopicArn"]
    url, queue_arn = queue(aws, unique_name)
    sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=queue_arn)

    run(
        {
            "BatchSize": 1,
            "MaximumRetryAttempts": 1,
            "DestinationConfig": {"OnFailure": {"Destination": topic}},
        },
        source,
        Recorder(_raise),
        clock=_clock(),
        session=aws,
    )

    (notification,) = messages(aws, url)
    assert notification["TopicArn"] == topic
    assert_conforms(json.loads(notification["Message"]), RECORDED_DYNAMODB_RETRIES_EXHAUSTED)


def test_a_kinesis_partial_failure_given_up_matches_awss_record(
    aws: boto3.Session, unique_name: str
) -> None:
    # test_kinesis_report_batch_item_failures: 6 records, the 6th always reported failed.
    source = kinesis_stream(aws, unique_name)
    client = aws.client("kinesis")
    for index in range(6):
        data = json.dumps({"should_fail": index == 5}).encode()
        client.put_record(StreamName=unique_name, Data=data, PartitionKey=f"test_{index}")
    url, arn = queue(aws, unique_name)

    def function(event: dict[str, Any]) -> dict[str, Any]:
        failures = [
            {"itemIdentifier": record["kinesis"]["sequenceNumber"]}
            for record in event["Records"]
            if json.loads(base64.b64decode(record["kinesis"]["data"]))["should_fail"]
        ]
        return {"batchItemFailures": failures}

    recorder = Recorder(function)

    run(
        {
            "BatchSize": 3,
            "MaximumRetryAttempts": 3,
            "FunctionResponseTypes": ["ReportBatchItemFailures"],
            "DestinationConfig": {"OnFailure": {"Destination": arn}},
        },
        source,
        recorder,
        clock=_clock(),
        session=aws,
    )

    (record,) = messages(aws, url)
    assert_conforms(record, RECORDED_KINESIS_PARTIAL_FAILURE)
    sixth = recorder.events[-1]["Records"][-1]["kinesis"]["sequenceNumber"]
    assert record["KinesisBatchInfo"]["startSequenceNumber"] == sixth
    assert [len(event["Records"]) for event in recorder.events] == [3, 3, 1, 1, 1]


def test_a_kinesis_record_expired_before_it_was_read_matches_awss_record(
    aws: boto3.Session, unique_name: str
) -> None:
    # test_kinesis_maximum_record_age_exceeded[expire-before-ingestion]: the mapping starts
    # after the record is older than MaximumRecordAgeInSeconds; it is never delivered.
    source = kinesis_stream(aws, unique_name)
    aws.client("kinesis").put_record(
        StreamName=unique_name, Data=b"stream-data", PartitionKey="test"
    )
    url, arn = queue(aws, unique_name)
    recorder = Recorder()

    run(
        {
            "BatchSize": 1,
            "MaximumRetryAttempts": 0,
            "MaximumRecordAgeInSeconds": 60,
            "DestinationConfig": {"OnFailure": {"Destination": arn}},
        },
        source,
        recorder,
        clock=FastClock(start=time.time() + 120),
        session=aws,
    )

    (record,) = messages(aws, url)
    assert_conforms(record, RECORDED_KINESIS_RECORD_AGE_EXCEEDED)
    assert recorder.events == []


def test_an_s3_destination_stores_the_record_with_its_records_as_payload(
    aws: boto3.Session, unique_name: str
) -> None:
    # test_dynamodb_event_source_mapping_with_s3_on_failure_destination: the record plus
    # `payload`, the event of the records given up on.
    source = dynamodb_stream(aws, unique_name, view="NEW_IMAGE", key="my_partition_key")
    aws.client("dynamodb").put_item(
        TableName=unique_name, Item={"my_partition_key": {"S": "hello world"}}
    )
    s3 = aws.client("s3")
    s3.create_bucket(Bucket=unique_name)
    recorder = Recorder(_raise)

    result = run(
        {
            "BatchSize": 1,
            "MaximumRetryAttempts": 1,
            "DestinationConfig": {"OnFailure": {"Destination": f"arn:aws:s3:::{unique_name}"}},
        },
        source,
        recorder,
        clock=_clock(),
        session=aws,
        mapping_id="mapping-uuid",
    )

    (listed,) = s3.list_objects_v2(Bucket=unique_name)["Contents"]
    shard_id = source.list_shards()[0].shard_id
    assert re.fullmatch(
        rf"aws/lambda/mapping-uuid/{re.escape(shard_id)}/\d{{4}}/\d\d/\d\d/"
        r"\d{4}-\d\d-\d\dT\d\d\.\d\d\.\d\d-[0-9a-f-]{36}",
        listed["Key"],
    )
    body = json.loads(s3.get_object(Bucket=unique_name, Key=listed["Key"])["Body"].read())
    assert body.pop("payload") == {"Records": recorder.events[0]["Records"]}
    assert_conforms(body, RECORDED_DYNAMODB_RETRIES_EXHAUSTED)
    assert result.mapping.mapping_id == "mapping-uuid"


class _CreatesQueueOnFailure(MetricCounters):
    """Counts metrics; the first delivery failure creates the missing queue."""

    def __init__(self, aws: boto3.Session, name: str) -> None:
        super().__init__()
        self._aws = aws
        self._name = name

    def record(self, shard_id: str, name: MetricName, value: float) -> None:
        super().record(shard_id, name, value)
        if name == "DestinationDeliveryFailures":
            self._aws.client("sqs").create_queue(QueueName=self._name)


def test_a_destination_that_refuses_is_tried_again_until_it_takes_the_record(
    aws: boto3.Session, unique_name: str
) -> None:
    source = dynamodb_stream(aws, unique_name)
    aws.client("dynamodb").put_item(TableName=unique_name, Item={"pk": {"S": "1"}})
    arn = f"arn:aws:sqs:us-east-1:123456789012:{unique_name}"  # no such queue, yet
    metrics = _CreatesQueueOnFailure(aws, unique_name)

    result = run(
        {
            "MaximumRetryAttempts": 0,
            "DestinationConfig": {"OnFailure": {"Destination": arn}},
            "MetricsConfig": {"Metrics": ["EventCount"]},
        },
        source,
        Recorder(_raise),
        clock=_clock(),
        session=aws,
        metrics=metrics,
    )

    url = aws.client("sqs").get_queue_url(QueueName=unique_name)["QueueUrl"]
    (record,) = messages(aws, url)
    assert record["requestContext"]["condition"] == "RetryAttemptsExhausted"
    assert result.metrics.count("DestinationDeliveryFailures") == 1
    assert result.metrics.count("OnFailureDestinationDeliveredEventCount") == 1
