"""A checkpoint older than the stream's retention: the mapping goes on at the oldest record
still in the shard, says which range was lost, and counts it (docs/esm.md, "Retention").

moto never trims a stream; botocore hooks on the real endpoint answer as DynamoDB Streams does
once 24 hours have passed: `TrimmedDataAccessException` for a position that is gone, and
TRIM_HORIZON starting after the trimmed records.
"""

from __future__ import annotations

import logging
from typing import Any

import boto3
import pytest

from streams.mapping.state import MemoryCheckpointStore
from streams.sources import Position
from tests.aws_hooks import Hooks
from tests.test_mapping_support import FastClock, Recorder, dynamodb_stream, run


def test_a_trimmed_checkpoint_goes_on_at_the_oldest_record_and_the_lost_range_is_counted(
    aws: boto3.Session, unique_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    session = boto3.Session(region_name=aws.region_name)
    hooks = Hooks(session, "dynamodb-streams")
    numbers: list[str] = []  # the stream's sequence numbers, once written

    # Records 0 to 2 have left the stream; the checkpoint is record 0 (1 and 2 never read).
    def trimmed(params: dict[str, Any]) -> str | None:
        number = params.get("SequenceNumber")
        gone = numbers and number and int(number) <= int(numbers[2])
        return "TrimmedDataAccessException" if gone else None

    def oldest_left(params: dict[str, Any]) -> None:
        if numbers and params["ShardIteratorType"] == "TRIM_HORIZON":
            params.update(ShardIteratorType="AT_SEQUENCE_NUMBER", SequenceNumber=numbers[3])

    # On the session before the source makes its client: a client copies the session's hooks.
    hooks.fail_when("GetShardIterator", trimmed)
    hooks.edit_requests("GetShardIterator", oldest_left)
    source = dynamodb_stream(session, unique_name)
    dynamodb = session.client("dynamodb")
    for n in range(6):
        dynamodb.put_item(TableName=unique_name, Item={"pk": {"S": f"k-{n}"}})
    (shard,) = source.list_shards()
    records = source.open(shard.shard_id, Position("TRIM_HORIZON")).read(100).records
    numbers.extend(r["dynamodb"]["SequenceNumber"] for r in records)
    checkpoints = MemoryCheckpointStore()
    checkpoints.put(shard.shard_id, numbers[0], False)
    recorder = Recorder(lambda event: None)

    with caplog.at_level(logging.WARNING, logger="streams.mapping"):
        result = run(
            {"BatchSize": 10}, source, recorder, clock=FastClock(), checkpoints=checkpoints
        )

    delivered = [r["dynamodb"]["SequenceNumber"] for e in recorder.events for r in e["Records"]]
    assert delivered == numbers[3:]
    assert result.metrics.count("ExpiredRanges", shard.shard_id) == 1
    (warning,) = [r.getMessage() for r in caplog.records if "left the stream" in r.getMessage()]
    assert shard.shard_id in warning and numbers[0] in warning and numbers[3] in warning
    assert checkpoints.get(shard.shard_id) == numbers[-1]
