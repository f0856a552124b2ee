"""The worked example against a real delivery table (and dead-letter queue) on moto's server."""

from __future__ import annotations

import importlib
import io
import json
import sys
import uuid
from typing import Any

import boto3
import pytest
from aws_lambda_powertools import Logger

from processor.naughty_nice import TOMBSTONE_LIFETIME, DeliveryProjection, read_child
from streams import SqsDeadLetterQueue, StreamProcessor, read_dead_letter
from tests.factories import NOW, FakeClock, dynamodb_record


def child_image(
    child: str, status: str = "nice", city: str = "Oslo", **extra: Any
) -> dict[str, Any]:
    image: dict[str, Any] = {
        "childId": {"S": child},
        "name": {"S": "Ada"},
        "status": {"S": status},
        "region": {"S": "north"},
        "address": {"M": {"city": {"S": city}, "street": {"S": "Main 1"}}},
    }
    image.update(extra)
    return image


def change(sequence: int, child: str, event_name: str = "MODIFY", **image: Any) -> dict[str, Any]:
    if event_name == "REMOVE":
        return dynamodb_record(sequence, child=child, event_name="REMOVE")
    return dynamodb_record(
        sequence, child=child, event_name=event_name, new_image=child_image(child, **image)
    )


@pytest.fixture
def delivery(aws: boto3.Session, unique_name: str) -> tuple[Any, str]:
    client = aws.client("dynamodb")
    client.create_table(
        TableName=unique_name,
        KeySchema=[{"AttributeName": "childId", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "childId", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    )
    return client, unique_name


@pytest.fixture
def dead_letter_queue(aws: boto3.Session, unique_name: str) -> str:
    url: str = aws.client("sqs").create_queue(QueueName=f"{unique_name}-dlq")["QueueUrl"]
    return url


def run(processor: StreamProcessor, *records: dict[str, Any]) -> dict[str, Any]:
    return processor.process({"Records": list(records)})


@pytest.fixture
def processor(delivery: tuple[Any, str], dead_letter_queue: str) -> StreamProcessor:
    client, table = delivery
    clock = FakeClock()
    return StreamProcessor(
        DeliveryProjection(table, client=client, clock=clock),
        dead_letters=SqsDeadLetterQueue(dead_letter_queue),
        clock=clock,
        sleep=clock.sleep,
        logger=Logger(service=f"test-{uuid.uuid4().hex}", stream=io.StringIO()),
    )


def test_inserts_and_modifies_leave_the_newest_change_per_child(
    processor: StreamProcessor, delivery: tuple[Any, str]
) -> None:
    client, table = delivery
    run(
        processor,
        change(1, "c-1", "INSERT", status="nice", city="Oslo"),
        change(2, "c-2", "INSERT", status="naughty"),
        change(3, "c-1", status="naughty", city="Bergen"),
    )
    c1 = read_child(client, table, "c-1")
    assert c1 == {
        "childId": "c-1",
        "status": "naughty",
        "region": "north",
        "address": {"city": "Bergen", "street": "Main 1"},
        "sequenceNumber": "3".zfill(40),
        "deleted": False,
    }
    assert read_child(client, table, "c-2")["status"] == "naughty"  # type: ignore[index]


def test_a_replayed_older_change_does_not_overwrite_a_newer_one(
    processor: StreamProcessor, delivery: tuple[Any, str]
) -> None:
    client, table = delivery
    run(processor, change(10, "c-1", city="Newer"))
    run(processor, change(9, "c-1", city="Older"), change(10, "c-1", city="Newer"))  # replay
    assert read_child(client, table, "c-1")["address"]["city"] == "Newer"  # type: ignore[index]


def test_sequence_numbers_compare_as_numbers_not_as_text(
    processor: StreamProcessor, delivery: tuple[Any, str]
) -> None:
    client, table = delivery
    run(processor, change(100, "c-1", city="Hundred"))
    run(processor, change(99, "c-1", city="NinetyNine"))  # "99" > "100" as text, not as numbers
    assert read_child(client, table, "c-1")["address"]["city"] == "Hundred"  # type: ignore[index]


def test_a_remove_leaves_a_tombstone_that_older_replays_cannot_undo(
    processor: StreamProcessor, delivery: tuple[Any, str]
) -> None:
    client, table = delivery
    run(processor, change(1, "c-1", "INSERT"), change(2, "c-1", "REMOVE"))
    assert read_child(client, table, "c-1") is None
    run(processor, change(1, "c-1", "INSERT"))  # replay of the insert
    assert read_child(client, table, "c-1") is None
    stored = client.get_item(TableName=table, Key={"childId": {"S": "c-1"}})["Item"]
    assert stored["deleted"] == {"BOOL": True}
    assert stored["sequenceNumber"] == {"S": "2".zfill(40)}
    assert int(stored["expiresAt"]["N"]) == int(NOW + TOMBSTONE_LIFETIME.total_seconds())
    # A newer insert brings the child back.
    run(processor, change(3, "c-1", "INSERT", city="Back"))
    assert read_child(client, table, "c-1")["address"]["city"] == "Back"  # type: ignore[index]


def test_unknown_status_or_missing_address_is_poison_and_the_rest_is_delivered(
    processor: StreamProcessor,
    delivery: tuple[Any, str],
    dead_letter_queue: str,
    aws: boto3.Session,
) -> None:
    client, table = delivery
    no_address = child_image("c-2")
    del no_address["address"]
    response = run(
        processor,
        change(1, "c-1", status="good-ish"),
        dynamodb_record(2, child="c-2", new_image=no_address),
        change(3, "c-3"),
    )
    assert response == {"batchItemFailures": []}
    assert read_child(client, table, "c-1") is None
    assert read_child(client, table, "c-2") is None
    assert read_child(client, table, "c-3") is not None
    messages = aws.client("sqs").receive_message(QueueUrl=dead_letter_queue, MaxNumberOfMessages=10)
    reasons = sorted(read_dead_letter(m["Body"])["error"]["message"] for m in messages["Messages"])
    assert reasons == ["unknown status 'good-ish'", "update without an address"]


def test_a_redriven_record_is_applied_only_if_still_newest(
    processor: StreamProcessor,
    delivery: tuple[Any, str],
    dead_letter_queue: str,
    aws: boto3.Session,
) -> None:
    client, table = delivery
    sqs = aws.client("sqs")
    broken = change(5, "c-1", status="nice")
    broken["dynamodb"]["NewImage"]["address"] = {"S": "not a map"}
    run(processor, change(4, "c-1", city="Four"), broken, change(7, "c-2", city="Seven"))
    (message,) = sqs.receive_message(QueueUrl=dead_letter_queue)["Messages"]
    parked = read_dead_letter(message["Body"])["record"]

    # The bug is fixed (here: the record's address is mended); redrive replays the record as parked.
    parked["dynamodb"]["NewImage"]["address"] = {"M": {"city": {"S": "Five"}}}
    assert run(processor, parked) == {"batchItemFailures": []}
    assert read_child(client, table, "c-1")["address"] == {"city": "Five"}  # type: ignore[index]

    # Redriving it after a newer change was applied changes nothing.
    run(processor, change(6, "c-1", city="Six"))
    run(processor, parked)
    assert read_child(client, table, "c-1")["address"]["city"] == "Six"  # type: ignore[index]


def test_the_lambda_handler_wires_the_projection_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
    delivery: tuple[Any, str],
    dead_letter_queue: str,
) -> None:
    client, table = delivery
    monkeypatch.setenv("DELIVERY_TABLE_NAME", table)
    monkeypatch.setenv("DEAD_LETTER_QUEUE_URL", dead_letter_queue)
    monkeypatch.delitem(sys.modules, "processor.app", raising=False)
    app = importlib.import_module("processor.app")
    response = app.lambda_handler({"Records": [change(1, "c-9", "INSERT")]}, None)
    assert json.dumps(response) == '{"batchItemFailures": []}'  # what Lambda returns
    assert read_child(client, table, "c-9") == {
        "childId": "c-9",
        "status": "nice",
        "region": "north",
        "address": {"city": "Oslo", "street": "Main 1"},
        "sequenceNumber": "1".zfill(40),
        "deleted": False,
    }


def test_the_function_refuses_to_start_without_its_delivery_table(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("DELIVERY_TABLE_NAME", raising=False)
    monkeypatch.delitem(sys.modules, "processor.app", raising=False)
    with pytest.raises(RuntimeError, match="DELIVERY_TABLE_NAME is not set"):
        importlib.import_module("processor.app")
