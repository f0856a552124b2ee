"""The mapping's state table: checkpoints survive a restart, one mapping runs at a time (the
lease), and the monitor reads per-shard counts that add up."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import boto3
import pytest

from streams.mapping.function.emf import EmfMetric, function_counts
from streams.mapping.state.layout import MappingId
from streams.mapping.state.lease import LeaseBusy, LeaseLost
from streams.mapping.state.snapshot import read_mappings
from streams.mapping.state.table import DynamoDBCheckpointStore
from tests.factories import STREAM_ARN, FakeClock

MAPPING = MappingId("ProcessorFunction", STREAM_ARN)
OTHER_MAPPING = MappingId("AuditFunction", STREAM_ARN)


@pytest.fixture
def make_store(aws: boto3.Session, unique_name: str) -> Callable[..., DynamoDBCheckpointStore]:
    """Stores on a table of their own (created by the first store)."""
    client = aws.client("dynamodb")

    def make(mapping: MappingId = MAPPING, **options: Any) -> DynamoDBCheckpointStore:
        return DynamoDBCheckpointStore(mapping, client=client, table_name=unique_name, **options)

    return make


def dead_pid() -> int:
    """The pid of a process that has ended (and been reaped)."""
    process = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
    )
    return int(process.stdout)


def waiting_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "waiting" in r.getMessage()]


# --- checkpoints -------------------------------------------------------------------------------


def test_the_state_table_is_created_with_its_documented_key(
    make_store: Callable[..., DynamoDBCheckpointStore], aws: boto3.Session, unique_name: str
) -> None:
    make_store()
    make_store()  # a second mapping finds the table there

    table = aws.client("dynamodb").describe_table(TableName=unique_name)["Table"]
    assert table["KeySchema"] == [
        {"AttributeName": "pk", "KeyType": "HASH"},
        {"AttributeName": "sk", "KeyType": "RANGE"},
    ]


def test_a_restarted_mapping_resumes_after_the_last_checkpoint(
    make_store: Callable[..., DynamoDBCheckpointStore],
) -> None:
    first = make_store()
    first.acquire_lease()
    first.put("shardId-1", "100", False)
    first.put("shardId-1", "250", False)
    first.put("shardId-2", "7", True)
    first.release_lease()

    restarted = make_store()
    restarted.acquire_lease(timeout=0)

    assert restarted.get("shardId-1") == "250"
    assert not restarted.finished("shardId-1")
    assert restarted.get("shardId-2") == "7"
    assert restarted.finished("shardId-2")
    assert restarted.get("shardId-3") is None
    assert not restarted.finished("shardId-3")


def test_a_shard_that_ended_without_records_is_finished_and_keeps_its_checkpoint(
    make_store: Callable[..., DynamoDBCheckpointStore],
) -> None:
    store = make_store()
    store.acquire_lease()
    store.put("shardId-1", "42", False)

    store.put("shardId-1", None, True)
    store.put("shardId-empty", None, True)

    assert (store.get("shardId-1"), store.finished("shardId-1")) == ("42", True)
    assert (store.get("shardId-empty"), store.finished("shardId-empty")) == (None, True)


def test_checkpoints_belong_to_one_mapping(
    make_store: Callable[..., DynamoDBCheckpointStore],
) -> None:
    ours, theirs = make_store(MAPPING), make_store(OTHER_MAPPING)
    ours.acquire_lease()
    theirs.acquire_lease()  # another function on the same stream: its own lease

    ours.put("shardId-1", "100", False)

    assert theirs.get("shardId-1") is None


def test_a_mapping_without_the_lease_cannot_checkpoint(
    make_store: Callable[..., DynamoDBCheckpointStore],
) -> None:
    store = make_store()

    with pytest.raises(LeaseLost, match="does not hold the lease"):
        store.put("shardId-1", "100", False)

    assert store.get("shardId-1") is None


def test_after_kill_9_the_restarted_mapping_takes_over_at_once_and_resumes(
    make_store: Callable[..., DynamoDBCheckpointStore], unique_name: str
) -> None:
    make_store()  # the table exists before the mapping process starts
    script = f"""
from streams.mapping.state.layout import MappingId
from streams.mapping.state.table import DynamoDBCheckpointStore
store = DynamoDBCheckpointStore(MappingId({MAPPING.function!r}, {MAPPING.source_arn!r}),
                                table_name={unique_name!r})
store.acquire_lease()
store.put("shardId-1", "100", False)
store.put("shardId-1", "200", False)
print("checkpointed", flush=True)
import time
time.sleep(600)
"""
    mapping = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, env=dict(os.environ)
    )
    assert mapping.stdout is not None
    with mapping.stdout:
        assert mapping.stdout.readline() == "checkpointed\n"
        mapping.kill()  # SIGKILL: no release, no clean-up
        mapping.wait()

    clock = FakeClock()
    restarted = make_store(clock=clock, sleep=clock.sleep)
    restarted.acquire_lease(timeout=0)

    assert clock.sleeps == []  # no waiting for the dead mapping's lease to expire
    assert restarted.get("shardId-1") == "200"


# --- the lease ---------------------------------------------------------------------------------


def test_a_second_mapping_waits_saying_so_while_the_first_holds_the_lease(
    make_store: Callable[..., DynamoDBCheckpointStore], caplog: pytest.LogCaptureFixture
) -> None:
    clock = FakeClock()
    first = make_store(clock=clock)
    first.acquire_lease()

    def sleep(seconds: float) -> None:
        clock.sleep(seconds)
        if len(clock.sleeps) == 3:  # the first mapping stops cleanly while the second waits
            first.release_lease()

    second = make_store(clock=clock, sleep=sleep, poll_seconds=1.0)
    holder = second.acquire_lease()

    assert holder.owner == second.owner
    assert clock.sleeps == [1.0, 1.0, 1.0]
    (line,) = waiting_lines(caplog)
    assert "ProcessorFunction" in line
    assert first.owner in line
    assert f"pid {os.getpid()}" in line


def test_a_held_lease_makes_a_bounded_wait_fail_naming_the_holder(
    make_store: Callable[..., DynamoDBCheckpointStore],
) -> None:
    clock = FakeClock()
    first = make_store(clock=clock)
    first.acquire_lease()
    second = make_store(clock=clock, sleep=clock.sleep, poll_seconds=1.0)

    with pytest.raises(LeaseBusy, match=first.owner) as busy:
        second.acquire_lease(timeout=5)

    assert busy.value.holder.owner == first.owner


def test_a_lease_whose_holder_died_on_this_host_is_taken_over_at_once(
    make_store: Callable[..., DynamoDBCheckpointStore], caplog: pytest.LogCaptureFixture
) -> None:
    clock = FakeClock()
    crashed = make_store(clock=clock, pid=dead_pid())
    crashed.acquire_lease()
    crashed.put("shardId-1", "100", False)

    restarted = make_store(clock=clock, sleep=clock.sleep)
    restarted.acquire_lease(timeout=0)

    assert clock.sleeps == []
    assert any("its process is gone" in r.getMessage() for r in caplog.records)
    with pytest.raises(LeaseLost):  # the dead holder's position can no longer move
        crashed.put("shardId-1", "999", False)
    assert restarted.get("shardId-1") == "100"


def test_a_lease_held_on_another_host_is_taken_over_only_once_it_expires(
    make_store: Callable[..., DynamoDBCheckpointStore], caplog: pytest.LogCaptureFixture
) -> None:
    clock = FakeClock()
    elsewhere = make_store(clock=clock, host="other-host", pid=dead_pid(), lease_seconds=30)
    elsewhere.acquire_lease()

    here = make_store(clock=clock, sleep=clock.sleep, poll_seconds=5.0)
    here.acquire_lease()

    assert sum(clock.sleeps) == 30  # until the expiry, not a moment before
    assert any("it expired" in r.getMessage() for r in caplog.records)
    with pytest.raises(LeaseLost):
        elsewhere.renew_lease()


def test_two_mappings_cannot_both_take_over_one_expired_lease(
    aws: boto3.Session, make_store: Callable[..., DynamoDBCheckpointStore]
) -> None:
    """Both read the lease as expired; the one that writes second must find it taken.

    The takeover is a conditional write on the lease's version. Here the second mapping's write
    is held until the first has taken the lease, so the race's losing order happens every time.
    What this shows is that our condition is the right one; that the condition and the write are
    atomic is DynamoDB's promise (locally, the endpoint serialises DynamoDB's requests).
    """
    clock = FakeClock()
    expired = make_store(clock=clock, host="other-host", pid=dead_pid(), lease_seconds=30)
    expired.acquire_lease()
    clock.now += 31
    first = make_store(clock=clock, sleep=clock.sleep)
    late_client = aws.client("dynamodb")
    second = DynamoDBCheckpointStore(
        MAPPING, client=late_client, table_name=first.table_name, clock=clock, sleep=clock.sleep
    )
    raced: list[str] = []

    def first_takes_over_meanwhile(**_: Any) -> None:
        if not raced:
            raced.append("first")
            first.acquire_lease(timeout=0)

    late_client.meta.events.register("before-call.dynamodb.PutItem", first_takes_over_meanwhile)

    with pytest.raises(LeaseBusy, match=first.owner):
        second.acquire_lease(timeout=0)

    assert raced == ["first"]
    lease = first.read_all().lease
    assert lease is not None
    assert lease.owner == first.owner
    first.put("shardId-1", "100", False)  # the lease's holder checkpoints
    with pytest.raises(LeaseLost):
        second.put("shardId-1", "999", False)


def test_renewing_the_lease_keeps_a_waiting_mapping_out(
    make_store: Callable[..., DynamoDBCheckpointStore],
) -> None:
    clock = FakeClock()
    first = make_store(clock=clock, lease_seconds=30)
    first.acquire_lease()
    clock.now += 25
    renewed = first.renew_lease()
    clock.now += 25  # 50 s after acquiring: expired without the renewal

    second = make_store(clock=clock, sleep=clock.sleep)
    with pytest.raises(LeaseBusy):
        second.acquire_lease(timeout=0)

    assert renewed.expires_at == clock.now + 5


def test_the_heartbeat_reports_a_lease_taken_over(
    make_store: Callable[..., DynamoDBCheckpointStore],
) -> None:
    holder = make_store(host="other-host", lease_seconds=30)
    holder.acquire_lease()
    lease = holder.read_all().lease
    assert lease is not None
    later = FakeClock(now=lease.expires_at + 1)
    lost: list[LeaseLost] = []
    reported = threading.Event()

    def on_lost(error: LeaseLost) -> None:
        lost.append(error)
        reported.set()

    with holder.heartbeat(on_lost, interval=0.01):
        make_store(clock=later, sleep=later.sleep).acquire_lease(timeout=0)
        assert reported.wait(timeout=30)

    assert len(lost) == 1


# --- metrics -----------------------------------------------------------------------------------


def test_counters_add_up_across_writers_and_the_monitor_reads_them(
    make_store: Callable[..., DynamoDBCheckpointStore],
) -> None:
    clock = FakeClock()
    store = make_store(clock=clock)
    store.acquire_lease()
    store.put("shardId-1", "300", False)

    def add_polled() -> None:
        for _ in range(10):
            store.record_metrics("shardId-1", {"PolledEventCount": 3, "InvokedEventCount": 1})

    writers = [threading.Thread(target=add_polled) for _ in range(4)]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join()
    store.record("shardId-1", "FailedInvokeEventCount", 2)  # buffered until the write below
    store.record("shardId-1", "IteratorAge", 1500)
    store.record_metrics(
        "shardId-1",
        function_counts(
            [
                EmfMetric("StreamProcessor", "RecordsParked", "Count", (2.0,), {"service": "p"}),
                EmfMetric(
                    "StreamProcessor",
                    "RecordsParked",
                    "Count",
                    (2.0,),
                    {"service": "p", "reason": "poison"},
                ),
                EmfMetric("StreamProcessor", "IteratorAge", "Milliseconds", (9.0,), {}),
            ]
        ),
        iterator_age_ms=1200,
        state="open",
        last_outcome="partial",
    )

    (shard,) = store.read_all().shards

    assert shard.counts == {
        "FailedInvokeEventCount": 2,
        "InvokedEventCount": 40,
        "PolledEventCount": 120,
        "function:RecordsParked": 2,
        "function:RecordsParked:reason=poison": 2,
    }
    assert (shard.iterator_age_ms, shard.state, shard.last_outcome) == (1200, "open", "partial")
    assert (shard.checkpoint, shard.finished, shard.updated_at) == ("300", False, clock.now)


def test_one_metrics_write_at_a_time_per_shard_so_every_count_adds_up_on_the_local_endpoint(
    aws: boto3.Session, unique_name: str
) -> None:
    # moto applies an ADD as an unlocked read-modify-write: two writes to one item in flight
    # at once can lose one's counts. Each write is slowed down here to make overlaps certain.
    client = aws.client("dynamodb")
    lock = threading.Lock()
    in_flight: Counter[str] = Counter()
    most: Counter[str] = Counter()

    def metrics_items(params: dict[str, Any]) -> list[str]:
        updates = [item["Update"] for item in params.get("TransactItems", []) if "Update" in item]
        keys = [update["Key"]["sk"]["S"] for update in [params, *updates] if "Key" in update]
        return [key for key in keys if key.startswith("metrics#")]

    def started(params: dict[str, Any], context: dict[str, Any], **_: Any) -> None:
        context["metrics_items"] = metrics_items(params)
        with lock:
            for key in context["metrics_items"]:
                in_flight[key] += 1
                most[key] = max(most[key], in_flight[key])
        time.sleep(0.005)

    def ended(context: dict[str, Any], **_: Any) -> None:
        with lock:
            in_flight.subtract(context["metrics_items"])

    for operation in ("UpdateItem", "TransactWriteItems"):
        client.meta.events.register(f"provide-client-params.dynamodb.{operation}", started)
        client.meta.events.register(f"after-call.dynamodb.{operation}", ended)
    store = DynamoDBCheckpointStore(MAPPING, client=client, table_name=unique_name, flush_seconds=0)
    store.acquire_lease()

    def write(index: int) -> None:
        for sequence in range(10):
            store.record_metrics("shardId-1", {"InvokedEventCount": 1})
            store.record("shardId-1", "PolledEventCount", 3)
            if index == 0:
                store.put("shardId-1", str(sequence), False)

    writers = [threading.Thread(target=write, args=(index,)) for index in range(4)]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join()
    store.flush_metrics()

    (shard,) = store.read_all().shards
    assert most == {"metrics#shardId-1": 1}
    assert shard.counts == {"InvokedEventCount": 40, "PolledEventCount": 120}


def test_recorded_metrics_reach_the_table_with_the_next_checkpoint_or_after_a_second(
    make_store: Callable[..., DynamoDBCheckpointStore],
) -> None:
    clock = FakeClock()
    store = make_store(clock=clock, flush_seconds=1.0)
    store.acquire_lease()

    def counts() -> dict[str, float]:
        shards = store.read_all().shards
        return dict(shards[0].counts) if shards else {}

    store.record("shardId-1", "PolledEventCount", 10)  # the shard's first: written at once
    assert counts() == {"PolledEventCount": 10}
    clock.now += 0.5
    store.record("shardId-1", "InvokedEventCount", 10)
    store.record("shardId-1", "IteratorAge", 700)
    assert counts() == {"PolledEventCount": 10}  # buffered
    store.put("shardId-1", "10", False)
    assert counts() == {"PolledEventCount": 10, "InvokedEventCount": 10}
    assert store.read_all().shards[0].iterator_age_ms == 700
    store.record("shardId-1", "PolledEventCount", 5)
    clock.now += 1.0
    store.record("shardId-1", "PolledEventCount", 5)  # a second after the last write
    assert counts() == {"PolledEventCount": 20, "InvokedEventCount": 10}
    store.record("shardId-1", "DroppedEventCount", 1)
    store.release_lease()  # a clean stop writes what is buffered
    assert counts()["DroppedEventCount"] == 1


def test_the_monitor_lists_every_mapping_in_the_table_and_none_without_a_table(
    make_store: Callable[..., DynamoDBCheckpointStore], aws: boto3.Session, unique_name: str
) -> None:
    client = aws.client("dynamodb")
    assert read_mappings(client, unique_name) == []
    ours, theirs = make_store(MAPPING), make_store(OTHER_MAPPING)
    ours.acquire_lease()
    ours.put("shardId-1", "5", False)
    theirs.acquire_lease()
    theirs.record_metrics("shardId-9", {"PolledEventCount": 1})

    snapshots = read_mappings(client, unique_name)

    assert [(s.mapping, [shard.shard_id for shard in s.shards]) for s in snapshots] == [
        (OTHER_MAPPING, ["shardId-9"]),
        (MAPPING, ["shardId-1"]),
    ]
    assert snapshots[1].lease is not None
    assert snapshots[1].lease.owner == ours.owner
