"""What reading a shard means, for both DynamoDB Streams and Kinesis.

A reader keeps one shard iterator and its own position (the last record it returned). Each
`read` is one `GetRecords` call of at most `limit` records, so memory never depends on the
backlog. It renews an expired iterator from its position, waits out throttling with backoff,
goes on at the oldest record still in the shard when its position has left the stream (and
says so: `ReadResult.expired`), and decides when a closed shard has ended.

A shard ends on evidence. The evidence is AWS's own signal: a page without a next iterator
(both services) or with `ChildShards` (Kinesis). Some endpoints never send it (moto's Kinesis
keeps handing out iterators at the end of a closed shard), so two fallbacks exist, built so
that neither can skip a record on any endpoint:

- both act only on a read that returned nothing, so a shard never ends while reads still
  return records, and only on a shard the stream lists as closed;
- *ending sequence number*: the reader has read through the shard's listed
  `EndingSequenceNumber`. A listed number below the shard's `StartingSequenceNumber` is not
  evidence of anything (kinesis-mock lists every closed shard with 9223372036854775807, below
  its own 56-digit numbers) and is never trusted;
- *tip of a closed shard* (Kinesis): the read was 0 ms behind the tip (`MillisBehindLatest`:
  "no new records to process at this moment"), used only where the ending number cannot
  decide: it is not trusted, or the reader has read nothing yet.

The reader logs, once, which of these ended its shard.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from botocore.exceptions import ClientError

from streams.backoff import Backoff, is_throttling
from streams.sources.base import ExpiredRange, Position, ReadResult, Shard

#: The pause between a reader's polls while its shard stays throttled (DynamoDB Streams answers
#: LimitExceededException, Kinesis ProvisionedThroughputExceededException): botocore has already
#: retried each call by the time a throttling error reaches the reader.
DEFAULT_BACKOFF = Backoff(base=0.25, cap=10.0)
EXPIRED_ITERATOR = "ExpiredIteratorException"
#: DynamoDB Streams' answer for a position older than its 24 h retention (GetShardIterator with
#: a trimmed sequence number, or GetRecords on an iterator whose next record was trimmed).
TRIMMED = "TrimmedDataAccessException"
# Positions found trimmed in one read before it gives up: TRIM_HORIZON is never trimmed, but the
# oldest record can be trimmed between GetShardIterator and GetRecords.
_TRIMMED_RESTARTS = 3

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Page:
    """One `GetRecords` response, records already in Lambda's shape."""

    records: list[dict[str, Any]]
    first_sequence_number: str | None
    last_sequence_number: str | None
    next_iterator: str | None
    has_child_shards: bool
    millis_behind_latest: int | None


class StreamApi(Protocol):
    """The calls that differ between DynamoDB Streams and Kinesis."""

    max_limit: int

    def get_iterator(self, shard_id: str, position: Position) -> str: ...

    def get_page(self, shard_id: str, iterator: str, limit: int) -> Page: ...

    def latest_renewal(self) -> Position | None:
        """Called just before a `LATEST` iterator is taken: where a new iterator must start
        to miss nothing if that one expires before it returns a record, or None when the
        service cannot say (DynamoDB Streams has no time-based iterator)."""
        ...


class ShardDirectory:
    """The stream's shards as last listed, shared by a source and all its readers.

    A reader that finds no new records asks whether its shard has closed meanwhile; the
    answer comes from the last listing, and the stream is listed again only when that listing
    is older than `max_age` seconds, so N readers cost one listing per interval, not N.
    """

    def __init__(
        self, list_all: Callable[[], list[Shard]], *, clock: Callable[[], float], max_age: float
    ) -> None:
        self._list_all = list_all
        self._clock = clock
        self._max_age = max_age
        self._lock = threading.Lock()
        self._shards: dict[str, Shard] = {}
        self._listed_at: float | None = None

    def refresh(self) -> list[Shard]:
        """List the stream now (all pages) and remember what it said."""
        shards = self._list_all()
        with self._lock:
            # A shard that drops out of the listing (past retention) keeps its last state.
            self._shards.update((shard.shard_id, shard) for shard in shards)
            self._listed_at = self._clock()
        return shards

    def shard(self, shard_id: str, *, refresh_if_stale: bool) -> Shard | None:
        """The shard as last listed; listed again first if asked and the listing is stale."""
        if refresh_if_stale:
            with self._lock:
                listed_at = self._listed_at
            if listed_at is None or self._clock() - listed_at >= self._max_age:
                self.refresh()
        with self._lock:
            return self._shards.get(shard_id)


def _error_code(error: ClientError) -> str:
    return str(error.response.get("Error", {}).get("Code", ""))


class StreamShardReader:
    """A `ShardReader` over one shard of a real stream (see the module docstring)."""

    def __init__(
        self,
        api: StreamApi,
        shard_id: str,
        position: Position,
        *,
        directory: ShardDirectory,
        backoff: Backoff,
        sleep: Callable[[float], None],
    ) -> None:
        self._api = api
        self._shard_id = shard_id
        self._start = position
        self._directory = directory
        self._backoff = backoff
        self._sleep = sleep
        self._iterator: str | None = None
        self._latest_renewal: Position | None = None
        self._last_sequence_number: str | None = None
        self._throttled_reads = 0
        self._ended = False
        self._distrusted_ending: str | None = None  # the listed number not trusted, once logged
        # Set when the position was found trimmed: where it was (reported with the next read),
        # and that the reader goes on at TRIM_HORIZON until it has read a record there.
        self._trimmed_since: Position | None = None
        self._at_trim_horizon = False

    def _resume_position(self) -> Position:
        if self._at_trim_horizon:
            return Position("TRIM_HORIZON")
        if self._last_sequence_number is None:
            return self._start
        return Position("AFTER_SEQUENCE_NUMBER", sequence_number=self._last_sequence_number)

    def _consumed_through(self) -> int | None:
        """The highest sequence number known to be behind this reader, if any."""
        if self._last_sequence_number is not None:
            return int(self._last_sequence_number)
        if self._start.sequence_number is None:
            return None
        if self._start.kind == "AFTER_SEQUENCE_NUMBER":
            return int(self._start.sequence_number)
        return int(self._start.sequence_number) - 1

    def _fetch(self, limit: int) -> Page:
        if self._iterator is None:
            if self._start.kind == "LATEST" and self._last_sequence_number is None:
                self._latest_renewal = self._api.latest_renewal()
            self._iterator = self._api.get_iterator(self._shard_id, self._resume_position())
        try:
            return self._api.get_page(self._shard_id, self._iterator, limit)
        except ClientError as error:
            if _error_code(error) != EXPIRED_ITERATOR:
                raise
        # Iterators expire (DynamoDB after 15 minutes, Kinesis after 5 minutes unused): take a
        # new one from the last record returned. A second expiry in a row is not normal.
        self._iterator = self._api.get_iterator(self._shard_id, self._renewal_position())
        return self._api.get_page(self._shard_id, self._iterator, limit)

    def _renewal_position(self) -> Position:
        position = self._resume_position()
        if position.kind != "LATEST":
            return position
        # Nothing read yet from LATEST: LATEST again would skip what was written meanwhile.
        if self._latest_renewal is not None:
            return self._latest_renewal
        logger.warning(
            "shard %s: its iterator at LATEST expired before it returned a record, and the "
            "stream cannot start an iterator from a time (DynamoDB Streams): records written "
            "to the shard since its last read (15 minutes or more ago) are skipped",
            self._shard_id,
        )
        return position

    def _fetch_past_trim(self, limit: int) -> Page:
        """`_fetch`, going on at the oldest record still in the shard (TRIM_HORIZON) when the
        stream answers that the reader's position has left it: what was there is gone, and
        waiting cannot bring it back (the position would only fall further behind)."""
        for _ in range(_TRIMMED_RESTARTS):
            try:
                return self._fetch(limit)
            except ClientError as error:
                if _error_code(error) != TRIMMED:
                    raise
            if self._trimmed_since is None:
                self._trimmed_since = self._resume_position()
            self._at_trim_horizon = True
            self._iterator = None
        return self._fetch(limit)

    def read(self, limit: int) -> ReadResult:
        if limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit}")
        if self._ended:
            return ReadResult(records=[], shard_ended=True)
        try:
            page = self._fetch_past_trim(min(limit, self._api.max_limit))
        except ClientError as error:
            if not is_throttling(error):
                raise
            self._sleep(self._backoff.delay(self._throttled_reads))
            self._throttled_reads += 1
            return ReadResult(records=[], shard_ended=False, throttled=True)
        self._throttled_reads = 0
        expired: ExpiredRange | None = None
        if self._trimmed_since is not None:
            expired = ExpiredRange(self._trimmed_since, page.first_sequence_number)
            self._trimmed_since = None
        if page.last_sequence_number is not None:
            self._last_sequence_number = page.last_sequence_number
            self._at_trim_horizon = False
        self._iterator = page.next_iterator
        rule = self._end_rule(page)
        if rule is not None:
            logger.info("shard %s: ended (%s)", self._shard_id, rule)
            self._ended = True
            self._iterator = None
        return ReadResult(
            records=page.records,
            shard_ended=self._ended,
            millis_behind_latest=page.millis_behind_latest,
            expired=expired,
        )

    def _end_rule(self, page: Page) -> str | None:
        """The evidence that this page ends the shard, described; None while it goes on."""
        # AWS's signal: a closed shard read to its end has no next iterator; Kinesis also
        # names the children.
        if page.has_child_shards:
            return "AWS's signal: ChildShards"
        if page.next_iterator is None:
            return "AWS's signal: no NextShardIterator"
        # The fallbacks (module docstring). Never on a read that returned records; the listing
        # is refreshed (at most every `max_age`) only here.
        if page.records:
            return None
        shard = self._directory.shard(self._shard_id, refresh_if_stale=True)
        if shard is None or shard.ending_sequence_number is None:
            return None  # open: an empty read only means caught up
        ending = self._trusted_ending(shard, shard.ending_sequence_number)
        consumed = self._consumed_through()
        if ending is not None and consumed is not None:
            if consumed >= ending:
                return (
                    f"read through its listed EndingSequenceNumber {ending}, then an empty "
                    "read: the endpoint sent no end-of-shard signal"
                )
            return None  # the listing says records up to `ending` remain
        if page.millis_behind_latest == 0:
            return (
                "listed closed, and an empty read 0 ms behind its tip: the endpoint sent no "
                "end-of-shard signal"
            )
        return None

    def _trusted_ending(self, shard: Shard, listed: str) -> int | None:
        """The shard's listed `EndingSequenceNumber` if it can be evidence, else None."""
        if int(listed) >= int(shard.starting_sequence_number):
            return int(listed)
        if self._distrusted_ending != listed:
            self._distrusted_ending = listed
            logger.info(
                "shard %s: listed EndingSequenceNumber %s is below its StartingSequenceNumber "
                "%s: not used to decide where the shard ends",
                self._shard_id,
                listed,
                shard.starting_sequence_number,
            )
        return None
