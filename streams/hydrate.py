"""Turn the event source mapping's on-failure records back into full dead-letter messages.

When Lambda (or our local mapping) gives up on records, its on-failure destination receives
metadata only: the shard and the range of sequence numbers (docs/esm.md section 4). The records
themselves must be read back from the stream while it still has them (24 h on DynamoDB). This
module does that and parks each record with reason `hydrated`; records the stream no longer
has are reported as expired.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

from botocore.exceptions import ClientError

from streams.deadletter import DeadLetter, DeadLetterSink, ErrorInfo, FunctionInfo
from streams.queues import drain
from streams.records import DynamoDBRecord, KinesisRecord, StreamRecord
from streams.sources import DynamoDBStreamSource, KinesisStreamSource, Position, ShardReader

if TYPE_CHECKING:
    from mypy_boto3_dynamodbstreams import DynamoDBStreamsClient
    from mypy_boto3_kinesis import KinesisClient
    from mypy_boto3_sqs import SQSClient
    from mypy_boto3_sqs.type_defs import MessageTypeDef

__all__ = ["FailedBatch", "HydrateOutcome", "Hydrator", "OnFailureQueue", "parse_on_failure"]

_log = logging.getLogger(__name__)

#: Reads that find nothing before the range is complete: the rest is taken as gone.
_EMPTY_READS_BEFORE_GIVING_UP = 3
_READ_LIMIT = 1000


class NotAnOnFailureRecord(ValueError):
    """A message that is not an event source mapping's on-failure record."""


@dataclass(frozen=True)
class FailedBatch:
    """What an on-failure record says about the records Lambda gave up on."""

    source: Literal["aws:dynamodb", "aws:kinesis"]
    stream_arn: str
    shard_id: str
    start_sequence_number: str
    end_sequence_number: str
    batch_size: int
    condition: str
    function_error: str | None
    invoke_count: int
    function_arn: str | None
    executed_version: str | None
    request_id: str | None
    timestamp: datetime


def _unwrap_sns(body: Mapping[str, Any]) -> Mapping[str, Any]:
    """An SNS destination delivers the record as the notification's Message."""
    if body.get("Type") == "Notification" and isinstance(body.get("Message"), str):
        inner: Mapping[str, Any] = json.loads(body["Message"])
        return inner
    return body


def parse_on_failure(body: str | Mapping[str, Any]) -> FailedBatch:
    """The failed batch an on-failure record (SQS body, or SNS notification) points to."""
    try:
        record = _unwrap_sns(json.loads(body) if isinstance(body, str) else body)
        info: Mapping[str, Any] = record.get("DDBStreamBatchInfo") or record["KinesisBatchInfo"]
        request = record["requestContext"]
        response = record.get("responseContext") or {}  # absent for RecordAgeExceeded
        source: Literal["aws:dynamodb", "aws:kinesis"] = (
            "aws:dynamodb" if "DDBStreamBatchInfo" in record else "aws:kinesis"
        )
        return FailedBatch(
            source=source,
            stream_arn=str(info["streamArn"]),
            shard_id=str(info["shardId"]),
            start_sequence_number=str(info["startSequenceNumber"]),
            end_sequence_number=str(info["endSequenceNumber"]),
            batch_size=int(info["batchSize"]),
            condition=str(request["condition"]),
            function_error=response.get("functionError"),
            invoke_count=int(request.get("approximateInvokeCount") or 0),
            function_arn=request.get("functionArn"),
            executed_version=response.get("executedVersion"),
            request_id=request.get("requestId"),
            timestamp=datetime.fromisoformat(str(record["timestamp"]).replace("Z", "+00:00")),
        )
    except (KeyError, TypeError, ValueError) as error:
        raise NotAnOnFailureRecord(f"not an on-failure record: {error!r}") from None


@dataclass(frozen=True)
class HydrateOutcome:
    parked: int
    expired: int  # in the batch, but no longer in the stream
    refused: int  # read back, but the dead-letter queue did not take them

    @property
    def complete(self) -> bool:
        """Everything the stream still had is parked (the on-failure record may go)."""
        return self.refused == 0


class Hydrator:
    """Reads failed batches back from their streams and parks their records as `hydrated`."""

    def __init__(
        self,
        dead_letters: DeadLetterSink,
        *,
        dynamodbstreams: DynamoDBStreamsClient | None = None,
        kinesis: KinesisClient | None = None,
    ) -> None:
        self.dead_letters = dead_letters
        self._dynamodbstreams = dynamodbstreams
        self._kinesis = kinesis
        # One source (and its client) per stream, kept across batches: a warm function
        # hydrating message after message does not build a boto3 client for each.
        self._sources: dict[str, DynamoDBStreamSource | KinesisStreamSource] = {}

    def _source(self, batch: FailedBatch) -> DynamoDBStreamSource | KinesisStreamSource:
        source = self._sources.get(batch.stream_arn)
        if source is None:
            if batch.source == "aws:dynamodb":
                source = DynamoDBStreamSource(batch.stream_arn, client=self._dynamodbstreams)
            else:
                source = KinesisStreamSource(batch.stream_arn, client=self._kinesis)
            self._sources[batch.stream_arn] = source
        return source

    def read_back(self, batch: FailedBatch) -> list[StreamRecord]:
        """The batch's records the stream still has, in order, in Lambda's event shape."""
        source = self._source(batch)
        try:
            reader = source.open(
                batch.shard_id, Position("AT_SEQUENCE_NUMBER", batch.start_sequence_number)
            )
            return self._collect(reader, batch)
        except ClientError as error:
            code = error.response.get("Error", {}).get("Code", "")
            if code in {"TrimmedDataAccessException", "ResourceNotFoundException"}:
                return []  # past the stream's retention: nothing left to read
            raise

    @staticmethod
    def _collect(reader: ShardReader, batch: FailedBatch) -> list[StreamRecord]:
        first, last = int(batch.start_sequence_number), int(batch.end_sequence_number)
        view = DynamoDBRecord if batch.source == "aws:dynamodb" else KinesisRecord
        found: list[StreamRecord] = []
        empty = 0
        while empty < _EMPTY_READS_BEFORE_GIVING_UP:
            result = reader.read(_READ_LIMIT)
            empty = 0 if result.records else empty + 1
            for raw in result.records:
                record = view(raw)
                number = int(record.sequence_number)
                if number > last:
                    return found
                if number >= first:
                    found.append(record)
            if result.shard_ended or (found and int(found[-1].sequence_number) == last):
                break
        return found

    def hydrate(self, batch: FailedBatch) -> HydrateOutcome:
        records = self.read_back(batch)
        function_name = (batch.function_arn or "").rpartition(":function:")[2] or None
        function = FunctionInfo(function_name, batch.executed_version, batch.request_id)
        error = ErrorInfo(batch.condition, batch.function_error or "", "")
        letters = [
            DeadLetter(
                record=record,
                reason="hydrated",
                error=error,
                attempts=batch.invoke_count,
                failed_at=batch.timestamp.astimezone(UTC),
                function=function,
                shard_id=batch.shard_id,
            )
            for record in records
        ]
        refused = (self.dead_letters.park(letters) if letters else []).count(None)
        return HydrateOutcome(
            parked=len(letters) - refused,
            expired=max(0, batch.batch_size - len(records)),
            refused=refused,
        )


class OnFailureQueue:
    """The mapping's on-failure queue, read one message at a time.

    A received message stays invisible for `visibility_seconds`; one that is not deleted
    (its records could not all be parked) comes back after that, for a later run.
    """

    def __init__(self, queue_url: str, *, sqs: SQSClient, visibility_seconds: int = 300) -> None:
        self.queue_url = queue_url
        self.sqs = sqs
        self.visibility_seconds = visibility_seconds

    def receive_all(self) -> Iterator[tuple[MessageTypeDef, FailedBatch]]:
        for message in drain(self.sqs, self.queue_url, visibility_seconds=self.visibility_seconds):
            try:
                batch = parse_on_failure(message["Body"])
            except NotAnOnFailureRecord as error:
                _log.warning("message %s left in the queue: %s", message["MessageId"], error)
                continue
            yield message, batch

    def delete(self, message: MessageTypeDef) -> None:
        self.sqs.delete_message(QueueUrl=self.queue_url, ReceiptHandle=message["ReceiptHandle"])
