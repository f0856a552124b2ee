"""The dead-letter message (version 1) and the queue that keeps parked records durably.

One SQS message per parked record, carrying the record exactly as received, the error with its
traceback, and where it came from (DESIGN.md, "Dead-letter message"). A message larger than the
queue accepts goes to the overflow bucket (`DEAD_LETTER_BUCKET`), and the queue gets a pointer
to it. Without a bucket such a record is *not* parked: a record is never acknowledged where it
cannot be read back.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final, Literal, Protocol, get_args

import boto3
from botocore.exceptions import BotoCoreError, ClientError

from streams.backoff import Backoff
from streams.errors import UserError
from streams.queues import SQS_BATCH_ENTRIES

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_sqs import SQSClient
    from mypy_boto3_sqs.type_defs import SendMessageBatchRequestEntryTypeDef

    from streams.records import StreamRecord

__all__ = [
    "OVERFLOW_PREFIX",
    "REASONS",
    "DeadLetter",
    "DeadLetterSink",
    "ErrorInfo",
    "FunctionInfo",
    "MalformedDeadLetter",
    "Reason",
    "SqsDeadLetterQueue",
    "dead_letter_message",
    "read_dead_letter",
]

#: Where the producer puts messages too large for the queue, inside its bucket.
OVERFLOW_PREFIX: Final = "dead-letters/"

Reason = Literal["poison", "too-old", "hydrated", "backfill"]
REASONS: Final[tuple[Reason, ...]] = get_args(Reason)
MESSAGE_VERSION = 1
#: What SQS accepted before its 2025 raise to 1 MiB: used when the queue's own limit is unknown.
SQS_CONSERVATIVE_MAX_BYTES = 262_144

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ErrorInfo:
    type: str
    message: str
    traceback: str

    @classmethod
    def from_exception(cls, error: BaseException, formatted_traceback: str) -> ErrorInfo:
        return cls(type(error).__name__, str(error), formatted_traceback)


@dataclass(frozen=True)
class FunctionInfo:
    """Which function parked the record (from the Lambda context when there is one)."""

    name: str | None = None
    version: str | None = None
    request_id: str | None = None

    @classmethod
    def from_context(cls, context: object) -> FunctionInfo:
        return cls(
            name=getattr(context, "function_name", None),
            version=getattr(context, "function_version", None),
            request_id=getattr(context, "aws_request_id", None),
        )


@dataclass(frozen=True)
class DeadLetter:
    """A record to park, with why."""

    record: StreamRecord
    reason: Reason
    error: ErrorInfo
    attempts: int
    failed_at: datetime
    function: FunctionInfo
    #: The shard, where the driver knows it and the record does not say (DynamoDB on Lambda).
    shard_id: str | None = None


def _iso(moment: datetime | None, *, millis: bool) -> str | None:
    if moment is None:
        return None
    text = moment.astimezone(UTC).isoformat(timespec="milliseconds" if millis else "seconds")
    return text.replace("+00:00", "Z")


def dead_letter_message(letter: DeadLetter) -> dict[str, Any]:
    """The version-1 dead-letter message of DESIGN.md for one parked record."""
    record = letter.record
    try:
        created = record.record_time
    except ValueError:  # the content is what made it poison; the time is then unknown
        created = None
    return {
        "version": MESSAGE_VERSION,
        "reason": letter.reason,
        "source": record.source,
        "eventSourceARN": record.event_source_arn,
        "shardId": letter.shard_id or record.shard_id,
        "sequenceNumber": record.sequence_number,
        "subSequenceNumber": record.sub_sequence_number,
        "eventID": record.event_id,
        "approximateCreationTime": _iso(created, millis=False),
        "record": record.raw,
        "error": {
            "type": letter.error.type,
            "message": letter.error.message,
            "traceback": letter.error.traceback,
        },
        "attempts": letter.attempts,
        "failedAt": _iso(letter.failed_at, millis=True),
        "function": {
            "name": letter.function.name,
            "version": letter.function.version,
            "requestId": letter.function.request_id,
        },
    }


class DeadLetterSink(Protocol):
    """Somewhere parked records are kept durably."""

    def park(self, letters: Sequence[DeadLetter]) -> list[str | None]:
        """Keep every letter durably. One answer per letter, in order: the id it is kept under
        (the SQS MessageId, which `streams dlq show` takes), or None where it could not be kept."""
        ...


def _attributes(letter: DeadLetter) -> dict[str, Any]:
    return {
        "reason": {"DataType": "String", "StringValue": letter.reason},
        "errorType": {"DataType": "String", "StringValue": letter.error.type[:256] or "?"},
        "source": {"DataType": "String", "StringValue": letter.record.source},
    }


def _attributes_size(attributes: Mapping[str, Mapping[str, str]]) -> int:
    # SQS counts each attribute's name, data type and value towards the message size.
    return sum(
        len(name) + len(value["DataType"]) + len(value["StringValue"].encode())
        for name, value in attributes.items()
    )


class SqsDeadLetterQueue:
    """Parks records in an SQS queue, large ones through an S3 bucket.

    Messages go out in `SendMessageBatch` calls of up to 10 entries (and at most the queue's
    maximum message size per call). Entries SQS reports as failed are sent again, up to
    `attempts` times in all, `retry_delay * 2**n` seconds apart.
    """

    def __init__(
        self,
        queue_url: str,
        *,
        bucket: str | None = None,
        sqs: SQSClient | None = None,
        s3: S3Client | None = None,
        attempts: int = 3,
        retry_delay: float = 0.05,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.queue_url = queue_url
        self.bucket = bucket
        self._sqs = sqs
        self._s3 = s3
        self._attempts = attempts
        self._backoff = Backoff(retry_delay, math.inf, jitter=False)
        self._sleep = sleep
        self._max_bytes: int | None = None

    @classmethod
    def from_environment(
        cls,
        environ: Mapping[str, str] = os.environ,
        *,
        sqs: SQSClient | None = None,
        s3: S3Client | None = None,
    ) -> SqsDeadLetterQueue:
        """The queue named by `DEAD_LETTER_QUEUE_URL`, overflowing to `DEAD_LETTER_BUCKET`
        (a function's environment, `os.environ` by default), reached with `sqs` and `s3`
        (default: made on first use)."""
        url = environ.get("DEAD_LETTER_QUEUE_URL")
        if not url:
            raise UserError(
                "DEAD_LETTER_QUEUE_URL is not set: poison records would have nowhere to go. "
                "Set it (the template does) or pass dead_letters= to StreamProcessor."
            )
        return cls(url, bucket=environ.get("DEAD_LETTER_BUCKET") or None, sqs=sqs, s3=s3)

    @property
    def sqs(self) -> SQSClient:
        if self._sqs is None:
            self._sqs = boto3.client("sqs")
        return self._sqs

    @property
    def s3(self) -> S3Client:
        if self._s3 is None:
            self._s3 = boto3.client("s3")
        return self._s3

    @property
    def max_message_bytes(self) -> int:
        """The queue's own `MaximumMessageSize` (asked once), or 256 KiB if it cannot be read."""
        if self._max_bytes is None:
            try:
                attributes = self.sqs.get_queue_attributes(
                    QueueUrl=self.queue_url, AttributeNames=["MaximumMessageSize"]
                )["Attributes"]
                self._max_bytes = int(attributes["MaximumMessageSize"])
            except (ClientError, BotoCoreError, KeyError, ValueError) as error:
                _log.warning(
                    "cannot read the dead-letter queue's MaximumMessageSize (%s); assuming %d",
                    error,
                    SQS_CONSERVATIVE_MAX_BYTES,
                )
                return SQS_CONSERVATIVE_MAX_BYTES
        return self._max_bytes

    def park(self, letters: Sequence[DeadLetter]) -> list[str | None]:
        kept: list[str | None] = [None] * len(letters)
        ready: list[tuple[int, SendMessageBatchRequestEntryTypeDef, int]] = []
        limit = self.max_message_bytes
        for position, letter in enumerate(letters):
            message = dead_letter_message(letter)
            body = json.dumps(message, separators=(",", ":"), default=str)
            attributes = _attributes(letter)
            attributes_size = _attributes_size(attributes)
            size = len(body.encode()) + attributes_size
            if size > limit:
                pointer = self._overflow(letter, message, body)
                if pointer is None:
                    continue
                body = pointer
                size = len(body.encode()) + attributes_size
            entry: SendMessageBatchRequestEntryTypeDef = {
                "Id": str(position),
                "MessageBody": body,
                "MessageAttributes": attributes,
            }
            ready.append((position, entry, size))
        for chunk in _chunks(ready, limit):
            for entry_id, message_id in self._send([entry for _, entry, _ in chunk]).items():
                kept[int(entry_id)] = message_id
        return kept

    def _overflow(self, letter: DeadLetter, message: dict[str, Any], body: str) -> str | None:
        """Store the full message (`body`, `message` serialised) in S3 and return the pointer
        message, or None if it cannot."""
        if self.bucket is None:
            _log.error(
                "dead-letter message too large for the queue and DEAD_LETTER_BUCKET is not set: "
                "record not parked (it will be delivered again)",
                extra={"record": letter.record.log_fields()},
            )
            return None
        key = f"{OVERFLOW_PREFIX}{letter.failed_at:%Y/%m/%d}/{uuid.uuid4().hex}.json"
        try:
            self.s3.put_object(
                Bucket=self.bucket, Key=key, Body=body.encode(), ContentType="application/json"
            )
        except (ClientError, BotoCoreError) as error:
            _log.error(
                "cannot store a large dead-letter message in the overflow bucket: %s",
                error,
                extra={"record": letter.record.log_fields()},
            )
            return None
        pointer = {name: value for name, value in message.items() if name != "record"}
        pointer["error"] = {
            "type": letter.error.type,
            "message": letter.error.message[:1000],
            "traceback": None,
        }
        pointer["overflow"] = {"bucket": self.bucket, "key": key}
        return json.dumps(pointer, separators=(",", ":"), default=str)

    def _send(self, entries: list[SendMessageBatchRequestEntryTypeDef]) -> dict[str, str]:
        """Send until SQS took every entry or the attempts are spent: the MessageId of each
        entry it took, by entry Id."""
        pending = {entry["Id"]: entry for entry in entries}
        sent: dict[str, str] = {}
        for attempt in range(self._attempts):
            if attempt:
                self._sleep(self._backoff.delay(attempt - 1))
            try:
                response = self.sqs.send_message_batch(
                    QueueUrl=self.queue_url, Entries=list(pending.values())
                )
            except (ClientError, BotoCoreError) as error:
                _log.error("cannot send to the dead-letter queue: %s", error)
                continue
            for done in response.get("Successful", []):
                if pending.pop(done["Id"], None) is not None:
                    sent[done["Id"]] = done["MessageId"]
            for failure in response.get("Failed", []):
                _log.error(
                    "the dead-letter queue refused a message: %s %s",
                    failure.get("Code"),
                    failure.get("Message"),
                )
            if not pending:
                break
        return sent


def _chunks(
    ready: list[tuple[int, SendMessageBatchRequestEntryTypeDef, int]], limit: int
) -> list[list[tuple[int, SendMessageBatchRequestEntryTypeDef, int]]]:
    """Groups of at most 10 entries whose sizes add up to at most `limit` bytes (SQS's rules)."""
    chunks: list[list[tuple[int, SendMessageBatchRequestEntryTypeDef, int]]] = []
    current: list[tuple[int, SendMessageBatchRequestEntryTypeDef, int]] = []
    total = 0
    for item in ready:
        size = item[2]
        if current and (len(current) == SQS_BATCH_ENTRIES or total + size > limit):
            chunks.append(current)
            current, total = [], 0
        current.append(item)
        total += size
    if current:
        chunks.append(current)
    return chunks


class MalformedDeadLetter(ValueError):
    """A dead-letter message that is not one this library wrote (the reason says why, without
    repeating any of the message's content)."""


def read_dead_letter(
    body: str, s3: S3Client | None = None, *, bucket: str | None = None
) -> dict[str, Any]:
    """A dead-letter message from its SQS body, following an overflow pointer to S3.

    A pointer is followed only into `bucket` (the producer's `DEAD_LETTER_BUCKET`) and only
    under `dead-letters/`: a message cannot make the reader fetch anything else. Raises
    `MalformedDeadLetter` for a body that is not a JSON object, a pointer elsewhere (or with no
    `bucket` given) and a pointer whose object is missing.
    """
    message = _json_object(body, "the message body")
    overflow = message.get("overflow")
    if overflow is None:
        return message
    if not isinstance(overflow, dict) or not all(
        isinstance(overflow.get(name), str) for name in ("bucket", "key")
    ):
        raise MalformedDeadLetter("an overflow pointer without a bucket and a key")
    if bucket is None:
        raise MalformedDeadLetter("an overflow pointer, but no overflow bucket is known to follow")
    if overflow["bucket"] != bucket or not overflow["key"].startswith(OVERFLOW_PREFIX):
        raise MalformedDeadLetter(
            f"an overflow pointer outside s3://{bucket}/{OVERFLOW_PREFIX}: not followed"
        )
    client = s3 if s3 is not None else boto3.client("s3")
    try:
        stored = client.get_object(Bucket=bucket, Key=overflow["key"])["Body"].read()
    except ClientError as error:
        code = error.response.get("Error", {}).get("Code", "")
        if code in {"NoSuchKey", "404", "NotFound"}:
            raise MalformedDeadLetter("its overflow object is missing") from None
        raise
    return _json_object(stored, "the overflow object")


def _json_object(text: str | bytes, what: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        raise MalformedDeadLetter(f"{what} is not JSON") from None
    if not isinstance(value, dict):
        raise MalformedDeadLetter(f"{what} is not a JSON object")
    return value
