"""The mapping's Kinesis rules on two engines: moto's server and kinesis-mock.

Both are real Kinesis endpoints on 127.0.0.1, read by the real `KinesisStreamSource` through
the same code path; nothing here tells the source which engine it talks to. They differ from
AWS, and from each other, in ways that matter to resharding (docs/local.md lists every
difference):

- AWS moves the writes that follow a split or merge to the children, and ends a closed
  shard's last page with AWS's signal: no `NextShardIterator`, and `ChildShards`. kinesis-mock
  does the same. moto keeps writing to the closed parent (the first listed shard covering the
  key) and never sends the signal.
- kinesis-mock lists every closed shard with `EndingSequenceNumber` 9223372036854775807, below
  the shard's own sequence numbers; moto lists the shard's last sequence number, as AWS does.

So a test that needs records in children runs on kinesis-mock only (it says so); the others run
on both, and their records are where each engine puts them.
"""

from __future__ import annotations

import base64
import json
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import boto3
import pytest

from streams.mapping import MemoryCheckpointStore
from streams.sources import KinesisStreamSource
from tests.conftest import REGION
from tests.test_mapping_support import FastClock, Journal, OpenLogged, Recorder, mapping, run

KEYS = 8  # partition keys, spread over every shard of every generation


@dataclass(frozen=True)
class Engine:
    """One Kinesis endpoint, and what it does with the writes that follow a reshard."""

    name: str
    client: Any  # KinesisClient
    # AWS (and kinesis-mock) write to the children after a split or merge; moto keeps writing
    # to the closed parent.
    children_take_writes: bool


@pytest.fixture(params=["moto", "kinesis-mock"])
def engine(request: pytest.FixtureRequest) -> Iterator[Engine]:
    if request.param == "moto":
        aws: boto3.Session = request.getfixturevalue("aws")
        yield Engine("moto", aws.client("kinesis"), children_take_writes=False)
        return
    endpoint: str = request.getfixturevalue("kinesis_mock")
    client = boto3.Session(region_name=REGION).client("kinesis", endpoint_url=endpoint)
    try:
        yield Engine("kinesis-mock", client, children_take_writes=True)
    finally:
        client.close()  # kinesis-mock ignores SIGTERM while a connection stays open


@dataclass
class Stream:
    """A stream on an engine, its source, and what has been written to it."""

    engine: Engine
    name: str
    source: KinesisStreamSource
    written: int = 0

    @property
    def client(self) -> Any:
        return self.engine.client

    def put(self, count: int) -> None:
        """`count` records `{"n": ...}` numbered on from the last, keys `k0`..`k7` in turn."""
        numbers = range(self.written, self.written + count)
        self.client.put_records(
            StreamName=self.name,
            Records=[
                {"Data": json.dumps({"n": n}).encode(), "PartitionKey": f"k{n % KEYS}"}
                for n in numbers
            ],
        )
        self.written += count

    def open_shards(self) -> list[str]:
        return [shard.shard_id for shard in self.source.list_shards() if not shard.closed]

    def split(self) -> tuple[str, str]:
        """Split the one open shard in two halves of the hash key range; the children."""
        (parent,) = self.open_shards()
        self.client.split_shard(
            StreamName=self.name, ShardToSplit=parent, NewStartingHashKey=str(2**127)
        )
        self._wait_active()
        left, right = self.open_shards()
        return left, right

    def merge(self, left: str, right: str) -> str:
        """Merge two adjacent open shards; the child."""
        self.client.merge_shards(
            StreamName=self.name, ShardToMerge=left, AdjacentShardToMerge=right
        )
        self._wait_active()
        (child,) = self.open_shards()
        return child

    def _wait_active(self) -> None:
        # As on AWS, a stream is UPDATING for a while after a reshard (kinesis-mock: for
        # SPLIT_SHARD_DURATION); moto is ACTIVE at once.
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            summary = self.client.describe_stream_summary(StreamName=self.name)
            if summary["StreamDescriptionSummary"]["StreamStatus"] == "ACTIVE":
                return
            time.sleep(0.05)
        raise AssertionError(f"stream {self.name} still not ACTIVE")


def _stream(engine: Engine, name: str) -> Stream:
    engine.client.create_stream(StreamName=name, ShardCount=1)
    waiter = engine.client.get_waiter("stream_exists")
    waiter.wait(StreamName=name, WaiterConfig={"Delay": 0.1, "MaxAttempts": 100})
    summary = engine.client.describe_stream_summary(StreamName=name)
    arn = summary["StreamDescriptionSummary"]["StreamARN"]
    source = KinesisStreamSource(arn, client=engine.client, shard_refresh_seconds=0.0)
    return Stream(engine, name, source)


def _n(record: dict[str, Any]) -> int:
    return int(json.loads(base64.b64decode(record["kinesis"]["data"]))["n"])


def _shard_of(record: dict[str, Any]) -> str:
    return str(record["eventID"]).split(":", 1)[0]  # eventID is "<shardId>:<sequenceNumber>"


def _numbers(recorder: Recorder) -> list[int]:
    return [_n(record) for event in recorder.events for record in event["Records"]]


def _per_key(recorder: Recorder) -> dict[str, list[int]]:
    keys: defaultdict[str, list[int]] = defaultdict(list)
    for event in recorder.events:
        for record in event["Records"]:
            keys[record["kinesis"]["partitionKey"]].append(_n(record))
    return dict(keys)


def _in_order(recorder: Recorder) -> bool:
    return all(numbers == sorted(numbers) for numbers in _per_key(recorder).values())


def _clock() -> FastClock:
    return FastClock(start=time.time())


class _Lineage:
    """When each shard was opened, sent its first batch, and finished, in order."""

    def __init__(self) -> None:
        self.log: list[tuple[str, str]] = []

    def record_batch(self, event: dict[str, Any]) -> None:
        for shard_id in {_shard_of(record) for record in event["Records"]}:
            if ("batch", shard_id) not in self.log:
                self.log.append(("batch", shard_id))

    def check(self, stream: Stream) -> list[str]:
        """Assert that every child was opened only after all its parents finished, and sent
        its first batch after that; the shards that sent batches."""
        at = self.log.index
        for shard in stream.source.list_shards():
            if ("open", shard.shard_id) not in self.log:
                continue
            for parent in shard.parent_shard_ids:
                assert at(("finished", parent)) < at(("open", shard.shard_id)), (parent, shard)
            if ("batch", shard.shard_id) in self.log:
                assert at(("open", shard.shard_id)) < at(("batch", shard.shard_id))
        return [shard_id for kind, shard_id in self.log if kind == "batch"]


# --- split and merge ----------------------------------------------------------------------


def test_a_split_and_a_merge_before_the_mapping_starts_lose_no_record(
    engine: Engine, unique_name: str
) -> None:
    # Issue 11: on kinesis-mock, 70 of these 120 records came through, silently.
    stream = _stream(engine, unique_name)
    stream.put(40)
    left, right = stream.split()
    stream.put(40)
    stream.merge(left, right)
    stream.put(40)
    recorder = Recorder()

    run({"BatchSize": 10}, stream.source, recorder, clock=_clock())

    assert sorted(_numbers(recorder)) == list(range(120))  # each record once
    assert _in_order(recorder)


def test_a_split_and_a_merge_while_the_mapping_reads_lose_no_record(
    engine: Engine, unique_name: str
) -> None:
    # The function reshards the stream while the mapping reads the parent: a split during the
    # first batch and a merge during the third, each followed by ten more records.
    stream = _stream(engine, unique_name)
    stream.put(30)
    children: list[str] = []

    def function(event: dict[str, Any]) -> None:
        if len(recorder.events) == 1:
            children.extend(stream.split())
            stream.put(10)
        elif len(recorder.events) == 3:
            stream.merge(*children)
            stream.put(10)

    recorder = Recorder(function)
    lineage = _Lineage()

    run(
        {"BatchSize": 5},
        OpenLogged(stream.source, lineage.log),
        recorder,
        clock=_clock(),
        checkpoints=Journal(lineage.log),
    )

    assert sorted(_numbers(recorder)) == list(range(50))
    assert _in_order(recorder)
    lineage.check(stream)


def test_every_parent_finishes_before_any_child_is_opened_or_sends_a_batch(
    engine: Engine, unique_name: str
) -> None:
    stream = _stream(engine, unique_name)
    stream.put(12)
    left, right = stream.split()
    stream.put(12)
    merged = stream.merge(left, right)
    stream.put(12)
    lineage = _Lineage()
    recorder = Recorder(lineage.record_batch)

    run(
        {"BatchSize": 4},
        OpenLogged(stream.source, lineage.log),
        recorder,
        clock=_clock(),
        checkpoints=Journal(lineage.log),
    )

    batches = lineage.check(stream)
    parent = batches[0]
    assert [kind for kind, shard_id in lineage.log if shard_id == merged] == ["open"] + (
        ["batch"] if engine.children_take_writes else []
    )
    if engine.children_take_writes:
        # Records in all three generations: the order above was tested where it matters.
        assert batches == [parent, *sorted({left, right}, key=batches.index), merged]
    else:
        # moto: every record stays in the first shard; children are opened, empty, in order.
        assert batches == [parent]
    assert sorted(_numbers(recorder)) == list(range(36))


def test_every_key_stays_in_order_across_three_generations(
    kinesis_mock: str, unique_name: str
) -> None:
    # kinesis-mock only: the test needs records in children, and moto writes none there
    # (AWS moves the writes that follow a reshard to the children; so does kinesis-mock).
    client = boto3.Session(region_name=REGION).client("kinesis", endpoint_url=kinesis_mock)
    stream = _stream(Engine("kinesis-mock", client, children_take_writes=True), unique_name)
    stream.put(24)
    left, right = stream.split()
    stream.put(24)
    stream.merge(left, right)
    stream.put(24)
    recorder = Recorder()

    run({"BatchSize": 4, "ParallelizationFactor": 2}, stream.source, recorder, clock=_clock())
    client.close()

    generations: defaultdict[str, set[str]] = defaultdict(set)
    for event in recorder.events:
        for record in event["Records"]:
            generations[record["kinesis"]["partitionKey"]].add(_shard_of(record))
    assert all(len(shards) == 3 for shards in generations.values())  # parent, child, merged
    assert sorted(_numbers(recorder)) == list(range(72))
    assert _per_key(recorder) == {
        f"k{key}": list(range(key, 72, KEYS)) for key in range(KEYS)
    }  # in the order written, key by key


# --- partial batch responses and checkpoints --------------------------------------------------


def test_a_partial_batch_response_in_a_parent_retries_from_the_reported_record(
    engine: Engine, unique_name: str
) -> None:
    stream = _stream(engine, unique_name)
    stream.put(12)
    stream.split()
    stream.put(8)
    reported: list[int] = []

    def function(event: dict[str, Any]) -> dict[str, Any]:
        records = {_n(record): record for record in event["Records"]}
        if 6 in records and not reported:
            reported.append(6)
            return {
                "batchItemFailures": [{"itemIdentifier": records[6]["kinesis"]["sequenceNumber"]}]
            }
        return {"batchItemFailures": []}

    recorder = Recorder(function)

    run(
        {"BatchSize": 5, "FunctionResponseTypes": ["ReportBatchItemFailures"]},
        stream.source,
        recorder,
        clock=_clock(),
    )

    batches = [[_n(record) for record in event["Records"]] for event in recorder.events]
    # Lambda checkpoints at the reported record: it and the rest of its batch come again.
    assert batches[:3] == [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9], [6, 7, 8, 9]]
    delivered = _numbers(recorder)
    assert sorted(set(delivered)) == list(range(20))
    assert sorted(delivered) == sorted([*range(20), 6, 7, 8, 9])  # only 6..9 twice
    assert _in_order_after_retry(recorder)


def _in_order_after_retry(recorder: Recorder) -> bool:
    """Per key, the records in the order written once each key's repeats are dropped."""
    return all(
        list(dict.fromkeys(numbers)) == sorted(set(numbers))
        for numbers in _per_key(recorder).values()
    )


def test_a_stopped_mapping_resumes_after_its_checkpoints_across_a_reshard(
    engine: Engine, unique_name: str
) -> None:
    stream = _stream(engine, unique_name)
    stream.put(20)
    store = MemoryCheckpointStore()

    def stop_after_two_batches(event: dict[str, Any]) -> None:
        if len(first.events) == 2:
            stopped.mapping.stop()  # the batch under way still finishes and checkpoints

    first = Recorder(stop_after_two_batches)
    stopped = mapping({"BatchSize": 5}, stream.source, first, clock=_clock(), checkpoints=store)
    stopped.mapping.run()
    left, right = stream.split()
    stream.put(10)
    stream.merge(left, right)
    stream.put(10)
    second = Recorder()

    run({"BatchSize": 5}, stream.source, second, clock=_clock(), checkpoints=store)

    assert _numbers(first) == list(range(10))
    assert sorted(_numbers(second)) == list(range(10, 40))  # nothing again, nothing skipped
    assert _in_order(second)
