"""`streams backfill`'s core: synthetic INSERT records, the ordering contract, resume, parking,
pacing. The scan runs against moto's server; the handler is in-process (the invoker seam)."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import boto3
import pytest

from streams.backoff import Backoff
from streams.deadletter import DeadLetter
from streams.local.backfill import (
    BACKFILL_SEQUENCE_NUMBER,
    Backfill,
    BackfillSettings,
    Pacer,
    SegmentPositions,
    synthetic_record,
)
from streams.mapping.invoke import InvokeResult
from streams.records import DynamoDBRecord

FIXTURE = Path("/work/shared/fixtures/events/dynamodb-sam-generated.json")


class Sink:
    def __init__(self) -> None:
        self.letters: list[DeadLetter] = []

    def park(self, letters: Sequence[DeadLetter]) -> list[str | None]:
        self.letters.extend(letters)
        return [f"id-{len(self.letters)}" for _ in letters]


class Projection:
    """The worked example's rule: apply a change only if its sequence number is newer."""

    def __init__(self) -> None:
        self.rows: dict[str, tuple[str, Any]] = {}
        self.lock = threading.Lock()

    def apply(self, record: DynamoDBRecord) -> None:
        child = record.keys["childId"]
        sequence = record.sequence_number.zfill(40)
        with self.lock:
            stored = self.rows.get(child)
            if stored is None or stored[0] < sequence:
                assert record.new_image is not None
                self.rows[child] = (sequence, record.new_image["status"])


def handler_invoker(
    handle: Callable[[DynamoDBRecord], None],
) -> Callable[[Mapping[str, Any], float], InvokeResult]:
    def invoke(event: Mapping[str, Any], deadline_seconds: float) -> InvokeResult:
        failures = []
        for raw in event["Records"]:
            record = DynamoDBRecord(raw)
            try:
                handle(record)
            except ValueError:
                failures.append({"itemIdentifier": record.sequence_number})
        return InvokeResult(payload={"batchItemFailures": failures})

    return invoke


@pytest.fixture
def table(aws: boto3.Session, unique_name: str) -> str:
    client = aws.client("dynamodb")
    client.create_table(
        TableName=unique_name,
        KeySchema=[{"AttributeName": "childId", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "childId", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    )
    for number in range(60):
        client.put_item(
            TableName=unique_name,
            Item={"childId": {"S": f"c{number:03}"}, "status": {"S": "nice"}},
        )
    return unique_name


def backfill(
    aws: boto3.Session,
    table: str,
    invoke: Callable[[Mapping[str, Any], float], InvokeResult],
    *,
    sink: Sink | None = None,
    positions: SegmentPositions | None = None,
    on_page: Callable[[int, int], None] | None = None,
    segments: int = 3,
) -> Backfill:
    return Backfill(
        dynamodb=aws.client("dynamodb"),
        table_name=table,
        key_names=["childId"],
        stream_arn=f"arn:aws:dynamodb:us-east-1:123456789012:table/{table}/stream/x",
        region="us-east-1",
        invoke=invoke,
        sink=sink or Sink(),
        settings=BackfillSettings(
            segments=segments, batch_size=7, backoff=Backoff(0.0, 0.0), max_attempts=3
        ),
        positions=positions or SegmentPositions(None, segments),
        function_name="Projector",
        sleep=lambda _seconds: None,
        on_page=on_page,
    )


def test_synthetic_record_has_the_keys_of_a_recorded_lambda_insert() -> None:
    recorded = json.loads(FIXTURE.read_text())["Records"][0]
    item = recorded["dynamodb"]["NewImage"]
    ours = synthetic_record(
        item, ["Id"], stream_arn=recorded["eventSourceARN"], region="us-east-1", now=1428537600
    )
    assert set(ours) == set(recorded)
    assert set(ours["dynamodb"]) == set(recorded["dynamodb"])
    theirs, mine = DynamoDBRecord(recorded), DynamoDBRecord(ours)
    assert mine.event_name == theirs.event_name == "INSERT"
    assert mine.keys == theirs.keys
    assert mine.new_image == theirs.new_image
    assert mine.old_image is None
    assert mine.approximate_creation_time == theirs.approximate_creation_time


def test_binary_values_as_scan_returns_them_reach_the_handler_as_lambda_delivers_them() -> None:
    """boto3's Scan gives B and BS as bytes; Lambda's records carry base64 text."""
    item = {
        "childId": {"S": "c-1"},
        "photo": {"B": b"\x00\x01"},
        "extra": {"M": {"thumbs": {"BS": [b"\xff"]}}},
    }
    record = synthetic_record(item, ["childId"], stream_arn="arn", region="us-east-1", now=0)
    json.dumps(record)  # the event travels to the function's worker as JSON
    image = DynamoDBRecord(record).new_image
    assert image is not None
    assert image["photo"] == b"\x00\x01" and image["extra"]["thumbs"] == {b"\xff"}


def test_backfill_sequence_number_is_below_any_real_one() -> None:
    recorded = json.loads(FIXTURE.read_text())["Records"]
    assert all(
        int(BACKFILL_SEQUENCE_NUMBER) < int(r["dynamodb"]["SequenceNumber"]) for r in recorded
    )


def _streamed(child: str, status: str, sequence: str) -> DynamoDBRecord:
    return DynamoDBRecord(
        {
            "eventName": "MODIFY",
            "dynamodb": {
                "Keys": {"childId": {"S": child}},
                "NewImage": {"childId": {"S": child}, "status": {"S": status}},
                "SequenceNumber": sequence,
            },
        }
    )


@pytest.mark.parametrize("streamed_first", [True, False])
def test_streamed_change_wins_over_scanned_item_in_either_order(
    aws: boto3.Session, table: str, streamed_first: bool
) -> None:
    projection = Projection()
    # The scan read c007 as "nice"; the stream carries the newer "naughty" (a small real number).
    streamed = _streamed("c007", "naughty", "1")

    def handle(record: DynamoDBRecord) -> None:
        racing = record.keys["childId"] == "c007"
        if racing and streamed_first:
            projection.apply(streamed)
        projection.apply(record)
        if racing and not streamed_first:
            projection.apply(streamed)

    summary = backfill(aws, table, handler_invoker(handle)).run()
    assert summary.offered == summary.applied == 60
    assert projection.rows["c007"][1] == "naughty"
    assert sum(1 for _s, status in projection.rows.values() if status == "nice") == 59


def test_poison_item_is_parked_as_backfill_and_the_scan_goes_on(
    aws: boto3.Session, table: str
) -> None:
    projection, sink = Projection(), Sink()

    def handle(record: DynamoDBRecord) -> None:
        if record.keys["childId"] == "c013":
            raise ValueError("poison")
        projection.apply(record)

    summary = backfill(aws, table, handler_invoker(handle), sink=sink).run()
    assert [letter.record.keys["childId"] for letter in sink.letters] == ["c013"]
    assert sink.letters[0].reason == "backfill"
    assert sink.letters[0].record.new_image == {"childId": "c013", "status": "nice"}
    assert (summary.parked, summary.applied, summary.retried) == (1, 59, 2)
    assert len(projection.rows) == 59


def test_transient_failure_is_retried_not_parked(aws: boto3.Session, table: str) -> None:
    projection, sink, failed = Projection(), Sink(), []

    def handle(record: DynamoDBRecord) -> None:
        if record.keys["childId"] == "c020" and not failed:
            failed.append(1)
            raise ValueError("throttled")
        projection.apply(record)

    summary = backfill(aws, table, handler_invoker(handle), sink=sink).run()
    assert sink.letters == [] and summary.parked == 0
    assert len(projection.rows) == 60


def test_rerun_after_interruption_resumes_from_kept_positions(
    aws: boto3.Session, table: str, tmp_path: Path
) -> None:
    state = tmp_path / "positions.json"
    seen: list[str] = []

    def handle(record: DynamoDBRecord) -> None:
        seen.append(record.keys["childId"])

    class Interrupted(Exception):
        pass

    def interrupt(segment: int, _items: int) -> None:
        raise Interrupted

    # moto returns at most 1 MB a page, so page with a tiny table by segments: 1 page each.
    with pytest.raises(Interrupted):
        backfill(
            aws,
            table,
            handler_invoker(handle),
            positions=SegmentPositions(state, 3),
            on_page=interrupt,
        ).run()
    first = set(seen)
    saved = json.loads(state.read_text())
    done = [segment for segment, p in saved["positions"].items() if p["done"]]
    seen.clear()
    summary = backfill(
        aws, table, handler_invoker(handle), positions=SegmentPositions(state, 3)
    ).run()
    assert first | set(seen) == {f"c{n:03}" for n in range(60)}
    assert done and summary.offered == 0


def test_positions_of_another_segment_count_are_refused(tmp_path: Path) -> None:
    state = tmp_path / "positions.json"
    SegmentPositions(state, 3).record(0, None, 3)
    with pytest.raises(ValueError, match="--segments"):
        SegmentPositions(state, 4)


def test_pacer_keeps_consumed_units_within_the_rate() -> None:
    now = [0.0]
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds

    pacer = Pacer(10.0, clock=lambda: now[0], sleep=sleep)
    for _ in range(5):
        pacer.spend(4.0)  # 20 units at 10/s: 2 s at least
    assert now[0] == pytest.approx(2.0)
    slept.clear()
    Pacer(None, sleep=sleep).spend(1e9)  # no rate given: never waits
    assert slept == []


def test_cli_backfills_the_worked_example_into_its_delivery_table(
    aws: boto3.Session,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from streams.cli import main

    template = str(Path(__file__).resolve().parents[1] / "template.yaml")
    monkeypatch.chdir(tmp_path)
    stack = f"bf-{uuid.uuid4().hex[:8]}"
    common = ["--template", template, "--stack-name", stack, "--function", "ProcessorFunction"]
    assert main(["backfill", *common, "--json"]) == 0  # deploys; the table is empty
    client = aws.client("dynamodb")
    tables = client.list_tables()["TableNames"]
    source = next(t for t in tables if t.startswith(f"{stack}-SourceTable"))
    delivery = next(t for t in tables if t.startswith(f"{stack}-DeliveryTable"))
    for number in range(30):
        client.put_item(
            TableName=source,
            Item={
                "childId": {"S": f"c{number:03}"},
                "status": {"S": "nice"},
                "address": {"M": {"street": {"S": "x"}}},
            },
        )
    capsys.readouterr()
    state = tmp_path / "positions.json"
    assert main(["backfill", *common, "--json", "--segments", "2", "--state", str(state)]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (summary["offered"], summary["applied"], summary["parked"]) == (30, 30, 0)
    rows = client.scan(TableName=delivery)["Items"]
    assert len(rows) == 30
    assert {row["sequenceNumber"]["S"] for row in rows} == {"0" * 40}
