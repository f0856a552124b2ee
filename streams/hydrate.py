"""Turn the event source mapping's on-failure records back into full dead-letter messages.

When Lambda (or our local mapping) gives up on records, its on-failure destination receives
metadata only: the shard and the range of sequence numbers (docs/esm.md section 4). The records
themselves must be read back from the stream while it still has them (24 h on DynamoDB). This
module does that and parks each record with reason `hydrated`; records the stream no longer
has are reported as expired.

Records are taken as gone only on proof: the stream answered that they were trimmed
(`TrimmedDataAccessException`: the reader goes on at the oldest record still there), the shard
no longer exists (`ResourceNotFoundException`), or the reader went past the range's end (a
later record, or the end of a closed shard) without meeting them. A read that was throttled,
failed with a 5xx or a connection error, or found nothing proves nothing: after a few such
reads in a row (`read_attempts`, waiting `backoff` between them) the try gives up with nothing
parked and nothing reported lost, and the on-failure record stays for the next try.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

from botocore.exceptions import BotoCoreError, ClientError

from streams.backoff import Backoff
from streams.batch import TransientErrors
from streams.deadletter import DeadLetter, DeadLetterSink, ErrorInfo, FunctionInfo
from streams.queues import drain
from streams.records import DynamoDBRecord, KinesisRecord, StreamRecord
from streams.sources import (
    DynamoDBStreamSource,
    KinesisStreamSource,
    Position,
    ReadResult,
    ShardReader,
)

if TYPE_CHECKING:
    from mypy_boto3_dynamodbstreams import DynamoDBStreamsClient
    from mypy_boto3_kinesis import KinesisClient
    from mypy_boto3_sqs import SQSClient
    from mypy_boto3_sqs.type_defs import MessageTypeDef

__all__ = [
    "DEFAULT_READ_ATTEMPTS",
    "DEFAULT_READ_BACKOFF",
    "FailedBatch",
    "HydrateOutcome",
    "Hydrator",
    "OnFailureQueue",
    "ReadBack",
    "parse_on_failure",
]

_log = logging.getLogger(__name__)

#: Reads in a row that may fail (throttled, a 5xx, a connection error) or find nothing before a
#: try gives up and leaves its on-failure record for the next one. Botocore has already retried
#: each failed call; the on-failure record's own return (the queue's visibility timeout) is the
#: long wait, so a try does not hold its invocation for long.
DEFAULT_READ_ATTEMPTS = 4
#: The wait between those reads. Hydrate shares the stream with the processor's own mapping
#: (DynamoDB Streams serves about two readers per shard): a throttled hydrate steps back.
DEFAULT_READ_BACKOFF = Backoff(base=0.1, cap=2.0)
_READ_LIMIT = 1000
#: The shard (or the stream) no longer exists: everything it held is gone.
_GONE = "ResourceNotFoundException"


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
    expired: int  # in the batch, but proven no longer in the stream
    refused: int  # read back, but the dead-letter queue did not take them
    #: Reading the range did not finish (throttled, failing, or nothing found yet): nothing
    #: was parked or reported lost, and the on-failure record must stay for the next try.
    unfinished: bool = False

    @property
    def complete(self) -> bool:
        """Everything the stream still had is parked (the on-failure record may go)."""
        return self.refused == 0 and not self.unfinished


@dataclass(frozen=True)
class ReadBack:
    """A failed batch's records as read back: `finished` when the range was read to its end
    (or proven gone), so that records of the batch not in `records` are no longer in the
    stream."""

    records: list[StreamRecord]
    finished: bool


class Hydrator:
    """Reads failed batches back from their streams and parks their records as `hydrated`.

    `backoff` is the wait between reads that failed or found nothing (a throttled read waits it
    inside the shard reader), through `sleep`; `read_attempts` such reads in a row end a try
    unfinished (see the module docstring).
    """

    def __init__(
        self,
        dead_letters: DeadLetterSink,
        *,
        dynamodbstreams: DynamoDBStreamsClient | None = None,
        kinesis: KinesisClient | None = None,
        backoff: Backoff = DEFAULT_READ_BACKOFF,
        sleep: Callable[[float], None] = time.sleep,
        read_attempts: int = DEFAULT_READ_ATTEMPTS,
    ) -> None:
        if read_attempts < 1:
            raise ValueError(f"read_attempts must be at least 1, got {read_attempts}")
        self.dead_letters = dead_letters
        self._dynamodbstreams = dynamodbstreams
        self._kinesis = kinesis
        self._backoff = backoff
        self._sleep = sleep
        self._read_attempts = read_attempts
        self._transient = TransientErrors()
        # One source (and its client) per stream, kept across batches: a warm function
        # hydrating message after message does not build a boto3 client for each.
        self._sources: dict[str, DynamoDBStreamSource | KinesisStreamSource] = {}

    def _source(self, batch: FailedBatch) -> DynamoDBStreamSource | KinesisStreamSource:
        source = self._sources.get(batch.stream_arn)
        if source is None:
            if batch.source == "aws:dynamodb":
                source = DynamoDBStreamSource(
                    batch.stream_arn,
                    client=self._dynamodbstreams,
                    backoff=self._backoff,
                    sleep=self._sleep,
                )
            else:
                source = KinesisStreamSource(
                    batch.stream_arn, client=self._kinesis, backoff=self._backoff, sleep=self._sleep
                )
            self._sources[batch.stream_arn] = source
        return source

    def read_back(self, batch: FailedBatch) -> ReadBack:
        """The batch's records the stream still has, in order, in Lambda's event shape."""
        reader = self._source(batch).open(
            batch.shard_id, Position("AT_SEQUENCE_NUMBER", batch.start_sequence_number)
        )
        first, last = int(batch.start_sequence_number), int(batch.end_sequence_number)
        view = DynamoDBRecord if batch.source == "aws:dynamodb" else KinesisRecord
        found: list[StreamRecord] = []
        misses = 0  # reads in a row that failed or found nothing
        while True:
            try:
                result = self._read(reader)
            except ClientError as error:
                if error.response.get("Error", {}).get("Code") == _GONE:
                    return ReadBack(found, finished=True)
                raise
            if result is None or not (result.records or result.shard_ended):
                misses += 1
                if misses >= self._read_attempts:
                    return ReadBack(found, finished=False)
                if result is None or not result.throttled:  # the reader waited out a throttle
                    self._sleep(self._backoff.delay(misses - 1))
                continue
            misses = 0
            for raw in result.records:
                record = view(raw)
                number = int(record.sequence_number)
                if number > last:
                    return ReadBack(found, finished=True)
                if number >= first:
                    found.append(record)
            if result.shard_ended or (found and int(found[-1].sequence_number) == last):
                return ReadBack(found, finished=True)

    def _read(self, reader: ShardReader) -> ReadResult | None:
        """One read, or None when it failed in a way worth another try (a 5xx, a connection
        error; a throttled read comes back as a `ReadResult`)."""
        try:
            return reader.read(_READ_LIMIT)
        except (ClientError, BotoCoreError) as error:
            if not self._transient(error):
                raise
            _log.warning("reading back a failed batch: %s (trying again)", type(error).__name__)
            return None

    def hydrate(self, batch: FailedBatch) -> HydrateOutcome:
        read = self.read_back(batch)
        if not read.finished:
            # Parking what was found would park it twice after the next try: park nothing.
            return HydrateOutcome(parked=0, expired=0, refused=0, unfinished=True)
        records = read.records
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

    A received message stays invisible for `visibility_seconds`; one that is neither deleted
    nor released (its records could not all be parked) comes back after that, for a later run.
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

    def release(self, message: MessageTypeDef) -> None:
        """Make a message visible again at once (it stays in the queue)."""
        self.sqs.change_message_visibility(
            QueueUrl=self.queue_url, ReceiptHandle=message["ReceiptHandle"], VisibilityTimeout=0
        )
