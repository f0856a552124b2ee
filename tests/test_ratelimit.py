"""RateLimit: one DynamoDB item shared by threads and processes admits at most R calls a second
plus the burst, waits only within the time budget, and honours a vendor's Retry-After for all."""

from __future__ import annotations

import asyncio
import bisect
import multiprocessing
import os
import threading
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any

import boto3
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streams import RateLimit, StreamProcessor, Transient
from streams.ratelimit import KEY_ATTRIBUTE, retry_after_seconds
from streams.records import StreamRecord, parse_records
from tests.factories import NOW, FakeClock, FakeContext, MemorySink, dynamodb_event

REGION = "us-east-1"


def create_limit_table(client: Any, name: str) -> str:
    client.create_table(
        TableName=name,
        AttributeDefinitions=[{"AttributeName": KEY_ATTRIBUTE, "AttributeType": "S"}],
        KeySchema=[{"AttributeName": KEY_ATTRIBUTE, "KeyType": "HASH"}],
        BillingMode="PAY_PER_REQUEST",
    )
    return name


@pytest.fixture
def dynamodb(aws: boto3.Session) -> Any:
    return aws.client("dynamodb")


@pytest.fixture
def table(dynamodb: Any, unique_name: str) -> str:
    return create_limit_table(dynamodb, unique_name)


class Calls:
    """Counts the UpdateItem calls a client makes (botocore's after-call event)."""

    def __init__(self, client: Any) -> None:
        self.count = 0
        client.meta.events.register("after-call.dynamodb.UpdateItem", self._seen)

    def _seen(self, **_: Any) -> None:
        self.count += 1


def most_in_any_second(slots: Sequence[float]) -> int:
    """The most admissions in any window [t, t + 1 s) (each window starting at an admission),
    counted in whole microseconds as the limit keeps them."""
    ordered = sorted(round(slot * 1_000_000) for slot in slots)
    return max(
        bisect.bisect_left(ordered, start + 1_000_000) - index
        for index, start in enumerate(ordered)
    )


def at_most_per_second(rate: int, burst: int) -> int:
    """What any second [t, t + 1 s) may admit: R plus the burst, less one. A full bucket gives
    the burst at t and R - 1 more tokens refill before t + 1 s (the R-th one comes at t + 1 s,
    outside the window)."""
    return rate + burst - 1


# -- the bucket ------------------------------------------------------------------------------


def test_a_full_bucket_admits_the_burst_at_once_then_one_call_per_interval(
    dynamodb: Any, table: str
) -> None:
    clock = FakeClock()
    limit = RateLimit(table, rate=10, burst=3, client=dynamodb, clock=clock, sleep=clock.sleep)

    slots = [limit.acquire() for _ in range(5)]

    assert slots[:3] == [NOW, NOW, NOW]
    assert slots[3:] == pytest.approx([NOW + 0.1, NOW + 0.2])
    assert clock.sleeps == pytest.approx([0.1, 0.1])


def test_the_bucket_refills_at_the_rate_while_nobody_calls(dynamodb: Any, table: str) -> None:
    clock = FakeClock()
    limit = RateLimit(table, rate=10, burst=3, client=dynamodb, clock=clock, sleep=clock.sleep)
    for _ in range(3):
        limit.acquire()

    clock.now += 0.2  # two tokens back, not three
    slots = [limit.acquire() for _ in range(3)]

    assert slots == pytest.approx([NOW + 0.2, NOW + 0.2, NOW + 0.3])
    clock.now += 10  # a long pause refills the bucket up to the burst, no further
    after = [limit.acquire() for _ in range(4)]
    assert after == pytest.approx([clock.now - 0.1] * 3 + [clock.now])  # the 4th waited 0.1 s


def test_one_conditional_update_per_call_in_the_steady_state(dynamodb: Any, table: str) -> None:
    clock = FakeClock()
    limit = RateLimit(table, rate=100, burst=5, client=dynamodb, clock=clock, sleep=clock.sleep)
    limit.acquire()  # a cold start may guess wrong once
    calls = Calls(dynamodb)

    for _ in range(50):
        limit.acquire()

    assert calls.count == 50


def test_a_caller_that_guessed_wrong_learns_the_item_from_the_failed_update(
    dynamodb: Any, table: str
) -> None:
    clock = FakeClock()
    first = RateLimit(table, rate=10, burst=2, client=dynamodb, clock=clock, sleep=clock.sleep)
    second = RateLimit(table, rate=10, burst=2, client=dynamodb, clock=clock, sleep=clock.sleep)
    first.acquire()
    calls = Calls(dynamodb)

    assert second.acquire() == NOW  # guessed idle, was refused, read the item from the refusal
    assert calls.count == 2
    assert second.acquire() == pytest.approx(NOW + 0.1)  # now guesses right: one call
    assert calls.count == 3


# -- the time budget -------------------------------------------------------------------------


def test_no_token_within_max_wait_raises_transient_at_once(dynamodb: Any, table: str) -> None:
    clock = FakeClock()
    limit = RateLimit(
        table, rate=1, burst=1, max_wait=0.5, client=dynamodb, clock=clock, sleep=clock.sleep
    )
    limit.acquire()

    with pytest.raises(Transient) as raised:
        limit.acquire()  # the next token is 1 s away: more than 0.5 s

    assert clock.sleeps == []  # it did not wait for nothing
    assert str(raised.value) == "rate limit: no call allowed before the wait would end"
    clock.now += 0.6  # now the token is 0.4 s away
    assert limit.acquire() == pytest.approx(NOW + 1.0)


def test_acquire_waits_no_longer_than_the_invocations_time_budget(
    dynamodb: Any, table: str
) -> None:
    clock = FakeClock()
    limit = RateLimit(table, rate=1, burst=1, client=dynamodb, clock=clock, sleep=clock.sleep)
    limit.acquire()  # the next token is 1 s away
    handled: list[str] = []

    def handle(record: Any) -> None:
        limit.acquire()
        handled.append(record.sequence_number)

    sink = MemorySink()
    processor = StreamProcessor(
        handle, dead_letters=sink, time_margin=5.0, clock=clock, sleep=clock.sleep
    )
    # 5.5 s left, 5 s of margin: 0.5 s of budget, so the token (1 s away) cannot come in time.
    short = processor.run(processor_records(), FakeContext(clock, deadline=clock.now + 5.5))
    assert (short.done, short.stop_cause, handled) == (0, "transient", [])
    assert sink.kept == []

    # With 30 s left the record waits for its token, and the next one for its own.
    long = processor.run(processor_records(), FakeContext(clock, deadline=clock.now + 30))
    assert (long.done, long.stop_cause, handled) == (2, None, ["1", "2"])


def processor_records() -> list[StreamRecord]:
    return parse_records(dynamodb_event(2))


def test_without_a_budget_or_max_wait_acquire_waits_as_long_as_it_takes(
    dynamodb: Any, table: str
) -> None:
    clock = FakeClock()
    limit = RateLimit(table, rate=0.1, burst=1, client=dynamodb, clock=clock, sleep=clock.sleep)
    limit.acquire()

    assert limit.acquire() == pytest.approx(NOW + 10)
    assert clock.sleeps == pytest.approx([10])


def test_the_async_acquire_waits_on_the_event_loop(dynamodb: Any, table: str) -> None:
    clock = FakeClock()
    limit = RateLimit(table, rate=10, burst=1, client=dynamodb, clock=clock, sleep=clock.sleep)

    async def twice() -> list[float]:
        return [await limit.acquire_async(), await limit.acquire_async()]

    assert asyncio.run(twice()) == pytest.approx([NOW, NOW + 0.1])


# -- Retry-After -----------------------------------------------------------------------------


def test_a_vendors_retry_after_pauses_every_caller_then_calls_resume_at_the_rate(
    dynamodb: Any, table: str
) -> None:
    clock = FakeClock()
    here = RateLimit(table, rate=10, burst=5, client=dynamodb, clock=clock, sleep=clock.sleep)
    there = RateLimit(table, rate=10, burst=5, client=dynamodb, clock=clock, sleep=clock.sleep)
    here.acquire()

    refusal = here.refused(429, "2")

    assert isinstance(refusal, Transient)
    assert str(refusal) == "the vendor answered HTTP 429"
    slots = [there.acquire() for _ in range(3)]  # another process: no burst after the pause
    assert slots == pytest.approx([NOW + 2, NOW + 2.1, NOW + 2.2])


def test_a_shorter_retry_after_does_not_cut_a_longer_pause(dynamodb: Any, table: str) -> None:
    clock = FakeClock()
    limit = RateLimit(table, rate=10, burst=1, client=dynamodb, clock=clock, sleep=clock.sleep)
    limit.pause(5)
    limit.pause(1)
    assert limit.acquire() == pytest.approx(NOW + 5)


def test_a_503_without_retry_after_is_transient_and_pauses_nobody(
    dynamodb: Any, table: str
) -> None:
    clock = FakeClock()
    limit = RateLimit(table, rate=10, burst=2, client=dynamodb, clock=clock, sleep=clock.sleep)
    assert isinstance(limit.refused(503, None), Transient)
    assert limit.acquire() == NOW


def test_retry_after_is_read_as_seconds_or_as_an_http_date() -> None:
    assert retry_after_seconds("3") == 3.0
    date = format_datetime(datetime.fromtimestamp(NOW + 7, tz=UTC), usegmt=True)
    assert retry_after_seconds(date, now=NOW) == pytest.approx(7)
    assert retry_after_seconds(date, now=NOW + 60) == 0.0
    assert retry_after_seconds("soon") is None
    assert retry_after_seconds(None) is None


# -- shared by many callers ------------------------------------------------------------------

RATE, BURST = 20, 5


def test_threads_sharing_one_limit_are_admitted_at_most_rate_plus_burst_a_second(
    dynamodb: Any, table: str
) -> None:
    limits = [RateLimit(table, rate=RATE, burst=BURST, client=dynamodb) for _ in range(3)]
    slots: list[float] = []
    lock = threading.Lock()

    def caller(limit: RateLimit) -> None:
        for _ in range(10):
            slot = limit.acquire()
            with lock:
                slots.append(slot)

    threads = [threading.Thread(target=caller, args=(limits[n % 3],)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert len(slots) == 60
    assert most_in_any_second(slots) <= at_most_per_second(RATE, BURST)


def take_tokens(endpoint: str, table: str, count: int) -> list[float]:
    """In a process of its own: `count` tokens from the shared limit, the slots they got."""
    client = boto3.Session(region_name=REGION).client("dynamodb", endpoint_url=endpoint)
    limit = RateLimit(table, rate=RATE, burst=BURST, client=client)
    return [limit.acquire() for _ in range(count)]


def test_processes_sharing_one_limit_are_admitted_at_most_rate_plus_burst_a_second(
    moto_endpoint: str, table: str
) -> None:
    spawn = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(3, mp_context=spawn) as pool:
        futures = [pool.submit(take_tokens, moto_endpoint, table, 15) for _ in range(3)]
        slots = [slot for future in futures for slot in future.result()]

    assert len(slots) == 45
    assert most_in_any_second(slots) <= at_most_per_second(RATE, BURST)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    steps=st.lists(
        st.tuples(
            st.integers(0, 2),  # which caller
            st.sampled_from([0.0, 0.01, 0.05, 0.3, 1.2]),  # the clock moves this much first
            st.sampled_from([None, 0.0, 0.2, 2.0]),  # the caller's max_wait
        ),
        min_size=1,
        max_size=25,
    ),
    rate=st.sampled_from([1, 2, 7, 40]),
    burst=st.integers(1, 4),
)
def test_any_interleaving_of_callers_admits_at_most_rate_plus_burst_in_any_second(
    dynamodb: Any,
    steps: list[tuple[int, float, float | None]],
    rate: int,
    burst: int,
) -> None:
    clock = FakeClock()
    table = create_limit_table(dynamodb, f"limit-{os.urandom(6).hex()}")
    callers = [
        RateLimit(table, rate=rate, burst=burst, client=dynamodb, clock=clock, sleep=clock.sleep)
        for _ in range(3)
    ]
    slots: list[float] = []
    for who, advance, wait in steps:
        clock.now += advance
        caller = callers[who]
        caller.max_wait = wait
        try:
            slots.append(caller.acquire())
        except Transient:
            assert wait is not None  # only a bounded wait gives up
    if slots:
        assert most_in_any_second(slots) <= at_most_per_second(rate, burst)
