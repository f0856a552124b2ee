"""TableWriter against moto's server, with throttling injected through botocore's event hooks.

Injected `UnprocessedItems` are removed from the request before it is sent, so they are really not
written: a writer that does not retry them loses them and fails these tests. Backoff and pacing run
on a fake clock (time passes only when the writer sleeps), so no test waits for them.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import boto3
import pytest
from botocore.awsrequest import AWSResponse
from botocore.config import Config

from streams.demo.generate import generate_updates
from streams.errors import UserError
from streams.writer import InvalidItemError, RatePolicy, TableWriteError, TableWriter
from streams.writer.pacing import SendingRate
from tests.run_functions import wait_until

BATCH_WRITE = "dynamodb.BatchWriteItem"


class FakeClock:
    """Time that passes only when someone sleeps: backoff and pacing cost no real time."""

    def __init__(self) -> None:
        self._now = 0.0
        self._lock = threading.Lock()

    def now(self) -> float:
        with self._lock:
            return self._now

    def sleep(self, seconds: float) -> None:
        with self._lock:
            self._now += max(0.0, seconds)


class ManualClock:
    """Time that moves only when the test says so; `sleep` blocks until it has."""

    def __init__(self) -> None:
        self._now = 0.0
        self._changed = threading.Condition()
        self.sleepers = 0

    def now(self) -> float:
        with self._changed:
            return self._now

    def sleep(self, seconds: float) -> None:
        with self._changed:
            until = self._now + seconds
            self.sleepers += 1
            self._changed.notify_all()
            while self._now < until:
                self._changed.wait()
            self.sleepers -= 1

    def advance(self, seconds: float) -> None:
        with self._changed:
            self._now += seconds
            self._changed.notify_all()

    def wait_for_sleeper(self) -> None:
        with self._changed:
            assert self._changed.wait_for(lambda: self.sleepers > 0, timeout=60), "no sleeper"


def wait_for(condition: Any, what: str) -> None:
    """Wait for `condition` (a liveness bound, not a timing assertion)."""
    give_up = time.monotonic() + 60
    while not condition():
        assert time.monotonic() < give_up, f"still waiting for {what}"
        time.sleep(0.01)


class RawBody:
    """The `raw` of a botocore AWSResponse built by a test."""

    def __init__(self, body: bytes) -> None:
        self._body = body

    def stream(self, **_: Any) -> Iterator[bytes]:
        yield self._body


def error_response(code: str, status: int = 400) -> tuple[AWSResponse, dict[str, Any]]:
    """What `before-call` returns to refuse a call as DynamoDB would, without sending it."""
    parsed = {
        "Error": {"Code": code, "Message": f"injected {code}"},
        "ResponseMetadata": {"HTTPStatusCode": status, "RetryAttempts": 0},
    }
    return AWSResponse("http://injected", status, {}, RawBody(b"")), parsed


class InjectedThrottling:
    """Throttling on one client, decided per call with a seeded random:

    - `unprocessed_rate` of the calls lose 1..n-1 of their writes: removed from the request
      before it is sent (`before-parameter-build`), returned in `UnprocessedItems` (`after-call`);
    - `error_rate` of the calls are refused with ProvisionedThroughputExceededException before
      they are sent (`before-call`), as when botocore's own retries have given up.
    """

    def __init__(
        self,
        client: Any,
        table: str,
        *,
        unprocessed_rate: float,
        error_rate: float,
        seed: int = 1,
    ) -> None:
        self.table = table
        self.unprocessed_rate = unprocessed_rate
        self.error_rate = error_rate
        self.random = random.Random(seed)
        self.lock = threading.Lock()
        self.unprocessed = 0  # writes removed and returned as unprocessed
        self.refused_calls = 0
        self.writes_in_refused_calls = 0
        events = client.meta.events
        events.register(f"before-parameter-build.{BATCH_WRITE}", self._before_parameter_build)
        events.register(f"before-call.{BATCH_WRITE}", self._before_call)
        events.register(f"after-call.{BATCH_WRITE}", self._after_call)

    def _before_parameter_build(self, params: dict[str, Any], context: dict[str, Any], **_: Any):
        writes = params["RequestItems"][self.table]
        with self.lock:
            roll = self.random.random()
            if roll < self.error_rate:
                context["inject_error"] = True
                self.refused_calls += 1
                self.writes_in_refused_calls += len(writes)
                return
            if roll >= self.error_rate + self.unprocessed_rate or len(writes) < 2:
                return
            removed = set(
                self.random.sample(range(len(writes)), self.random.randint(1, len(writes) - 1))
            )
            self.unprocessed += len(removed)
        params["RequestItems"] = {self.table: [w for i, w in enumerate(writes) if i not in removed]}
        context["inject_unprocessed"] = [writes[i] for i in sorted(removed)]

    def _before_call(self, context: dict[str, Any], **_: Any):
        if context.get("inject_error"):
            return error_response("ProvisionedThroughputExceededException")
        return None

    def _after_call(
        self, http_response: AWSResponse, parsed: dict[str, Any], context: dict[str, Any], **_: Any
    ):
        removed = context.get("inject_unprocessed")
        if removed and http_response.status_code == 200:
            parsed.setdefault("UnprocessedItems", {}).setdefault(self.table, []).extend(removed)


def create_table(aws: boto3.Session, name: str, **overrides: Any) -> None:
    settings: dict[str, Any] = {
        "TableName": name,
        "KeySchema": [{"AttributeName": "childId", "KeyType": "HASH"}],
        "AttributeDefinitions": [{"AttributeName": "childId", "AttributeType": "S"}],
        "BillingMode": "PAY_PER_REQUEST",
    }
    aws.client("dynamodb").create_table(**(settings | overrides))


def table_items(aws: boto3.Session, name: str) -> dict[str, dict[str, Any]]:
    """Every item in the table, by childId."""
    items: dict[str, dict[str, Any]] = {}
    for page in aws.client("dynamodb").get_paginator("scan").paginate(TableName=name):
        for item in page["Items"]:
            items[item["childId"]["S"]] = item
    return items


def unique_updates(n: int, prefix: str = "c") -> list[dict[str, object]]:
    return [u | {"childId": f"{prefix}-{i:06d}"} for i, u in enumerate(generate_updates(n, seed=3))]


@pytest.fixture
def table(aws: boto3.Session, unique_name: str) -> str:
    create_table(aws, unique_name)
    return unique_name


# -- no write is lost ---------------------------------------------------------------------------


def test_every_write_lands_when_dynamodb_leaves_writes_unprocessed_or_throttles(
    aws: boto3.Session, table: str
) -> None:
    client = aws.client("dynamodb")
    injected = InjectedThrottling(client, table, unprocessed_rate=0.2, error_rate=0.05)
    clock = FakeClock()
    # Small items: moto's cost is per attribute, and what is under test is that none goes missing.
    updates = [{"childId": f"c-{i:06d}", "n": i} for i in range(50_000)]

    with TableWriter(
        table, client=client, clock=clock.now, sleep=clock.sleep, random=random.Random(5).random
    ) as writer:
        for update in updates:
            writer.put(update)

    report = writer.report
    assert injected.unprocessed > 1000 and injected.refused_calls > 50
    assert (report.submitted, report.written, report.failed, report.pending) == (
        50_000,
        50_000,
        (),
        0,
    )
    assert report.unprocessed == injected.unprocessed
    assert report.throttled == injected.refused_calls
    assert report.retried == injected.unprocessed + injected.writes_in_refused_calls
    stored = table_items(aws, table)
    assert {key: int(item["n"]["N"]) for key, item in stored.items()} == {
        str(u["childId"]): u["n"] for u in updates
    }


class AppliedOrder:
    """Records, per key, the versions of the writes really applied, in the order applied; and
    any key that was in two calls in flight at once. Registered after the injection's hooks, so
    what it records is what is really sent."""

    def __init__(self, client: Any, table: str) -> None:
        self.table = table
        self.applied: dict[str, list[int]] = defaultdict(list)
        self.overlaps: list[str] = []
        self._in_flight: set[str] = set()
        self._lock = threading.Lock()
        client.meta.events.register_last(f"before-parameter-build.{BATCH_WRITE}", self._sent)
        client.meta.events.register_last(f"after-call.{BATCH_WRITE}", self._answered)

    def _sent(self, params: dict[str, Any], context: dict[str, Any], **_: Any) -> None:
        items = [w["PutRequest"]["Item"] for w in params["RequestItems"][self.table]]
        sent = [(item["childId"]["S"], int(item["version"]["N"])) for item in items]
        with self._lock:
            self.overlaps.extend(key for key, _ in sent if key in self._in_flight)
            self._in_flight.update(key for key, _ in sent)
        context["recorded"] = sent

    def _answered(self, http_response: AWSResponse, context: dict[str, Any], **_: Any) -> None:
        with self._lock:
            for key, version in context["recorded"]:
                self._in_flight.discard(key)
                if http_response.status_code == 200:
                    self.applied[key].append(version)


def test_the_last_write_of_every_key_wins_under_throttling_with_parallel_senders(
    aws: boto3.Session, table: str
) -> None:
    client = aws.client("dynamodb")
    InjectedThrottling(client, table, unprocessed_rate=0.3, error_rate=0.05, seed=2)
    order = AppliedOrder(client, table)
    clock = FakeClock()

    with TableWriter(
        table,
        client=client,
        senders=4,
        max_pending=400,
        coalesce=True,
        clock=clock.now,
        sleep=clock.sleep,
    ) as writer:
        for version in range(1, 11):
            for key in range(1000):
                writer.put({"childId": f"k-{key:04d}", "version": version})

    report = writer.report
    assert report.submitted == 10_000 and report.failed == () and report.pending == 0
    assert report.written + report.replaced == 10_000
    assert report.unprocessed > 0 and report.throttled > 0
    assert order.overlaps == []  # never two calls in flight with the same key
    out_of_order = {k: v for k, v in order.applied.items() if v != sorted(set(v))}
    assert out_of_order == {}
    stored = table_items(aws, table)
    assert {key: item["version"]["N"] for key, item in stored.items()} == {
        f"k-{k:04d}": "10" for k in range(1000)
    }


def test_by_default_every_write_of_a_key_is_applied_in_order(
    aws: boto3.Session, table: str
) -> None:
    client = aws.client("dynamodb")
    InjectedThrottling(client, table, unprocessed_rate=0.3, error_rate=0.05, seed=4)
    order = AppliedOrder(client, table)
    clock = FakeClock()

    with TableWriter(table, client=client, senders=4, clock=clock.now, sleep=clock.sleep) as writer:
        for version in range(1, 11):
            for key in range(200):
                writer.put({"childId": f"k-{key:03d}", "version": version})

    assert (writer.report.written, writer.report.replaced) == (2000, 0)
    assert order.overlaps == []
    assert dict(order.applied) == {f"k-{k:03d}": list(range(1, 11)) for k in range(200)}


def test_puts_from_many_threads_are_all_written(aws: boto3.Session, table: str) -> None:
    with TableWriter(table, senders=3) as writer:

        def put_all(prefix: str) -> None:
            for i in range(1000):
                writer.put({"childId": f"{prefix}-{i}", "n": i})

        threads = [threading.Thread(target=put_all, args=(f"t{t}",)) for t in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    assert (writer.report.submitted, writer.report.written) == (4000, 4000)
    assert len(table_items(aws, table)) == 4000


def test_throttles_that_botocore_retries_are_counted_and_not_sent_again_by_the_writer(
    aws: boto3.Session, table: str
) -> None:
    # botocore's DynamoDB-tuned legacy mode retries a throttled call after 50 ms, then 100 ms.
    client = aws.client("dynamodb", config=Config(retries={"mode": "legacy"}))
    refusals = [2]

    def refuse_twice(**_: Any) -> AWSResponse | None:
        if refusals[0] == 0:
            return None
        refusals[0] -= 1
        body = json.dumps(
            {
                "__type": "com.amazonaws.dynamodb.v20120810#ProvisionedThroughputExceededException",
                "message": "injected",
            }
        )
        return AWSResponse(
            "http://injected",
            400,
            {"content-type": "application/x-amz-json-1.0"},
            RawBody(body.encode()),
        )

    client.meta.events.register(f"before-send.{BATCH_WRITE}", refuse_twice)
    with TableWriter(table, client=client) as writer:
        for update in unique_updates(10):
            writer.put(update)

    report = writer.report
    assert (report.written, report.throttled, report.retried, report.unprocessed) == (10, 2, 0, 0)
    assert len(table_items(aws, table)) == 10


# -- a partial batch does not wait for the next burst --------------------------------------------


def test_a_partial_batch_goes_out_once_its_oldest_write_has_lingered_and_not_before(
    aws: boto3.Session, table: str
) -> None:
    clock = ManualClock()
    client = aws.client("dynamodb")
    calls: list[int] = []
    client.meta.events.register(
        f"before-parameter-build.{BATCH_WRITE}",
        lambda params, **_: calls.append(len(params["RequestItems"][table])),
    )
    writer = TableWriter(table, client=client, linger=2.0, clock=clock.now, sleep=clock.sleep)
    try:
        for update in unique_updates(3):
            writer.put(update)
        clock.wait_for_sleeper()  # a sender waits out the linger
        clock.advance(1.0)
        assert (calls, writer.report.written, clock.sleepers) == ([], 0, 1)

        clock.advance(1.0)  # no flush, no more writes: only the linger ends

        wait_for(lambda: writer.report.written == 3, "the partial batch")
        assert calls == [3]
        assert len(table_items(aws, table)) == 3
    finally:
        clock.advance(3600)  # no sender is left asleep, whatever failed
        writer.close()


def test_with_linger_0_every_write_goes_out_at_once(aws: boto3.Session, table: str) -> None:
    clock = ManualClock()  # never advanced: no write waits for time to pass
    writer = TableWriter(table, linger=0, clock=clock.now, sleep=clock.sleep)
    try:
        for update in unique_updates(3):
            writer.put(update)
        wait_for(lambda: writer.report.written == 3, "the writes")
    finally:
        writer.close()
    assert len(table_items(aws, table)) == 3


def test_flush_sends_a_partial_batch_at_once_whatever_the_linger(
    aws: boto3.Session, table: str
) -> None:
    with TableWriter(table, linger=3600) as writer:
        for update in unique_updates(3):
            writer.put(update)
        writer.flush()
        assert (writer.report.written, writer.report.pending) == (3, 0)
    assert len(table_items(aws, table)) == 3


# -- order and replacement ----------------------------------------------------------------------


def test_with_coalescing_a_later_write_of_a_queued_key_replaces_it(
    aws: boto3.Session, table: str
) -> None:
    with TableWriter(table, coalesce=True) as writer:
        for version in (1, 2, 3):
            writer.put({"childId": "c-1", "version": version})
        writer.put({"childId": "c-2"})
        writer.delete({"childId": "c-2"})

    report = writer.report
    assert (report.submitted, report.written, report.replaced) == (5, 2, 3)
    assert {k: v.get("version", {}).get("N") for k, v in table_items(aws, table).items()} == {
        "c-1": "3"
    }


def test_a_refused_write_is_replaced_by_a_later_write_of_its_key(
    aws: boto3.Session, table: str
) -> None:
    """With coalesce=True, a write DynamoDB left unprocessed was never applied: a later put of
    its key replaces it (by default every update is sent: see the test after)."""
    client = aws.client("dynamodb")
    refused = threading.Event()
    sent: list[list[int]] = []

    def refuse_the_first_call(params: dict[str, Any], context: dict[str, Any], **_: Any) -> None:
        writes = params["RequestItems"][table]
        sent.append([int(w["PutRequest"]["Item"]["version"]["N"]) for w in writes])
        if len(sent) == 1:
            context["refuse"] = writes
            params["RequestItems"] = {table: [{"DeleteRequest": {"Key": {"childId": {"S": "x"}}}}]}

    def unprocessed(parsed: dict[str, Any], context: dict[str, Any], **_: Any) -> None:
        if "refuse" in context:
            parsed["UnprocessedItems"] = {table: context["refuse"]}
            refused.set()

    client.meta.events.register(f"before-parameter-build.{BATCH_WRITE}", refuse_the_first_call)
    client.meta.events.register(f"after-call.{BATCH_WRITE}", unprocessed)
    clock = ManualClock()  # the refused write waits out its backoff until the clock moves
    with TableWriter(
        table, client=client, linger=0, coalesce=True, clock=clock.now, sleep=clock.sleep
    ) as writer:
        writer.put({"childId": "c-1", "version": 1})
        wait_for(refused.is_set, "the first write refused")
        writer.put({"childId": "c-1", "version": 2})
        clock.wait_for_sleeper()
        clock.advance(3600)

    report = writer.report
    assert (report.submitted, report.written, report.replaced, report.failed) == (2, 1, 1, ())
    assert sent == [[1], [2]]  # version 1 never sent again
    assert table_items(aws, table)["c-1"]["version"] == {"N": "2"}


def test_put_blocks_while_max_pending_writes_are_unsettled(table: str) -> None:
    client = boto3.client("dynamodb")
    sending = threading.Event()
    release = threading.Event()

    def hold(**_: Any) -> None:
        sending.set()
        release.wait(30)

    client.meta.events.register(f"before-call.{BATCH_WRITE}", hold)
    third_put_returned = threading.Event()
    with TableWriter(table, client=client, max_pending=2, linger=0) as writer:
        writer.put({"childId": "c-1"})
        writer.put({"childId": "c-2"})
        wait_for(sending.is_set, "the first batch sent")

        def third() -> None:
            writer.put({"childId": "c-3"})
            third_put_returned.set()

        thread = threading.Thread(target=third)
        thread.start()
        # Two writes unsettled: the third put must still be waiting (a slow machine can only
        # make a broken writer pass here, never a correct one fail).
        assert not third_put_returned.wait(0.5)
        release.set()
        thread.join(30)
        assert third_put_returned.is_set()

    assert (writer.report.submitted, writer.report.written) == (3, 3)


@pytest.mark.parametrize(("size", "accepted"), [(2048, True), (2049, False)])
def test_a_partition_key_may_have_at_most_2048_bytes(
    aws: boto3.Session, table: str, size: int, accepted: bool
) -> None:
    key = "é" * (size // 2) + "k" * (size % 2)  # two bytes a character in UTF-8
    with TableWriter(table) as writer:
        if accepted:
            writer.put({"childId": key})
        else:
            with pytest.raises(
                InvalidItemError, match=f"is {size:,} bytes: DynamoDB allows at most 2,048"
            ):
                writer.put({"childId": key})
    assert writer.report.written == (1 if accepted else 0)


def test_a_sort_key_may_have_at_most_1024_bytes(aws: boto3.Session, unique_name: str) -> None:
    aws.client("dynamodb").create_table(
        TableName=unique_name,
        KeySchema=[
            {"AttributeName": "childId", "KeyType": "HASH"},
            {"AttributeName": "at", "KeyType": "RANGE"},
        ],
        AttributeDefinitions=[
            {"AttributeName": "childId", "AttributeType": "S"},
            {"AttributeName": "at", "AttributeType": "B"},
        ],
        BillingMode="PAY_PER_REQUEST",
    )
    with TableWriter(unique_name) as writer:
        writer.put({"childId": "c-1", "at": b"x" * 1024})
        with pytest.raises(InvalidItemError, match=r"'at', the sort key .* is 1,025 bytes"):
            writer.put({"childId": "c-2", "at": b"x" * 1025})
    assert writer.report.written == 1


def test_completed_through_counts_only_settled_writes(table: str) -> None:
    with TableWriter(table) as writer:
        first = writer.put({"childId": "c-1"})
        writer.put({"childId": "c-2"})
        assert (first, writer.completed_through()) == (1, 0)  # fewer than a batch: not sent yet
        writer.flush()
        assert writer.completed_through() == 2


# -- bad input: a clear message, and nothing else lost ------------------------------------------


@pytest.mark.parametrize(
    ("bad", "expected"),
    [
        ({"childId": "c-bad", "score": 0.5}, r"'score' is a float; .*Decimal\(str\(value\)\)"),
        (
            {"childId": "c-bad", "address": {"geo": [Decimal(1), 2.5]}},
            r"'address'.geo\[1\] is a float",
        ),
        ({"childId": ""}, r"'childId', the partition key of table .* is empty"),
        ({"name": "no key"}, r"'childId', the partition key of table .* is missing"),
        ({"childId": 7}, r"'childId', the partition key .* must be a string, not int"),
        (
            {"childId": "c-bad", "blob": "x" * 410_000},
            r"over its 409,600-byte \(400 KB\) item limit",
        ),
        ({"childId": "c-bad", "tags": set()}, r"'tags' is an empty set"),
        ({"childId": "c-bad", "n": Decimal("1" * 39)}, r"more than 38 significant digits"),
        (
            {"childId": "c-bad", "when": object()},
            r"'when' is of type object, which DynamoDB cannot store",
        ),
    ],
    ids=[
        "float",
        "nested-float",
        "empty-key",
        "missing-key",
        "key-type",
        "over-400kb",
        "empty-set",
        "39-digits",
        "object",
    ],
)
def test_put_refuses_what_dynamodb_would_with_a_clear_message_and_loses_nothing_else(
    aws: boto3.Session, table: str, bad: dict[str, Any], expected: str
) -> None:
    with TableWriter(table) as writer:
        writer.put({"childId": "c-before"})
        with pytest.raises(InvalidItemError, match=expected):
            writer.put(bad)
        writer.put({"childId": "c-after"})

    assert (writer.report.submitted, writer.report.written, writer.report.failed) == (2, 2, ())
    assert table_items(aws, table).keys() == {"c-before", "c-after"}


def test_invalid_item_errors_name_the_attribute_never_a_value(table: str) -> None:
    """`streams write` prints these messages: only key values may be in them."""
    secret = "VALUE-write-7c21"
    bad_items = [
        {"childId": "c-1", "score": Decimal("0.918273645"), "x": 0.918273645},
        {"childId": "c-1", "n": Decimal("918273645" * 5)},
        {"childId": "c-1", "n": Decimal("9.18273645E+200")},
        {"childId": "c-1", "text": secret + "\udc80"},
        {"childId": "c-1", "tags": {secret + "\udc80"}},
        {"name": secret},  # no key
        {"childId": "", "name": secret},
        {"childId": 918273645, "name": secret},
        {"childId": "\udc80", "name": secret},
    ]
    with TableWriter(table) as writer:
        messages = []
        for item in bad_items:
            with pytest.raises(InvalidItemError) as refused:
                writer.put(item)
            messages.append(str(refused.value))

    assert [m for m in messages if secret in m or "918273645" in m or "0.918" in m] == []
    assert "'name'" in messages[5]  # what the item has, by name


def test_an_item_of_400_000_bytes_is_written(aws: boto3.Session, table: str) -> None:
    # Names count: "childId" and "c" (8 bytes), "blob" (4) and its value.
    item = {"childId": "c", "blob": "x" * (400_000 - 8 - 4)}
    with TableWriter(table) as writer:
        writer.put(item)
    assert writer.report.written == 1
    assert len(table_items(aws, table)["c"]["blob"]["S"]) == len(item["blob"])


def test_delete_refuses_attributes_beyond_the_key(table: str) -> None:
    with TableWriter(table) as writer, pytest.raises(InvalidItemError, match="remove 'name'"):
        writer.delete({"childId": "c-1", "name": "Ada"})


def test_an_item_dynamodb_rejects_is_isolated_and_listed_while_its_neighbours_are_written(
    aws: boto3.Session, unique_name: str
) -> None:
    # DynamoDB refuses an empty string in an index key: put() checks only the table's own key.
    create_table(
        aws,
        unique_name,
        AttributeDefinitions=[
            {"AttributeName": "childId", "AttributeType": "S"},
            {"AttributeName": "region", "AttributeType": "S"},
        ],
        GlobalSecondaryIndexes=[
            {
                "IndexName": "by-region",
                "KeySchema": [{"AttributeName": "region", "KeyType": "HASH"}],
                "Projection": {"ProjectionType": "KEYS_ONLY"},
            }
        ],
    )
    updates = unique_updates(60)
    updates[33]["region"] = ""
    with TableWriter(unique_name) as writer:
        for update in updates:
            writer.put(update)

    (failed,) = writer.report.failed
    assert (failed.seq, failed.kind, failed.item["childId"]) == (34, "put", updates[33]["childId"])
    assert "ValidationException" in failed.reason and "secondary index key" in failed.reason
    assert writer.report.written == 59
    assert table_items(aws, unique_name).keys() == {u["childId"] for u in updates} - {
        updates[33]["childId"]
    }


# -- table-level errors raise, naming the table -------------------------------------------------


def test_a_missing_table_raises_a_user_error_naming_it(moto_endpoint: str) -> None:
    with pytest.raises(
        TableWriteError, match=re.escape("table 'no-such-table' does not exist at http://127.0.0.1")
    ) as raised:
        TableWriter("no-such-table")
    assert isinstance(raised.value, UserError)


def test_a_table_deleted_mid_run_raises_naming_it_and_every_unwritten_write_is_listed(
    aws: boto3.Session, table: str
) -> None:
    writer = TableWriter(table)
    aws.client("dynamodb").delete_table(TableName=table)
    for update in unique_updates(20):  # fewer than a batch: all sent by close()
        writer.put(update)

    with pytest.raises(TableWriteError, match=f"table '{table}' does not exist"):
        writer.close()
    report = writer.report
    assert (report.submitted, report.written, len(report.failed)) == (20, 0, 20)
    assert all(table in f.reason for f in report.failed)
    with pytest.raises(TableWriteError):
        writer.put({"childId": "c-late"})


def test_access_denied_raises_naming_the_table(aws: boto3.Session, table: str) -> None:
    client = aws.client("dynamodb")
    client.meta.events.register(
        f"before-call.{BATCH_WRITE}", lambda **_: error_response("AccessDeniedException")
    )
    writer = TableWriter(table, client=client)
    for update in unique_updates(20):
        writer.put(update)
    with pytest.raises(TableWriteError, match=f"not allowed to write to table '{table}'"):
        writer.flush()
    with pytest.raises(TableWriteError, match=f"not allowed to write to table '{table}'"):
        writer.put({"childId": "c-late"})
    assert len(writer.report.failed) == 20
    with pytest.raises(TableWriteError):
        writer.close()


# -- no silent loss: deadline, interruption, a forgotten writer ---------------------------------


def test_writes_still_refused_at_the_deadline_are_listed_as_failed(
    aws: boto3.Session, table: str
) -> None:
    client = aws.client("dynamodb")
    InjectedThrottling(client, table, unprocessed_rate=0.0, error_rate=1.0)
    clock = FakeClock()
    with TableWriter(
        table, client=client, deadline=30, clock=clock.now, sleep=clock.sleep
    ) as writer:
        for update in unique_updates(60):
            writer.put(update)

    report = writer.report
    assert (report.submitted, report.written, len(report.failed)) == (60, 0, 60)
    assert {f.reason for f in report.failed} == {
        "deadline: not accepted within 30 s of the writer's start"
    }
    assert report.throttled > 3 and clock.now() >= 30
    assert table_items(aws, table) == {}


def test_a_writer_dropped_with_unsent_writes_logs_an_error_and_warns(
    table: str, caplog: pytest.LogCaptureFixture
) -> None:
    writer = TableWriter(table, linger=3600)
    writer.put({"childId": "c-1"})  # fewer than a batch, and lingering: still queued
    with pytest.warns(
        ResourceWarning, match=f"table '{table}' was garbage-collected with 1 writes"
    ):
        del writer
        gc.collect()
    assert any(
        r.levelno == logging.ERROR and "garbage-collected" in r.getMessage() for r in caplog.records
    )


def test_an_interrupted_flush_lists_what_was_not_accepted(aws: boto3.Session, table: str) -> None:
    client = aws.client("dynamodb")
    InjectedThrottling(client, table, unprocessed_rate=0.0, error_rate=1.0)
    interrupted = threading.Event()

    def ctrl_c_once(**_: Any) -> None:
        # Ctrl-C while the writer flushes: SIGINT to this process when the first call is refused.
        if not interrupted.is_set():
            interrupted.set()
            os.kill(os.getpid(), signal.SIGINT)

    client.meta.events.register_first(f"after-call.{BATCH_WRITE}", ctrl_c_once)
    writer = TableWriter(table, client=client, linger=3600)
    with pytest.raises(KeyboardInterrupt), writer:
        for update in unique_updates(10):  # fewer than a batch, lingering: sent by the flush
            writer.put(update)

    # A write in flight at the interruption is settled by its sender when its answer comes.
    wait_until(lambda: writer.report.pending == 0, "the write in flight to be settled")
    report = writer.report
    assert (report.submitted, report.written, report.replaced) == (10, 0, 0)
    reason = "not sent: the writer was interrupted before DynamoDB accepted it"
    assert sorted((f.seq, f.reason) for f in report.failed) == [(n, reason) for n in range(1, 11)]


# -- pacing and backoff policies (fake clock) ---------------------------------------------------


def test_the_rate_ceiling_spaces_calls_by_their_writes(aws: boto3.Session, table: str) -> None:
    client = aws.client("dynamodb")
    clock = FakeClock()
    sends: list[tuple[float, int]] = []
    client.meta.events.register(
        f"before-parameter-build.{BATCH_WRITE}",
        lambda params, **_: sends.append((clock.now(), len(params["RequestItems"][table]))),
    )
    with TableWriter(
        table, client=client, max_rate=200, clock=clock.now, sleep=clock.sleep
    ) as writer:
        for update in unique_updates(1000):
            writer.put(update)

    writes_before = 0
    for sent_at, writes in sends:
        assert sent_at >= writes_before / 200 - 1e-9
        writes_before += writes
    assert writes_before == 1000


def test_the_sending_rate_is_the_ceiling_until_the_first_throttle() -> None:
    clock = FakeClock()
    assert SendingRate(None, RatePolicy(), clock.now).reserve(25) == 0.0
    rate = SendingRate(100, RatePolicy(), clock.now)
    assert [rate.reserve(25), rate.reserve(25), rate.reserve(25)] == [0.0, 0.25, 0.5]


def test_a_throttle_cuts_the_rate_below_what_the_table_accepted_and_calm_grows_it_back() -> None:
    clock = FakeClock()
    rate = SendingRate(1000, RatePolicy(decrease=0.7, growth=2.0, window=1.0), clock.now)
    for _ in range(10):
        clock.sleep(0.1)
        rate.accepted(50)  # 500 writes accepted over the last second
    rate.throttled()
    assert rate.rate() == pytest.approx(350)
    clock.sleep(1)
    assert rate.rate() == pytest.approx(700)
    clock.sleep(1)
    assert rate.rate() == 1000  # never above the ceiling


def test_throttles_within_the_cooldown_cut_the_rate_once() -> None:
    clock = FakeClock()
    rate = SendingRate(None, RatePolicy(cooldown=0.5, floor=10), clock.now)
    rate.accepted(400)
    rate.throttled()
    clock.sleep(0.2)
    rate.throttled()
    assert rate.rate() == pytest.approx(280 * 2**0.2)
    clock.sleep(1.3)
    rate.throttled()
    assert rate.rate() == 10  # nothing accepted within the last second: down to the floor


# -- the Lambda package stays lean --------------------------------------------------------------


def test_the_writer_does_not_import_rich() -> None:
    code = "import sys, streams.writer, streams.demo.generate; sys.exit('rich' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
