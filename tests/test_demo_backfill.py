"""`streams demo --scenario backfill`: its pieces, and one small run end to end."""

from __future__ import annotations

from pathlib import Path

import boto3
import pytest

from streams.demo.backfill import (
    BackfillScenario,
    at_the_horizon,
    last_sequence_numbers,
    move_trim_horizon,
    stale_children,
)

ADDRESS = {"street": "1 Mill Street", "city": "Bari", "country": "IT"}


def _child(child: str, version: int, status: str = "nice") -> dict[str, object]:
    return {
        "childId": child,
        "version": version,
        "status": status,
        "region": "south",
        "address": {**ADDRESS, "street": f"{version} Mill Street"},
    }


def test_the_table_at_the_horizon_holds_each_childs_newest_write_dynamodb_took() -> None:
    written = [_child("a", 1), _child("b", 1), _child("a", 2), _child("b", 2)]
    # b's second write was refused for good: the table still holds its first.
    assert at_the_horizon(written, failed={3}) == [_child("b", 1), _child("a", 2)]


def test_a_child_delivered_at_an_older_state_than_its_newest_is_stale() -> None:
    accounted = [_child("a", 1), _child("a", 2), _child("b", 1), _child("b", 2, "grumpy")]
    delivered = {"a": _child("a", 1), "b": _child("b", 1)}
    # a is behind its newest valid write; b's newest valid write is its first (then poison).
    assert stale_children(accounted, delivered) == 1
    assert stale_children(accounted, {"a": _child("a", 2), "b": _child("b", 1)}) == 0


def test_a_moved_trim_horizon_starts_trim_horizon_iterators_after_it(
    aws: boto3.Session, unique_name: str
) -> None:
    dynamodb = aws.client("dynamodb")
    stream_arn = dynamodb.create_table(
        TableName=unique_name,
        KeySchema=[{"AttributeName": "k", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "k", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
        StreamSpecification={"StreamEnabled": True, "StreamViewType": "NEW_AND_OLD_IMAGES"},
    )["TableDescription"]["LatestStreamArn"]
    for key in ("old-1", "old-2"):
        dynamodb.put_item(TableName=unique_name, Item={"k": {"S": key}})
    horizon = last_sequence_numbers(aws.client("dynamodbstreams"), stream_arn)
    dynamodb.put_item(TableName=unique_name, Item={"k": {"S": "new"}})

    def keys(session: boto3.Session) -> list[str]:
        streams = session.client("dynamodbstreams")
        (shard,) = streams.describe_stream(StreamArn=stream_arn)["StreamDescription"]["Shards"]
        iterator = streams.get_shard_iterator(
            StreamArn=stream_arn, ShardId=shard["ShardId"], ShardIteratorType="TRIM_HORIZON"
        )["ShardIterator"]
        records = streams.get_records(ShardIterator=iterator)["Records"]
        return [r["dynamodb"]["Keys"]["k"]["S"] for r in records]

    moved = boto3.Session(region_name=aws.region_name)
    move_trim_horizon(moved, horizon)
    assert keys(aws) == ["old-1", "old-2", "new"]
    assert keys(moved) == ["new"]


def test_a_small_backfill_story_delivers_every_childs_newest_state_from_scan_and_stream(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # the state of the embedded endpoint stays here
    lines: list[str] = []
    result = BackfillScenario(
        children=150,
        updates=120,
        poison_rate=0.05,
        seed=7,
        template=Path(__file__).resolve().parents[1] / "template.yaml",
        say=lines.append,
    ).run()
    v = result.verification
    assert (v.lost, result.stale) == (0, 0), (v.lost_children, lines)
    assert result.only_in_table > 0 and result.delivered_by_scan == result.only_in_table
    assert result.backfill.offered >= result.children_before
    # Malformed children the scan offered are parked by the handler, as on the stream.
    assert result.parked_from_scan > 0 and v.parked > 0
    assert result.ok
