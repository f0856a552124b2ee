"""Shard sources read DynamoDB Streams and Kinesis as Lambda reads them (against moto's server).

What moto cannot do (iterator expiry, throttling, AWS's end-of-shard signal, DynamoDB shard
lineage, NextToken-only ListShards pages) is added with botocore event hooks on the real
clients: the request still goes to moto unless the hook fails it first.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError

from streams.backoff import Backoff
from streams.sources import (
    DynamoDBStreamSource,
    KinesisStreamSource,
    Position,
    ReadResult,
    Shard,
    startable_shards,
)
from streams.sources.kinesis import LATEST_RENEWAL_MARGIN_SECONDS
from streams.sources.reader import DEFAULT_BACKOFF as READER_BACKOFF
from tests.aws_hooks import Hooks


@dataclass
class FakeClock:
    now: float = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Sleeps:
    seconds: list[float] = field(default_factory=list)

    def __call__(self, seconds: float) -> None:
        self.seconds.append(seconds)


def _ended_lines(caplog: pytest.LogCaptureFixture, shard_id: str) -> list[str]:
    return [
        record.getMessage()
        for record in caplog.records
        if record.getMessage().startswith(f"shard {shard_id}: ended")
    ]


# --- one shard of each kind ---------------------------------------------------------------


@dataclass
class Stream:
    kind: str
    source: DynamoDBStreamSource | KinesisStreamSource
    hooks: Hooks
    write: Callable[[int], None]
    clock: FakeClock
    sleeps: Sleeps
    throttling_error: str

    @property
    def shard_id(self) -> str:
        (shard,) = self.source.list_shards()
        return shard.shard_id

    def sequence_numbers(self, result: ReadResult) -> list[str]:
        if self.kind == "dynamodb":
            return [record["dynamodb"]["SequenceNumber"] for record in result.records]
        return [record["kinesis"]["sequenceNumber"] for record in result.records]


def _dynamodb_stream(aws: boto3.Session, name: str, backoff: Backoff) -> Stream:
    dynamodb = aws.client("dynamodb")
    stream_arn = dynamodb.create_table(
        TableName=name,
        BillingMode="PAY_PER_REQUEST",
        AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
        StreamSpecification={"StreamEnabled": True, "StreamViewType": "NEW_AND_OLD_IMAGES"},
    )["TableDescription"]["LatestStreamArn"]
    written = iter(range(10**6))

    def write(count: int) -> None:
        for _ in range(count):
            dynamodb.put_item(TableName=name, Item={"pk": {"S": f"item-{next(written)}"}})

    client = aws.client("dynamodbstreams")
    clock, sleeps = FakeClock(), Sleeps()
    source = DynamoDBStreamSource(
        stream_arn, client=client, backoff=backoff, sleep=sleeps, clock=clock
    )
    return Stream("dynamodb", source, Hooks(client), write, clock, sleeps, "LimitExceededException")


def _kinesis_stream(
    aws: boto3.Session,
    name: str,
    backoff: Backoff,
    shards: int = 1,
    wall_clock: Callable[[], float] = time.time,
) -> Stream:
    client = aws.client("kinesis")
    client.create_stream(StreamName=name, ShardCount=shards)
    stream_arn = client.describe_stream_summary(StreamName=name)["StreamDescriptionSummary"][
        "StreamARN"
    ]
    written = iter(range(10**6))

    def write(count: int) -> None:
        for _ in range(count):
            number = next(written)
            client.put_record(StreamARN=stream_arn, Data=f"{number}".encode(), PartitionKey="k")

    clock, sleeps = FakeClock(), Sleeps()
    source = KinesisStreamSource(
        stream_arn, client=client, backoff=backoff, sleep=sleeps, clock=clock, wall_clock=wall_clock
    )
    return Stream(
        "kinesis",
        source,
        Hooks(client),
        write,
        clock,
        sleeps,
        "ProvisionedThroughputExceededException",
    )


@pytest.fixture(params=["dynamodb", "kinesis"])
def stream(request: pytest.FixtureRequest, aws: boto3.Session, unique_name: str) -> Stream:
    backoff = Backoff(base=1.0, cap=4.0, random=lambda: 1.0)
    if request.param == "dynamodb":
        return _dynamodb_stream(aws, unique_name, backoff)
    return _kinesis_stream(aws, unique_name, backoff)


# --- rules for both services --------------------------------------------------------------


def test_reads_each_record_once_in_sequence_order_and_at_most_limit_per_call(
    stream: Stream,
) -> None:
    stream.write(25)
    reader = stream.source.open(stream.shard_id, Position("TRIM_HORIZON"))

    results = [reader.read(10) for _ in range(3)]

    assert [len(result.records) for result in results] == [10, 10, 5]
    numbers = [int(n) for result in results for n in stream.sequence_numbers(result)]
    assert numbers == sorted(set(numbers))
    # Memory stays bounded: each call asks the service for no more than the limit.
    assert [params["Limit"] for params in stream.hooks.params("GetRecords")] == [10, 10, 10]


def test_a_limit_above_the_service_maximum_is_capped_to_it(stream: Stream) -> None:
    stream.write(1)
    reader = stream.source.open(stream.shard_id, Position("TRIM_HORIZON"))

    reader.read(1_000_000)

    maximum = 1000 if stream.kind == "dynamodb" else 10_000
    assert [params["Limit"] for params in stream.hooks.params("GetRecords")] == [maximum]


def test_latest_skips_earlier_records_and_trim_horizon_reads_them(stream: Stream) -> None:
    stream.write(3)
    latest = stream.source.open(stream.shard_id, Position("LATEST"))
    assert latest.read(100).records == []  # takes its iterator now

    stream.write(2)

    assert len(latest.read(100).records) == 2
    everything = stream.source.open(stream.shard_id, Position("TRIM_HORIZON"))
    assert len(everything.read(100).records) == 5


def test_a_checkpoint_resumes_after_or_at_its_sequence_number(stream: Stream) -> None:
    stream.write(5)
    first = stream.source.open(stream.shard_id, Position("TRIM_HORIZON")).read(100)
    numbers = stream.sequence_numbers(first)

    after = stream.source.open(
        stream.shard_id, Position("AFTER_SEQUENCE_NUMBER", sequence_number=numbers[1])
    ).read(100)
    at = stream.source.open(
        stream.shard_id, Position("AT_SEQUENCE_NUMBER", sequence_number=numbers[1])
    ).read(100)

    assert stream.sequence_numbers(after) == numbers[2:]
    assert stream.sequence_numbers(at) == numbers[1:]


def test_an_expired_iterator_is_renewed_after_the_last_record_returned(stream: Stream) -> None:
    stream.write(6)
    reader = stream.source.open(stream.shard_id, Position("TRIM_HORIZON"))
    first = reader.read(3)
    stream.hooks.fail_next("GetRecords", "ExpiredIteratorException")

    rest = reader.read(10)

    all_numbers = stream.sequence_numbers(
        stream.source.open(stream.shard_id, Position("TRIM_HORIZON")).read(100)
    )
    assert stream.sequence_numbers(first) + stream.sequence_numbers(rest) == all_numbers
    renewal = stream.hooks.params("GetShardIterator")[1]
    assert renewal["ShardIteratorType"] == "AFTER_SEQUENCE_NUMBER"
    assert stream.sequence_numbers(first)[-1] in renewal.values()


def test_an_iterator_expired_before_any_record_is_renewed_at_the_starting_position(
    stream: Stream,
) -> None:
    stream.write(2)
    reader = stream.source.open(stream.shard_id, Position("TRIM_HORIZON"))
    stream.hooks.fail_next("GetRecords", "ExpiredIteratorException")

    assert len(reader.read(10).records) == 2
    kinds = [params["ShardIteratorType"] for params in stream.hooks.params("GetShardIterator")]
    assert kinds == ["TRIM_HORIZON", "TRIM_HORIZON"]


def test_throttled_reads_back_off_exponentially_and_reset_after_a_good_read(
    stream: Stream,
) -> None:
    stream.write(2)
    reader = stream.source.open(stream.shard_id, Position("TRIM_HORIZON"))
    stream.hooks.fail_next("GetRecords", *[stream.throttling_error] * 4)

    throttled = [reader.read(10) for _ in range(4)]
    good = reader.read(10)
    stream.write(1)
    stream.hooks.fail_next("GetRecords", stream.throttling_error)
    again = reader.read(10)

    assert all(result.throttled and not result.records for result in throttled)
    assert len(good.records) == 2 and not good.throttled
    assert again.throttled
    # base 1 s doubling, capped at 4 s, jitter pinned to its maximum; reset after success.
    assert stream.sleeps.seconds == [1.0, 2.0, 4.0, 4.0, 1.0]
    assert len(reader.read(10).records) == 1


def test_errors_other_than_expiry_and_throttling_reach_the_caller(stream: Stream) -> None:
    reader = stream.source.open(stream.shard_id, Position("TRIM_HORIZON"))
    stream.hooks.fail_next("GetRecords", "InternalServerError")

    with pytest.raises(ClientError, match="InternalServerError"):
        reader.read(10)


def test_an_open_shard_does_not_end_when_its_reader_is_caught_up(stream: Stream) -> None:
    stream.write(1)
    reader = stream.source.open(stream.shard_id, Position("TRIM_HORIZON"))

    results = [reader.read(10) for _ in range(3)]
    stream.clock.now += 3600  # past any listing refresh interval
    results.append(reader.read(10))

    assert [len(result.records) for result in results] == [1, 0, 0, 0]
    assert not any(result.shard_ended for result in results)


def test_the_aws_signal_of_no_next_iterator_ends_the_shard(
    stream: Stream, caplog: pytest.LogCaptureFixture
) -> None:
    stream.write(3)
    caplog.set_level(logging.INFO, logger="streams.sources.reader")

    def at_the_end(parsed: dict[str, Any], params: dict[str, Any]) -> None:
        parsed.pop("NextShardIterator", None)

    stream.hooks.edit_replies("GetRecords", at_the_end)
    reader = stream.source.open(stream.shard_id, Position("TRIM_HORIZON"))

    last = reader.read(10)
    after = reader.read(10)

    assert len(last.records) == 3 and last.shard_ended
    assert after == ReadResult(records=[], shard_ended=True)
    assert len(stream.hooks.params("GetRecords")) == 1  # an ended reader makes no more calls
    (line,) = _ended_lines(caplog, stream.shard_id)  # said once, with the rule that ended it
    assert "AWS's signal: no NextShardIterator" in line


def test_readers_list_the_stream_for_closed_shards_at_most_once_per_refresh_interval(
    stream: Stream,
) -> None:
    shard_id = stream.shard_id
    listing = "DescribeStream" if stream.kind == "dynamodb" else "ListShards"
    readers = [stream.source.open(shard_id, Position("TRIM_HORIZON")) for _ in range(3)]
    before = len(stream.hooks.params(listing))

    for reader in readers:
        reader.read(10)
    stream.clock.now += 5  # within the default 10 s
    for reader in readers:
        reader.read(10)
    stream.clock.now += 5
    for reader in readers:
        reader.read(10)

    assert len(stream.hooks.params(listing)) - before == 1


# --- DynamoDB Streams ---------------------------------------------------------------------


def test_dynamodb_parent_is_read_past_its_ending_sequence_number_before_its_child_starts(
    aws: boto3.Session, unique_name: str
) -> None:
    # GIVEN moto's one shard presented as a closed parent on DescribeStream's first page and a
    # child on the second (DynamoDB rolls shards over about every 4 hours; moto never does)
    stream = _dynamodb_stream(aws, unique_name, READER_BACKOFF)
    stream.write(4)
    parent_id = stream.shard_id
    records = stream.source.open(parent_id, Position("TRIM_HORIZON")).read(100)
    ending = stream.sequence_numbers(records)[-1]
    child_id = "shardId-00000001700000000000-child000"

    def paged(parsed: dict[str, Any], params: dict[str, Any]) -> None:
        description = parsed["StreamDescription"]
        if "ExclusiveStartShardId" not in params:
            description["Shards"][0]["SequenceNumberRange"]["EndingSequenceNumber"] = ending
            description["LastEvaluatedShardId"] = parent_id
        else:
            description["Shards"] = [
                {
                    "ShardId": child_id,
                    "ParentShardId": parent_id,
                    "SequenceNumberRange": {"StartingSequenceNumber": str(int(ending) + 1)},
                }
            ]

    stream.hooks.edit_replies("DescribeStream", paged)

    # WHEN the stream is listed and the startable shards are read
    shards = stream.source.list_shards()
    first = startable_shards(shards, finished=set(), started=set())
    reader = stream.source.open(first[0].shard_id, Position("TRIM_HORIZON"))
    batches = [reader.read(3), reader.read(3), reader.read(3)]

    # THEN both pages were listed, only the parent could start, and it ended on the empty read
    # after its last record (moto sends no end-of-shard signal; the fallback never ends a
    # shard on a read that returned records)
    assert stream.hooks.params("DescribeStream")[-1]["ExclusiveStartShardId"] == parent_id
    assert [shard.shard_id for shard in shards] == [parent_id, child_id]
    assert shards[1].parent_shard_ids == (parent_id,)
    assert first == [shards[0]]
    assert [len(batch.records) for batch in batches] == [3, 1, 0]
    assert [batch.shard_ended for batch in batches] == [False, False, True]
    assert startable_shards(shards, finished={parent_id}, started={parent_id}) == [shards[1]]


def test_dynamodb_streams_has_no_at_timestamp_position(
    aws: boto3.Session, unique_name: str
) -> None:
    stream = _dynamodb_stream(aws, unique_name, READER_BACKOFF)
    with pytest.raises(ValueError, match="AT_TIMESTAMP"):
        stream.source.open(stream.shard_id, Position("AT_TIMESTAMP", timestamp=datetime.now(UTC)))


def test_dynamodb_an_iterator_at_latest_expired_before_any_record_says_what_it_skips(
    aws: boto3.Session, unique_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    stream = _dynamodb_stream(aws, unique_name, READER_BACKOFF)
    reader = stream.source.open(stream.shard_id, Position("LATEST"))
    assert reader.read(10).records == []
    stream.hooks.fail_next("GetRecords", "ExpiredIteratorException")

    reader.read(10)

    kinds = [params["ShardIteratorType"] for params in stream.hooks.params("GetShardIterator")]
    assert kinds == ["LATEST", "LATEST"]  # DynamoDB Streams has nothing better
    (warning,) = [r for r in caplog.records if r.levelname == "WARNING"]
    assert stream.shard_id in warning.getMessage()
    assert "skipped" in warning.getMessage()


# --- Kinesis ------------------------------------------------------------------------------


def _kinesis_shard(shards: list[Shard], shard_id: str) -> Shard:
    (shard,) = [shard for shard in shards if shard.shard_id == shard_id]
    return shard


def test_kinesis_list_shards_pages_with_next_token_alone(
    aws: boto3.Session, unique_name: str
) -> None:
    client = aws.client("kinesis")
    client.create_stream(StreamName=unique_name, ShardCount=4)
    stream_arn = client.describe_stream_summary(StreamName=unique_name)["StreamDescriptionSummary"][
        "StreamARN"
    ]
    sent: list[dict[str, Any]] = []

    def moto_needs_the_stream_again(params: dict[str, Any], **_: Any) -> None:
        # AWS refuses StreamARN next to NextToken; moto's paginator needs it. Record what the
        # source sent, then add it for moto.
        sent.append(dict(params))
        if "NextToken" in params:
            params["StreamARN"] = stream_arn

    client.meta.events.register(
        "before-parameter-build.kinesis.ListShards", moto_needs_the_stream_again
    )
    source = KinesisStreamSource(stream_arn, client=client, page_size=1)

    shards = source.list_shards()

    assert [shard.shard_id for shard in shards] == [f"shardId-00000000000{i}" for i in range(4)]
    assert len(sent) == 4
    assert sent[0] == {"StreamARN": stream_arn, "MaxResults": 1}
    assert all(set(params) == {"NextToken", "MaxResults"} for params in sent[1:])


def test_kinesis_split_closes_the_parent_which_ends_on_the_empty_read_after_its_last_record(
    aws: boto3.Session, unique_name: str
) -> None:
    stream = _kinesis_stream(aws, unique_name, READER_BACKOFF)
    stream.write(5)
    parent_id = stream.shard_id
    client = aws.client("kinesis")
    client.split_shard(
        StreamARN=stream.source.source_arn,
        ShardToSplit=parent_id,
        NewStartingHashKey=str(2**127),
    )

    shards = stream.source.list_shards()
    reader = stream.source.open(parent_id, Position("TRIM_HORIZON"))
    batches = [reader.read(3), reader.read(3), reader.read(3)]

    parent = _kinesis_shard(shards, parent_id)
    children = [shard for shard in shards if shard.parent_shard_ids == (parent_id,)]
    assert parent.closed and len(children) == 2
    assert not any(child.closed for child in children)
    assert startable_shards(shards, finished=set(), started=set()) == [parent]
    # moto sends no end-of-shard signal: the parent ends on the empty read after its last record
    assert [len(batch.records) for batch in batches] == [3, 2, 0]
    assert [batch.shard_ended for batch in batches] == [False, False, True]
    assert startable_shards(shards, finished={parent_id}, started={parent_id}) == children


def test_kinesis_merge_gives_the_child_two_parents_and_it_waits_for_both(
    aws: boto3.Session, unique_name: str
) -> None:
    stream = _kinesis_stream(aws, unique_name, READER_BACKOFF, shards=2)
    client = aws.client("kinesis")
    first, second = (shard.shard_id for shard in stream.source.list_shards())
    client.merge_shards(
        StreamARN=stream.source.source_arn, ShardToMerge=first, AdjacentShardToMerge=second
    )

    shards = stream.source.list_shards()
    (child,) = [shard for shard in shards if shard.parent_shard_ids]

    assert child.parent_shard_ids == (first, second)
    assert startable_shards(shards, finished={first}, started={first, second}) == []
    assert startable_shards(shards, finished={first, second}, started={first, second}) == [child]


def test_kinesis_an_empty_closed_shard_ends_on_its_first_read(
    aws: boto3.Session, unique_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    # moto lists an empty closed shard as starting and ending at "0": nothing says where the
    # reader is against that, and moto sends no end-of-shard signal: the tip decides.
    stream = _kinesis_stream(aws, unique_name, READER_BACKOFF)
    parent_id = stream.shard_id
    aws.client("kinesis").update_shard_count(
        StreamARN=stream.source.source_arn, TargetShardCount=2, ScalingType="UNIFORM_SCALING"
    )
    stream.source.list_shards()
    caplog.set_level(logging.INFO, logger="streams.sources.reader")

    result = stream.source.open(parent_id, Position("TRIM_HORIZON")).read(10)

    assert result.records == [] and result.shard_ended
    (line,) = _ended_lines(caplog, parent_id)
    assert "0 ms behind its tip" in line


def test_kinesis_child_shards_in_a_reply_end_the_shard(
    aws: boto3.Session, unique_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    stream = _kinesis_stream(aws, unique_name, READER_BACKOFF)
    stream.write(2)

    def closed(parsed: dict[str, Any], params: dict[str, Any]) -> None:
        parsed["ChildShards"] = [
            {
                "ShardId": "shardId-000000000001",
                "ParentShards": ["shardId-000000000000"],
                "HashKeyRange": {"StartingHashKey": "0", "EndingHashKey": "1"},
            }
        ]

    stream.hooks.edit_replies("GetRecords", closed)

    caplog.set_level(logging.INFO, logger="streams.sources.reader")

    result = stream.source.open(stream.shard_id, Position("TRIM_HORIZON")).read(10)

    assert len(result.records) == 2 and result.shard_ended
    (line,) = _ended_lines(caplog, stream.shard_id)
    assert "AWS's signal: ChildShards" in line


def test_kinesis_at_timestamp_passes_the_time_and_starts_there(
    aws: boto3.Session, unique_name: str
) -> None:
    stream = _kinesis_stream(aws, unique_name, READER_BACKOFF)
    stream.write(3)
    past = datetime(2000, 1, 1, tzinfo=UTC)
    future = datetime.now(UTC) + timedelta(hours=1)

    from_past = stream.source.open(stream.shard_id, Position("AT_TIMESTAMP", timestamp=past))
    from_future = stream.source.open(stream.shard_id, Position("AT_TIMESTAMP", timestamp=future))

    assert len(from_past.read(10).records) == 3
    assert from_future.read(10).records == []
    timestamps = [params.get("Timestamp") for params in stream.hooks.params("GetShardIterator")]
    assert timestamps == [past, future]


def test_kinesis_an_iterator_at_latest_expired_before_any_record_restarts_from_when_it_was_taken(
    aws: boto3.Session, unique_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    # This machine's clock runs 30 s ahead of AWS's: still within the renewal's margin.
    wall = time.time() + 30
    stream = _kinesis_stream(aws, unique_name, READER_BACKOFF, wall_clock=lambda: wall)
    reader = stream.source.open(stream.shard_id, Position("LATEST"))
    assert reader.read(10).records == []
    stream.write(3)  # while the iterator expires
    stream.hooks.fail_next("GetRecords", "ExpiredIteratorException")

    renewed = reader.read(10)

    assert len(renewed.records) == 3  # LATEST again would have skipped them
    first, renewal = stream.hooks.params("GetShardIterator")
    assert first["ShardIteratorType"] == "LATEST"
    assert renewal["ShardIteratorType"] == "AT_TIMESTAMP"
    assert renewal["Timestamp"] == datetime.fromtimestamp(
        wall - LATEST_RENEWAL_MARGIN_SECONDS, tz=UTC
    )
    assert not [r for r in caplog.records if r.levelname == "WARNING"]


def test_kinesis_invoke_identity_can_be_chosen(aws: boto3.Session, unique_name: str) -> None:
    stream = _kinesis_stream(aws, unique_name, READER_BACKOFF)
    stream.write(1)
    role = "arn:aws:iam::123456789012:role/processor-role"
    source = KinesisStreamSource(stream.source.source_arn, invoke_identity_arn=role)

    (record,) = source.open(stream.shard_id, Position("TRIM_HORIZON")).read(1).records

    assert record["invokeIdentityArn"] == role


# --- the end of a shard: on evidence -----------------------------------------------------


def _closed_parent(aws: boto3.Session, unique_name: str, records: int) -> tuple[Stream, str]:
    """A Kinesis stream on moto whose one shard holds `records` and is closed by a split."""
    stream = _kinesis_stream(aws, unique_name, READER_BACKOFF)
    stream.write(records)
    parent_id = stream.shard_id
    aws.client("kinesis").split_shard(
        StreamARN=stream.source.source_arn, ShardToSplit=parent_id, NewStartingHashKey=str(2**127)
    )
    stream.source.list_shards()  # the source's clock stands still: its readers keep this listing
    return stream, parent_id


def _listed_ending(stream: Stream, shard_id: str, ending: str) -> None:
    """Make every listing show `shard_id` closed at `ending`, and list the stream again."""

    def edit(parsed: dict[str, Any], params: dict[str, Any]) -> None:
        for shard in parsed["Shards"]:
            if shard["ShardId"] == shard_id:
                shard["SequenceNumberRange"]["EndingSequenceNumber"] = ending

    stream.hooks.edit_replies("ListShards", edit)
    stream.source.list_shards()


def test_a_closed_shard_never_ends_on_a_read_that_returned_records(
    aws: boto3.Session, unique_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    # GIVEN a closed shard whose listing says it ends at its first record, though it holds five
    stream, parent_id = _closed_parent(aws, unique_name, 5)
    first = stream.source.open(parent_id, Position("TRIM_HORIZON")).read(1)
    _listed_ending(stream, parent_id, stream.sequence_numbers(first)[0])
    caplog.set_level(logging.INFO, logger="streams.sources.reader")
    reader = stream.source.open(parent_id, Position("TRIM_HORIZON"))

    # WHEN it is read past that number (moto sends no end-of-shard signal)
    results = [reader.read(2) for _ in range(4)]

    # THEN it ends only on the first read that found nothing, after all five
    assert [len(result.records) for result in results] == [2, 2, 1, 0]
    assert [result.shard_ended for result in results] == [False, False, False, True]
    (line,) = _ended_lines(caplog, parent_id)
    assert "EndingSequenceNumber" in line


def test_a_listed_ending_sequence_number_below_the_start_is_never_trusted(
    aws: boto3.Session, unique_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    # GIVEN a closed shard listed with an ending number below its start (kinesis-mock lists
    # 9223372036854775807 below its 56-digit numbers), and an empty page in the middle of the
    # shard (AWS returns those, with a next iterator that still points before the rest)
    stream, parent_id = _closed_parent(aws, unique_name, 5)
    _listed_ending(stream, parent_id, "0")  # moto's numbers start at 1
    gaps = iter([False, True])

    def gap(parsed: dict[str, Any], params: dict[str, Any]) -> None:
        if next(gaps, False):
            parsed["Records"] = []
            parsed["NextShardIterator"] = params["ShardIterator"]
            parsed["MillisBehindLatest"] = 5000

    stream.hooks.edit_replies("GetRecords", gap)
    caplog.set_level(logging.INFO, logger="streams.sources.reader")
    reader = stream.source.open(parent_id, Position("TRIM_HORIZON"))

    # WHEN it is read (the reader has passed "0" at once)
    results = [reader.read(3) for _ in range(4)]

    # THEN the empty page did not end it; the empty read at its tip did
    assert [len(result.records) for result in results] == [3, 0, 2, 0]
    assert [result.shard_ended for result in results] == [False, False, False, True]
    (line,) = _ended_lines(caplog, parent_id)
    assert "0 ms behind its tip" in line
    distrust = [r for r in caplog.records if "below its StartingSequenceNumber" in r.getMessage()]
    assert len(distrust) == 1  # said once, though consulted on both empty reads


def test_a_closed_shard_read_short_of_its_listed_end_waits_even_at_its_tip(
    aws: boto3.Session, unique_name: str
) -> None:
    # The listing says records remain up to a number the reader has not reached: an empty read
    # at the tip does not end the shard. (Kinesis documents the listed range as the shard's
    # possible numbers, so on AWS it may end beyond the last record: AWS's signal ends those.)
    stream, parent_id = _closed_parent(aws, unique_name, 2)
    _listed_ending(stream, parent_id, "3")
    reader = stream.source.open(parent_id, Position("TRIM_HORIZON"))

    results = [reader.read(10), reader.read(10)]

    assert [len(result.records) for result in results] == [2, 0]
    assert not any(result.shard_ended for result in results)


def test_kinesis_mock_closed_shards_end_on_aws_signal_despite_their_listed_ending(
    kinesis_mock: str, unique_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    # kinesis-mock lists the closed parent ending at 9223372036854775807, below its records'
    # numbers; read three at a time, it must still give up all ten, then end on ChildShards.
    client = boto3.Session().client("kinesis", endpoint_url=kinesis_mock)
    client.create_stream(StreamName=unique_name, ShardCount=1)
    client.get_waiter("stream_exists").wait(
        StreamName=unique_name, WaiterConfig={"Delay": 0.1, "MaxAttempts": 100}
    )
    client.put_records(
        StreamName=unique_name,
        Records=[{"Data": str(n).encode(), "PartitionKey": f"k{n}"} for n in range(10)],
    )
    arn = client.describe_stream_summary(StreamName=unique_name)["StreamDescriptionSummary"][
        "StreamARN"
    ]
    source = KinesisStreamSource(arn, client=client, shard_refresh_seconds=0.0)
    (parent,) = source.list_shards()
    client.split_shard(
        StreamName=unique_name, ShardToSplit=parent.shard_id, NewStartingHashKey=str(2**127)
    )
    listed = {shard.shard_id: shard for shard in source.list_shards()}[parent.shard_id]
    caplog.set_level(logging.INFO, logger="streams.sources.reader")
    reader = source.open(parent.shard_id, Position("TRIM_HORIZON"))

    results = [reader.read(3) for _ in range(4)]
    client.close()

    assert listed.ending_sequence_number == "9223372036854775807"
    assert int(listed.ending_sequence_number) < int(listed.starting_sequence_number)
    assert [len(result.records) for result in results] == [3, 3, 3, 1]
    assert [result.shard_ended for result in results] == [False, False, False, True]
    (line,) = _ended_lines(caplog, parent.shard_id)
    assert "AWS's signal: ChildShards" in line


# --- positions and lineage without a stream -----------------------------------------------


@pytest.mark.parametrize(
    ("kind", "arguments"),
    [
        ("AFTER_SEQUENCE_NUMBER", {}),
        ("AT_SEQUENCE_NUMBER", {}),
        ("TRIM_HORIZON", {"sequence_number": "1"}),
        ("AT_TIMESTAMP", {}),
        ("LATEST", {"timestamp": datetime(2026, 1, 1, tzinfo=UTC)}),
    ],
)
def test_a_position_refuses_missing_or_extra_fields(kind: Any, arguments: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=kind):
        Position(kind, **arguments)


def _shards(*specs: tuple[str, tuple[str, ...]]) -> list[Shard]:
    return [Shard(shard_id, parents, "0") for shard_id, parents in specs]


def test_a_shard_whose_parent_is_no_longer_listed_may_start() -> None:
    # A parent past the stream's retention is gone from the listing, with its records.
    shards = _shards(("child", ("expired-parent",)))
    assert startable_shards(shards, finished=set(), started=set()) == shards


def test_started_or_finished_shards_are_not_started_again() -> None:
    shards = _shards(("a", ()), ("b", ()), ("c", ()))
    ready = startable_shards(shards, finished={"a"}, started={"a", "b"})
    assert [shard.shard_id for shard in ready] == ["c"]
