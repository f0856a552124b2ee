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
from streams.deadletter import MalformedDeadLetter, SqsDeadLetterQueue, read_dead_letter
from streams.errors import UserError
from streams.queues import drain
from streams.records import DynamoDBRecord, KinesisRecord, RecordDecodeError, StreamRecord

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_sqs import SQSClient

__all__ = ["DeadLetterQueueReader", "ParkedMessage", "RedriveReport", "redrive", "sort_for_redrive"]

#: How long received messages stay invisible to other readers while this one works on them.
DEFAULT_VISIBILITY_SECONDS = 900


@dataclass(frozen=True)
class ParkedMessage:
    """One dead-letter message as received (the S3 pointer already followed)."""

    message_id: str
    receipt_handle: str
    body: dict[str, Any]
    #: Why the message is not a dead letter this reader can use (None when it is): it is
    #: listed as malformed, never replayed, and stays in the queue. The reason holds no content.
    malformed: str | None = None

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
        bucket: str | None = None,
        visibility_seconds: int = DEFAULT_VISIBILITY_SECONDS,
    ) -> None:
        self.queue_url = queue_url
        self.sqs = sqs
        self.s3 = s3
        self.bucket = bucket  # the only bucket an overflow pointer is followed into
        self.visibility_seconds = visibility_seconds

    def receive_all(self, limit: int | None = None) -> list[ParkedMessage]:
        """Every visible message (up to `limit`), now invisible to others until released.

        A message that cannot be read as a dead letter comes back with `malformed` set; if
        receiving fails part way, what was received is released before the error goes on."""
        messages: list[ParkedMessage] = []
        try:
            for message in drain(
                self.sqs,
                self.queue_url,
                visibility_seconds=self.visibility_seconds,
                limit=limit,
                attributes=True,
            ):
                # One at a time (not extend): what was received before a failure is released.
                messages.append(  # noqa: PERF401
                    self._parse(message["MessageId"], message["ReceiptHandle"], message["Body"])
                )
        except BaseException as error:
            self.release(messages)
            if isinstance(error, ClientError):
                raise _queue_error(self.queue_url, error) from None
            raise
        return messages

    def _parse(self, message_id: str, receipt_handle: str, text: str) -> ParkedMessage:
        try:
            body = read_dead_letter(text, self.s3, bucket=self.bucket)
            _check_fields(body)
        except MalformedDeadLetter as error:
            return ParkedMessage(message_id, receipt_handle, {}, malformed=str(error))
        return ParkedMessage(message_id, receipt_handle, body)

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


def _check_fields(body: dict[str, Any]) -> None:
    """The fields the tools rely on have their types (DESIGN.md's version-1 message)."""
    if not isinstance(body.get("record"), dict):
        raise MalformedDeadLetter("its record is not a JSON object")
    sub = body.get("subSequenceNumber")
    if sub is not None and (isinstance(sub, bool) or not isinstance(sub, int)):
        raise MalformedDeadLetter("its subSequenceNumber is not a whole number")
    sequence = body.get("sequenceNumber")
    if sequence is not None and not (isinstance(sequence, str) and sequence.isdigit()):
        raise MalformedDeadLetter("its sequenceNumber is not a string of digits")


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
    #: Not replayed, left in the queue: messages that are not dead letters, and records of a
    #: stream other than the one the run expects.
    malformed: list[ParkedMessage] = field(default_factory=list)
    other_source: list[ParkedMessage] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.parked_again or self.left or self.malformed or self.other_source)


def replay_order(messages: Sequence[ParkedMessage]) -> list[list[ParkedMessage]]:
    """Groups of one key each, in stream order, groups in the order their first record parked."""
    groups: dict[str, list[ParkedMessage]] = {}
    for message in sorted(messages, key=lambda m: str(m.body.get("failedAt"))):
        groups.setdefault(message.group(), []).append(message)
    return [sorted(group, key=ParkedMessage.order) for group in groups.values()]


def sort_for_redrive(
    messages: Sequence[ParkedMessage], source_arn: str | None, report: RedriveReport
) -> list[ParkedMessage]:
    """The messages a redrive replays; the malformed ones and those of another stream than
    `source_arn` (when given) go to `report`, never replayed."""
    replayable: list[ParkedMessage] = []
    for message in messages:
        if message.malformed is not None:
            report.malformed.append(message)
        elif source_arn is not None and message.body.get("eventSourceARN") != source_arn:
            report.other_source.append(message)
        else:
            replayable.append(message)
    return replayable


def redrive(
    reader: DeadLetterQueueReader,
    handler: Handler,
    *,
    dead_letters: SqsDeadLetterQueue,
    limit: int | None = None,
    source_arn: str | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> RedriveReport:
    """Replay parked records through `handler`, inside `StreamProcessor` as everywhere.

    Per key, in stream order. A message is deleted only once its record was handled, or parked
    again with its new error (then it is counted as parked again). A record that fails
    transiently stays where it was, with the rest of its key behind it. Malformed messages, and
    records whose `eventSourceARN` is not `source_arn` (when given), are not replayed and stay.
    """
    processor = StreamProcessor(handler, dead_letters=dead_letters, max_record_age=None)
    messages = reader.receive_all(limit)
    report = RedriveReport()
    done = 0
    try:
        replayable = sort_for_redrive(messages, source_arn, report)
        for group in replay_order(replayable):
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
                progress(done, len(replayable))
    finally:
        handled = {id(m) for m in report.replayed + report.parked_again}
        reader.release([m for m in messages if id(m) not in handled])
    return report
