"""`streams backfill`'s core: synthetic INSERT records, the ordering contract, resume, parking,
pacing. The scan runs against moto's server; the handler is in-process (the invoker seam)."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import boto3
import pytest

from streams.backoff import Backoff
from streams.deadletter import DeadLetter
from streams.errors import UserError
from streams.local.backfill import (
    BACKFILL_SEQUENCE_NUMBER,
    MAX_EVENT_BYTES,
    Backfill,
    BackfillSettings,
    FilePositions,
    Pacer,
    SegmentPositions,
    TablePositions,
    batches,
    synthetic_record,
)
from streams.mapping.invoke import InvokeResult, NotInvoked
from streams.mapping.state.layout import MappingId, ensure_table
from streams.mapping.state.snapshot import read_mappings
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
    dynamodb: Any = None,
) -> Backfill:
    return Backfill(
        dynamodb=dynamodb or aws.client("dynamodb"),
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


class SegmentGate:
    """A handler in-process runs in the segment's own thread (`backfill-N`): segment 0 goes
    first; the others wait, each in its first batch, until the backfill is asked to stop. So
    the stop comes after exactly segment 0's page, whatever the machine's speed."""

    def __init__(self) -> None:
        self.backfill: Backfill | None = None
        self.seen: list[str] = []
        self.lock = threading.Lock()
        self.timed_out = False

    def handle(self, record: DynamoDBRecord) -> None:
        if threading.current_thread().name != "backfill-0":
            for _ in range(2000):
                if self.backfill is not None and self.backfill.stop_requested:
                    break
                time.sleep(0.005)
            else:
                self.timed_out = True
                raise AssertionError("the backfill was never asked to stop")
        with self.lock:
            self.seen.append(record.keys["childId"])


def test_a_stopped_backfill_keeps_only_pages_it_offered_and_a_rerun_goes_on_from_them(
    aws: boto3.Session, table: str, tmp_path: Path
) -> None:
    state = tmp_path / "positions.json"
    gate = SegmentGate()

    def stop_after_segment_0(segment: int, _items: int) -> None:
        assert gate.backfill is not None
        gate.backfill.stop()

    # moto pages at 1 MB, so each of the 3 segments of this small table is one page.
    gate.backfill = backfill(
        aws,
        table,
        handler_invoker(gate.handle),
        positions=SegmentPositions(FilePositions(state), 3),
        on_page=stop_after_segment_0,
    )
    stopped = gate.backfill.run()
    assert stopped.stopped
    saved = json.loads(state.read_text())["positions"]
    assert saved == {"0": {"key": None, "done": True}}  # segments 1 and 2 were cut short
    first = set(gate.seen)
    rerun: list[str] = []
    result = backfill(
        aws,
        table,
        handler_invoker(lambda record: rerun.append(record.keys["childId"])),
        positions=SegmentPositions(FilePositions(state), 3),
    ).run()
    everything = {f"c{n:03}" for n in range(60)}
    assert not result.stopped
    assert set(rerun) == everything - _items_of(aws, table, {0})
    assert first | set(rerun) == everything
    assert result.offered == len(rerun)


def _items_of(aws: boto3.Session, table: str, segments: set[int]) -> set[str]:
    client = aws.client("dynamodb")
    return {
        item["childId"]["S"]
        for segment in segments
        for item in client.scan(TableName=table, Segment=segment, TotalSegments=3)["Items"]
    }


def test_ctrl_c_stops_every_segment_and_a_rerun_offers_only_the_pages_not_kept(
    aws: boto3.Session, table: str, tmp_path: Path
) -> None:
    import _thread

    state = tmp_path / "positions.json"
    gate = SegmentGate()

    def ctrl_c(segment: int, _items: int) -> None:
        _thread.interrupt_main()  # what Ctrl-C does: KeyboardInterrupt in the main thread

    gate.backfill = backfill(
        aws,
        table,
        handler_invoker(gate.handle),
        positions=SegmentPositions(FilePositions(state), 3),
        on_page=ctrl_c,
    )
    with pytest.raises(KeyboardInterrupt):
        gate.backfill.run()
    # run() raised only once every segment had ended.
    assert not [t for t in threading.enumerate() if t.name.startswith("backfill-")]
    rerun: list[str] = []
    summary = backfill(
        aws,
        table,
        handler_invoker(lambda record: rerun.append(record.keys["childId"])),
        positions=SegmentPositions(FilePositions(state), 3),
    ).run()
    assert set(rerun) == {f"c{n:03}" for n in range(60)} - _items_of(aws, table, {0})
    assert summary.offered == len(rerun)


def test_positions_kept_in_the_state_table_resume_a_backfill(
    aws: boto3.Session, table: str, unique_name: str
) -> None:
    client = aws.client("dynamodb")
    state_table = f"{unique_name}-state"
    ensure_table(client, state_table)
    mapping = MappingId(
        "Projector", f"arn:aws:dynamodb:us-east-1:123456789012:table/{table}/stream/x"
    )

    def positions(*, fresh: bool = False) -> SegmentPositions:
        return SegmentPositions(TablePositions(client, state_table, mapping), 3, fresh=fresh)

    seen: list[str] = []
    first = backfill(
        aws,
        table,
        handler_invoker(lambda record: seen.append(record.keys["childId"])),
        positions=positions(),
        on_page=lambda segment, items: first.stop(),
    )
    first.run()
    kept = [
        item
        for item in client.scan(TableName=state_table)["Items"]
        if item["sk"]["S"].startswith("backfill#")
    ]
    assert kept and all(item["pk"]["S"] == mapping.key for item in kept)
    done = {int(item["sk"]["S"].removeprefix("backfill#")) for item in kept if item["done"]["BOOL"]}
    seen.clear()
    backfill(
        aws,
        table,
        handler_invoker(lambda record: seen.append(record.keys["childId"])),
        positions=positions(),
    ).run()
    assert set(seen) == {f"c{n:03}" for n in range(60)} - _items_of(aws, table, done)
    assert positions().all_done
    # The monitor reads the same partition: a backfill's items do not trouble it.
    (snapshot,) = read_mappings(client, state_table)
    assert snapshot.mapping == mapping
    assert not positions(fresh=True).all_done  # --fresh forgets them


def test_binary_keys_are_kept_in_the_positions_file(tmp_path: Path) -> None:
    state = tmp_path / "positions.json"
    key = {"id": {"B": b"\x00\xff"}, "at": {"N": "12"}}
    SegmentPositions(FilePositions(state), 2).record(1, key)
    resumed = SegmentPositions(FilePositions(state), 2)
    assert resumed.start(1) == (False, key)
    assert resumed.start(0) == (False, None)


def test_positions_of_another_segment_count_are_refused(tmp_path: Path) -> None:
    state = tmp_path / "positions.json"
    SegmentPositions(FilePositions(state), 3).record(0, None)
    with pytest.raises(UserError, match="--segments 3"):
        SegmentPositions(FilePositions(state), 4)


def test_a_throttled_invocation_is_offered_again_without_using_up_an_attempt(
    aws: boto3.Session, table: str
) -> None:
    sink = Sink()
    throttles = iter(range(10))  # more throttles than attempts

    def invoke(event: Mapping[str, Any], deadline_seconds: float) -> InvokeResult:
        if next(throttles, None) is not None:
            raise NotInvoked("TooManyRequestsException")
        return handler_invoker(lambda record: None)(event, deadline_seconds)

    summary = backfill(aws, table, invoke, sink=sink, segments=1).run()
    assert sink.letters == []
    assert (summary.applied, summary.parked, summary.throttled) == (60, 0, 10)


def test_batches_stay_within_lambdas_payload_limit() -> None:
    big = {"dynamodb": {"NewImage": {"blob": {"S": "x" * 390_000}}}}
    records = [dict(big) for _ in range(40)]
    split = list(batches(records, max_records=100))
    assert sum(len(batch) for batch in split) == 40
    assert all(
        len(json.dumps({"Records": batch}, separators=(",", ":")).encode()) <= 6 * 1024 * 1024
        for batch in split
    )
    assert len(split) == 3  # 16 records of ~390 KB fit in 6 MB, not 17
    assert MAX_EVENT_BYTES < 6 * 1024 * 1024
    assert [len(b) for b in batches(records[:5], max_records=2)] == [2, 2, 1]


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


@pytest.fixture
def example(aws: boto3.Session, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The worked example deployed by a first `streams backfill` (its table empty): the
    arguments that name its stack and function."""
    from streams.cli import main

    template = str(Path(__file__).resolve().parents[1] / "template.yaml")
    monkeypatch.chdir(tmp_path)
    stack = f"bf-{uuid.uuid4().hex[:8]}"
    common = ["--template", template, "--stack-name", stack, "--function", "ProcessorFunction"]
    assert main(["backfill", *common, "--json"]) == 0
    return common


def test_cli_backfills_the_worked_example_into_its_delivery_table(
    aws: boto3.Session,
    tmp_path: Path,
    example: list[str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    from streams.cli import main

    common, stack = example, example[3]
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


def test_positions_default_to_the_state_table_and_a_finished_backfill_says_so(
    aws: boto3.Session, example: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    from streams.cli import main

    common, stack = example, example[3]
    client = aws.client("dynamodb")
    source = next(t for t in client.list_tables()["TableNames"] if t.startswith(f"{stack}-Source"))
    for number in range(5):
        client.put_item(
            TableName=source,
            Item={"childId": {"S": f"c{number}"}, "status": {"S": "nice"}, "address": {"M": {}}},
        )
    capsys.readouterr()
    assert main(["backfill", *common, "--json", "--fresh"]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["offered"] == 5
    assert main(["backfill", *common]) == 0
    assert "finished already" in capsys.readouterr().out
    assert main(["backfill", *common, "--json", "--fresh"]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["offered"] == 5


def test_a_throttled_or_failed_scan_page_is_read_again_never_skipped(
    aws: boto3.Session, table: str
) -> None:
    from botocore.config import Config

    from tests.aws_hooks import Hooks

    # botocore gives up at once, so every injected failure reaches the backfill.
    client = aws.client("dynamodb", config=Config(retries={"total_max_attempts": 1}))
    codes = ["ProvisionedThroughputExceededException", "ThrottlingException"]
    Hooks(client).fail_next("Scan", *codes)
    Hooks(client).fail_next("Scan", "InternalServerError", status=500)
    seen: list[str] = []
    summary = backfill(
        aws,
        table,
        handler_invoker(lambda record: seen.append(record.keys["childId"])),
        dynamodb=client,
        segments=1,
    ).run()
    assert sorted(seen) == [f"c{n:03}" for n in range(60)]
    assert summary.throttled == 3


def test_an_error_in_one_segment_stops_the_others_and_is_raised(
    aws: boto3.Session, table: str, tmp_path: Path
) -> None:
    state = tmp_path / "positions.json"
    gate = SegmentGate()

    def invoke(event: Mapping[str, Any], deadline_seconds: float) -> InvokeResult:
        if threading.current_thread().name == "backfill-0":
            raise RuntimeError("a bug in the invoker")  # ours, not the handler's: no retry
        return handler_invoker(gate.handle)(event, deadline_seconds)

    gate.backfill = backfill(
        aws, table, invoke, positions=SegmentPositions(FilePositions(state), 3)
    )
    with pytest.raises(RuntimeError, match="a bug in the invoker"):
        gate.backfill.run()
    # The others stopped after the batch in hand: no page of theirs kept as done.
    assert not gate.timed_out  # the other segments were told to stop
    assert not state.exists()  # and kept no page: each was cut short
