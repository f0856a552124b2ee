"""On-failure destinations: the metadata record Lambda writes when it gives up (section 4).

`on_failure_record` builds the record with exactly the keys, order and formats recorded from
AWS (`requestContext`, `responseContext` — absent for `RecordAgeExceeded`, `functionError` null
for a partial batch failure —, `version`, `timestamp`, `DDBStreamBatchInfo` /
`KinesisBatchInfo`). The destinations send it as AWS does: an SQS message body, an SNS
message, or, for S3, a JSON object that also carries the records as `payload`.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal, Protocol

import boto3

from streams.arn import Arn
from streams.endpoints import service_endpoint
from streams.mapping.invoke import Event
from streams.mapping.shapes import RecordShape, iso_millis

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_sns import SNSClient
    from mypy_boto3_sqs import SQSClient

__all__ = [
    "Destination",
    "FailureCondition",
    "OnFailureRecord",
    "ResponseContext",
    "S3Destination",
    "SnsDestination",
    "SqsDestination",
    "on_failure_record",
    "open_destination",
]

FailureCondition = Literal["RetryAttemptsExhausted", "RecordAgeExceeded"]


@dataclass(frozen=True)
class ResponseContext:
    """The last invocation's response; `function_error` is None for a partial batch failure."""

    function_error: str | None
    executed_version: str = "$LATEST"
    status_code: int = 200


@dataclass(frozen=True)
class OnFailureRecord:
    """One record for the on-failure destination.

    `body` is what SQS and SNS receive; `payload` is the event of the records given up on,
    which only an S3 destination stores.
    """

    body: dict[str, Any]
    shard_id: str
    payload: Event
    batch_size: int


def on_failure_record(
    shape: RecordShape,
    records: Sequence[str],
    *,
    shard_id: str,
    stream_arn: str,
    function_arn: str,
    request_id: str,
    condition: FailureCondition,
    approximate_invoke_count: int,
    response: ResponseContext | None,
    now: float,
) -> OnFailureRecord:
    """The record Lambda writes for `records` (in order, as JSON texts) of one shard when it
    gives up on them."""
    if not records:
        raise ValueError("an on-failure record describes at least one record")
    first, last = json.loads(records[0]), json.loads(records[-1])
    body: dict[str, Any] = {
        "requestContext": {
            "requestId": request_id,
            "functionArn": function_arn,
            "condition": condition,
            "approximateInvokeCount": approximate_invoke_count,
        }
    }
    if response is not None:
        body["responseContext"] = {
            "statusCode": response.status_code,
            "executedVersion": response.executed_version,
            "functionError": response.function_error,
        }
    body["version"] = "1.0"
    body["timestamp"] = iso_millis(now)
    body[shape.batch_info_key] = {
        "shardId": shard_id,
        "startSequenceNumber": shape.sequence_number(first),
        "endSequenceNumber": shape.sequence_number(last),
        "approximateArrivalOfFirstRecord": shape.arrival_text(shape.arrival_time(first)),
        "approximateArrivalOfLastRecord": shape.arrival_text(shape.arrival_time(last)),
        "batchSize": len(records),
        "streamArn": stream_arn,
    }
    return OnFailureRecord(
        body=body,
        shard_id=shard_id,
        payload=Event.of_records(records),
        batch_size=len(records),
    )


class Destination(Protocol):
    """Sends one on-failure record; raises when the destination did not take it."""

    arn: str

    def send(self, record: OnFailureRecord) -> None: ...


class SqsDestination:
    """An SQS queue: the record is the message body."""

    def __init__(self, arn: str, client: SQSClient) -> None:
        parsed = Arn.parse(arn)
        name = parsed.name
        self.arn = arn
        self._client = client
        self._account = parsed.account
        self._name = name
        self._queue_url: str | None = None

    def send(self, record: OnFailureRecord) -> None:
        if self._queue_url is None:
            # Looked up on first use: a queue created after the mapping started still works.
            self._queue_url = self._client.get_queue_url(
                QueueName=self._name, QueueOwnerAWSAccountId=self._account
            )["QueueUrl"]
        self._client.send_message(QueueUrl=self._queue_url, MessageBody=json.dumps(record.body))


class SnsDestination:
    """An SNS topic: the record is the notification's message."""

    def __init__(self, arn: str, client: SNSClient) -> None:
        self.arn = arn
        self._client = client

    def send(self, record: OnFailureRecord) -> None:
        self._client.publish(TopicArn=self.arn, Message=json.dumps(record.body))


class S3Destination:
    """An S3 bucket: one object per record, with the records themselves under `payload`.

    The object key is AWS's:
    `aws/lambda/<mapping UUID>/<shard id>/YYYY/MM/DD/YYYY-MM-DDTHH.MM.SS-<random UUID>`.
    """

    def __init__(self, arn: str, client: S3Client, *, mapping_id: str) -> None:
        self.arn = arn
        self._bucket = Arn.parse(arn).name
        self._client = client
        self._mapping_id = mapping_id

    def object_key(self, record: OnFailureRecord) -> str:
        written = datetime.strptime(record.body["timestamp"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(
            tzinfo=UTC
        )
        return (
            f"aws/lambda/{self._mapping_id}/{record.shard_id}/{written:%Y/%m/%d}/"
            f"{written:%Y-%m-%dT%H.%M.%S}-{uuid.uuid4()}"
        )

    def send(self, record: OnFailureRecord) -> None:
        # The records' JSON as it was made when they were read, under `payload`.
        body = json.dumps(record.body)[:-1] + ', "payload": ' + record.payload.text + "}"
        self._client.put_object(
            Bucket=self._bucket,
            Key=self.object_key(record),
            Body=body.encode(),
            ContentType="application/json",
        )


def open_destination(
    arn: str, session: boto3.Session, *, mapping_id: str, endpoint_url: str | None = None
) -> Destination:
    """The destination an `OnFailure.Destination` ARN names, with a client in its region (on
    `endpoint_url` when given: a local endpoint)."""
    parsed = Arn.parse(arn)
    service, region = parsed.service, parsed.region
    if service == "sqs":
        return SqsDestination(
            arn,
            session.client(
                "sqs", region_name=region, endpoint_url=service_endpoint("sqs", endpoint_url)
            ),
        )
    if service == "sns":
        return SnsDestination(
            arn,
            session.client(
                "sns", region_name=region, endpoint_url=service_endpoint("sns", endpoint_url)
            ),
        )
    if service == "s3":
        s3 = session.client("s3", endpoint_url=service_endpoint("s3", endpoint_url))
        return S3Destination(arn, s3, mapping_id=mapping_id)
    raise ValueError(f"not an SQS, SNS or S3 ARN: {arn!r}")
