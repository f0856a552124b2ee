"""The shard-source seam: what the local event source mapping needs from a stream.

Two real implementations (DynamoDB Streams, Kinesis) and any test source implement these
protocols. Records come out already converted to the exact Lambda event record shape
(docs/esm.md section 5), so a handler cannot tell where it runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, Protocol

from streams.records import EventSource

__all__ = [
    "EventSource",
    "ExpiredRange",
    "Position",
    "PositionKind",
    "ReadResult",
    "Shard",
    "ShardReader",
    "ShardSource",
]

PositionKind = Literal[
    "TRIM_HORIZON", "LATEST", "AT_TIMESTAMP", "AT_SEQUENCE_NUMBER", "AFTER_SEQUENCE_NUMBER"
]


@dataclass(frozen=True)
class Shard:
    """One shard as listed by the stream. Closed when `ending_sequence_number` is set."""

    shard_id: str
    parent_shard_ids: tuple[str, ...]  # Kinesis merges have two parents
    starting_sequence_number: str
    ending_sequence_number: str | None = None

    @property
    def closed(self) -> bool:
        return self.ending_sequence_number is not None


@dataclass(frozen=True)
class Position:
    """Where a reader starts in a shard.

    `AT_SEQUENCE_NUMBER` and `AFTER_SEQUENCE_NUMBER` need `sequence_number` (Lambda resumes
    *at* a reported failure, and *after* a fully processed batch); `AT_TIMESTAMP` (Kinesis
    only) needs `timestamp`.
    """

    kind: PositionKind
    sequence_number: str | None = None
    timestamp: datetime | None = None

    def __post_init__(self) -> None:
        needs_sequence = self.kind in ("AT_SEQUENCE_NUMBER", "AFTER_SEQUENCE_NUMBER")
        if needs_sequence != (self.sequence_number is not None):
            raise ValueError(f"{self.kind} position: sequence_number {self.sequence_number!r}")
        if (self.kind == "AT_TIMESTAMP") != (self.timestamp is not None):
            raise ValueError(f"{self.kind} position: timestamp {self.timestamp!r}")


@dataclass(frozen=True)
class ExpiredRange:
    """Records of a shard that left the stream (past its retention) before a reader got to them.

    The reader was at `since` (its position: after the last record it returned, or where it
    started) when the stream answered that this position is trimmed; it went on at the oldest
    record still in the shard, `first_remaining` (None when that read found no record). The
    records between the two are gone. How many there were cannot be known: sequence numbers
    grow with gaps, and the range may even be empty (the record at `since` was the last one
    trimmed).
    """

    since: Position
    first_remaining: str | None

    def describe(self) -> str:
        """The range in words, for a log line."""
        if self.since.sequence_number is not None:
            kind = "after" if self.since.kind == "AFTER_SEQUENCE_NUMBER" else "from"
            start = f"{kind} sequence number {self.since.sequence_number}"
        else:
            start = f"from {self.since.kind}"
        if self.first_remaining is None:
            return f"{start} up to the oldest record still in the shard (none read yet)"
        return f"{start} up to {self.first_remaining}, the oldest record still in the shard"


@dataclass(frozen=True)
class ReadResult:
    """One poll of a shard.

    `records` are Lambda-shaped record dicts in sequence-number order. `shard_ended` is True
    once the reader has passed the last record of a closed shard: on AWS's signal (a null next
    iterator, or `ChildShards`), or, from an endpoint that never sends it, on evidence that
    cannot skip a record (`streams.sources.reader`). `throttled` is True when
    the read was throttled even after botocore's retries: the reader has already waited its
    backoff, `records` is empty, and the next `read` tries again from the same place.
    `expired` is set on the first read after the reader found its position trimmed from the
    stream and went on at the oldest record still there (`records` start there).
    """

    records: list[dict[str, Any]]
    shard_ended: bool
    millis_behind_latest: int | None = None
    throttled: bool = False
    expired: ExpiredRange | None = None


class ShardReader(Protocol):
    def read(self, limit: int) -> ReadResult:
        """At most `limit` next records after the last ones returned.

        One `GetRecords` call (plus a new iterator when the old one expired, taken from the
        last record returned). Never reads ahead: memory does not grow with the backlog.
        """
        ...


class ShardSource(Protocol):
    event_source: EventSource
    source_arn: str

    def list_shards(self) -> list[Shard]:
        """Every shard the stream lists now (all pages), parents included."""
        ...

    def open(self, shard_id: str, position: Position) -> ShardReader:
        """A reader for one shard, starting at `position` (no call is made until `read`)."""
        ...
