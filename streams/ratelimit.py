"""A fleet-wide rate limit: R calls a second (and a burst), shared through one DynamoDB item.

Lambda bounds a stream's concurrency by its shards, but shards x `ParallelizationFactor` x
`concurrency` callers can still call a vendor faster than it allows. `RateLimit` makes them
share one budget, with no lock service and nothing to run: every caller takes its turn from one
DynamoDB item with a conditional `UpdateItem`.

The item holds one number, `fullAt`: the moment the bucket would be full again if nobody called
(microseconds since the epoch). It is the generic cell rate algorithm's "theoretical arrival
time", a token bucket in one value: with `T = 1 / rate`, the bucket holds
`burst - (fullAt - now) / T` tokens while `fullAt > now`, and is full once `fullAt <= now`. A
call takes one token:

- **busy** (`fullAt >= now`): ``SET fullAt = fullAt + T`` if ``fullAt <= latest``. The update
  is relative, so any number of callers at once all succeed, one after the other, with no
  conflict. `latest` is how far ahead a caller may reserve: a caller allowed to wait until `w`
  reserves the slot at `fullAt + T - burst * T` if that is before `w`, and sleeps until it. So
  waiting callers queue in DynamoDB, each with its own slot, instead of waking together.
- **idle** (`fullAt < now`, or no item yet): ``SET fullAt = now + T`` if ``fullAt < now``.

A caller guesses the case from the last `fullAt` it saw. A wrong guess fails the condition, and
the failed update returns the item as it is (`ReturnValuesOnConditionCheckFailure=ALL_OLD`), so
the next try is right: one `UpdateItem` per call in the steady state, two after a wrong guess
(a cold start, or several callers finding the bucket idle at once). When no slot comes before
the caller's wait ends, the failed update already says so: `acquire()` raises `Transient` at
once, the batch core retries the record or checkpoints at it, and Lambda delivers it again
later: the backlog shows as iterator age, nothing is dropped, and the vendor is not called
harder.

Over any interval of `s` seconds, at most `rate * s + burst` calls are admitted (plus one, for
the rounding of `T` up to a whole microsecond, which can only slow the rate). Callers' clocks
(Lambda's are NTP-synchronised) should agree to well within `T`.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from datetime import UTC
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any, cast

import boto3

from streams.batch import Transient, time_left

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

__all__ = ["KEY_ATTRIBUTE", "RateLimit", "retry_after_seconds"]

#: The rate-limit table's partition key (a string): one item per limit.
KEY_ATTRIBUTE = "limitId"
_FULL_AT = "fullAt"
_MICROS = 1_000_000
# A caller whose guess keeps turning out wrong (the item changes between its tries) gives up
# after this many tries, transiently: it is not a state a healthy fleet stays in.
_MAX_TRIES = 8


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """A `Retry-After` header's value in seconds from `now` (epoch seconds): it is either a
    number of seconds or an HTTP date (RFC 9110 section 10.2.3). None when absent or unreadable."""
    if value is None:
        return None
    text = value.strip()
    if text.isdigit():
        return float(text)
    try:
        moment = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if moment.tzinfo is None:  # an HTTP date is always GMT
        moment = moment.replace(tzinfo=UTC)
    reference = time.time() if now is None else now
    return max(0.0, moment.timestamp() - reference)


class RateLimit:
    """At most `rate` calls a second across every process that shares `key` in `table_name`,
    with bursts of up to `burst` calls (see the module docstring).

    ```python
    limit = RateLimit(os.environ["RATE_LIMIT_TABLE"], key="vendor", rate=50, burst=10)

    def handle(record):
        limit.acquire()                 # waits for a token, or raises Transient
        response = call_vendor(record)
        if response.status in (429, 503):
            raise limit.refused(response.status, response.headers.get("Retry-After"))
    ```

    `acquire()` waits at most until the invocation's time budget ends (`streams.batch.
    time_left()`: the remaining time less the core's `time_margin`), and at most `max_wait`
    seconds if given; outside a batch with a Lambda context and without `max_wait` it waits as
    long as it takes. `clock` (epoch seconds, shared by the fleet: not a monotonic clock) and
    `sleep` are injectable. `client` is a low-level DynamoDB client (thread-safe: one per
    process is enough).
    """

    def __init__(
        self,
        table_name: str,
        *,
        rate: float,
        burst: int = 1,
        key: str = "default",
        max_wait: float | None = None,
        client: DynamoDBClient | None = None,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if not rate > 0 or not math.isfinite(rate):
            raise ValueError(f"rate is calls per second, more than 0, not {rate}")
        if burst < 1:
            raise ValueError(f"burst is a number of calls, 1 or more, not {burst}")
        if max_wait is not None and max_wait < 0:
            raise ValueError(f"max_wait is seconds, 0 or more, not {max_wait}")
        self.table_name = table_name
        self.key = key
        self.rate = rate
        self.burst = burst
        self.max_wait = max_wait
        # Rounded up: a slot is never shorter than 1 / rate.
        self._interval = math.ceil(_MICROS / rate)
        self._client = client
        self._clock = clock
        self._sleep = sleep
        self._seen: int | None = None  # the last fullAt this process saw (a guess)

    @property
    def client(self) -> DynamoDBClient:
        if self._client is None:
            self._client = boto3.client("dynamodb")
        return self._client

    def acquire(self) -> float:
        """Take one call's token, waiting for it if it comes in time; else raise `Transient`.

        Returns the moment the token became this caller's (epoch seconds): the call may start
        then, and `acquire` has waited until it."""
        slot, wait = self._reserve()
        if wait > 0:
            self._sleep(wait)
        return slot / _MICROS

    async def acquire_async(self) -> float:
        """`acquire()` for an `async def` handler: the DynamoDB call runs in a thread and the
        wait on the event loop, so other records go on meanwhile."""
        slot, wait = await asyncio.to_thread(self._reserve)
        if wait > 0:
            if self._sleep is time.sleep:
                await asyncio.sleep(wait)
            else:
                self._sleep(wait)  # a test's clock: it only advances time
        return slot / _MICROS

    def pause(self, seconds: float) -> None:
        """No call anywhere in the fleet for `seconds` from now (a vendor's `Retry-After`);
        then calls resume at `rate`, without a burst. A longer pause already set stays.
        Callers that already reserved a slot before the pause go ahead at it."""
        if seconds <= 0:
            return
        now = self._now()
        # The first call after the pause is admitted when fullAt - (burst - 1) * T = now + s.
        until = now + int(seconds * _MICROS) + (self.burst - 1) * self._interval
        try:
            self.client.update_item(
                TableName=self.table_name,
                Key={KEY_ATTRIBUTE: {"S": self.key}},
                UpdateExpression="SET #full = :until",
                ConditionExpression="attribute_not_exists(#full) OR #full < :until",
                ExpressionAttributeNames={"#full": _FULL_AT},
                ExpressionAttributeValues={":until": {"N": str(until)}},
            )
        except self.client.exceptions.ConditionalCheckFailedException:
            return  # a pause at least as long is already set
        self._seen = until

    def refused(self, status: int, retry_after: str | None = None) -> Transient:
        """The vendor refused a call (429, 503): honour its `Retry-After` for the whole fleet
        and return the `Transient` to raise, so the record is retried later."""
        seconds = retry_after_seconds(retry_after, self._clock())
        if seconds is not None:
            self.pause(seconds)
        return Transient(f"the vendor answered HTTP {status}")

    # -- the conditional update ---------------------------------------------------------------

    def _now(self) -> int:
        return int(self._clock() * _MICROS)

    def _wait_limit(self) -> float | None:
        """Seconds this call may wait for its token: the budget's and `max_wait`'s smaller."""
        limits = [limit for limit in (time_left(), self.max_wait) if limit is not None]
        return min(limits) if limits else None

    def _reserve(self) -> tuple[int, float]:
        """Take a slot in DynamoDB: when it is (epoch microseconds), and the seconds to wait
        until then."""
        for _ in range(_MAX_TRIES):
            now = self._now()
            wait_limit = self._wait_limit()
            # The latest fullAt from which the next slot still comes in time.
            latest = (
                None
                if wait_limit is None
                else now + int(wait_limit * _MICROS) + (self.burst - 1) * self._interval
            )
            seen = self._seen
            if seen is not None and latest is not None and seen > latest:
                # Known to be full that far ahead (a wait_limit of 0, a pause): one read
                # would not change the answer, so do not spend a write on it.
                break
            if seen is None or seen < now:
                taken = self._take_idle(now)
            else:
                taken = self._take_busy(now, latest)
            if isinstance(taken, int):
                self._seen = taken
                slot = max(now, taken - self.burst * self._interval)
                return slot, (slot - now) / _MICROS
            self._seen = taken.seen
            if taken.seen is not None and latest is not None and taken.seen > latest:
                break
        raise Transient("rate limit: no call allowed before the wait would end")

    def _take_idle(self, now: int) -> int | _Refused:
        after = now + self._interval
        return self._update(
            "SET #full = :after",
            "attribute_not_exists(#full) OR #full < :now",
            {":after": {"N": str(after)}, ":now": {"N": str(now)}},
            after,
        )

    def _take_busy(self, now: int, latest: int | None) -> int | _Refused:
        values = {":interval": {"N": str(self._interval)}, ":now": {"N": str(now)}}
        if latest is None:
            condition = "#full >= :now"
        else:
            condition = "#full BETWEEN :now AND :latest"
            values[":latest"] = {"N": str(latest)}
        return self._update("SET #full = #full + :interval", condition, values, None)

    def _update(
        self, expression: str, condition: str, values: dict[str, Any], after: int | None
    ) -> int | _Refused:
        """The new fullAt, or what the item held when the condition failed."""
        try:
            response = self.client.update_item(
                TableName=self.table_name,
                Key={KEY_ATTRIBUTE: {"S": self.key}},
                UpdateExpression=expression,
                ConditionExpression=condition,
                ExpressionAttributeNames={"#full": _FULL_AT},
                ExpressionAttributeValues=values,
                ReturnValues="NONE" if after is not None else "UPDATED_NEW",
                ReturnValuesOnConditionCheckFailure="ALL_OLD",
            )
        except self.client.exceptions.ConditionalCheckFailedException as failed:
            item = cast(dict[str, Any], failed.response).get("Item") or {}
            held = item.get(_FULL_AT, {}).get("N")
            return _Refused(None if held is None else int(held))
        if after is not None:
            return after
        return int(response["Attributes"][_FULL_AT]["N"])


class _Refused:
    """A condition that failed, and the fullAt the item held (None: no item yet)."""

    __slots__ = ("seen",)

    def __init__(self, seen: int | None) -> None:
        self.seen = seen
