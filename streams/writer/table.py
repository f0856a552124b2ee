"""Write bursts of items to a DynamoDB table without losing one silently.

`TableWriter` batches puts and deletes into `BatchWriteItem` calls of up to 25 writes, retries what
DynamoDB leaves unprocessed or refuses for capacity, paces itself to what the table accepts, keeps
the order of writes per key, and accounts for every write in a `WriteReport`::

    with TableWriter("my-table") as writer:
        for update in updates:
            writer.put(update)                 # plain Python values; Decimal for numbers
        writer.delete({"childId": "c-1"})
    report = writer.report                     # written, retried, throttled, failed (with reasons)

Who retries what:

- botocore retries a call refused as a whole (throttling errors, 5xx, dropped connections) as the
  client is configured: by default its DynamoDB-tuned legacy mode (10 attempts, 50 ms doubling);
  `AWS_RETRY_MODE` or the client's `retries` config choose standard or adaptive instead. The
  writer watches those attempts (botocore's `response-received` event) to count throttles and to
  slow down while botocore retries.
- The writer retries what botocore does not: the writes DynamoDB returns in `UnprocessedItems`,
  and calls still refused when botocore gives up. It waits `Backoff` between attempts and keeps
  trying until the deadline (or for ever without one).
- `SendingRate` paces every call: it slows down on throttling and speeds up when calm, never above
  `max_rate`.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import boto3
from botocore.config import Config

from streams.backoff import Backoff
from streams.writer.encode import describe_key_schema
from streams.writer.pacing import RatePolicy, SendingRate
from streams.writer.pipeline import Pipeline, WriteReport

if TYPE_CHECKING:
    from mypy_boto3_dynamodb.client import DynamoDBClient

__all__ = ["DEFAULT_BACKOFF", "DEFAULT_LINGER", "TableWriter"]

#: How long a refused write waits before it is sent again: 50 ms doubling to 20 s, with full
#: jitter, as botocore's DynamoDB settings (throttling is usually over within tens of
#: milliseconds; the jitter keeps parallel senders from retrying in step).
DEFAULT_BACKOFF = Backoff(base=0.05, cap=20.0)
#: How long the oldest write of a partial batch waits for more before the batch goes anyway:
#: long enough that a steady producer fills batches, short enough that nothing sits unsent.
DEFAULT_LINGER = 0.05


class TableWriter:
    """Writes items to one DynamoDB table in batches; see the module's docstring.

    `put()` and `delete()` are thread-safe and return the write's sequence number. They raise
    `InvalidItemError` for what DynamoDB would refuse (a float, a missing or empty key attribute,
    an item over 400 KB, ...); everything else is sent by `senders` background threads, and
    `put()` blocks while `max_pending` writes are unsettled, so memory stays bounded.

    Per key, writes apply in the order given: a write is never sent while an earlier write of its
    key is unaccepted. Every write is sent, so a table stream sees every update. With
    `coalesce=True`, for tables where only the latest state matters, a later write that arrives
    before the earlier one was sent (or after DynamoDB refused it) replaces it, counted in
    `report.replaced`: the table ends the same, and the stream never sees the replaced write.

    An item DynamoDB rejects is isolated by splitting its batch and listed in `report.failed`;
    its neighbours are written. Only table-level errors raise (`TableWriteError`, from `put()`,
    `flush()` or leaving the `with` block).

    Writes go out in batches of 25; a partial batch goes out once its oldest write has waited
    `linger` seconds (50 ms; 0 sends every write at once), so a quiet producer's writes do not
    wait in memory for the next burst. `flush()` (and leaving the `with` block) sends everything
    queued and returns once every write was accepted or is listed in `report.failed`. A writer
    garbage-collected with unsettled writes logs an error and warns (`ResourceWarning`).

    `deadline` is in seconds from construction: from then on nothing more is sent, and what is
    unaccepted is listed in `report.failed`. `max_rate` caps writes per second. `clock` and `sleep`
    are injectable so tests run backoff and pacing on a fake clock; `random`, when given, is
    the randomness of the backoff's jitter.

    `client` is a low-level DynamoDB client (`boto3.client("dynamodb")`), not a resource's
    `meta.client`, whose hooks would encode the items a second time. While the writer is open
    it observes the client's `BatchWriteItem` answers (see the module's docstring).
    """

    def __init__(
        self,
        table_name: str,
        *,
        client: DynamoDBClient | None = None,
        max_rate: float | None = None,
        deadline: float | None = None,
        senders: int = 4,
        max_pending: int = 1000,
        coalesce: bool = False,
        linger: float = DEFAULT_LINGER,
        backoff: Backoff | None = None,
        rate_policy: RatePolicy | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        random: Callable[[], float] | None = None,
    ) -> None:
        if senders < 1:
            raise ValueError(f"senders must be 1 or more, not {senders}")
        if max_pending < 1:
            raise ValueError(f"max_pending must be 1 or more, not {max_pending}")
        if max_rate is not None and max_rate <= 0:
            raise ValueError(f"max_rate is writes per second, more than 0, not {max_rate}")
        if deadline is not None and deadline <= 0:
            raise ValueError(f"deadline is seconds from now, more than 0, not {deadline}")
        if not linger >= 0:  # NaN too
            raise ValueError(f"linger is seconds, 0 or more, not {linger}")
        if client is None:
            client = boto3.client("dynamodb", config=Config(max_pool_connections=max(10, senders)))
        self._pipeline = Pipeline(
            table_name,
            client,
            describe_key_schema(client, table_name),
            rate=SendingRate(max_rate, rate_policy or RatePolicy(), clock),
            backoff=(backoff or DEFAULT_BACKOFF).drawing_from(random),
            deadline=deadline,
            senders=senders,
            max_pending=max_pending,
            coalesce=coalesce,
            linger=linger,
            clock=clock,
            sleep=sleep,
        )
        self._finalizer = weakref.finalize(self, self._pipeline.abandon)

    def put(self, item: Mapping[str, Any]) -> int:
        """Queue a put of `item` (a whole item, key attributes included); return its number."""
        attributes, key = self._pipeline.schema.encode_item(item)
        return self._pipeline.submit("put", {"PutRequest": {"Item": attributes}}, key)

    def delete(self, key: Mapping[str, Any]) -> int:
        """Queue a delete of the item with `key` (the key attributes only); return its number."""
        attributes, key_value = self._pipeline.schema.encode_key(key)
        return self._pipeline.submit("delete", {"DeleteRequest": {"Key": attributes}}, key_value)

    def flush(self) -> None:
        """Send everything queued; return when every write is accepted or in `report.failed`."""
        self._pipeline.flush()

    def close(self) -> None:
        """Flush, then stop the senders. If the flush is interrupted (Ctrl-C), what was not
        accepted is listed in `report.failed` and the interruption propagates."""
        if not self._finalizer.alive:
            return
        self._finalizer.detach()
        try:
            self._pipeline.flush()
        except BaseException:
            self._pipeline.abort("not sent: the writer was interrupted before DynamoDB accepted it")
            raise
        else:
            self._pipeline.shutdown()

    def abort(self, reason: str = "not sent: the writer was aborted") -> None:
        """Stop at once, without flushing: every write DynamoDB has not accepted is listed in
        `report.failed` with `reason` (a write in flight once its answer comes back)."""
        self._finalizer.detach()
        self._pipeline.abort(reason)

    def completed_through(self) -> int:
        """The highest number `n` such that every write numbered up to `n` is settled: accepted,
        replaced by a later write of its key, or in `report.failed` (0 before any).

        Raises `TableWriteError` once the table cannot be written: writes failed for that reason
        are settled but were never the items' fault, so no caller should count them as done.
        """
        return self._pipeline.completed_through()

    @property
    def report(self) -> WriteReport:
        """A snapshot of where the writes went so far."""
        return self._pipeline.report()

    def __enter__(self) -> TableWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
