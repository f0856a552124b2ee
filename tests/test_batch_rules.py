"""Batch-core rules the other batch tests leave open (found by `make mutation`): the concurrent
drivers' dead letters, metrics and failures; the time margin's exact edges; when a record is
too old; which errors are transient; what the early-checkpoint line says."""

from __future__ import annotations

import io
import json
import uuid
from typing import Any

import pytest
from aws_lambda_powertools import Logger
from botocore.exceptions import ClientError

from streams import Halted, Poison, RetryPolicy, StreamProcessor, Transient
from streams.batch import TransientErrors, time_left
from streams.records import StreamRecord, parse_records
from tests.factories import NOW, FakeClock, FakeContext, MemorySink, dynamodb_record, kinesis_record

DRIVERS = ["threads", "async"]


def _event(count: int, **kwargs: Any) -> dict[str, Any]:
    """Records 1..count, each of its own key (so the concurrent drivers run them side by side)."""
    return {"Records": [dynamodb_record(n, child=f"c-{n}", **kwargs) for n in range(1, count + 1)]}


def _handler(driver: str, action: Any) -> Any:
    if driver != "async":
        return action

    async def handle(record: StreamRecord) -> None:
        action(record)

    return handle


def _core(
    handler: Any,
    *,
    sink: MemorySink | None = None,
    clock: FakeClock | None = None,
    log: io.StringIO | None = None,
    **kwargs: Any,
) -> StreamProcessor:
    clock = clock if clock is not None else FakeClock()
    return StreamProcessor(
        handler,
        dead_letters=sink if sink is not None else MemorySink(),
        clock=clock,
        sleep=clock.sleep,
        random=lambda: 1.0,
        logger=Logger(
            service=f"test-{uuid.uuid4().hex}", stream=log if log is not None else io.StringIO()
        ),
        **kwargs,
    )


def _poison(record: StreamRecord) -> None:
    raise Poison("never")


# --- the concurrent drivers ---------------------------------------------------------------------


@pytest.mark.parametrize("driver", ["in order", *DRIVERS])
@pytest.mark.parametrize("count", [12, 25])  # a full SQS batch of letters and then some
def test_letters_the_queue_refuses_checkpoint_at_the_first_refused_record(
    driver: str, count: int
) -> None:
    refused = {"5", str(count - 1)}
    sink = MemorySink(refuse=lambda letter: letter.record.sequence_number in refused)
    core = _core(_handler(driver, _poison), sink=sink, concurrency=1 if driver == "in order" else 4)

    result = core.run(parse_records(_event(count)))

    assert result.failed_record is not None
    assert result.failed_record.sequence_number == "5"
    assert result.stop_cause == "dead-letter"
    if driver == "in order":
        assert [letter.record.sequence_number for letter in result.parked] == ["1", "2", "3", "4"]


@pytest.mark.parametrize("driver", DRIVERS)
def test_concurrent_letters_the_queue_refuses_in_the_last_partial_batch_checkpoint_there(
    driver: str,
) -> None:
    sink = MemorySink(refuse=lambda letter: letter.record.sequence_number == "12")
    core = _core(_handler(driver, _poison), sink=sink, concurrency=4)

    result = core.run(parse_records(_event(13)))

    assert result.failed_record is not None
    assert result.failed_record.sequence_number == "12"
    assert result.stop_cause == "dead-letter"


@pytest.mark.parametrize("driver", ["in order", *DRIVERS])
def test_every_driver_names_the_function_that_parked_a_record(driver: str) -> None:
    clock = FakeClock()
    sink = MemorySink()
    core = _core(
        _handler(driver, _poison),
        sink=sink,
        clock=clock,
        concurrency=1 if driver == "in order" else 4,
    )
    context = FakeContext(clock, deadline=clock.now + 60, function_name="children-processor")

    core.run(parse_records(_event(3)), context)

    assert {letter.function.name for letter in sink.kept} == {"children-processor"}
    assert {letter.function.request_id for letter in sink.kept} == {"req-1"}


@pytest.mark.parametrize("driver", ["in order", *DRIVERS])
def test_every_driver_publishes_the_early_checkpoint_and_the_iterator_age(
    driver: str, capsys: pytest.CaptureFixture[str]
) -> None:
    def action(record: StreamRecord) -> None:
        if record.sequence_number == "2":
            raise Transient("busy")

    core = _core(
        _handler(driver, action),
        retry=RetryPolicy(retries=0),
        concurrency=1 if driver == "in order" else 4,
    )
    capsys.readouterr()

    core.run(parse_records(_event(3, created=NOW - 4)))

    batch = json.loads(capsys.readouterr().out.splitlines()[0])
    assert batch["EarlyCheckpoints"] == [1.0]
    assert batch["IteratorAge"] == [4000.0]


@pytest.mark.parametrize("driver", ["in order", *DRIVERS])
def test_every_driver_fails_the_invocation_when_halt_after_is_reached(driver: str) -> None:
    def action(record: StreamRecord) -> None:
        raise KeyError("a bug")

    core = _core(
        _handler(driver, action), halt_after=2, concurrency=1 if driver == "in order" else 2
    )

    with pytest.raises(Halted) as raised:
        core.run(parse_records(_event(4)))

    assert str(raised.value) == (
        "2 consecutive KeyError failures (halt_after=2): failing the invocation instead of "
        "parking more records"
    )


def test_explicit_poison_never_counts_towards_halt_after() -> None:
    sink = MemorySink()
    core = _core(_poison, sink=sink, halt_after=2)

    result = core.run(parse_records(_event(4)))

    assert (result.done, len(sink.kept)) == (4, 4)


class AsyncBuffer:
    """An async handler that buffers; its flush returns the records it could not send."""

    def __init__(self, refuse: set[str]) -> None:
        self.refuse = refuse
        self.records: list[StreamRecord] = []

    async def __call__(self, record: StreamRecord) -> None:
        self.records.append(record)

    def flush(self) -> list[StreamRecord]:
        return [record for record in self.records if record.sequence_number in self.refuse]

    def discard(self) -> None:
        self.records = []


def test_an_async_buffering_handler_acknowledges_nothing_it_could_not_send() -> None:
    core = _core(AsyncBuffer(refuse={"3", "5"}), concurrency=2)

    result = core.run(parse_records(_event(6)))

    assert result.failed_record is not None
    assert result.failed_record.sequence_number == "3"
    assert result.stop_cause == "transient"


# --- the time margin ----------------------------------------------------------------------------


def test_a_record_starts_while_the_time_left_is_at_least_the_margin() -> None:
    clock = FakeClock()
    seen: list[str] = []
    core = _core(lambda record: seen.append(record.sequence_number), clock=clock, time_margin=5.0)

    at_margin = core.run(parse_records(_event(1)), FakeContext(clock, deadline=clock.now + 5.0))
    half_a_second_over = core.run(
        parse_records(_event(1)), FakeContext(clock, deadline=clock.now + 5.5)
    )
    below = core.run(parse_records(_event(1)), FakeContext(clock, deadline=clock.now + 4.999))

    assert (at_margin.done, half_a_second_over.done, below.done) == (1, 1, 0)
    assert below.stop_cause == "time"


def test_a_retry_sleeps_only_when_it_ends_at_or_before_the_margin() -> None:
    clock = FakeClock()
    calls: list[str] = []

    def action(record: StreamRecord) -> None:
        calls.append(record.sequence_number)
        if len(calls) == 1:
            raise Transient("busy")

    # random 1.0: the first delay is the base delay, 0.2 s; the margin is 5 s.
    core = _core(action, clock=clock, time_margin=5.0, retry=RetryPolicy(retries=1))
    result = core.run(parse_records(_event(1)), FakeContext(clock, deadline=clock.now + 5.2))

    assert calls == ["1", "1"]
    assert clock.sleeps == [pytest.approx(0.2)]
    assert result.done == 1


def test_inside_the_margin_the_time_left_is_zero() -> None:
    clock = FakeClock()
    seen: list[float | None] = []

    def action(record: StreamRecord) -> None:
        clock.now += 3.0  # the record takes the invocation into its margin
        seen.append(time_left())

    core = _core(action, clock=clock, time_margin=5.0)
    core.run(parse_records(_event(1)), FakeContext(clock, deadline=clock.now + 6.0))

    assert seen == [0.0]


# --- too old ------------------------------------------------------------------------------------


def _always_transient(record: StreamRecord) -> None:
    raise Transient("busy")


def test_a_record_exactly_max_record_age_old_is_not_yet_too_old() -> None:
    from datetime import timedelta

    core = _core(_always_transient, retry=RetryPolicy(retries=0), max_record_age=timedelta(hours=1))

    exactly = core.run(parse_records(_event(1, created=NOW - 3600)))
    older = core.run(parse_records(_event(1, created=NOW - 3600.5)))

    assert (exactly.done, exactly.stop_cause, exactly.parked) == (0, "transient", ())
    assert (older.done, [letter.reason for letter in older.parked]) == (1, ["too-old"])


def test_without_max_record_age_a_failing_record_holds_its_place_however_old() -> None:
    core = _core(_always_transient, retry=RetryPolicy(retries=0), max_record_age=None)

    result = core.run(parse_records(_event(1, created=NOW - 30 * 24 * 3600)))

    assert (result.done, result.stop_cause, result.parked) == (0, "transient", ())


def test_a_record_whose_time_is_unknown_or_unreadable_is_never_too_old() -> None:
    from datetime import timedelta

    no_time = kinesis_record(1)
    del no_time["kinesis"]["approximateArrivalTimestamp"]
    unreadable = kinesis_record(1)
    unreadable["kinesis"]["approximateArrivalTimestamp"] = "yesterday"
    core = _core(_always_transient, retry=RetryPolicy(retries=0), max_record_age=timedelta(0))

    for raw in (no_time, unreadable):
        result = core.run(parse_records({"Records": [raw]}))
        assert (result.done, result.stop_cause, result.parked) == (0, "transient", ())


# --- transient or not ---------------------------------------------------------------------------


def test_a_client_error_without_an_http_status_is_not_transient() -> None:
    is_transient = TransientErrors()
    bare = ClientError({"Error": {"Code": "ValidationException"}}, "PutItem")
    server = ClientError(
        {"Error": {"Code": "InternalError"}, "ResponseMetadata": {"HTTPStatusCode": 500}},
        "PutItem",
    )

    assert not is_transient(bare)
    assert is_transient(server)


# --- the early-checkpoint line ------------------------------------------------------------------


def test_the_early_checkpoint_line_says_why_how_many_remain_and_which_record() -> None:
    log = io.StringIO()

    def action(record: StreamRecord) -> None:
        if record.sequence_number == "2":
            raise Transient("busy")

    core = _core(action, log=log, retry=RetryPolicy(retries=0))
    core.run(parse_records(_event(5)))

    (line,) = [
        json.loads(text)
        for text in log.getvalue().splitlines()
        if "checkpoint before the end of the batch" in text
    ]
    assert line["level"] == "WARNING"
    assert line["message"] == "checkpoint before the end of the batch"
    assert (line["cause"], line["remaining"], line["deliveredAgain"]) == ("transient", 4, 0)
    assert (line["sequenceNumber"], line["keys"]) == ("2", {"childId": "c-2"})


# --- what the batch counts and logs -------------------------------------------------------------


def _metrics(capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    return dict(json.loads(capsys.readouterr().out.splitlines()[0]))


@pytest.mark.parametrize("driver", ["in order", *DRIVERS])
def test_every_driver_counts_processed_parked_and_retried_records(
    driver: str, capsys: pytest.CaptureFixture[str]
) -> None:
    tries: dict[str, int] = {}

    def action(record: StreamRecord) -> None:
        sequence = record.sequence_number
        tries[sequence] = tries.get(sequence, 0) + 1
        if sequence == "2" and tries[sequence] == 1:
            raise Transient("busy once")
        if sequence == "3":
            raise Poison("never")

    concurrency = 1 if driver == "in order" else 4
    core = _core(_handler(driver, action), concurrency=concurrency)
    capsys.readouterr()

    result = core.run(parse_records(_event(5)))

    assert (result.done, result.stop_cause, result.retries) == (5, None, 1)
    assert [letter.record.sequence_number for letter in result.parked] == ["3"]
    assert sorted(tries) == ["1", "2", "3", "4", "5"]  # the batch goes on after the retry
    metrics = _metrics(capsys)
    assert metrics["RecordsProcessed"] == [4.0]
    assert metrics["RecordsParked"] == [1.0]
    assert metrics["TransientRetries"] == [1.0]
    assert metrics["EarlyCheckpoints"] == [0.0]
    if concurrency > 1:
        assert metrics["RecordsDeliveredAgain"] == [0.0]


def test_a_record_that_fails_transiently_then_as_poison_is_parked_and_the_batch_goes_on() -> None:
    tries: list[str] = []

    def action(record: StreamRecord) -> None:
        tries.append(record.sequence_number)
        if record.sequence_number == "1":
            raise Transient("busy") if tries.count("1") == 1 else Poison("never")

    sink = MemorySink()
    result = _core(action, sink=sink).run(parse_records(_event(2)))

    assert (result.done, result.stop_cause, result.retries) == (2, None, 1)
    assert [(letter.reason, letter.attempts) for letter in sink.kept] == [("poison", 2)]


@pytest.mark.parametrize("driver", DRIVERS)
def test_concurrent_letters_go_to_the_queue_in_batches_of_ten(driver: str) -> None:
    sink = MemorySink()
    _core(_handler(driver, _poison), sink=sink, concurrency=4).run(parse_records(_event(25)))

    assert sink.calls == [10, 10, 5]


def test_a_too_old_letter_names_the_function_too() -> None:
    from datetime import timedelta

    clock = FakeClock()
    sink = MemorySink()
    core = _core(
        _always_transient,
        sink=sink,
        clock=clock,
        retry=RetryPolicy(retries=0),
        max_record_age=timedelta(seconds=1),
    )

    core.run(parse_records(_event(1, created=NOW - 10)), FakeContext(clock, deadline=NOW + 60))

    assert [(letter.reason, letter.function.name) for letter in sink.kept] == [
        ("too-old", "processor")
    ]


def test_a_letter_carries_pythons_formatted_traceback_of_the_error() -> None:
    import traceback

    error = Poison("never")

    def action(record: StreamRecord) -> None:
        raise error

    sink = MemorySink()
    _core(action, sink=sink).run(parse_records(_event(1)))

    (letter,) = sink.kept
    assert letter.error.traceback == "".join(traceback.format_exception(error))


def test_the_parked_and_not_parked_lines_carry_reason_error_type_attempts_and_ids() -> None:
    log = io.StringIO()
    sink = MemorySink(refuse=lambda letter: letter.record.sequence_number == "2")

    _core(_poison, sink=sink, log=log).run(parse_records(_event(2)))

    parked, refused = [
        json.loads(text)
        for text in log.getvalue().splitlines()
        if "parked" in json.loads(text)["message"]
    ]
    assert parked["message"] == "record parked"
    assert (parked["reason"], parked["errorType"], parked["attempts"]) == ("poison", "Poison", 1)
    assert (parked["sequenceNumber"], parked["deadLetterMessageId"]) == ("1", "memory-1")
    assert refused["message"] == (
        "record not parked: the dead-letter queue did not take it, so the batch checkpoints at it"
    )
    assert (refused["reason"], refused["errorType"], refused["attempts"]) == ("poison", "Poison", 1)
    assert refused["sequenceNumber"] == "2"
    assert "deadLetterMessageId" not in refused


# --- settings -----------------------------------------------------------------------------------


def test_retry_policy_values_may_be_zero_but_not_negative() -> None:
    RetryPolicy(retries=0, base_delay=0.0, max_delay=0.0)

    for values in ({"retries": -1}, {"base_delay": -0.1}, {"max_delay": -0.1}):
        with pytest.raises(ValueError, match=r"^RetryPolicy values must not be negative$"):
            RetryPolicy(**values)  # type: ignore[arg-type]


def test_halt_after_below_one_and_concurrency_below_one_are_refused_saying_so() -> None:
    with pytest.raises(ValueError, match=r"^halt_after must be at least 1 \(or None for off\)$"):
        _core(_poison, halt_after=0)
    with pytest.raises(ValueError, match=r"^concurrency must be 1 or more, not 0$"):
        _core(_poison, concurrency=0)


def test_without_a_logger_metrics_or_queue_the_processor_takes_them_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    service = f"children-{uuid.uuid4().hex}"  # a logger of its own (Powertools keeps them by name)
    monkeypatch.setenv("POWERTOOLS_SERVICE_NAME", service)
    monkeypatch.setenv("POWERTOOLS_METRICS_NAMESPACE", "Naughty")
    monkeypatch.setenv("DEAD_LETTER_QUEUE_URL", "https://sqs.us-east-1.amazonaws.com/1/dlq")
    monkeypatch.delenv("DEAD_LETTER_BUCKET", raising=False)
    clock = FakeClock()

    def action(record: StreamRecord) -> None:
        raise Transient("busy")

    core = StreamProcessor(action, retry=RetryPolicy(retries=0), clock=clock, sleep=clock.sleep)
    capsys.readouterr()
    core.run(parse_records(_event(1)))

    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    (warning,) = [line for line in lines if line.get("level") == "WARNING"]
    assert warning["service"] == service
    (metrics,) = [line for line in lines if "_aws" in line]
    assert metrics["_aws"]["CloudWatchMetrics"][0]["Namespace"] == "Naughty"
    assert metrics["service"] == service
    assert core.dead_letters.queue_url == "https://sqs.us-east-1.amazonaws.com/1/dlq"  # type: ignore[attr-defined]


def test_an_async_handler_sleeps_between_retries_on_the_injected_clock() -> None:
    clock = FakeClock()
    tries: list[str] = []

    async def handle(record: StreamRecord) -> None:
        tries.append(record.sequence_number)
        if len(tries) == 1:
            raise Transient("busy")

    result = _core(handle, clock=clock, concurrency=2).run(parse_records(_event(1)))

    assert (tries, result.done) == (["1", "1"], 1)
    assert clock.sleeps == [pytest.approx(0.2)]


@pytest.mark.parametrize("driver", DRIVERS)
def test_a_record_that_stopped_the_batch_is_the_cause_even_when_time_ran_out_after_it(
    driver: str,
) -> None:
    clock = FakeClock()

    def action(record: StreamRecord) -> None:
        clock.now += 60.0  # past the margin: nothing starts after this record
        raise Transient("busy")

    core = _core(_handler(driver, action), clock=clock, concurrency=2, retry=RetryPolicy(0))
    result = core.run(parse_records(_event(3)), FakeContext(clock, deadline=clock.now + 30))

    assert result.failed_record is not None
    assert result.failed_record.sequence_number == "1"
    assert result.stop_cause == "transient"


def test_metrics_carry_their_units_and_the_processors_service_in_every_document(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from aws_lambda_powertools import Metrics

    def action(record: StreamRecord) -> None:
        if record.sequence_number == "1":
            raise Poison("never")

    clock = FakeClock()
    core = _core(
        action,
        clock=clock,
        concurrency=2,  # the smallest concurrency that publishes RecordsDeliveredAgain
        metrics=Metrics(namespace="Naughty", service="children"),
    )
    capsys.readouterr()

    core.run(parse_records(_event(2, created=NOW)))  # created now: the age is 0

    batch, by_reason = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    units = {m["Name"]: m["Unit"] for m in batch["_aws"]["CloudWatchMetrics"][0]["Metrics"]}
    assert units == {
        "RecordsProcessed": "Count",
        "RecordsParked": "Count",
        "TransientRetries": "Count",
        "EarlyCheckpoints": "Count",
        "RecordsDeliveredAgain": "Count",
        "IteratorAge": "Milliseconds",
    }
    assert batch["IteratorAge"] == [0.0]
    (parked,) = by_reason["_aws"]["CloudWatchMetrics"][0]["Metrics"]
    assert parked == {"Name": "RecordsParked", "Unit": "Count"}
    assert (by_reason["service"], by_reason["reason"]) == ("children", "poison")
    assert by_reason["_aws"]["CloudWatchMetrics"][0]["Namespace"] == "Naughty"


def test_a_batch_whose_last_record_has_an_unreadable_time_publishes_no_iterator_age(
    capsys: pytest.CaptureFixture[str],
) -> None:
    records = [kinesis_record(1), kinesis_record(2)]
    records[1]["kinesis"]["approximateArrivalTimestamp"] = "yesterday"
    core = _core(lambda record: None)
    capsys.readouterr()

    result = core.run(parse_records({"Records": records}))

    assert result.done == 2
    batch = json.loads(capsys.readouterr().out.splitlines()[0])
    assert "IteratorAge" not in batch


def test_every_letter_of_a_flush_gets_its_line_after_one_the_queue_refused() -> None:
    log = io.StringIO()
    sink = MemorySink(refuse=lambda letter: letter.record.sequence_number == "1")

    _core(_poison, sink=sink, log=log).run(parse_records(_event(3)))

    messages = [json.loads(text)["message"] for text in log.getvalue().splitlines()]
    assert [m.split(":")[0] for m in messages if "parked" in m] == [
        "record not parked",
        "record parked",
        "record parked",
    ]


def test_a_letter_kept_before_the_first_refused_position_counts_as_parked_in_any_order() -> None:
    """The concurrent drivers gather letters as records finish: the one of position 1 may come
    before the one of position 0. If the queue refuses position 1's, position 0's letter was
    still kept and counts as parked; the checkpoint stops at position 1."""
    from datetime import UTC, datetime

    from streams.deadletter import DeadLetter, ErrorInfo, FunctionInfo

    records = parse_records(_event(3))
    sink = MemorySink(refuse=lambda letter: letter.record is records[1])
    processor = StreamProcessor(lambda record: None, dead_letters=sink)

    def letter(position: int) -> DeadLetter:
        return DeadLetter(
            record=records[position],
            reason="poison",
            error=ErrorInfo("Poison", "", ""),
            attempts=1,
            failed_at=datetime.now(UTC),
            function=FunctionInfo(name="f"),
        )

    parked: list[DeadLetter] = []
    pending = [(2, letter(2)), (1, letter(1)), (0, letter(0))]  # as they finished
    assert processor._flush(pending, parked) == 1
    assert [found.record for found in parked] == [records[0]]
    assert [kept.record for kept in sink.kept] == [records[2], records[0]]
