"""Keys in parallel inside one batch (`StreamProcessor(concurrency=N)`), order kept per key."""

from __future__ import annotations

import asyncio
import contextlib
import io
import threading
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from aws_lambda_powertools import Logger, Metrics

from streams import Halted, KinesisRecord, Poison, RetryPolicy, StreamProcessor, Transient
from streams.batch import time_left
from streams.parallel import KeyedSchedule
from streams.records import StreamRecord, parse_records
from tests.factories import FakeClock, FakeContext, MemorySink, dynamodb_record, kinesis_record

WAIT = 10.0  # a guard against a hung test, never reached when the rule holds


def _event(children: list[str]) -> dict[str, Any]:
    """One record per entry, sequence numbers 1, 2, ...; the entry is the record's key."""
    return {
        "Records": [
            dynamodb_record(position + 1, child=child) for position, child in enumerate(children)
        ]
    }


def _sequence(record: StreamRecord) -> int:
    return int(record.sequence_number)


def _child(record: StreamRecord) -> str:
    return str(record.raw["dynamodb"]["Keys"]["childId"]["S"])


def _core(handler: Any, concurrency: int, **kwargs: Any) -> tuple[StreamProcessor, MemorySink]:
    sink = kwargs.pop("sink", None) or MemorySink()
    clock = kwargs.pop("clock", None) or FakeClock()
    core = StreamProcessor(
        handler,
        dead_letters=sink,
        concurrency=concurrency,
        clock=clock,
        sleep=clock.sleep,
        random=lambda: 1.0,
        logger=Logger(service=f"test-{uuid.uuid4().hex}", stream=io.StringIO()),
        **kwargs,
    )
    return core, sink


class Journal:
    """What a handler saw: starts and ends in order, and the most records in flight at once."""

    def __init__(self, action: Callable[[StreamRecord], None] = lambda record: None) -> None:
        self.started: list[int] = []
        self.ended: list[int] = []
        self.in_flight = 0
        self.most_in_flight = 0
        self._lock = threading.Lock()
        self._action = action

    def __call__(self, record: StreamRecord) -> None:
        with self._lock:
            self.started.append(_sequence(record))
            self.in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            self._action(record)
        finally:
            with self._lock:
                self.in_flight -= 1
                self.ended.append(_sequence(record))


def test_records_of_different_keys_run_at_the_same_time() -> None:
    # GIVEN the first record of key a that waits until a record of key b has started
    b_started = threading.Event()

    def action(record: StreamRecord) -> None:
        if _child(record) == "b":
            b_started.set()
        elif not b_started.wait(WAIT):
            raise AssertionError("b never started while a ran")

    journal = Journal(action)
    core, _ = _core(journal, concurrency=2)

    # WHEN the batch runs with two at a time
    response = core.process(_event(["a", "b"]))

    # THEN both were handled, a while b ran
    assert response == {"batchItemFailures": []}
    assert sorted(journal.ended) == [1, 2] and journal.most_in_flight == 2


def test_records_of_one_key_run_one_after_another_in_stream_order() -> None:
    children = ["a", "b", "a", "c", "a", "b", "a", "a", "c", "b"] * 5
    by_key: dict[str, list[int]] = {}
    lock = threading.Lock()

    def action(record: StreamRecord) -> None:
        with lock:
            by_key.setdefault(_child(record), []).append(_sequence(record))

    journal = Journal(action)
    core, _ = _core(journal, concurrency=8)

    core.process(_event(children))

    for child, sequences in by_key.items():
        expected = [n + 1 for n, c in enumerate(children) if c == child]
        assert sequences == expected, child
    assert len(journal.ended) == len(children)


def test_no_more_than_concurrency_records_are_in_flight() -> None:
    journal = Journal()
    core, _ = _core(journal, concurrency=3)

    core.process(_event([f"c-{n}" for n in range(60)]))

    assert 1 <= journal.most_in_flight <= 3
    assert sorted(journal.ended) == list(range(1, 61))


def test_a_transient_stop_checkpoints_at_the_earliest_record_not_done() -> None:
    # GIVEN record 3 (key b) that always fails transiently, among records of other keys
    def action(record: StreamRecord) -> None:
        if _sequence(record) == 3:
            raise Transient("downstream busy")

    journal = Journal(action)
    core, _ = _core(journal, concurrency=4, retry=RetryPolicy(retries=2))

    result = core.run(parse_records(_event([f"c-{n}" for n in range(30)])))

    # THEN the response reports record 3; records before it are done
    assert result.lambda_response() == {"batchItemFailures": [{"itemIdentifier": "3"}]}
    assert result.stop_cause == "transient"
    assert {1, 2} <= set(journal.ended)


def _records(children: list[str]) -> list[StreamRecord]:
    return parse_records(_event(children))


def test_no_record_later_than_a_stopped_one_starts_after_it_stopped() -> None:
    # GIVEN a schedule of 8 records of 8 keys, 3 at a time, records 0 to 2 running
    schedule = KeyedSchedule(_records([f"c-{n}" for n in range(8)]), concurrency=3)
    assert [schedule.next(), schedule.next(), schedule.next(), schedule.next()] == [0, 1, 2, None]

    # WHEN record 1 stops its key, and the others finish
    schedule.stopped(1)
    schedule.finished(0)
    schedule.finished(2)

    # THEN nothing after record 1 starts again; the checkpoint is record 1
    assert schedule.next() is None
    assert schedule.checkpoint == 1
    assert schedule.done_after(1) == 1  # record 2, delivered again


def test_records_earlier_than_a_stopped_one_still_start_and_finish() -> None:
    # GIVEN key a's records 0 and 2, and record 3 (key b) running beside record 0
    schedule = KeyedSchedule(_records(["a", "c", "a", "b"]), concurrency=4)
    assert [schedule.next(), schedule.next(), schedule.next()] == [0, 1, 3]
    # WHEN record 3 stops, THEN record 2 (earlier) starts once its key's record 0 is done
    schedule.stopped(3)
    schedule.finished(0)
    assert schedule.next() == 2
    schedule.finished(1)
    schedule.finished(2)
    assert schedule.next() is None and schedule.checkpoint == 3


def test_a_key_waits_for_its_previous_record_and_the_window_caps_what_runs_ahead() -> None:
    schedule = KeyedSchedule(_records(["a", "a", "b", "c", "d", "e"]), concurrency=2)
    assert schedule.next() == 0
    assert schedule.next() == 2  # record 1 waits for record 0 (same key)
    assert schedule.next() is None  # two started at or after the checkpoint: the window is full
    schedule.finished(2)
    assert schedule.next() is None  # record 2 is done, but record 0 still holds the checkpoint
    schedule.finished(0)
    assert schedule.next() == 1


@pytest.mark.parametrize("concurrency", [2, 4, 8])
def test_at_most_concurrency_minus_one_records_after_the_checkpoint_are_delivered_again(
    concurrency: int,
) -> None:
    # GIVEN record 1 that fails transiently after a while, while other keys could run far ahead
    release = threading.Event()

    def action(record: StreamRecord) -> None:
        if _sequence(record) == 1:
            release.wait(0.2)  # the others get every chance to run ahead
            raise Transient("busy")

    journal = Journal(action)
    core, _ = _core(journal, concurrency=concurrency, retry=RetryPolicy(retries=0))

    result = core.run(parse_records(_event([f"c-{n}" for n in range(50)])))

    # THEN the checkpoint is record 1, and what ran after it is what will come again
    assert result.done == 0
    done_after = [sequence for sequence in journal.ended if sequence != 1]
    assert result.repeats == len(done_after)
    assert result.repeats <= concurrency - 1


def test_poison_is_parked_and_its_key_goes_on() -> None:
    def action(record: StreamRecord) -> None:
        if _sequence(record) == 2:
            raise Poison("never")

    journal = Journal(action)
    core, sink = _core(journal, concurrency=4)

    response = core.process(_event(["a", "a", "a", "b", "b"]))

    assert response == {"batchItemFailures": []}
    assert [letter.record.sequence_number for letter in sink.kept] == ["2"]
    assert sorted(journal.ended) == [1, 2, 3, 4, 5]


def test_a_letter_the_dead_letter_queue_refuses_checkpoints_at_its_record() -> None:
    def action(record: StreamRecord) -> None:
        if _sequence(record) in (4, 7):
            raise Poison("never")

    sink = MemorySink(refuse=lambda letter: letter.record.sequence_number == "7")
    core, _ = _core(Journal(action), concurrency=4, sink=sink)

    result = core.run(parse_records(_event([f"c-{n}" for n in range(10)])))

    assert result.failed_record is not None and result.failed_record.sequence_number == "7"
    assert result.stop_cause == "dead-letter"


def test_nothing_starts_once_the_time_is_up_and_the_checkpoint_is_the_first_not_started() -> None:
    clock = FakeClock()

    def action(record: StreamRecord) -> None:
        clock.now += 1.0  # each record takes a second of the invocation's time

    context = FakeContext(clock, deadline=clock.now + 10.0)
    core, _ = _core(Journal(action), concurrency=1, clock=clock)
    threads, _ = _core(Journal(action), concurrency=3, clock=clock)

    alone = core.run(parse_records(_event([f"c-{n}" for n in range(20)])), context)
    clock.now = context.deadline - 10.0
    parallel = threads.run(parse_records(_event([f"c-{n}" for n in range(20)])), context)

    for result in (alone, parallel):
        assert result.stop_cause == "time"
        assert 0 < result.done < 20


def test_halt_after_counts_failures_of_concurrent_records_exactly() -> None:
    # GIVEN a handler that fails every record with one unclassified error
    def action(record: StreamRecord) -> None:
        raise ValueError("bug")

    core, sink = _core(Journal(action), concurrency=8, halt_after=5)

    # WHEN a batch of 40 runs 8 at a time, THEN the invocation fails once five failed in a row
    # (records in flight beside the fifth may fail too: they count on)
    with pytest.raises(Halted, match=r"consecutive ValueError failures \(halt_after=5\)") as raised:
        core.run(parse_records(_event([f"c-{n}" for n in range(40)])))
    assert 5 <= int(str(raised.value).split()[0]) <= 5 + 7
    assert sink.kept == []  # the invocation fails: nothing is parked, the batch comes again


def test_the_halt_counter_loses_no_failure_between_threads() -> None:
    core, _ = _core(Journal(), concurrency=1, halt_after=None)
    counter = core._halt
    threads = [
        threading.Thread(target=lambda: [counter.failure("E") for _ in range(2000)])
        for _ in range(8)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert counter.count == 16_000


def test_a_kinesis_batch_keeps_order_per_partition_key() -> None:
    records = [kinesis_record(n) for n in range(1, 31)]
    for n, record in enumerate(records):
        record["kinesis"]["partitionKey"] = f"pk-{n % 3}"
    seen: dict[str, list[int]] = {}
    lock = threading.Lock()

    def handler(record: KinesisRecord) -> None:
        with lock:
            seen.setdefault(record.partition_key, []).append(int(record.sequence_number))

    core, _ = _core(handler, concurrency=3)
    core.process({"Records": records})

    for key, sequences in seen.items():
        assert sequences == sorted(sequences), key
    assert sum(len(s) for s in seen.values()) == 30


def test_an_async_handler_runs_keys_on_one_event_loop_in_order_per_key() -> None:
    children = ["a", "b", "a", "c", "b", "a"] * 4
    order: dict[str, list[int]] = {}
    in_flight = 0
    most = 0
    loops: set[int] = set()

    async def handler(record: StreamRecord) -> None:
        nonlocal in_flight, most
        loops.add(id(asyncio.get_running_loop()))
        in_flight += 1
        most = max(most, in_flight)
        await asyncio.sleep(0)  # other records run meanwhile
        order.setdefault(_child(record), []).append(_sequence(record))
        in_flight -= 1

    core, _ = _core(handler, concurrency=3)
    response = core.process(_event(children))

    assert response == {"batchItemFailures": []}
    assert len(loops) == 1 and 2 <= most <= 3
    for child, sequences in order.items():
        assert sequences == [n + 1 for n, c in enumerate(children) if c == child]


def test_an_async_handler_is_retried_in_place_and_stops_its_key() -> None:
    calls: dict[int, int] = {}

    async def handler(record: StreamRecord) -> None:
        sequence = _sequence(record)
        calls[sequence] = calls.get(sequence, 0) + 1
        if sequence == 2 and calls[sequence] < 3:
            raise Transient("busy")  # succeeds on its third try
        if sequence == 4:
            raise Transient("down")

    core, _ = _core(handler, concurrency=2, retry=RetryPolicy(retries=2))
    result = core.run(parse_records(_event(["a", "a", "b", "b", "c"])))

    assert calls[2] == 3
    assert result.failed_record is not None and result.failed_record.sequence_number == "4"
    assert result.retries >= 4


def test_records_delivered_again_are_counted_in_a_metric() -> None:
    out = io.StringIO()
    release = threading.Event()

    def action(record: StreamRecord) -> None:
        if _sequence(record) == 1:
            release.wait(0.2)
            raise Transient("busy")

    clock = FakeClock()
    core = StreamProcessor(
        Journal(action),
        dead_letters=MemorySink(),
        concurrency=4,
        retry=RetryPolicy(retries=0),
        clock=clock,
        sleep=clock.sleep,
        logger=Logger(service="t", stream=io.StringIO()),
        metrics=Metrics(namespace="Test", service="t"),
    )

    with contextlib.redirect_stdout(out):
        result = core.run(parse_records(_event([f"c-{n}" for n in range(20)])))

    document = next(line for line in out.getvalue().splitlines() if "RecordsDeliveredAgain" in line)
    assert f'"RecordsDeliveredAgain":[{float(result.repeats)}]' in document.replace(" ", "") or (
        f'"RecordsDeliveredAgain":{float(result.repeats)}' in document.replace(" ", "")
    )


# -- what every record of the batch sees: the time budget, and a buffering handler's flush -------


@pytest.mark.parametrize("driver", ["in order", "threads", "async"])
def test_every_record_sees_the_invocations_time_budget_less_the_margin(driver: str) -> None:
    clock = FakeClock()
    seen: list[float | None] = []

    def handle(record: StreamRecord) -> None:
        seen.append(time_left())

    async def handle_async(record: StreamRecord) -> None:
        seen.append(time_left())

    core, _ = _core(
        handle_async if driver == "async" else handle,
        1 if driver == "in order" else 4,
        clock=clock,
        time_margin=5.0,
    )
    core.run(parse_records(_event(["a", "b", "c"])), FakeContext(clock, deadline=clock.now + 65))

    assert seen == [60.0, 60.0, 60.0]
    assert time_left() is None  # outside the batch: no budget


def test_without_a_lambda_context_there_is_no_time_budget() -> None:
    seen: list[float | None] = []
    core, _ = _core(lambda record: seen.append(time_left()), 1)
    core.run(parse_records(_event(["a"])))
    assert seen == [None]


class Buffer:
    """A buffering handler: keeps records, and at the end refuses those `refuse` names."""

    def __init__(self, refuse: set[int] = frozenset()) -> None:  # type: ignore[assignment]
        self.kept: list[int] = []
        self.flushes: list[list[int]] = []
        self.discards = 0
        self.refuse = refuse
        self._records: list[StreamRecord] = []
        self._lock = threading.Lock()

    def __call__(self, record: StreamRecord) -> None:
        if _child(record) == "halt":
            raise RuntimeError("a bug")
        with self._lock:
            self._records.append(record)

    def flush(self) -> list[StreamRecord]:
        records, self._records = self._records, []
        self.flushes.append(sorted(_sequence(record) for record in records))
        return [record for record in records if _sequence(record) in self.refuse]

    def discard(self) -> None:
        self._records = []
        self.discards += 1


@pytest.mark.parametrize("concurrency", [1, 4])
def test_a_buffering_handler_is_flushed_once_and_nothing_it_could_not_send_is_acknowledged(
    concurrency: int,
) -> None:
    buffer = Buffer(refuse={4, 6})
    core, _ = _core(buffer, concurrency)

    result = core.run(parse_records(_event(["a", "b", "c", "d", "e", "f", "g"])))

    assert buffer.flushes == [[1, 2, 3, 4, 5, 6, 7]]
    assert (result.done, result.stop_cause) == (3, "transient")  # Lambda resumes at record 4
    assert result.lambda_response() == {"batchItemFailures": [{"itemIdentifier": "4"}]}


def test_a_buffering_handler_is_discarded_when_the_invocation_fails() -> None:
    buffer = Buffer()
    core, _ = _core(buffer, 1, halt_after=1)

    with pytest.raises(Halted):
        core.run(parse_records(_event(["a", "halt", "b"])))

    assert (buffer.flushes, buffer.discards) == ([], 1)
