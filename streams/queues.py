"""SQS, read the way every part of the project reads a queue it drains."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mypy_boto3_sqs import SQSClient
    from mypy_boto3_sqs.type_defs import MessageTypeDef

__all__ = ["SQS_BATCH_ENTRIES", "drain"]

#: SQS's per-call limit on entries (ReceiveMessage, SendMessageBatch, DeleteMessageBatch, ...).
SQS_BATCH_ENTRIES = 10
# SQS samples its servers: one empty answer does not mean an empty queue.
_EMPTY_POLLS = 3


def drain(
    sqs: SQSClient,
    queue_url: str,
    *,
    visibility_seconds: int,
    limit: int | None = None,
    attributes: bool = False,
) -> Iterator[MessageTypeDef]:
    """Every visible message of the queue (up to `limit`), each invisible to others for
    `visibility_seconds` once received. Stops after three empty answers in a row; with
    `attributes`, messages carry their message attributes."""
    received = 0
    empty_polls = 0
    while empty_polls < _EMPTY_POLLS and (limit is None or received < limit):
        count = SQS_BATCH_ENTRIES if limit is None else min(SQS_BATCH_ENTRIES, limit - received)
        messages = sqs.receive_message(
            QueueUrl=queue_url,
            MaxNumberOfMessages=count,
            VisibilityTimeout=visibility_seconds,
            MessageAttributeNames=["All"] if attributes else [],
            WaitTimeSeconds=0,
        ).get("Messages", [])
        empty_polls = 0 if messages else empty_polls + 1
        received += len(messages)
        yield from messages
