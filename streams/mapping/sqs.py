"""Lambda's SQS event source mapping, the part a function fed by a queue needs: one poller.

    settings = QueueSettings.from_properties(spec.properties)
    queue = describe_queue(queue_arn, sqs)
    check_queue(settings, queue, function_timeout)        # what CreateEventSourceMapping refuses
    QueuePoller(settings, queue, invoker, sqs=sqs, function_timeout=60).run()

What it does, as Lambda does (AWS Lambda developer guide, "Using Lambda with Amazon SQS"):

- **Polling.** `ReceiveMessage` with every system and message attribute, up to 10 messages a
  call, with long polling (`POLL_WAIT_SECONDS`, short so that `stop()` is noticed). The queue's
  own visibility timeout applies: the poller does not set one.
- **Batching.** A batch is sent when it has `BatchSize` messages, when its batching window
  (`MaximumBatchingWindowInSeconds`, default 0) has passed, or when one more message would take
  the event past Lambda's 6 MB payload limit (that message opens the next batch). With window 0
  a receive that returns one message sends one message. AWS does not say when a window starts;
  here it starts with the batch's first message, so an empty queue never invokes the function.
- **The event** is Lambda's: `Records`, each with `messageId`, `receiptHandle`, `body`,
  `attributes` (the message's system attributes: `ApproximateReceiveCount`, `SentTimestamp`,
  `SenderId`, `ApproximateFirstReceiveTimestamp`, and for FIFO queues `MessageGroupId`,
  `MessageDeduplicationId`, `SequenceNumber`), `messageAttributes` (`stringValue` or
  `binaryValue` in base64, `stringListValues`, `binaryListValues`, `dataType`), `md5OfBody`,
  `md5OfMessageAttributes` (null without attributes), `eventSource` `"aws:sqs"`,
  `eventSourceARN` and `awsRegion`.
- **After the invocation** the messages that succeeded are deleted (`DeleteMessageBatch`):

  | the function | deleted |
  | --- | --- |
  | returns (without `ReportBatchItemFailures`, whatever it returns) | all |
  | returns `batchItemFailures` (with it) | all but the listed `itemIdentifier`s |
  | returns an identifier empty, null, under another key, or not in the batch | none |
  | raises, times out, crashes | none |

  (`itemIdentifier` is the `messageId`.)

  A message that is not deleted comes back after the queue's visibility timeout; the queue's
  redrive policy, if any, moves it to the queue's own dead-letter queue after
  `maxReceiveCount` receives (SQS does that, not the poller). A return value that is not an
  object (`null`, `""`, `[]`) counts as success, as for stream sources (docs/esm.md section 3).
- **Not invoked** (no worker could start): the messages are left in flight and come back after
  the visibility timeout, as after a throttle on AWS.

One poller only (AWS scales pollers with the queue's backlog up to `ScalingConfig`'s
`MaximumConcurrency`); `FilterCriteria` is refused rather than ignored (AWS deletes messages a
filter drops, so ignoring it would deliver them instead).
"""

from __future__ import annotations

import base64
import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from botocore.exceptions import BotoCoreError, ClientError

from streams.arn import Arn
from streams.errors import UserError
from streams.mapping.delivery import PAYLOAD_LIMIT
from streams.mapping.invoke import Event, Invocation, Invoker, NotInvoked
from streams.mapping.responses import interpret
from streams.mapping.settings import (
    SHARED_PROPERTIES,
    STREAM_ONLY_PROPERTIES,
    read_boolean,
    read_integer,
    read_response_types,
    refuse,
)
from streams.mapping.state import MappingObserver
from streams.mapping.stop import Stop
from streams.queues import SQS_BATCH_ENTRIES

if TYPE_CHECKING:
    from mypy_boto3_sqs import SQSClient
    from mypy_boto3_sqs.type_defs import MessageAttributeValueOutputTypeDef, MessageTypeDef

__all__ = [
    "POLL_WAIT_SECONDS",
    "Queue",
    "QueuePoller",
    "QueueSettings",
    "check_queue",
    "describe_queue",
    "lambda_message",
]

logger = logging.getLogger("streams.mapping")

#: Long polling per `ReceiveMessage` (AWS's pollers wait 20 s): short, so `stop()` is noticed.
POLL_WAIT_SECONDS: Final = 1
_EVENT_OVERHEAD: Final = len('{"Records":[]}')
# Properties that change nothing in how messages are polled and delivered here: the mapping's
# identity, its tags and encryption key, the pollers' scaling (one poller runs here) and the
# CloudWatch metrics (not published locally).
_NOT_USED_LOCALLY: Final = frozenset(
    {"EventSourceArn", "FunctionName", "Tags", "KmsKeyArn", "ScalingConfig", "MetricsConfig"}
)


@dataclass(frozen=True)
class QueueSettings:
    """One SQS event source mapping's settings, validated as CreateEventSourceMapping does.

    Field names are the AWS property names in snake case. `report_batch_item_failures` is
    `FunctionResponseTypes: [ReportBatchItemFailures]`.
    """

    batch_size: int = 10
    maximum_batching_window_in_seconds: int = 0
    report_batch_item_failures: bool = False
    enabled: bool = True

    def __post_init__(self) -> None:
        if not 1 <= self.batch_size <= 10_000:
            raise refuse("BatchSize", f"must be between 1 and 10000, got {self.batch_size}")
        window = self.maximum_batching_window_in_seconds
        if not 0 <= window <= 300:
            raise refuse(
                "MaximumBatchingWindowInSeconds", f"must be between 0 and 300, got {window}"
            )
        if self.batch_size > 10 and window < 1:
            raise refuse(
                "MaximumBatchingWindowInSeconds",
                f"must be at least 1 when BatchSize is over 10 (BatchSize {self.batch_size})",
            )

    @classmethod
    def from_properties(cls, properties: Mapping[str, Any]) -> QueueSettings:
        """Settings from `AWS::Lambda::EventSourceMapping` properties; refuses bad values.

        Raises `UserError` naming the first property AWS would refuse, or that is not run
        locally (`FilterCriteria`).
        """
        for name in properties:
            if name in STREAM_ONLY_PROPERTIES:
                raise refuse(name, "not valid for SQS event sources")
            if name == "FilterCriteria":
                raise refuse(
                    name,
                    "not run locally for SQS event sources (AWS deletes the messages a filter "
                    "drops; here they would reach the function): remove it to run locally",
                )
            if name not in _NOT_USED_LOCALLY and name not in SHARED_PROPERTIES:
                raise refuse(name, "unknown property")
        return cls(
            batch_size=read_integer(properties, "BatchSize", 10),
            maximum_batching_window_in_seconds=read_integer(
                properties, "MaximumBatchingWindowInSeconds", 0
            ),
            report_batch_item_failures=read_response_types(properties),
            enabled=read_boolean(properties, "Enabled", True),
        )


@dataclass(frozen=True)
class Queue:
    """The queue an SQS event source reads: its ARN, URL and the attributes the rules need."""

    arn: str
    url: str
    visibility_timeout: int  # seconds
    fifo: bool

    @property
    def name(self) -> str:
        return Arn.parse(self.arn).name


def describe_queue(arn: str, sqs: SQSClient) -> Queue:
    """The queue `arn` names; `UserError` when there is no such queue."""
    parsed = Arn.parse(arn)
    try:
        url = sqs.get_queue_url(QueueName=parsed.name, QueueOwnerAWSAccountId=parsed.account)[
            "QueueUrl"
        ]
        attributes = sqs.get_queue_attributes(
            QueueUrl=url, AttributeNames=["VisibilityTimeout", "FifoQueue"]
        )["Attributes"]
    except ClientError as error:
        raise UserError(f"queue {arn}: {error}") from None
    return Queue(
        arn=arn,
        url=url,
        visibility_timeout=int(attributes.get("VisibilityTimeout", "30")),
        fifo=attributes.get("FifoQueue", "false") == "true",
    )


def check_queue(settings: QueueSettings, queue: Queue, function_timeout: int) -> None:
    """Refuse, as CreateEventSourceMapping does, a queue the function cannot be mapped to."""
    if queue.visibility_timeout < function_timeout:
        # AWS: "Queue visibility timeout: 30 seconds is less than Function timeout: 60 seconds".
        raise UserError(
            f"queue {queue.name}: visibility timeout {queue.visibility_timeout} s is less than "
            f"the function's Timeout {function_timeout} s (Lambda refuses the mapping): raise "
            "the queue's VisibilityTimeout (AWS advises six times the function's Timeout)"
        )
    if queue.fifo and settings.batch_size > 10:
        raise refuse(
            "BatchSize", f"must be between 1 and 10 for a FIFO queue, got {settings.batch_size}"
        )


# --- the event ----------------------------------------------------------------------------


def _message_attribute(value: MessageAttributeValueOutputTypeDef) -> dict[str, Any]:
    """An attribute as Lambda's event spells it (binary values in base64)."""
    converted: dict[str, Any] = {}
    if "StringValue" in value:
        converted["stringValue"] = value["StringValue"]
    if "BinaryValue" in value:
        converted["binaryValue"] = base64.b64encode(value["BinaryValue"]).decode()
    converted["stringListValues"] = list(value.get("StringListValues", []))
    converted["binaryListValues"] = [
        base64.b64encode(item).decode() for item in value.get("BinaryListValues", [])
    ]
    converted["dataType"] = value["DataType"]
    return converted


def lambda_message(message: MessageTypeDef, queue_arn: str) -> dict[str, Any]:
    """One received message as a record of Lambda's SQS event."""
    return {
        "messageId": message["MessageId"],
        "receiptHandle": message["ReceiptHandle"],
        "body": message["Body"],
        "attributes": dict(message.get("Attributes", {})),
        "messageAttributes": {
            name: _message_attribute(value)
            for name, value in message.get("MessageAttributes", {}).items()
        },
        "md5OfMessageAttributes": message.get("MD5OfMessageAttributes"),
        "md5OfBody": message["MD5OfBody"],
        "eventSource": "aws:sqs",
        "eventSourceARN": queue_arn,
        "awsRegion": Arn.parse(queue_arn).region,
    }


@dataclass(frozen=True)
class _Message:
    """One received message as a record of the event, and that record's JSON, made once."""

    record: dict[str, Any]
    text: str

    @classmethod
    def of(cls, message: MessageTypeDef, queue_arn: str) -> _Message:
        record = lambda_message(message, queue_arn)
        return cls(record, json.dumps(record, separators=(",", ":")))

    @property
    def size(self) -> int:
        """Bytes the record takes in the event's JSON, with its separating comma."""
        return len(self.text) + 1


# --- the poller ---------------------------------------------------------------------------


class QueuePoller:
    """Polls `queue` and runs `invoker` on its messages with the rules of `settings`.

    - `sqs` is the queue's client; `function_timeout` the function's `Timeout`, passed to the
      invoker as its deadline.
    - `clock` (epoch seconds) and `sleep`: batching windows and idleness follow `clock`; waits
      between receives sleep through `sleep`. A receive itself waits on the queue for at most
      `poll_wait_seconds` (0: short polling).
    - `observer` is told each invocation (an `Invocation` whose `shard_id` is None and whose
      `source_arn` is the queue's).
    """

    def __init__(
        self,
        settings: QueueSettings,
        queue: Queue,
        invoker: Invoker,
        *,
        sqs: SQSClient,
        function_timeout: float,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
        poll_wait_seconds: int = POLL_WAIT_SECONDS,
        observer: MappingObserver | None = None,
    ) -> None:
        if not 0 <= poll_wait_seconds <= 20:
            raise ValueError(f"poll_wait_seconds {poll_wait_seconds}: SQS allows 0 to 20")
        self.settings = settings
        self.queue = queue
        self._invoker = invoker
        self._sqs = sqs
        self._function_timeout = function_timeout
        self._clock = clock
        self._poll_wait = poll_wait_seconds
        self._observer = observer or MappingObserver()
        self._stop = Stop(sleep)
        # Received messages that did not fit their batch (6 MB): they open the next one.
        self._carried: list[_Message] = []
        self._ran = False

    def stop(self) -> None:
        """Stop (thread-safe): the invocation under way finishes; `run` then returns."""
        self._stop.set()

    def run(self, *, exit_when_idle: float | None = None) -> None:
        """Poll until `stop()`, or until no message has come for `exit_when_idle` seconds.

        An error of SQS (after botocore's retries) stops the poller and is raised here.
        Messages received but not delivered when it stops come back after the visibility timeout.
        """
        if self._ran:
            raise RuntimeError("a QueuePoller runs once: make a new one to run again")
        self._ran = True
        if not self.settings.enabled:
            logger.info("queue %s: the mapping is disabled (Enabled: false)", self.queue.name)
            return
        idle_since = self._clock()
        while not self._stop.is_set():
            batch = self._collect()
            if batch:
                self._deliver(batch)
                idle_since = self._clock()
            elif exit_when_idle is not None and self._clock() - idle_since >= exit_when_idle:
                logger.info("queue %s: idle for %ss, stopping", self.queue.name, exit_when_idle)
                return

    # --- batching ------------------------------------------------------------------------

    def _receive(self, limit: int, wait: int) -> list[MessageTypeDef]:
        return self._sqs.receive_message(
            QueueUrl=self.queue.url,
            MaxNumberOfMessages=min(limit, SQS_BATCH_ENTRIES),
            WaitTimeSeconds=wait,
            MessageSystemAttributeNames=["All"],
            MessageAttributeNames=["All"],
        ).get("Messages", [])

    def _collect(self) -> list[_Message]:
        """The next batch: `BatchSize` messages, the window's, or up to the payload limit."""
        settings = self.settings
        batch: list[_Message] = []
        size = _EVENT_OVERHEAD
        window_ends: float | None = None
        while len(batch) < settings.batch_size and not self._stop.is_set():
            if self._carried:
                received, self._carried = self._carried, []
            else:
                if window_ends is None:
                    wait = self._poll_wait
                else:
                    left = window_ends - self._clock()
                    if left <= 0:
                        break
                    wait = int(min(self._poll_wait, left))
                messages = self._receive(settings.batch_size - len(batch), wait)
                if not messages:
                    if window_ends is None:
                        return batch  # nothing came: the caller checks idleness and stop
                    if wait == 0:
                        self._stop.pause(window_ends - self._clock())
                    continue
                received = [_Message.of(message, self.queue.arn) for message in messages]
            if window_ends is None:
                window_ends = self._clock() + settings.maximum_batching_window_in_seconds
            for index, message in enumerate(received):
                if batch and size + message.size > PAYLOAD_LIMIT:
                    self._carried = received[index:]
                    return batch
                batch.append(message)
                size += message.size
            if settings.maximum_batching_window_in_seconds == 0:
                break
        return batch

    # --- delivery ------------------------------------------------------------------------

    def _deliver(self, batch: list[_Message]) -> None:
        message_ids = [message.record["messageId"] for message in batch]
        sent = self._clock()
        try:
            result = self._invoker(
                Event.of_records([message.text for message in batch]), self._function_timeout
            )
        except NotInvoked as error:
            logger.warning(
                "queue %s: function not invoked (%s); its %d messages come back after the "
                "visibility timeout (%d s)",
                self.queue.name,
                error,
                len(batch),
                self.queue.visibility_timeout,
            )
            return
        outcome = interpret(
            result,
            message_ids,
            report_batch_item_failures=self.settings.report_batch_item_failures,
            item="message",
        )
        self._delete([m.record for index, m in enumerate(batch) if index not in outcome.failed])
        duration = self._clock() - sent
        logger.info(
            "queue %s: %d messages: %s (%.0f ms, request %s)",
            self.queue.name,
            len(batch),
            outcome.description,
            duration * 1000,
            result.request_id,
        )
        self._observer.invoked(
            Invocation(
                None,
                len(batch),
                outcome.description,
                outcome.succeeded,
                duration,
                result,
                source_arn=self.queue.arn,
            )
        )

    def _delete(self, records: Sequence[Mapping[str, Any]]) -> None:
        """Delete the messages that succeeded. One that cannot be deleted is delivered again
        after the visibility timeout (a duplicate, never a loss), so it is only logged."""
        for start in range(0, len(records), SQS_BATCH_ENTRIES):
            chunk = records[start : start + SQS_BATCH_ENTRIES]
            try:
                failed = self._sqs.delete_message_batch(
                    QueueUrl=self.queue.url,
                    Entries=[
                        {"Id": str(index), "ReceiptHandle": record["receiptHandle"]}
                        for index, record in enumerate(chunk)
                    ],
                ).get("Failed", [])
            except (BotoCoreError, ClientError) as error:
                logger.warning(
                    "queue %s: %d messages not deleted (%s): they will be delivered again",
                    self.queue.name,
                    len(chunk),
                    error,
                )
                continue
            for entry in failed:
                logger.warning(
                    "queue %s: message %s not deleted (%s): it will be delivered again",
                    self.queue.name,
                    chunk[int(entry["Id"])]["messageId"],
                    entry.get("Code"),
                )
