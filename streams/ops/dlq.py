"""Operations on the dead-letter queue: read parked records back, replay them, purge.

Reading a queue means receiving its messages: they are invisible to other readers until they
are deleted (replayed) or released again (made visible). That is what makes a redrive safe to
run twice or in parallel: no message is replayed twice while it is in flight.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from botocore.exceptions import ClientError

from streams.batch import Handler, StreamProcessor
from streams.deadletter import SqsDeadLetterQueue, read_dead_letter
from streams.errors import UserError
from streams.queues import drain
from streams.records import DynamoDBRecord, KinesisRecord, RecordDecodeError, StreamRecord

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_sqs import SQSClient

__all__ = ["DeadLetterQueueReader", "ParkedMessage", "RedriveReport", "redrive"]

#: How long received messages stay invisible to other readers while this one works on them.
DEFAULT_VISIBILITY_SECONDS = 900


@dataclass(frozen=True)
class ParkedMessage:
    """One dead-letter message as received (the S3 pointer already followed)."""

    message_id: str
    receipt_handle: str
    body: dict[str, Any]

    @property
    def reason(self) -> str:
        return str(self.body.get("reason"))

    @property
    def error_type(self) -> str:
        return str((self.body.get("error") or {}).get("type"))

    @property
    def record(self) -> dict[str, Any]:
        record: dict[str, Any] = self.body.get("record") or {}
        return record

    def keys(self) -> dict[str, Any] | None:
        """The item keys (DynamoDB) or partition key (Kinesis); None when unreadable."""
        try:
            view = self.view()
        except RecordDecodeError:
            return None
        if isinstance(view, DynamoDBRecord):
            try:
                return dict(view.keys)
            except RecordDecodeError:
                return None
        return {"partitionKey": view.raw.get("kinesis", {}).get("partitionKey")}

    def view(self) -> StreamRecord:
        if self.body.get("source") == "aws:kinesis":
            sub = self.body.get("subSequenceNumber")
            return KinesisRecord(self.record, sub_sequence_number=sub)
        return DynamoDBRecord(self.record)

    def order(self) -> tuple[int, int]:
        """Stream order within one key: sequence number, then sub-sequence number."""
        sequence = str(self.body.get("sequenceNumber") or "0")
        sub = self.body.get("subSequenceNumber") or 0
        return (int(sequence) if sequence.isdigit() else 0, int(sub))

    def group(self) -> str:
        """Records of one key of one stream keep their order on replay."""
        return json.dumps(
            [self.body.get("eventSourceARN"), self.keys()], sort_keys=True, default=str
        )


class DeadLetterQueueReader:
    """Receives, releases and deletes dead-letter messages."""

    def __init__(
        self,
        queue_url: str,
        *,
        sqs: SQSClient,
        s3: S3Client | None = None,
        visibility_seconds: int = DEFAULT_VISIBILITY_SECONDS,
    ) -> None:
        self.queue_url = queue_url
        self.sqs = sqs
        self.s3 = s3
        self.visibility_seconds = visibility_seconds

    def receive_all(self, limit: int | None = None) -> list[ParkedMessage]:
        """Every visible message (up to `limit`), now invisible to others until released."""
        messages: list[ParkedMessage] = []
        try:
            for message in drain(
                self.sqs,
                self.queue_url,
                visibility_seconds=self.visibility_seconds,
                limit=limit,
                attributes=True,
            ):
                body = read_dead_letter(message["Body"], self.s3)
                messages.append(ParkedMessage(message["MessageId"], message["ReceiptHandle"], body))
        except ClientError as error:
            raise _queue_error(self.queue_url, error) from None
        return messages

    def peek(self, limit: int | None = None) -> list[ParkedMessage]:
        """Every visible message (up to `limit`), released again at once: they stay parked."""
        messages = self.receive_all(limit)
        self.release(messages)
        return messages

    def release(self, messages: Sequence[ParkedMessage]) -> None:
        """Make messages visible again at once (they stay parked)."""
        for chunk in _chunks(messages):
            self.sqs.change_message_visibility_batch(
                QueueUrl=self.queue_url,
                Entries=[
                    {"Id": str(n), "ReceiptHandle": m.receipt_handle, "VisibilityTimeout": 0}
                    for n, m in enumerate(chunk)
                ],
            )

    def delete(self, messages: Sequence[ParkedMessage]) -> None:
        for chunk in _chunks(messages):
            response = self.sqs.delete_message_batch(
                QueueUrl=self.queue_url,
                Entries=[
                    {"Id": str(n), "ReceiptHandle": m.receipt_handle} for n, m in enumerate(chunk)
                ],
            )
            if response.get("Failed"):
                raise UserError(f"could not delete {len(response['Failed'])} replayed messages")

    def purge(self) -> None:
        try:
            self.sqs.purge_queue(QueueUrl=self.queue_url)
        except ClientError as error:
            raise _queue_error(self.queue_url, error) from None


def _chunks(messages: Sequence[ParkedMessage]) -> Iterator[Sequence[ParkedMessage]]:
    for start in range(0, len(messages), 10):
        yield messages[start : start + 10]


def _queue_error(queue_url: str, error: ClientError) -> UserError:
    code = error.response.get("Error", {}).get("Code", "")
    if "NonExistentQueue" in code or code == "QueueDoesNotExist":
        return UserError(f"no such queue: {queue_url}")
    return UserError(f"the queue {queue_url} refused: {code} {error}")


@dataclass
class RedriveReport:
    replayed: list[ParkedMessage] = field(default_factory=list)
    parked_again: list[ParkedMessage] = field(default_factory=list)
    left: list[ParkedMessage] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.parked_again and not self.left


def replay_order(messages: Sequence[ParkedMessage]) -> list[list[ParkedMessage]]:
    """Groups of one key each, in stream order, groups in the order their first record parked."""
    groups: dict[str, list[ParkedMessage]] = {}
    for message in sorted(messages, key=lambda m: str(m.body.get("failedAt"))):
        groups.setdefault(message.group(), []).append(message)
    return [sorted(group, key=ParkedMessage.order) for group in groups.values()]


def redrive(
    reader: DeadLetterQueueReader,
    handler: Handler,
    *,
    dead_letters: SqsDeadLetterQueue,
    limit: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> RedriveReport:
    """Replay parked records through `handler`, inside `StreamProcessor` as everywhere.

    Per key, in stream order. A message is deleted only once its record was handled, or parked
    again with its new error (then it is counted as parked again). A record that fails
    transiently stays where it was, with the rest of its key behind it.
    """
    processor = StreamProcessor(handler, dead_letters=dead_letters, max_record_age=None)
    messages = reader.receive_all(limit)
    report = RedriveReport()
    done = 0
    try:
        for group in replay_order(messages):
            views: list[StreamRecord] = []
            for message in group:
                try:
                    views.append(message.view())
                except RecordDecodeError:
                    break  # a message without a record: it and its key stay parked
            result = processor.run(views)
            parked_ids = {id(letter.record) for letter in result.parked}
            finished = group[: result.done]
            reader.delete(finished)
            for message, view in zip(finished, views, strict=False):
                (report.parked_again if id(view) in parked_ids else report.replayed).append(message)
            report.left.extend(group[result.done :])
            done += len(group)
            if progress is not None:
                progress(done, len(messages))
    finally:
        handled = {id(m) for m in report.replayed + report.parked_again}
        reader.release([m for m in messages if id(m) not in handled])
    return report
