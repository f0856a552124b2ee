"""`streams monitor`: the endpoint it talks to, --once --json for scripts, --fail-above for cron
and CI, --plot, the live view and how it ends, and one clear line for what a user can fix."""

from __future__ import annotations

import argparse
import io
import json
import math
import socket
import time
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.client import BaseClient
from botocore.config import Config
from botocore.exceptions import EndpointConnectionError
from rich.console import Console

from streams.cli import build_parser, main
from streams.cli.monitor import _render, run, unique_tails
from streams.mapping.state.layout import MappingId
from streams.mapping.state.table import DynamoDBCheckpointStore
from streams.monitor.history import MonitorHistory
from streams.monitor.local import LocalMonitor
from streams.monitor.model import MonitorSnapshot, Row, totals
from tests.factories import NOW, STREAM_ARN, FakeClock
from tests.test_monitor import PNG_MAGIC, deploy, publish_three_minutes

MAPPING = MappingId("ProcessorFunction", STREAM_ARN)


@pytest.fixture
def gone() -> str:
    """The address of an endpoint that is no longer there (a port just given back)."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        port = listener.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@pytest.fixture
def store(aws: boto3.Session, unique_name: str) -> DynamoDBCheckpointStore:
    """The local mapping's state, in a table of the test's own, with one busy shard."""
    store = DynamoDBCheckpointStore(MAPPING, client=aws.client("dynamodb"), table_name=unique_name)
    store.acquire_lease()
    store.put("shardId-1", "000000000000000000042", False)
    store.record_metrics(
        "shardId-1",
        {
            "function:RecordsProcessed": 40,
            "function:RecordsParked": 2,
            "function:RecordsParked:reason=poison": 2,
            "PolledEventCount": 42,
        },
        iterator_age_ms=75_000,
        state="open",
        last_outcome="ok",
    )
    return store


@pytest.fixture
def queue_urls(aws: boto3.Session, unique_name: str) -> list[str]:
    sqs = aws.client("sqs")
    dead_letter = sqs.create_queue(QueueName=f"{unique_name}-dlq")["QueueUrl"]
    on_failure = sqs.create_queue(QueueName=f"{unique_name}-onfailure")["QueueUrl"]
    sqs.send_message(QueueUrl=dead_letter, MessageBody="parked")
    return ["--dead-letter-queue-url", dead_letter, "--on-failure-queue-url", on_failure]


def local_flags(store: DynamoDBCheckpointStore, queue_urls: list[str]) -> list[str]:
    return ["--state-table", store.table_name, "--interval", "0.01", *queue_urls]


def test_once_json_prints_one_snapshot_with_rows_queues_and_totals(
    store: DynamoDBCheckpointStore,
    queue_urls: list[str],
    moto_endpoint: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    code = main(["monitor", "--once", "--json", *local_flags(store, queue_urls)])

    out, err = capsys.readouterr()
    assert code == 0
    assert f"endpoint: {moto_endpoint} (from AWS_ENDPOINT_URL)" in err
    (line,) = out.splitlines()
    snapshot = json.loads(line)
    assert set(snapshot) == {"takenAt", "source", "windowSeconds", "rows", "queues", "totals"}
    assert snapshot["source"] == "local"
    (row,) = snapshot["rows"]
    assert row["shardId"] == "shardId-1"
    assert row["function"] == "ProcessorFunction"
    assert row["eventSourceARN"] == STREAM_ARN
    assert row["state"] == "open"
    assert row["checkpoint"] == "000000000000000000042"
    assert row["iteratorAgeMs"] == 75_000
    assert row["recordsPerSecond"] == 0.0  # read twice, --interval apart: nothing moved
    assert (row["processed"], row["parked"]) == (40, 2)
    assert row["parkedByReason"] == {"poison": 2}
    assert row["eventCounts"] == {"PolledEventCount": 42}
    assert row["lastOutcome"] == "ok"
    assert [(q["role"], q["visible"], q["inFlight"]) for q in snapshot["queues"]] == [
        ("dead-letter", 1, 0),
        ("on-failure", 0, 0),
    ]
    assert snapshot["totals"]["maxIteratorAgeMs"] == 75_000
    assert snapshot["totals"]["parkedByReason"] == {"poison": 2}


def test_the_local_monitor_never_reads_a_shard(
    store: DynamoDBCheckpointStore,
    queue_urls: list[str],
    moto_endpoint: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A shard serves about two readers at once and the mapping is one: the monitor must read
    only what the mapping recorded (its state table) and the queues' depths."""
    calls: list[tuple[str, str]] = []
    make_api_call = BaseClient._make_api_call

    def recorded(client: BaseClient, operation: str, params: dict[str, Any]) -> Any:
        calls.append((client.meta.service_model.service_name, operation))
        return make_api_call(client, operation, params)

    monkeypatch.setattr(BaseClient, "_make_api_call", recorded)

    code = main(["monitor", "--once", "--json", *local_flags(store, queue_urls)])

    assert code == 0
    assert {service for service, _ in calls} == {"dynamodb", "sqs"}
    assert {operation for _, operation in calls} <= {"Scan", "Query", "GetQueueAttributes"}


def test_fail_above_exits_1_with_one_line_naming_the_shard(
    store: DynamoDBCheckpointStore, queue_urls: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    flags = local_flags(store, queue_urls)
    code = main(["monitor", "--once", "--json", "--fail-above", "60", *flags])

    err = capsys.readouterr().err
    assert code == 1
    assert err.splitlines()[-1] == (
        "streams: iterator age above 60 s: shard shardId-1 of ProcessorFunction at 75.0 s"
    )


def test_fail_above_is_quiet_while_every_age_is_below(
    store: DynamoDBCheckpointStore, queue_urls: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    flags = local_flags(store, queue_urls)
    code = main(["monitor", "--once", "--json", "--fail-above", "90", *flags])

    assert code == 0
    assert "iterator age above" not in capsys.readouterr().err


def test_once_without_json_prints_the_table(
    store: DynamoDBCheckpointStore,
    queue_urls: list[str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("COLUMNS", "200")  # a wide terminal: no cell is wrapped

    code = main(["monitor", "--once", *local_flags(store, queue_urls)])

    out = capsys.readouterr().out
    assert code == 0
    for shown in (
        "shardId-1",
        "1 m 15 s",
        "parked by reason: poison 2",
        "total",
        "dead-letter",
        "running on",
    ):
        assert shown in out


def test_records_lost_to_drops_or_to_the_destination_get_a_line_once_there_are_any(
    store: DynamoDBCheckpointStore,
    queue_urls: list[str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    main(["monitor", "--once", *local_flags(store, queue_urls)])
    before = capsys.readouterr().out
    store.record_metrics("shardId-1", {"DroppedEventCount": 3, "DestinationDeliveryFailures": 2})

    main(["monitor", "--once", *local_flags(store, queue_urls)])
    after = capsys.readouterr().out
    main(["monitor", "--once", "--json", *local_flags(store, queue_urls)])
    (row,) = json.loads(capsys.readouterr().out)["rows"]

    assert "dropped" not in before and "failed sends" not in before
    assert "shardId-1: 3 records dropped, 2 failed sends to the on-failure destination" in after
    assert row["eventCounts"] == {
        "PolledEventCount": 42,
        "DroppedEventCount": 3,
        "DestinationDeliveryFailures": 2,
    }


def test_no_state_table_says_no_mapping_has_run_here_yet(
    unique_name: str, moto_endpoint: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["monitor", "--once", "--state-table", unique_name])

    assert code == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"streams: error: no mapping has run here yet (no state in table {unique_name} at "
        f"{moto_endpoint}): start one with `streams run` or `streams demo`"
    )


def test_without_a_local_endpoint_the_monitor_says_how_to_get_one(
    moto_endpoint: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    monkeypatch.chdir(tmp_path)  # no .streams/local.json here

    code = main(["monitor", "--once"])

    _, err = capsys.readouterr()
    assert code == 2
    assert err.splitlines()[0].startswith("endpoint: AWS, region us-east-1")
    assert err.splitlines()[-1].startswith("streams: error: no local endpoint recorded here: ")


def test_a_stack_that_is_not_there_leaves_the_queues_out_and_says_so(
    store: DynamoDBCheckpointStore, unique_name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    flags = ["--state-table", store.table_name, "--stack-name", unique_name, "--interval", "0.01"]

    code = main(["monitor", "--once", "--json", *flags])

    out, err = capsys.readouterr()
    assert code == 0
    assert f"no stack {unique_name} in the endpoint: queue depths not shown" in err
    assert json.loads(out)["queues"] == []


def test_once_with_plot_writes_the_chart_and_says_where(
    store: DynamoDBCheckpointStore,
    queue_urls: list[str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    chart = tmp_path / "monitor.png"

    code = main(
        ["monitor", "--once", "--json", "--plot", str(chart), *local_flags(store, queue_urls)]
    )

    assert code == 0
    assert chart.read_bytes().startswith(PNG_MAGIC)
    assert f"chart: {chart}" in capsys.readouterr().err


# --- a deployed function ---------------------------------------------------------------------


def test_function_once_json_reads_cloudwatch(
    aws: boto3.Session, unique_name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    deployed = deploy(aws, unique_name)
    # The last three whole minutes before now, as Lambda would have published them.
    publish_three_minutes(aws, deployed, minute=math.floor(time.time() / 60) * 60 - 60)

    code = main(["monitor", "--function", unique_name, "--once", "--json", "--window", "900"])

    out, _ = capsys.readouterr()
    assert code == 0
    snapshot = json.loads(out)
    assert (snapshot["source"], snapshot["windowSeconds"]) == ("cloudwatch", 900)
    (row,) = snapshot["rows"]
    assert (row["function"], row["mappingUUID"]) == (unique_name, deployed.mapping_uuid)
    assert row["iteratorAgeMs"] == 2500
    assert (row["processed"], row["parked"]) == (600, 4)
    assert row["parkedByReason"] == {"poison": 3, "too-old": 1}
    assert row["eventCounts"] == {"PolledEventCount": 506, "DroppedEventCount": 2}
    assert [(q["role"], q["visible"], q["oldestAgeSeconds"]) for q in snapshot["queues"]] == [
        ("dead-letter", 2, 42),
        ("on-failure", 1, None),
    ]


def test_no_such_function_is_one_line_and_exit_2(
    unique_name: str, moto_endpoint: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["monitor", "--function", unique_name, "--once"])

    assert code == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"streams: error: no function {unique_name} in us-east-1"
    )


# --- the live view ---------------------------------------------------------------------------


@pytest.fixture
def console() -> Console:
    return Console(file=io.StringIO(), width=220, force_terminal=False)


def live_monitor(
    aws: boto3.Session, store: DynamoDBCheckpointStore, clock: FakeClock
) -> LocalMonitor:
    return LocalMonitor(
        dynamodb=aws.client("dynamodb"),
        sqs=aws.client("sqs"),
        table_name=store.table_name,
        clock=clock,
    )


def arguments(*flags: str) -> argparse.Namespace:
    return build_parser().parse_args(["monitor", *flags])


def output(console: Console) -> str:
    file = console.file
    assert isinstance(file, io.StringIO)
    return file.getvalue()


def test_the_live_view_refreshes_until_its_duration_with_an_age_history(
    aws: boto3.Session, store: DynamoDBCheckpointStore, console: Console
) -> None:
    clock = FakeClock()
    ages = iter([20_000, 40_000, 10_000])

    def sleep(seconds: float) -> None:
        clock.sleep(seconds)
        store.record_metrics(
            "shardId-1", {"function:RecordsProcessed": 30}, iterator_age_ms=next(ages)
        )

    code = run(
        arguments("--duration", "6"),
        live_monitor(aws, store, clock),
        title="local mapping",
        console=console,
        sleep=sleep,
        clock=clock,
    )

    assert code == 0
    assert clock.sleeps == [2.0, 2.0, 2.0]  # reads at 0, 2, 4 and 6 s
    shown = output(console)
    assert "shardId-1" in shown
    assert "15.0" in shown  # records/s: 30 more records in 2 s
    assert "█" in shown  # the age history's peak


def test_json_without_once_prints_one_line_per_refresh(
    aws: boto3.Session,
    store: DynamoDBCheckpointStore,
    console: Console,
    capsys: pytest.CaptureFixture[str],
) -> None:
    clock = FakeClock()

    code = run(
        arguments("--json", "--duration", "4"),
        live_monitor(aws, store, clock),
        title="local mapping",
        console=console,
        sleep=clock.sleep,
        clock=clock,
    )

    lines = capsys.readouterr().out.splitlines()
    assert code == 0
    assert [json.loads(line)["rows"][0]["shardId"] for line in lines] == ["shardId-1"] * 3


def test_ctrl_c_leaves_the_live_view_cleanly_and_still_writes_the_chart(
    aws: boto3.Session, store: DynamoDBCheckpointStore, console: Console, tmp_path: Path
) -> None:
    clock = FakeClock()
    chart = tmp_path / "monitor.png"

    def interrupted(seconds: float) -> None:
        raise KeyboardInterrupt

    code = run(
        arguments("--plot", str(chart)),
        live_monitor(aws, store, clock),
        title="local mapping",
        console=console,
        sleep=interrupted,
        clock=clock,
    )

    assert code == 0
    assert chart.read_bytes().startswith(PNG_MAGIC)


def test_the_live_view_stops_at_the_first_age_above_fail_above(
    aws: boto3.Session,
    store: DynamoDBCheckpointStore,
    console: Console,
    capsys: pytest.CaptureFixture[str],
) -> None:
    clock = FakeClock()
    store.record_metrics("shardId-1", iterator_age_ms=1_000)
    reads: list[float] = []

    def sleep(seconds: float) -> None:
        reads.append(seconds)
        clock.sleep(seconds)
        store.record_metrics("shardId-1", iterator_age_ms=200_000)  # the backlog grows

    code = run(
        arguments("--fail-above", "120"),
        live_monitor(aws, store, clock),
        title="local mapping",
        console=console,
        sleep=sleep,
        clock=clock,
    )

    assert code == 1
    assert reads == [2.0]  # stopped at the second read, the first above the limit
    assert capsys.readouterr().err.splitlines()[-1] == (
        "streams: iterator age above 120 s: shard shardId-1 of ProcessorFunction at 200.0 s"
    )


def test_monitor_is_a_streams_command() -> None:
    args = arguments("--function", "a", "--function", "b", "--fail-above", "30")

    assert args.functions == ["a", "b"]
    assert args.fail_above == 30


@pytest.mark.parametrize("flag", ["--interval", "--fail-above", "--duration", "--window"])
def test_seconds_must_be_above_zero(flag: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(["monitor", flag, "0"])

    assert exited.value.code == 2
    assert "must be above 0: 0" in capsys.readouterr().err


def test_a_read_that_fails_mid_watch_still_leaves_the_chart(
    aws: boto3.Session,
    store: DynamoDBCheckpointStore,
    console: Console,
    tmp_path: Path,
    gone: str,
) -> None:
    clock = FakeClock()
    chart = tmp_path / "monitor.png"
    monitor = live_monitor(aws, store, clock)

    def endpoint_gone(seconds: float) -> None:
        clock.sleep(seconds)
        monitor.dynamodb = boto3.client(
            "dynamodb", endpoint_url=gone, config=Config(retries={"max_attempts": 1})
        )

    with pytest.raises(EndpointConnectionError):
        run(
            arguments("--plot", str(chart)),
            monitor,
            title="local mapping",
            console=console,
            sleep=endpoint_gone,
            clock=clock,
        )

    assert chart.read_bytes().startswith(PNG_MAGIC)


def test_an_endpoint_that_is_gone_is_one_line_and_exit_2(
    gone: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", gone)
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")

    code = main(["monitor", "--once"])

    assert code == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"streams: error: cannot reach {gone}: is `streams local up` (or the demo) still running?"
    )


# --- the view at 80 columns -------------------------------------------------------------------


def _shard_row(shard_id: str, age_ms: float, processed: float, outcome: str) -> Row:
    return Row(
        label=shard_id,
        function="ProcessorFunction",
        event_source_arn=STREAM_ARN,
        shard_id=shard_id,
        mapping_uuid=None,
        mapping_state="running on build-host-01 (pid 41234)",
        state="open",
        checkpoint="4965000000000000000000000000000000000000000000000042",
        iterator_age_ms=age_ms,
        records_per_second=12_345.6,
        processed=processed,
        parked=1_288,
        parked_by_reason={"poison": 1_280, "too-old": 8},
        event_counts={"DroppedEventCount": 3},
        last_outcome=outcome,
        updated_at=NOW - 2,
    )


def test_the_table_fits_80_columns_with_shards_named_by_a_unique_tail() -> None:
    rows = (
        _shard_row("shardId-00000001700000000000-a1b2c3d4", 75_000, 123_456, "ok"),
        _shard_row("shardId-00000001700000000001-e5f6a7b8", 43_380_000, 12_345_678, "ok"),
        _shard_row(
            "shardId-00000001700000000002-c9d0e1f2",
            950,
            3,
            "partial failure from record 12 of 100",
        ),
    )
    snapshot = MonitorSnapshot(
        taken_at=NOW, source="local", rows=rows, queues=(), totals=totals(rows)
    )
    history = MonitorHistory()
    history.add(snapshot)
    console = Console(file=io.StringIO(), width=80, force_terminal=False)

    console.print(_render(snapshot, history, "local mapping", None))

    lines = output(console).splitlines()
    for tail, age, processed in (
        ("a1b2c3d4", "1 m 15 s", "123,456"),
        ("e5f6a7b8", "12 h 03 m", "12,345,678"),
        ("c9d0e1f2", "950 ms", "3"),
    ):
        # One line per shard, its name and every figure whole.
        (row,) = [line for line in lines if line.startswith(f"…{tail} ") and " open " in line]
        assert row.split() == [
            "…" + tail,
            "open",
            "…00000042",
            *age.split(),
            "12,345.6",
            processed,
            "1,288",
        ]
    assert "c9d0e1f2: partial failure from record 12 of 100" in output(console)
    assert "parked by reason: poison 3,840, too-old 24" in output(console)
    assert max(len(line) for line in lines) <= 80


def test_shard_tails_grow_until_no_two_shards_end_alike() -> None:
    names = unique_tails(
        ["shardId-00000001700000000001-deadbeef", "shardId-00000001700000000002-deadbeef", "s-1"],
        8,
    )

    assert names == {
        "shardId-00000001700000000001-deadbeef": "…1-deadbeef",
        "shardId-00000001700000000002-deadbeef": "…2-deadbeef",
        "s-1": "s-1",
    }
