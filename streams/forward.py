"""`QueueForwarder`: a ready handler that forwards each change to an SQS queue, 10 per call.

```python
forward = QueueForwarder(os.environ["TICKET_QUEUE_URL"], shape=ticket_message)
processor = StreamProcessor(forward)           # the core flushes it before each response
```

Messages are buffered across the records of a batch and sent with `SendMessageBatch` when the
batch core has handled them all (a `BufferingHandler`): a record is acknowledged only once the
queue has its message. What the queue does not take (a refused call, a `Failed` entry, after
`attempts` tries within the invocation's time) is not acknowledged: the batch checkpoints at the
earliest such record and Lambda delivers it again. Calls go out in stream order, and none after
one that did not get through, so nothing later is sent ahead of it.

On a FIFO queue (its URL ends in ``.fifo``):

- the **message group** is the record's key, so the queue keeps each item's changes in stream
  order: a DynamoDB item's key value (one attribute), a Kinesis partition key; a key that is
  not a valid group id (over 128 characters, other characters than SQS allows, a composite key)
  is replaced by the SHA-256 of its canonical JSON. A call never holds two messages of one
  group: a group's message that fails can then never be overtaken by a later one of its group.
- the **deduplication id** is the SHA-256 of the record's stream, event id and sub-sequence
  number, so a batch Lambda delivers again within five minutes (SQS's deduplication interval)
  adds nothing to the queue.

`shape(record)` makes the message body: a string, or a mapping sent as JSON (numbers exact:
whole ones as numbers, others as strings; sets as lists; bytes as base64). By default the body
is the record exactly as Lambda delivered it. A record `shape` cannot shape (it raises), or
whose body the queue can never accept (over `max_message_bytes`, characters SQS refuses), is
poison: parked by the core with its reason.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import boto3
from botocore.exceptions import BotoCoreError, ClientError

from streams.backoff import Backoff
from streams.batch import Poison, time_left
from streams.deadletter import SQS_CONSERVATIVE_MAX_BYTES
from streams.queues import SQS_BATCH_ENTRIES
from streams.records import DynamoDBRecord, StreamRecord

if TYPE_CHECKING:
    from mypy_boto3_sqs import SQSClient
    from mypy_boto3_sqs.type_defs import SendMessageBatchRequestEntryTypeDef

__all__ = ["QueueForwarder", "Shape", "deduplication_id", "message_group_id"]

Shape = Callable[[Any], "str | Mapping[str, Any]"]

_log = logging.getLogger(__name__)

# SQS's limits on MessageGroupId and MessageDeduplicationId: 128 characters, alphanumeric and
# punctuation.
_ID_CHARACTERS = re.compile(r"[A-Za-z0-9!\"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~]{1,128}")
# Characters a message body may hold (SQS SendMessage: #x9, #xA, #xD, #x20 to #xD7FF, #xE000 to
# #xFFFD, #x10000 to #x10FFFF); anything else refuses the message for good.
_REFUSED_CHARACTERS = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def message_group_id(record: StreamRecord) -> str:
    """The FIFO message group of a record: its key (see the module docstring)."""
    if isinstance(record, DynamoDBRecord):
        keys = record.raw.get("dynamodb", {}).get("Keys")
        if isinstance(keys, dict) and len(keys) == 1:
            (typed,) = keys.values()
            if isinstance(typed, dict) and len(typed) == 1:
                (value,) = typed.values()
                if isinstance(value, str) and _ID_CHARACTERS.fullmatch(value):
                    return value
        return _sha256(json.dumps(keys, sort_keys=True, separators=(",", ":")))
    key = record.raw.get("kinesis", {}).get("partitionKey")
    if isinstance(key, str) and _ID_CHARACTERS.fullmatch(key):
        return key
    return _sha256(json.dumps(key))


def deduplication_id(record: StreamRecord) -> str:
    """A FIFO deduplication id unique to the stream record, the same every time it is
    delivered: KPL sub-records share an event id, so their sub-sequence number is in it too."""
    event = record.event_id or record.sequence_number
    return _sha256(f"{record.event_source_arn}|{event}|{record.sub_sequence_number}")


def _json_default(value: object) -> object:
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else str(value)
    if isinstance(value, set | frozenset):
        return sorted(value, key=repr)
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    if isinstance(value, Mapping):
        return dict(value)
    raise TypeError(f"{type(value).__name__} is not JSON")


def _as_received(record: StreamRecord) -> str:
    return json.dumps(record.raw, separators=(",", ":"))


class _Pending:
    __slots__ = ("entry", "group", "record", "size")

    def __init__(
        self,
        record: StreamRecord,
        entry: SendMessageBatchRequestEntryTypeDef,
        group: str | None,
        size: int,
    ) -> None:
        self.record = record
        self.entry = entry
        self.group = group
        self.size = size


class QueueForwarder:
    """Forwards each change to `queue_url`; see the module docstring.

    Thread-safe (a `StreamProcessor` with `concurrency` calls it from several threads). Failed
    calls and entries are tried again up to `attempts` times in all, `backoff` apart, never
    past the invocation's time budget. `client` is a low-level SQS client.
    """

    def __init__(
        self,
        queue_url: str,
        *,
        shape: Shape | None = None,
        client: SQSClient | None = None,
        max_message_bytes: int = SQS_CONSERVATIVE_MAX_BYTES,
        attempts: int = 3,
        backoff: Backoff | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if attempts < 1:
            raise ValueError(f"attempts must be 1 or more, not {attempts}")
        self.queue_url = queue_url
        self.fifo = queue_url.endswith(".fifo")
        self.max_message_bytes = max_message_bytes
        self._shape = shape
        self._client = client
        self._attempts = attempts
        self._backoff = backoff if backoff is not None else Backoff(0.05, 1.0)
        self._sleep = sleep
        self._pending: list[_Pending] = []
        self._lock = threading.Lock()

    @property
    def client(self) -> SQSClient:
        if self._client is None:
            self._client = boto3.client("sqs")
        return self._client

    def __call__(self, record: StreamRecord) -> None:
        """Shape the record's message and keep it for `flush` (raises `Poison` if it cannot)."""
        body = self._body(record)
        size = len(body.encode())
        if size > self.max_message_bytes:
            raise Poison(
                f"the shaped message is {size} bytes, over the queue's {self.max_message_bytes}"
            )
        if _REFUSED_CHARACTERS.search(body):
            raise Poison("the shaped message holds characters SQS never accepts")
        entry: SendMessageBatchRequestEntryTypeDef = {"Id": "0", "MessageBody": body}
        group = None
        if self.fifo:
            group = message_group_id(record)
            entry["MessageGroupId"] = group
            entry["MessageDeduplicationId"] = deduplication_id(record)
        with self._lock:
            self._pending.append(_Pending(record, entry, group, size))

    def _body(self, record: StreamRecord) -> str:
        if self._shape is None:
            return _as_received(record)
        try:
            shaped = self._shape(record)
            if isinstance(shaped, str):
                return shaped
            return json.dumps(shaped, separators=(",", ":"), default=_json_default)
        except Exception as error:  # whatever the hook raises: this record cannot be shaped
            # The type only: the hook's message may quote the record's values.
            raise Poison(
                f"the shape hook could not shape the record: {type(error).__name__}"
            ) from (error)

    def flush(self) -> list[StreamRecord]:
        """Send what is buffered, in order; the records whose messages the queue did not take
        (those refused, and every one after them)."""
        with self._lock:
            pending, self._pending = self._pending, []
        calls = self._calls(pending)
        for index, call in enumerate(calls):
            refused = self._send(call)
            if refused:
                later = [item for rest in calls[index + 1 :] for item in rest]
                return [item.record for item in [*refused, *later]]
        return []

    def discard(self) -> None:
        with self._lock:
            self._pending = []

    def _calls(self, pending: Sequence[_Pending]) -> list[list[_Pending]]:
        """Calls of at most 10 entries and `max_message_bytes` in all (SQS's limits for a
        batch), in order; on a FIFO queue, at most one entry per group in a call."""
        calls: list[list[_Pending]] = []
        current: list[_Pending] = []
        groups: set[str] = set()
        total = 0
        for item in pending:
            if current and (
                len(current) == SQS_BATCH_ENTRIES
                or total + item.size > self.max_message_bytes
                or item.group in groups
            ):
                calls.append(current)
                current, groups, total = [], set(), 0
            current.append(item)
            total += item.size
            if item.group is not None:
                groups.add(item.group)
        if current:
            calls.append(current)
        return calls

    def _send(self, call: list[_Pending]) -> list[_Pending]:
        """One call's entries, tried again while some fail; those the queue never took."""
        waiting = {str(index): item for index, item in enumerate(call)}
        for attempt in range(self._attempts):
            if attempt:
                delay = self._backoff.delay(attempt - 1)
                left = time_left()
                if left is not None and delay >= left:
                    break
                self._sleep(delay)
            entries: list[SendMessageBatchRequestEntryTypeDef] = []
            for id_, item in waiting.items():
                entry = item.entry.copy()
                entry["Id"] = id_
                entries.append(entry)
            try:
                response = self.client.send_message_batch(QueueUrl=self.queue_url, Entries=entries)
            except (ClientError, BotoCoreError) as error:
                _log.warning("the queue refused a call: %s", type(error).__name__)
                continue
            for done in response.get("Successful", []):
                waiting.pop(done["Id"], None)
            for failed in response.get("Failed", []):
                _log.warning(
                    "the queue refused a message: %s (sender fault: %s)",
                    failed.get("Code"),
                    failed.get("SenderFault"),
                )
            if not waiting:
                return []
        return list(waiting.values())
