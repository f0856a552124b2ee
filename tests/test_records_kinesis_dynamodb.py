"""DynamoDB changes carried by Kinesis (Kinesis Data Streams for DynamoDB): `.dynamodb`.

moto 5.2 has no `EnableKinesisStreamingDestination`, so the records are built in the shape AWS
documents for them (DynamoDB developer guide, "Using Kinesis Data Streams to capture changes to
DynamoDB"): the Kinesis data is a JSON document with `eventName`, `tableName`, `recordFormat`,
`userIdentity`, `eventSource: aws:dynamodb` and `dynamodb` holding `Keys`, `NewImage`, `OldImage`,
`SizeBytes` and `ApproximateCreationDateTime` in epoch milli- or microseconds.
"""

from __future__ import annotations

import io
import json
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
from aws_lambda_powertools import Logger
from hypothesis import given, settings

from processor.naughty_nice import DeliveryProjection, read_child
from streams import RecordDecodeError, SqsDeadLetterQueue, StreamProcessor
from streams.records import KinesisRecord
from tests import test_naughty_nice
from tests.factories import FakeClock, kinesis_record
from tests.test_naughty_nice import child_image
from tests.test_records import images, oracle

# The worked example's delivery table and dead-letter queue, as its own tests make them.
delivery = test_naughty_nice.delivery
dead_letter_queue = test_naughty_nice.dead_letter_queue

_CREATED_MS = 1_796_400_000_123  # 2026-12-04, milliseconds


def change_document(
    keys: dict[str, Any],
    new_image: dict[str, Any] | None = None,
    old_image: dict[str, Any] | None = None,
    *,
    event_name: str = "MODIFY",
    created: int = _CREATED_MS,
) -> dict[str, Any]:
    data: dict[str, Any] = {"ApproximateCreationDateTime": created, "Keys": keys, "SizeBytes": 99}
    if new_image is not None:
        data["NewImage"] = new_image
    if old_image is not None:
        data["OldImage"] = old_image
    return {
        "awsRegion": "us-east-1",
        "eventID": str(uuid.uuid4()),
        "eventName": event_name,
        "userIdentity": None,
        "recordFormat": "application/json",
        "tableName": "Children",
        "dynamodb": data,
        "eventSource": "aws:dynamodb",
    }


def carried(sequence: int, document: dict[str, Any]) -> dict[str, Any]:
    return kinesis_record(sequence, json.dumps(document).encode())


@given(images, images)
@settings(deadline=None)
def test_a_carried_change_decodes_exactly_as_boto3s_deserializer(
    new: dict[str, Any], old: dict[str, Any]
) -> None:
    keys = {"childId": {"S": "c-1"}}
    record = KinesisRecord(carried(1, change_document(keys, new, old)))
    change = record.dynamodb
    assert dict(change.keys) == {"childId": "c-1"}
    assert change.new_image == {name: oracle(value) for name, value in new.items()}
    assert change.old_image == {name: oracle(value) for name, value in old.items()}
    assert change.event_name == "MODIFY" and change.table_name == "Children"
    assert change.size_bytes == 99


def test_the_creation_time_keeps_the_precision_the_table_sends() -> None:
    keys = {"childId": {"S": "c-1"}}
    millis = KinesisRecord(carried(1, change_document(keys, created=_CREATED_MS))).dynamodb
    micros = KinesisRecord(carried(2, change_document(keys, created=_CREATED_MS * 1000 + 456)))
    expected = datetime.fromtimestamp(_CREATED_MS / 1000, tz=UTC)
    assert millis.approximate_creation_time == expected
    assert micros.dynamodb.approximate_creation_time == expected.replace(
        microsecond=expected.microsecond + 456
    )


@pytest.mark.parametrize(
    "data",
    [b"not json", b"[1]", b'{"eventSource": "aws:kinesis"}', b'{"eventSource": "aws:dynamodb"}'],
)
def test_data_that_is_not_a_dynamodb_change_is_a_decode_error(data: bytes) -> None:
    with pytest.raises(RecordDecodeError):
        _ = KinesisRecord(kinesis_record(1, data)).dynamodb


def test_the_worked_example_on_kinesis_orders_by_creation_time_not_arrival(
    delivery: tuple[Any, str], dead_letter_queue: str
) -> None:
    """Changes of one child arrive out of order and twice (as Kinesis may deliver them): the
    delivery table ends with the newest by creation time; the duplicate changes nothing."""
    client, table = delivery
    clock = FakeClock()
    processor = StreamProcessor(
        DeliveryProjection(table, client=client, clock=clock),
        dead_letters=SqsDeadLetterQueue(dead_letter_queue),
        clock=clock,
        sleep=clock.sleep,
        logger=Logger(service=f"test-{uuid.uuid4().hex}", stream=io.StringIO()),
    )
    keys = {"childId": {"S": "c-1"}}

    def at(micros: int, city: str) -> dict[str, Any]:
        return change_document(keys, child_image("c-1", city=city), created=micros)

    base = _CREATED_MS * 1000
    arrivals = [
        at(base + 3, "Bergen"),
        at(base + 1, "Oslo"),
        at(base + 3, "Bergen"),
        at(base + 2, "Tromsø"),
    ]
    event = {"Records": [carried(n, document) for n, document in enumerate(arrivals, 1)]}

    assert processor.process(event) == {"batchItemFailures": []}
    child = read_child(client, table, "c-1")
    assert child is not None and child["address"]["city"] == "Bergen"
