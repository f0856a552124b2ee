"""DynamoDB shard lineage: the DynamoDB source and the mapping on shard topologies AWS produces.

moto gives a table's stream one shard that never closes. On AWS a stream's shards close every
few hours and when a partition splits, and children wait for their parents (docs/esm.md section 2).
These tests replay such topologies at the client level: each conversation is queued on a real
boto3 `dynamodbstreams` client with botocore's `Stubber`, in the shapes of AWS's DescribeStream
and GetRecords API reference (ids, sequence numbers of 28 digits, closed shards listed with
their last record's number, a closed shard's last page without `NextShardIterator`, an empty
page in the middle of a shard) and records shaped as in the recorded events of
`fixtures/aws-recorded/`.

A `Stubber` answers in the order its responses were queued, and the mapping reads sibling
shards in parallel threads: so each shard is read through a `DynamoDBStreamSource` with a client
of its own, and the stream is listed through another. Every one of them is the real source.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import boto3
from botocore.stub import ANY, Stubber

from streams.mapping import MappingObserver, MemoryCheckpointStore
from streams.mapping.state import MetricName
from streams.sources import DynamoDBStreamSource, Position, Shard, ShardReader
from tests.conftest import REGION
from tests.test_mapping_support import START, FastClock, Journal, Recorder, run

STREAM_ARN = "arn:aws:dynamodb:us-east-1:123456789012:table/Children/stream/2026-11-22T00:00:00.000"
HOUR = 3600.0
EMPTY_PAGES_OF_AN_OPEN_SHARD = 2000  # more than a mapping polls before it idles out


# --- a recorded topology ------------------------------------------------------------------


@dataclass
class RecordedShard:
    """One shard: its pages of GetRecords records (an empty page is a gap AWS returned)."""

    shard_id: str
    parent: str | None
    pages: list[list[dict[str, Any]]]
    closed: bool
    listed: bool = True  # False: past the stream's 24 h, gone from the listing

    @property
    def records(self) -> list[dict[str, Any]]:
        return [record for page in self.pages for record in page]

    def listing(self) -> dict[str, Any]:
        numbers = [record["dynamodb"]["SequenceNumber"] for record in self.records]
        span = {"StartingSequenceNumber": numbers[0]}
        if self.closed:
            span["EndingSequenceNumber"] = numbers[-1]  # "the last sequence number" (API ref.)
        shard: dict[str, Any] = {"ShardId": self.shard_id, "SequenceNumberRange": span}
        if self.parent is not None:
            shard["ParentShardId"] = self.parent
        return shard


class Topology:
    """Shards and records in AWS's shapes; sequence numbers grow across the whole stream."""

    def __init__(self) -> None:
        self.shards: list[RecordedShard] = []
        self._next_number = 4_421_584_500_000_000_017_450_439_091

    def shard(
        self,
        suffix: str,
        *,
        parent: RecordedShard | None,
        pages: list[int],
        created_hours_ago: float,
        closed: bool = True,
        listed: bool = True,
    ) -> RecordedShard:
        """A shard whose pages hold `pages[i]` records each, written `created_hours_ago`."""
        shard_id = f"shardId-{int(START - created_hours_ago * HOUR):020d}-{suffix:0>8}"
        recorded = RecordedShard(
            shard_id,
            parent.shard_id if parent else None,
            [[self._record(created_hours_ago) for _ in range(size)] for size in pages],
            closed,
            listed,
        )
        self.shards.append(recorded)
        return recorded

    def _record(self, hours_ago: float) -> dict[str, Any]:
        self._next_number += 100
        number = str(self._next_number)
        key = f"child-{self._next_number % 7}"
        return {
            "eventID": f"{self._next_number:032x}",
            "eventName": "MODIFY",
            "eventVersion": "1.1",
            "eventSource": "aws:dynamodb",
            "awsRegion": REGION,
            "dynamodb": {
                "ApproximateCreationDateTime": datetime.fromtimestamp(
                    START - hours_ago * HOUR, tz=UTC
                ),
                "Keys": {"pk": {"S": key}},
                "NewImage": {"pk": {"S": key}, "n": {"N": number}},
                "SequenceNumber": number,
                "SizeBytes": 48,
                "StreamViewType": "NEW_AND_OLD_IMAGES",
            },
        }

    def numbers(self, shard: RecordedShard) -> list[str]:
        return [record["dynamodb"]["SequenceNumber"] for record in shard.records]

    def describe_pages(self, page_size: int, order: list[RecordedShard]) -> list[dict[str, Any]]:
        """DescribeStream's pages of `page_size` shards, listed in `order`."""
        listed = [shard.listing() for shard in order if shard.listed]
        pages = []
        for start in range(0, len(listed), page_size):
            description: dict[str, Any] = {
                "StreamArn": STREAM_ARN,
                "StreamLabel": "2026-11-22T00:00:00.000",
                "StreamStatus": "ENABLED",
                "StreamViewType": "NEW_AND_OLD_IMAGES",
                "TableName": "Children",
                "KeySchema": [{"AttributeName": "pk", "KeyType": "HASH"}],
                "CreationRequestDateTime": datetime.fromtimestamp(START - 30 * HOUR, tz=UTC),
                "Shards": listed[start : start + page_size],
            }
            if start + page_size < len(listed):
                description["LastEvaluatedShardId"] = listed[start + page_size - 1]["ShardId"]
            pages.append({"StreamDescription": description})
        return pages


# --- the replay ---------------------------------------------------------------------------


_SESSION = boto3.Session(region_name=REGION)  # one session: its clients share loaded models


def _client() -> Any:
    return _SESSION.client("dynamodbstreams")


def _queue_listing(stubber: Stubber, pages: list[dict[str, Any]], page_size: int) -> None:
    for index, page in enumerate(pages):
        expected: dict[str, Any] = {"StreamArn": STREAM_ARN, "Limit": page_size}
        if index:
            expected["ExclusiveStartShardId"] = pages[index - 1]["StreamDescription"][
                "LastEvaluatedShardId"
            ]
        stubber.add_response("describe_stream", page, expected)


class Replay:
    """The stream, replayed: a listing source and one source per shard, each on a stubbed
    client. Implements `ShardSource`."""

    event_source = "aws:dynamodb"

    def __init__(self, topology: Topology, *, page_size: int = 100, listed_in: str = "order"):
        self.source_arn = STREAM_ARN
        self.topology = topology
        self.page_size = page_size
        order = list(topology.shards)
        if listed_in == "reverse":  # AWS promises no order: lineage must not rely on one
            order.reverse()
        self._listing_pages = topology.describe_pages(page_size, order)
        self.stubbers: dict[str, Stubber] = {}
        self._listing_stubber = Stubber(_client())
        # The mapping lists at its start and after each shard it finishes: queue that many.
        for _ in range(len(topology.shards) + 1):
            _queue_listing(self._listing_stubber, self._listing_pages, page_size)
        self._listing_stubber.activate()
        self._listing = DynamoDBStreamSource(
            STREAM_ARN, client=self._listing_stubber.client, page_size=page_size
        )
        self._sources: dict[str, DynamoDBStreamSource] = {}
        self.log: list[tuple[str, str]] = []  # ("open", shard), and ("finished", shard)
        for shard in topology.shards:
            self._sources[shard.shard_id] = self._shard_source(shard)

    def _shard_source(self, shard: RecordedShard) -> DynamoDBStreamSource:
        stubber = Stubber(_client())
        name = shard.shard_id
        stubber.add_response(
            "get_shard_iterator",
            {"ShardIterator": f"{name}/0"},
            {"StreamArn": STREAM_ARN, "ShardId": name, "ShardIteratorType": "TRIM_HORIZON"},
        )
        listed = False
        for index, page in enumerate(shard.pages):
            last = index == len(shard.pages) - 1
            response: dict[str, Any] = {"Records": page}
            if not (last and shard.closed):
                response["NextShardIterator"] = f"{name}/{index + 1}"
            stubber.add_response(
                "get_records", response, {"ShardIterator": f"{name}/{index}", "Limit": ANY}
            )
            if not page and "NextShardIterator" in response and not listed:
                # An empty page without AWS's end signal: the reader looks at the listing once
                # (the source's clock stands still, so it never counts as stale again).
                _queue_listing(stubber, self._listing_pages, self.page_size)
                listed = True
        if not shard.closed:
            at = f"{name}/{len(shard.pages)}"
            for _ in range(EMPTY_PAGES_OF_AN_OPEN_SHARD):
                stubber.add_response("get_records", {"Records": [], "NextShardIterator": at})
                if not listed:
                    _queue_listing(stubber, self._listing_pages, self.page_size)
                    listed = True
        stubber.activate()
        self.stubbers[name] = stubber
        return DynamoDBStreamSource(
            STREAM_ARN, client=stubber.client, clock=lambda: 0.0, page_size=self.page_size
        )

    def list_shards(self) -> list[Shard]:
        return self._listing.list_shards()

    @property
    def opened(self) -> list[str]:
        return [shard_id for kind, shard_id in self.log if kind == "open"]

    def open(self, shard_id: str, position: Position) -> ShardReader:
        self.log.append(("open", shard_id))
        return self._sources[shard_id].open(shard_id, position)

    def assert_closed_shards_read_exactly(self) -> None:
        """Each closed shard's conversation took place, call for call, and nothing more."""
        for shard in self.topology.shards:
            if shard.closed and shard.listed:
                self.stubbers[shard.shard_id].assert_no_pending_responses()


class AgeSamples(MappingObserver):
    """An observer keeping every `IteratorAge` sample, per shard."""

    def __init__(self) -> None:
        self.ages: defaultdict[str, list[float]] = defaultdict(list)

    def record(self, shard_id: str, name: MetricName, value: float) -> None:
        if name == "IteratorAge":
            self.ages[shard_id].append(value)


def _replay(replay: Replay) -> tuple[Recorder, MemoryCheckpointStore, AgeSamples]:
    recorder = Recorder()
    checkpoints = Journal(replay.log)
    ages = AgeSamples()
    run(
        {"BatchSize": 100},
        replay,
        recorder,
        clock=FastClock(),
        checkpoints=checkpoints,
        metrics=ages,
        shard_refresh_seconds=1e9,  # list only at the start and when a shard finishes
    )
    return recorder, checkpoints, ages


def _delivered(recorder: Recorder) -> list[str]:
    return [
        record["dynamodb"]["SequenceNumber"]
        for event in recorder.events
        for record in event["Records"]
    ]


def _check_lineage(replay: Replay, recorder: Recorder) -> None:
    """Every record once, each shard in order, each child opened only after its parent
    finished, and a parent's records all delivered before its child's."""
    topology = replay.topology
    at = replay.log.index
    listed = {shard.shard_id for shard in topology.shards if shard.listed}
    for shard in topology.shards:
        if shard.shard_id in listed and shard.parent in listed:
            assert ("finished", shard.parent) in replay.log, shard.parent
            assert at(("finished", shard.parent)) < at(("open", shard.shard_id))
    delivered = _delivered(recorder)
    expected = [n for shard in topology.shards if shard.listed for n in topology.numbers(shard)]
    assert sorted(delivered) == sorted(expected)  # nothing skipped, nothing twice
    position = {number: index for index, number in enumerate(delivered)}
    for shard in topology.shards:
        if not shard.listed:
            continue
        numbers = [position[n] for n in topology.numbers(shard)]
        assert numbers == sorted(numbers), shard.shard_id
        parents = [s for s in topology.shards if s.shard_id == shard.parent and s.listed]
        for parent in parents:
            assert max(position[n] for n in topology.numbers(parent)) < min(numbers)


def _check_ages(topology: Topology, ages: AgeSamples, hours_ago: dict[str, float]) -> None:
    """Each shard's iterator age is its own records' age (ms) when sent: records written
    `hours_ago` before the clock's start, sent within a fake hour of it (a test takes a few
    fake minutes)."""
    for shard in topology.shards:
        if not shard.listed:
            continue
        samples = ages.ages[shard.shard_id]
        low = hours_ago[shard.shard_id] * HOUR * 1000
        assert samples, shard.shard_id
        assert all(low <= age < low + HOUR * 1000 for age in samples), shard.shard_id


# --- the topologies -----------------------------------------------------------------------


def test_shards_closing_every_few_hours_are_read_oldest_first_each_to_its_end() -> None:
    # A table's stream rolls its shard over about every four hours: three generations, the
    # middle one with an empty page between its records (AWS returns those), the newest open.
    topology = Topology()
    old = topology.shard("0a1b2c3d", parent=None, pages=[3, 2], created_hours_ago=9)
    middle = topology.shard("1b2c3d4e", parent=old, pages=[2, 0, 2], created_hours_ago=5)
    new = topology.shard("2c3d4e5f", parent=middle, pages=[2], created_hours_ago=1, closed=False)
    replay = Replay(topology)

    recorder, checkpoints, ages = _replay(replay)

    _check_lineage(replay, recorder)
    assert replay.opened == [old.shard_id, middle.shard_id, new.shard_id]
    replay.assert_closed_shards_read_exactly()
    assert checkpoints.finished(old.shard_id) and checkpoints.finished(middle.shard_id)
    assert not checkpoints.finished(new.shard_id)
    assert checkpoints.get(middle.shard_id) == topology.numbers(middle)[-1]
    _check_ages(topology, ages, {old.shard_id: 9, middle.shard_id: 5, new.shard_id: 1})


def test_a_partition_split_gives_two_children_which_start_only_after_their_parent() -> None:
    topology = Topology()
    parent = topology.shard("3d4e5f60", parent=None, pages=[4, 3], created_hours_ago=6)
    left = topology.shard("4e5f6071", parent=parent, pages=[3], created_hours_ago=2, closed=False)
    right = topology.shard("5f607182", parent=parent, pages=[2, 2], created_hours_ago=3)
    replay = Replay(topology, listed_in="reverse")

    recorder, checkpoints, ages = _replay(replay)

    _check_lineage(replay, recorder)
    assert replay.opened[0] == parent.shard_id
    assert sorted(replay.opened[1:]) == sorted([left.shard_id, right.shard_id])
    replay.assert_closed_shards_read_exactly()
    assert checkpoints.finished(parent.shard_id) and checkpoints.finished(right.shard_id)
    _check_ages(topology, ages, {parent.shard_id: 6, left.shard_id: 2, right.shard_id: 3})


def test_a_long_chain_is_read_in_lineage_order_across_listing_pages() -> None:
    # Twelve generations listed newest first, five per DescribeStream page; the oldest one's
    # parent is past the stream's 24 hours and no longer listed, so it starts at once.
    topology = Topology()
    gone = topology.shard("6f708193", parent=None, pages=[1], created_hours_ago=26, listed=False)
    chain = [gone]
    for generation in range(12):
        chain.append(
            topology.shard(
                f"{generation:08x}",
                parent=chain[-1],
                pages=[1 + generation % 3],
                created_hours_ago=23 - 2 * generation,
                closed=generation < 11,
            )
        )
    replay = Replay(topology, page_size=5, listed_in="reverse")

    recorder, checkpoints, ages = _replay(replay)

    _check_lineage(replay, recorder)
    assert replay.opened == [shard.shard_id for shard in chain[1:]]
    replay.assert_closed_shards_read_exactly()
    assert all(checkpoints.finished(shard.shard_id) for shard in chain[1:-1])
    _check_ages(
        topology,
        ages,
        {shard.shard_id: 23 - 2 * generation for generation, shard in enumerate(chain[1:])},
    )
