"""Kinesis Data Streams as a `ShardSource`."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import boto3

from streams.arn import Arn
from streams.backoff import Backoff
from streams.sources.base import EventSource, Position, Shard, ShardReader
from streams.sources.convert import (
    kinesis_record_to_lambda,
)
from streams.sources.reader import DEFAULT_BACKOFF, Page, ShardDirectory, StreamShardReader

if TYPE_CHECKING:
    from mypy_boto3_kinesis import KinesisClient
    from mypy_boto3_kinesis.type_defs import ListShardsOutputTypeDef, ShardTypeDef

# GetRecords returns at most 10,000 records per call; ListShards at most 10,000 shards.
MAX_RECORDS_PER_CALL = 10_000
MAX_SHARDS_PER_PAGE = 10_000

# How far before a LATEST iterator was taken a renewed iterator starts (AT_TIMESTAMP), so that
# this machine's clock running ahead of AWS's by less than this loses no record. Records that
# arrived just before the first iterator may then be delivered too: at least once, never lost.
LATEST_RENEWAL_MARGIN_SECONDS = 60.0

# The role named in `invokeIdentityArn` when the caller does not choose one. Locally no role
# exists; on AWS it is the function's execution role.
DEFAULT_INVOKE_ROLE = "streams-local-mapping"


def _shard(listed: ShardTypeDef) -> Shard:
    numbers = listed["SequenceNumberRange"]
    parents = tuple(
        parent
        for parent in (listed.get("ParentShardId"), listed.get("AdjacentParentShardId"))
        if parent
    )
    return Shard(
        shard_id=listed["ShardId"],
        parent_shard_ids=parents,
        starting_sequence_number=numbers["StartingSequenceNumber"],
        ending_sequence_number=numbers.get("EndingSequenceNumber"),
    )


class _KinesisApi:
    max_limit = MAX_RECORDS_PER_CALL

    def __init__(
        self,
        client: KinesisClient,
        stream_arn: str,
        invoke_identity_arn: str,
        wall_clock: Callable[[], float],
    ) -> None:
        self._client = client
        self._stream_arn = stream_arn
        self._invoke_identity_arn = invoke_identity_arn
        self._wall_clock = wall_clock

    def latest_renewal(self) -> Position:
        since = self._wall_clock() - LATEST_RENEWAL_MARGIN_SECONDS
        return Position("AT_TIMESTAMP", timestamp=datetime.fromtimestamp(since, tz=UTC))

    def get_iterator(self, shard_id: str, position: Position) -> str:
        if position.timestamp is not None:
            response = self._client.get_shard_iterator(
                StreamARN=self._stream_arn,
                ShardId=shard_id,
                ShardIteratorType=position.kind,
                Timestamp=position.timestamp,
            )
        elif position.sequence_number is not None:
            response = self._client.get_shard_iterator(
                StreamARN=self._stream_arn,
                ShardId=shard_id,
                ShardIteratorType=position.kind,
                StartingSequenceNumber=position.sequence_number,
            )
        else:
            response = self._client.get_shard_iterator(
                StreamARN=self._stream_arn, ShardId=shard_id, ShardIteratorType=position.kind
            )
        return response["ShardIterator"]

    def get_page(self, shard_id: str, iterator: str, limit: int) -> Page:
        response = self._client.get_records(
            ShardIterator=iterator, Limit=limit, StreamARN=self._stream_arn
        )
        listed = response["Records"]
        return Page(
            records=[
                kinesis_record_to_lambda(
                    record,
                    shard_id=shard_id,
                    stream_arn=self._stream_arn,
                    invoke_identity_arn=self._invoke_identity_arn,
                )
                for record in listed
            ],
            first_sequence_number=listed[0]["SequenceNumber"] if listed else None,
            last_sequence_number=listed[-1]["SequenceNumber"] if listed else None,
            next_iterator=response.get("NextShardIterator"),
            has_child_shards=bool(response.get("ChildShards")),
            millis_behind_latest=response.get("MillisBehindLatest"),
        )


class KinesisStreamSource:
    """The shards of one Kinesis data stream, read as Lambda reads them.

    `invoke_identity_arn` fills the records' `invokeIdentityArn` (default:
    `arn:<partition>:iam::<stream's account>:role/streams-local-mapping`). `clock` and `sleep`
    are injectable (seconds, monotonic), and `wall_clock` (epoch seconds: where an iterator
    taken at LATEST is renewed, see `LATEST_RENEWAL_MARGIN_SECONDS`); `shard_refresh_seconds`
    bounds how often readers list the stream to learn that their shard closed; `page_size` is
    ListShards' `MaxResults`.
    """

    event_source: EventSource = "aws:kinesis"

    def __init__(
        self,
        stream_arn: str,
        *,
        client: KinesisClient | None = None,
        invoke_identity_arn: str | None = None,
        backoff: Backoff | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        shard_refresh_seconds: float = 10.0,
        page_size: int = 1000,
    ) -> None:
        if not 1 <= page_size <= MAX_SHARDS_PER_PAGE:
            raise ValueError(f"page_size must be 1..{MAX_SHARDS_PER_PAGE}, got {page_size}")
        self.source_arn = stream_arn
        arn = Arn.parse(stream_arn)
        self.invoke_identity_arn = invoke_identity_arn or str(
            Arn(arn.partition, "iam", "", arn.account, f"role/{DEFAULT_INVOKE_ROLE}")
        )
        self._client = client or boto3.client("kinesis", region_name=arn.region)
        self._api = _KinesisApi(self._client, stream_arn, self.invoke_identity_arn, wall_clock)
        self._backoff = backoff or DEFAULT_BACKOFF
        self._sleep = sleep
        self._page_size = page_size
        self._directory = ShardDirectory(self._list_all, clock=clock, max_age=shard_refresh_seconds)

    def _list_all(self) -> list[Shard]:
        shards: list[Shard] = []
        response: ListShardsOutputTypeDef = self._client.list_shards(
            StreamARN=self.source_arn, MaxResults=self._page_size
        )
        while True:
            shards.extend(_shard(listed) for listed in response["Shards"])
            token = response.get("NextToken")
            if token is None:
                return shards
            # AWS refuses the stream's name or ARN next to NextToken: the token names it.
            response = self._client.list_shards(NextToken=token, MaxResults=self._page_size)

    def list_shards(self) -> list[Shard]:
        return self._directory.refresh()

    def open(self, shard_id: str, position: Position) -> ShardReader:
        return StreamShardReader(
            self._api,
            shard_id,
            position,
            directory=self._directory,
            backoff=self._backoff,
            sleep=self._sleep,
        )
