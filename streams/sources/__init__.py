"""Shard sources: DynamoDB Streams and Kinesis read as Lambda reads them.

Records come out in the exact shape of a Lambda event record (docs/esm.md section 5).
"""

from __future__ import annotations

from streams.sources.base import (
    EventSource,
    ExpiredRange,
    Position,
    PositionKind,
    ReadResult,
    Shard,
    ShardReader,
    ShardSource,
)
from streams.sources.convert import (
    attribute_value_to_lambda,
    dynamodb_record_to_lambda,
    kinesis_record_to_lambda,
)
from streams.sources.dynamodb import DynamoDBStreamSource
from streams.sources.kinesis import KinesisStreamSource
from streams.sources.lineage import startable_shards

__all__ = [
    "DynamoDBStreamSource",
    "EventSource",
    "ExpiredRange",
    "KinesisStreamSource",
    "Position",
    "PositionKind",
    "ReadResult",
    "Shard",
    "ShardReader",
    "ShardSource",
    "attribute_value_to_lambda",
    "dynamodb_record_to_lambda",
    "kinesis_record_to_lambda",
    "startable_shards",
]
