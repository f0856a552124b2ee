"""The worked example: project the naughty-and-nice list into the delivery table.

The source table (key `childId`) holds `name`, `status` ("nice" or "naughty"), `region` and
`address` (a map). Every change is projected into the delivery table (key `childId`) with
`status`, `region`, `address` and the stream sequence number it came from, zero-padded to 40
characters so that string order is number order (sequence numbers have up to 40 digits, more
than a DynamoDB number holds).

A write applies only if its sequence number is newer than the stored one (a conditional write),
so replays, duplicates and redriven records are harmless. Fed from a Kinesis data stream
(Kinesis Data Streams for DynamoDB) it orders by the change's creation time instead, in
microseconds, padded the same way: there, changes of one item may arrive out of order or twice,
and Kinesis sequence numbers follow arrival, not the order the item changed in.

A REMOVE leaves a tombstone (`deleted: true`, the sequence number, and `expiresAt` for the
table's TTL) so that a replayed older change cannot bring the child back; readers treat
tombstones as absent.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import boto3
from boto3.dynamodb.types import TypeDeserializer, TypeSerializer

from streams import DynamoDBChange, DynamoDBRecord, KinesisRecord, Poison

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

STATUSES = frozenset({"nice", "naughty"})
SEQUENCE_DIGITS = 40
#: Outlives any replay: the stream keeps records 24 h, the dead-letter queue 14 days.
TOMBSTONE_LIFETIME = timedelta(days=15)
_NEWER = "attribute_not_exists(childId) OR sequenceNumber < :sequence"

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_serialize = TypeSerializer().serialize
_deserialize = TypeDeserializer().deserialize


def padded_sequence(sequence_number: str) -> str:
    if not sequence_number.isdigit() or len(sequence_number) > SEQUENCE_DIGITS:
        raise Poison(f"sequence number is not a number of at most {SEQUENCE_DIGITS} digits")
    return sequence_number.zfill(SEQUENCE_DIGITS)


class DeliveryProjection:
    """The per-record handler: one conditional write per change."""

    def __init__(
        self,
        table_name: str,
        *,
        client: DynamoDBClient | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.table_name = table_name
        self.client = client if client is not None else boto3.client("dynamodb")
        self._clock = clock

    def __call__(self, record: DynamoDBRecord | KinesisRecord) -> None:
        change, order = _change_and_order(record)
        child_id = change.keys.get("childId")
        if not isinstance(child_id, str) or not child_id:
            raise Poison("record has no string childId key")
        sequence = padded_sequence(order)
        if change.event_name == "REMOVE":
            item: dict[str, Any] = {
                "childId": child_id,
                "deleted": True,
                "sequenceNumber": sequence,
                "expiresAt": int(self._clock() + TOMBSTONE_LIFETIME.total_seconds()),
            }
        else:
            item = {"childId": child_id, "sequenceNumber": sequence, **_projected(change)}
        # A newer change already there means this one is a replay or a duplicate: nothing to do.
        with contextlib.suppress(self.client.exceptions.ConditionalCheckFailedException):
            self.client.put_item(
                TableName=self.table_name,
                Item={name: _serialize(value) for name, value in item.items()},
                ConditionExpression=_NEWER,
                ExpressionAttributeValues={":sequence": {"S": sequence}},
            )


def _change_and_order(
    record: DynamoDBRecord | KinesisRecord,
) -> tuple[DynamoDBRecord | DynamoDBChange, str]:
    """The change and what orders it: the stream's sequence number on DynamoDB Streams; on
    Kinesis, the change's creation time in microseconds (ties at millisecond precision are
    taken as the same change: set the table's precision to MICROSECOND)."""
    if isinstance(record, DynamoDBRecord):
        return record, record.sequence_number
    change = record.dynamodb
    created = change.approximate_creation_time
    if created is None:
        raise Poison("change without ApproximateCreationDateTime: it cannot be ordered")
    micros = (created - _EPOCH) // timedelta(microseconds=1)
    return change, str(micros)


def _projected(record: DynamoDBRecord | DynamoDBChange) -> dict[str, Any]:
    image = record.new_image
    if image is None:
        raise Poison(f"{record.event_name} without a new image (the stream must include NEW_IMAGE)")
    status = image.get("status")
    if status not in STATUSES:
        raise Poison(f"unknown status {status!r:.40}")
    address = image.get("address")
    if not isinstance(address, Mapping):
        raise Poison("update without an address")
    projected: dict[str, Any] = {"status": status, "address": dict(address), "deleted": False}
    region = image.get("region")
    if region is not None:
        projected["region"] = region
    return projected


def read_child(client: DynamoDBClient, table_name: str, child_id: str) -> dict[str, Any] | None:
    """A child as the delivery table has it, or None (absent or deleted)."""
    item = client.get_item(
        TableName=table_name, Key={"childId": {"S": child_id}}, ConsistentRead=True
    )
    stored = item.get("Item")
    if stored is None:
        return None
    child = {name: _deserialize(value) for name, value in stored.items()}
    return None if child.get("deleted") else child
