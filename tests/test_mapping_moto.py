"""The mapping's rules end to end on real streams: DynamoDB Streams and Kinesis on moto's server.

The shard sources are the project's real ones (`streams.sources`); on-failure records go to
real SQS queues. Time runs fast (`FastClock`) from the real time, so records are as old as
they really are.
"""

from __future__ import annotations

import json
import threading
import time
from collections import defaultdict
from typing import Any

import boto3

from streams.mapping import MemoryCheckpointStore
from tests.test_mapping_support import (
    FastClock,
    Recorder,
    dynamodb_stream,
    kinesis_stream,
    messages,
    queue,
    run,
)


def _clock() -> FastClock:
    return FastClock(start=time.time())


def _put_items(aws: boto3.Session, table: str, count: int) -> None:
    client = aws.client("dynamodb")
    for number in range(1, count + 1):
        client.put_item(
            TableName=table, Item={"pk": {"S": f"item-{number}"}, "n": {"N": str(number)}}
        )


def _item_numbers(event: dict[str, Any]) -> list[int]:
    return [int(record["dynamodb"]["NewImage"]["n"]["N"]) for record in event["Records"]]


def test_bisect_on_a_dynamodb_stream_isolates_the_poison_record_and_reports_it_alone(
    aws: boto3.Session, unique_name: str
) -> None:
    source = dynamodb_stream(aws, unique_name)
    _put_items(aws, unique_name, 8)
    url, arn = queue(aws, unique_name)

    def function(event: dict[str, Any]) -> None:
        if 5 in _item_numbers(event):
            raise ValueError("poison record")

    recorder = Recorder(function)

    result = run(
        {
            "BatchSize": 8,
            "BisectBatchOnFunctionError": True,
            "MaximumRetryAttempts": 0,
            "DestinationConfig": {"OnFailure": {"Destination": arn}},
        },
        source,
        recorder,
        clock=_clock(),
        session=aws,
    )

    assert [_item_numbers(event) for event in recorder.events] == [
        [1, 2, 3, 4, 5, 6, 7, 8],
        [1, 2, 3, 4],
        [5, 6, 7, 8],
        [5, 6],
        [5],
        [6],
        [7, 8],
    ]
    (record,) = messages(aws, url)
    poison = recorder.events[4]["Records"][0]["dynamodb"]["SequenceNumber"]
    info = record["DDBStreamBatchInfo"]
    assert (info["batchSize"], info["startSequenceNumber"], info["endSequenceNumber"]) == (
        1,
        poison,
        poison,
    )
    last = recorder.events[-1]["Records"][-1]["dynamodb"]["SequenceNumber"]
    assert result.checkpoints.get(source.list_shards()[0].shard_id) == last


def test_a_partial_response_listing_records_3_and_7_rewinds_to_3_on_a_dynamodb_stream(
    aws: boto3.Session, unique_name: str
) -> None:
    source = dynamodb_stream(aws, unique_name)
    _put_items(aws, unique_name, 10)

    def function(event: dict[str, Any]) -> Any:
        if len(recorder.events) > 1:
            return None
        failed = [r for r in event["Records"] if int(r["dynamodb"]["NewImage"]["n"]["N"]) in (7, 3)]
        return {
            "batchItemFailures": [
                {"itemIdentifier": r["dynamodb"]["SequenceNumber"]} for r in failed
            ]
        }

    recorder = Recorder(function)

    run(
        {"BatchSize": 10, "FunctionResponseTypes": ["ReportBatchItemFailures"]},
        source,
        recorder,
        clock=_clock(),
    )

    assert [_item_numbers(event) for event in recorder.events] == [
        list(range(1, 11)),
        list(range(3, 11)),
    ]


def test_a_restarted_mapping_resumes_a_dynamodb_stream_after_its_checkpoint(
    aws: boto3.Session, unique_name: str
) -> None:
    source = dynamodb_stream(aws, unique_name)
    _put_items(aws, unique_name, 3)
    store = MemoryCheckpointStore()
    first = Recorder()
    run({}, source, first, clock=_clock(), checkpoints=store)
    aws.client("dynamodb").put_item(
        TableName=unique_name, Item={"pk": {"S": "late"}, "n": {"N": "4"}}
    )
    second = Recorder()

    run({}, source, second, clock=_clock(), checkpoints=store)

    assert [_item_numbers(event) for event in first.events] == [[1, 2, 3]]
    assert [_item_numbers(event) for event in second.events] == [[4]]


def test_kinesis_concurrency_reaches_and_never_exceeds_shards_times_factor_in_key_order(
    aws: boto3.Session, unique_name: str
) -> None:
    shards, factor = 2, 2
    source = kinesis_stream(aws, unique_name, shards=shards)
    client = aws.client("kinesis")
    client.put_records(
        StreamName=unique_name,
        Records=[
            {"Data": json.dumps({"n": n}).encode(), "PartitionKey": f"key-{n % 20}"}
            for n in range(200)
        ],
    )
    target = shards * factor
    gate = threading.Condition()
    reached = threading.Event()
    in_flight_keys: set[str] = set()
    overlaps: list[str] = []

    def function(event: dict[str, Any]) -> None:
        keys = {record["kinesis"]["partitionKey"] for record in event["Records"]}
        with gate:
            overlaps.extend(keys & in_flight_keys)
            in_flight_keys.update(keys)
            if recorder.in_flight >= target:
                reached.set()
                gate.notify_all()
            gate.wait_for(reached.is_set, timeout=5)  # hold until all slots are busy once
            in_flight_keys.difference_update(keys)

    recorder = Recorder(function)

    run({"BatchSize": 5, "ParallelizationFactor": factor}, source, recorder, clock=_clock())

    assert recorder.max_in_flight == target
    assert overlaps == []
    per_key: defaultdict[str, list[int]] = defaultdict(list)
    for event in recorder.events:
        for record in event["Records"]:
            per_key[record["kinesis"]["partitionKey"]].append(
                int(record["kinesis"]["sequenceNumber"])
            )
    assert all(numbers == sorted(numbers) for numbers in per_key.values())
    assert sum(len(numbers) for numbers in per_key.values()) == 200
