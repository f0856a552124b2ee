"""DynamoDB Streams as a `ShardSource`."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import boto3

from streams.arn import Arn
from streams.backoff import Backoff
from streams.sources.base import EventSource, Position, Shard, ShardReader
from streams.sources.convert import dynamodb_record_to_lambda
from streams.sources.reader import DEFAULT_BACKOFF, Page, ShardDirectory, StreamShardReader

if TYPE_CHECKING:
    from mypy_boto3_dynamodbstreams import DynamoDBStreamsClient
    from mypy_boto3_dynamodbstreams.type_defs import ShardTypeDef

# GetRecords returns at most 1,000 records per call; DescribeStream lists at most 100 shards.
MAX_RECORDS_PER_CALL = 1000
MAX_SHARDS_PER_PAGE = 100


def _shard(listed: ShardTypeDef) -> Shard:
    numbers = listed["SequenceNumberRange"]
    parent = listed.get("ParentShardId")
    return Shard(
        shard_id=listed["ShardId"],
        parent_shard_ids=(parent,) if parent else (),
        starting_sequence_number=numbers["StartingSequenceNumber"],
        ending_sequence_number=numbers.get("EndingSequenceNumber"),
    )


class _DynamoDBStreamsApi:
    max_limit = MAX_RECORDS_PER_CALL

    def __init__(self, client: DynamoDBStreamsClient, stream_arn: str) -> None:
        self._client = client
        self._stream_arn = stream_arn

    def latest_renewal(self) -> None:
        return None  # no time-based iterator: the reader says what a renewal skips

    def get_iterator(self, shard_id: str, position: Position) -> str:
        if position.sequence_number is None:
            response = self._client.get_shard_iterator(
                StreamArn=self._stream_arn, ShardId=shard_id, ShardIteratorType=position.kind
            )
        else:
            response = self._client.get_shard_iterator(
                StreamArn=self._stream_arn,
                ShardId=shard_id,
                ShardIteratorType=position.kind,
                SequenceNumber=position.sequence_number,
            )
        return response["ShardIterator"]

    def get_page(self, shard_id: str, iterator: str, limit: int) -> Page:
        response = self._client.get_records(ShardIterator=iterator, Limit=limit)
        listed = response["Records"]
        return Page(
            records=[
                dynamodb_record_to_lambda(record, stream_arn=self._stream_arn) for record in listed
            ],
            first_sequence_number=listed[0]["dynamodb"]["SequenceNumber"] if listed else None,
            last_sequence_number=listed[-1]["dynamodb"]["SequenceNumber"] if listed else None,
            next_iterator=response.get("NextShardIterator"),
            has_child_shards=False,
            millis_behind_latest=None,
        )


class DynamoDBStreamSource:
    """The shards of one DynamoDB stream, read as Lambda reads them.

    `clock` and `sleep` are injectable (seconds, monotonic). `shard_refresh_seconds` bounds
    how often readers list the stream to learn that their shard closed (DescribeStream is
    limited to 10 calls per second per account). `page_size` is DescribeStream's `Limit`.
    """

    event_source: EventSource = "aws:dynamodb"

    def __init__(
        self,
        stream_arn: str,
        *,
        client: DynamoDBStreamsClient | None = None,
        backoff: Backoff | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        shard_refresh_seconds: float = 10.0,
        page_size: int = MAX_SHARDS_PER_PAGE,
    ) -> None:
        if not 1 <= page_size <= MAX_SHARDS_PER_PAGE:
            raise ValueError(f"page_size must be 1..{MAX_SHARDS_PER_PAGE}, got {page_size}")
        self.source_arn = stream_arn
        self._client = client or boto3.client(
            "dynamodbstreams", region_name=Arn.parse(stream_arn).region
        )
        self._api = _DynamoDBStreamsApi(self._client, stream_arn)
        self._backoff = backoff or DEFAULT_BACKOFF
        self._sleep = sleep
        self._page_size = page_size
        self._directory = ShardDirectory(self._list_all, clock=clock, max_age=shard_refresh_seconds)

    def _list_all(self) -> list[Shard]:
        shards: list[Shard] = []
        last_shard_id: str | None = None
        while True:
            if last_shard_id is None:
                response = self._client.describe_stream(
                    StreamArn=self.source_arn, Limit=self._page_size
                )
            else:
                response = self._client.describe_stream(
                    StreamArn=self.source_arn,
                    Limit=self._page_size,
                    ExclusiveStartShardId=last_shard_id,
                )
            description = response["StreamDescription"]
            shards.extend(_shard(listed) for listed in description.get("Shards", []))
            last_shard_id = description.get("LastEvaluatedShardId")
            if last_shard_id is None:
                return shards

    def list_shards(self) -> list[Shard]:
        return self._directory.refresh()

    def open(self, shard_id: str, position: Position) -> ShardReader:
        if position.kind == "AT_TIMESTAMP":
            raise ValueError("DynamoDB Streams has no AT_TIMESTAMP iterator")
        return StreamShardReader(
            self._api,
            shard_id,
            position,
            directory=self._directory,
            backoff=self._backoff,
            sleep=self._sleep,
        )
