"""The monitor's numbers: what the local mapping records and what CloudWatch publishes, turned
into per-shard (or per-function) rows, totals, queue depths, history and a chart."""

from __future__ import annotations

import functools
import io
import json
import math
import sys
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import boto3
import pytest

from streams.errors import UserError
from streams.mapping.state.layout import MappingId
from streams.mapping.state.table import DynamoDBCheckpointStore
from streams.monitor.chart import PLOT_EXTRA_HINT, write_chart
from streams.monitor.cloudwatch import CloudWatchMonitor
from streams.monitor.history import MonitorHistory, MonitorSampler, sparkline
from streams.monitor.local import LocalMonitor
from streams.monitor.model import (
    DEAD_LETTER,
    ON_FAILURE,
    MonitorSnapshot,
    QueueRef,
    Sample,
    breaches,
    queues_from_stack,
)
from tests.factories import NOW, STREAM_ARN, FakeClock

if TYPE_CHECKING:
    from mypy_boto3_cloudwatch.literals import StandardUnitType

MAPPING = MappingId("ProcessorFunction", STREAM_ARN)
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def make_store(
    aws: boto3.Session, unique_name: str, clock: FakeClock
) -> Callable[..., DynamoDBCheckpointStore]:
    """Stores of the local mapping's state, on a table of the test's own."""

    def make(mapping: MappingId = MAPPING) -> DynamoDBCheckpointStore:
        return DynamoDBCheckpointStore(
            mapping, client=aws.client("dynamodb"), table_name=unique_name, clock=clock
        )

    return make


@pytest.fixture
def local_monitor(aws: boto3.Session, unique_name: str, clock: FakeClock) -> LocalMonitor:
    return LocalMonitor(
        dynamodb=aws.client("dynamodb"), sqs=aws.client("sqs"), table_name=unique_name, clock=clock
    )


def done(processed: float, parked: float = 0, **by_reason: float) -> dict[str, float]:
    """The batch core's counters as the mapping adds them up (docs/mapping-state.md)."""
    counts = {"function:RecordsProcessed": processed, "function:RecordsParked": parked}
    for reason, value in by_reason.items():
        counts[f"function:RecordsParked:reason={reason.replace('_', '-')}"] = value
    return counts


# --- the local mapping -----------------------------------------------------------------------


def test_records_per_second_is_the_growth_of_done_records_between_two_reads(
    make_store: Callable[..., DynamoDBCheckpointStore],
    local_monitor: LocalMonitor,
    clock: FakeClock,
) -> None:
    store = make_store()
    store.record_metrics("shardId-1", done(100, 2, poison=2))
    first = local_monitor.snapshot()

    store.record_metrics("shardId-1", done(50, 10, poison=4, too_old=6))
    clock.now += 2.0
    second = local_monitor.snapshot()

    assert first.rows[0].records_per_second is None  # one read has no rate
    assert second.rows[0].records_per_second == pytest.approx(30.0)  # (162 - 102) records / 2 s
    assert second.totals.records_per_second == pytest.approx(30.0)


def test_records_per_second_is_measured_over_a_few_seconds_of_reads(
    make_store: Callable[..., DynamoDBCheckpointStore],
    local_monitor: LocalMonitor,
    clock: FakeClock,
) -> None:
    # The mapping writes its counters a batch at a time: a read every second sees 100, then 0.
    store = make_store()
    rates = []
    for second in range(8):
        if second % 2 == 0:
            store.record_metrics("shardId-1", done(100, 0))
        rates.append(local_monitor.snapshot().rows[0].records_per_second)
        clock.now += 1.0
    assert rates[0] is None
    # Over the last 5 s of reads (local_monitor's rate_window), not between the last two.
    assert rates[6] == pytest.approx(300 / 5)
    assert rates[7] == pytest.approx(200 / 5)


def test_parked_records_are_counted_by_reason(
    make_store: Callable[..., DynamoDBCheckpointStore], local_monitor: LocalMonitor
) -> None:
    make_store().record_metrics("shardId-1", done(7, 5, poison=3, too_old=2))

    row = local_monitor.snapshot().rows[0]

    assert (row.processed, row.parked) == (7, 5)
    assert row.parked_by_reason == {"poison": 3, "too-old": 2}


def test_a_shard_row_shows_what_the_mapping_recorded(
    make_store: Callable[..., DynamoDBCheckpointStore],
    local_monitor: LocalMonitor,
    clock: FakeClock,
) -> None:
    store = make_store()
    store.acquire_lease()
    store.put("shardId-1", "000123", False)
    store.record_metrics(
        "shardId-1",
        {"PolledEventCount": 12, "DroppedEventCount": 1, **done(11)},
        iterator_age_ms=4200,
        state="open",
        last_outcome="ok",
    )
    store.put("shardId-0", "000099", True)
    store.record_metrics("shardId-0", iterator_age_ms=90_000, state="closed")

    finished, open_ = local_monitor.snapshot().rows

    assert (open_.shard_id, open_.state, open_.checkpoint) == ("shardId-1", "open", "000123")
    assert (open_.iterator_age_ms, open_.last_outcome) == (4200, "ok")
    assert open_.event_counts == {"PolledEventCount": 12, "DroppedEventCount": 1}
    assert open_.updated_at == clock.now
    assert open_.mapping_state == f"running on {store.host} (pid {store.pid})"
    assert finished.state == "finished"  # its checkpoint says so, whatever `state` last said


def test_a_released_lease_shows_the_mapping_stopped(
    make_store: Callable[..., DynamoDBCheckpointStore], local_monitor: LocalMonitor
) -> None:
    store = make_store()
    store.acquire_lease()
    store.record_metrics("shardId-1", done(1))
    store.release_lease()

    assert local_monitor.snapshot().rows[0].mapping_state == "stopped"


def test_shards_of_two_mappings_are_labelled_with_their_function(
    make_store: Callable[..., DynamoDBCheckpointStore], local_monitor: LocalMonitor
) -> None:
    make_store().record_metrics("shardId-1", done(1))
    make_store(MappingId("AuditFunction", STREAM_ARN)).record_metrics("shardId-1", done(2))

    labels = [row.label for row in local_monitor.snapshot().rows]

    assert labels == ["AuditFunction shardId-1", "ProcessorFunction shardId-1"]


def test_totals_add_the_shards_up_and_take_the_oldest_unfinished_age(
    make_store: Callable[..., DynamoDBCheckpointStore], local_monitor: LocalMonitor
) -> None:
    store = make_store()
    store.acquire_lease()
    store.record_metrics("shardId-1", done(10, 1, poison=1), iterator_age_ms=500)
    store.record_metrics("shardId-2", done(20, 2, too_old=2), iterator_age_ms=1500)
    store.put("shardId-0", "5", True)
    store.record_metrics("shardId-0", done(5), iterator_age_ms=99_000)

    totals = local_monitor.snapshot().totals

    assert (totals.processed, totals.parked) == (35, 3)
    assert totals.parked_by_reason == {"poison": 1, "too-old": 2}
    assert totals.max_iterator_age_ms == 1500


def test_no_state_table_means_no_rows(
    aws: boto3.Session, unique_name: str, local_monitor: LocalMonitor
) -> None:
    assert local_monitor.snapshot().rows == ()


def test_queue_depths_come_from_the_stack_outputs(
    aws: boto3.Session,
    unique_name: str,
    make_store: Callable[..., DynamoDBCheckpointStore],
    clock: FakeClock,
) -> None:
    template = {
        "Resources": {
            "DeadLetterQueue": {"Type": "AWS::SQS::Queue"},
            "OnFailureQueue": {"Type": "AWS::SQS::Queue"},
        },
        "Outputs": {
            "DeadLetterQueueUrl": {"Value": {"Ref": "DeadLetterQueue"}},
            "OnFailureQueueUrl": {"Value": {"Ref": "OnFailureQueue"}},
        },
    }
    cloudformation = aws.client("cloudformation")
    cloudformation.create_stack(StackName=unique_name, TemplateBody=json.dumps(template))
    queues = queues_from_stack(cloudformation, unique_name)
    assert queues is not None
    sqs = aws.client("sqs")
    urls = {queue.role: queue.url for queue in queues}
    for body in ("a", "b", "c"):
        sqs.send_message(QueueUrl=urls[DEAD_LETTER], MessageBody=body)
    sqs.send_message(QueueUrl=urls[ON_FAILURE], MessageBody="d")
    sqs.receive_message(QueueUrl=urls[DEAD_LETTER], MaxNumberOfMessages=1)  # one in flight
    make_store().record_metrics("shardId-1", done(1))
    monitor = LocalMonitor(
        dynamodb=aws.client("dynamodb"), sqs=sqs, queues=queues, table_name=unique_name
    )

    depths = {depth.queue.role: depth for depth in monitor.snapshot().queues}

    assert (depths[DEAD_LETTER].visible, depths[DEAD_LETTER].in_flight) == (2, 1)
    assert (depths[ON_FAILURE].visible, depths[ON_FAILURE].in_flight) == (1, 0)
    assert depths[DEAD_LETTER].oldest_age_seconds is None  # only CloudWatch publishes it


def test_a_missing_stack_names_no_queues(aws: boto3.Session, unique_name: str) -> None:
    assert queues_from_stack(aws.client("cloudformation"), unique_name) is None


def test_a_queue_that_does_not_exist_is_a_user_error(aws: boto3.Session, unique_name: str) -> None:
    missing = QueueRef(DEAD_LETTER, f"{aws.client('sqs').meta.endpoint_url}/123456789012/nope")
    monitor = LocalMonitor(
        dynamodb=aws.client("dynamodb"),
        sqs=aws.client("sqs"),
        queues=[missing],
        table_name=unique_name,
    )

    with pytest.raises(UserError, match=r"dead-letter queue .* does not exist"):
        monitor.snapshot()


# --- --fail-above ----------------------------------------------------------------------------


def test_breaches_name_the_shards_above_the_limit_but_never_a_finished_one(
    make_store: Callable[..., DynamoDBCheckpointStore], local_monitor: LocalMonitor
) -> None:
    store = make_store()
    store.acquire_lease()
    store.record_metrics("shardId-1", iterator_age_ms=61_000)
    store.record_metrics("shardId-2", iterator_age_ms=59_000)
    store.put("shardId-0", "5", True)
    store.record_metrics("shardId-0", iterator_age_ms=600_000)

    found = breaches(local_monitor.snapshot(), 60)

    assert [breach.describe() for breach in found] == [
        "shard shardId-1 of ProcessorFunction at 61.0 s"
    ]


# --- a deployed function, from CloudWatch ----------------------------------------------------


@dataclass(frozen=True)
class Deployed:
    function: str
    service: str
    mapping_uuid: str
    stream_arn: str
    dead_letter_url: str
    on_failure_url: str


def deploy(aws: boto3.Session, unique_name: str) -> Deployed:
    """A function with a Kinesis event source whose on-failure destination is a queue."""
    iam = aws.client("iam")
    role = iam.create_role(RoleName=unique_name, AssumeRolePolicyDocument="{}")["Role"]["Arn"]
    sqs = aws.client("sqs")
    dead_letter = sqs.create_queue(QueueName=f"{unique_name}-dlq")["QueueUrl"]
    on_failure = sqs.create_queue(QueueName=f"{unique_name}-onfailure")["QueueUrl"]
    on_failure_arn = sqs.get_queue_attributes(QueueUrl=on_failure, AttributeNames=["QueueArn"])[
        "Attributes"
    ]["QueueArn"]
    code = io.BytesIO()
    with zipfile.ZipFile(code, "w") as archive:
        archive.writestr("app.py", "def lambda_handler(event, context):\n    return {}\n")
    service = f"{unique_name}-service"
    aws.client("lambda").create_function(
        FunctionName=unique_name,
        Runtime="python3.12",
        Role=role,
        Handler="app.lambda_handler",
        Code={"ZipFile": code.getvalue()},
        Environment={
            "Variables": {
                "POWERTOOLS_SERVICE_NAME": service,
                "POWERTOOLS_METRICS_NAMESPACE": "StreamProcessor",
                "DEAD_LETTER_QUEUE_URL": dead_letter,
            }
        },
    )
    kinesis = aws.client("kinesis")
    kinesis.create_stream(StreamName=unique_name, ShardCount=2)
    stream_arn = kinesis.describe_stream_summary(StreamName=unique_name)[
        "StreamDescriptionSummary"
    ]["StreamARN"]
    mapping = aws.client("lambda").create_event_source_mapping(
        FunctionName=unique_name,
        EventSourceArn=stream_arn,
        StartingPosition="TRIM_HORIZON",
        DestinationConfig={"OnFailure": {"Destination": on_failure_arn}},
        MetricsConfig={"Metrics": ["EventCount"]},
    )
    return Deployed(unique_name, service, mapping["UUID"], stream_arn, dead_letter, on_failure)


@pytest.fixture
def deployed(aws: boto3.Session, unique_name: str) -> Deployed:
    return deploy(aws, unique_name)


MINUTE = math.floor(NOW / 60) * 60  # the start of the fake clock's current minute


def at(minutes_ago: int, seconds: int = 5, *, minute: float = MINUTE) -> datetime:
    return datetime.fromtimestamp(minute - 60 * minutes_ago + seconds, tz=UTC)


def publish(
    aws: boto3.Session,
    namespace: str,
    name: str,
    dimensions: dict[str, str],
    *,
    unit: StandardUnitType,
    points: dict[datetime, float],
) -> None:
    aws.client("cloudwatch").put_metric_data(
        Namespace=namespace,
        MetricData=[
            {
                "MetricName": name,
                "Dimensions": [{"Name": k, "Value": v} for k, v in dimensions.items()],
                "Timestamp": when,
                "Value": value,
                "Unit": unit,
            }
            for when, value in points.items()
        ],
    )


def publish_three_minutes(aws: boto3.Session, deployed: Deployed, minute: float = MINUTE) -> None:
    """Three minutes of metrics up to `minute`, in the shape AWS publishes them, and messages
    in the queues."""
    when = functools.partial(at, minute=minute)
    function = {"FunctionName": deployed.function}
    # Lambda publishes IteratorAge per function, and again per version (Resource).
    ages = {when(2): 4000.0, when(1): 9000.0, when(0, 5): 2500.0, when(0, 30): 1500.0}
    lambda_ = "AWS/Lambda"
    publish(aws, lambda_, "IteratorAge", function, unit="Milliseconds", points=ages)
    version = {**function, "Resource": f"{deployed.function}:$LATEST"}
    publish(aws, lambda_, "IteratorAge", version, unit="Milliseconds", points=ages)
    # Event counts per event source mapping (MetricsConfig: EventCount).
    mapping = {"EventSourceMappingUUID": deployed.mapping_uuid}
    polled = {when(1): 205.0, when(0): 301.0}
    publish(aws, lambda_, "PolledEventCount", mapping, unit="Count", points=polled)
    publish(aws, lambda_, "DroppedEventCount", mapping, unit="Count", points={when(1): 2})
    # The batch core's EMF metrics: by service, and parked also by service and reason.
    emf = "StreamProcessor"
    service = {"service": deployed.service}
    processed = {when(2): 100.0, when(1): 200.0, when(0): 300.0}
    publish(aws, emf, "RecordsProcessed", service, unit="Count", points=processed)
    parked = {when(1): 3.0, when(0): 1.0}
    publish(aws, emf, "RecordsParked", service, unit="Count", points=parked)
    poison = {**service, "reason": "poison"}
    publish(aws, emf, "RecordsParked", poison, unit="Count", points={when(1): 3})
    too_old = {**service, "reason": "too-old"}
    publish(aws, emf, "RecordsParked", too_old, unit="Count", points={when(0): 1})
    # SQS publishes the age of each queue's oldest message.
    queue = {"QueueName": deployed.dead_letter_url.rsplit("/", 1)[-1]}
    oldest = {when(1): 30.0, when(0): 42.0}
    publish(aws, "AWS/SQS", "ApproximateAgeOfOldestMessage", queue, unit="Seconds", points=oldest)
    sqs = aws.client("sqs")
    sqs.send_message(QueueUrl=deployed.dead_letter_url, MessageBody="parked")
    sqs.send_message(QueueUrl=deployed.dead_letter_url, MessageBody="parked too")
    sqs.send_message(QueueUrl=deployed.on_failure_url, MessageBody="metadata")


@pytest.fixture
def published(aws: boto3.Session, deployed: Deployed) -> Deployed:
    publish_three_minutes(aws, deployed)
    return deployed


def cloudwatch_monitor(
    aws: boto3.Session, functions: list[str], **options: Any
) -> CloudWatchMonitor:
    return CloudWatchMonitor(
        functions,
        lambda_client=aws.client("lambda"),
        cloudwatch=aws.client("cloudwatch"),
        sqs=aws.client("sqs"),
        clock=FakeClock(),
        window_seconds=600,
        **options,
    )


def test_a_function_row_reads_what_lambda_and_the_function_publish(
    aws: boto3.Session, published: Deployed
) -> None:
    snapshot = cloudwatch_monitor(aws, [published.function]).snapshot()

    (row,) = snapshot.rows
    assert (row.function, row.event_source_arn) == (published.function, published.stream_arn)
    assert (row.mapping_uuid, row.mapping_state) == (published.mapping_uuid, "Enabled")
    assert row.shard_id is None  # AWS has no per-shard iterator age
    assert row.iterator_age_ms == 2500  # the latest minute's Maximum
    assert row.updated_at == MINUTE  # that minute's start
    assert row.records_per_second == pytest.approx((300 + 1) / 60)  # latest minute, done
    assert (row.processed, row.parked) == (600, 4)  # sums over the window
    assert row.parked_by_reason == {"poison": 3, "too-old": 1}
    assert row.event_counts == {"PolledEventCount": 506, "DroppedEventCount": 2}
    assert snapshot.window_seconds == 600


def test_queues_of_a_function_come_from_its_environment_and_its_mappings(
    aws: boto3.Session, published: Deployed
) -> None:
    depths = cloudwatch_monitor(aws, [published.function]).snapshot().queues

    assert [(d.queue.role, d.queue.url, d.visible) for d in depths] == [
        (DEAD_LETTER, published.dead_letter_url, 2),
        (ON_FAILURE, published.on_failure_url, 1),
    ]
    assert depths[0].oldest_age_seconds == 42  # CloudWatch's latest minute
    assert depths[1].oldest_age_seconds is None  # nothing published for it yet


def test_cloudwatch_history_is_the_windows_minutes_and_a_reread_replaces_them(
    aws: boto3.Session, published: Deployed
) -> None:
    monitor = cloudwatch_monitor(aws, [published.function])
    history = MonitorHistory()

    history.add(monitor.snapshot())
    history.add(monitor.snapshot())

    ages = [sample.iterator_age_ms.get(published.function) for sample in history.samples]
    assert ages == [4000, 9000, 2500]
    assert [sample.records_per_second for sample in history.samples] == pytest.approx(
        [100 / 60, 203 / 60, 301 / 60]
    )


def test_a_function_without_event_source_mappings_has_one_row(
    aws: boto3.Session, deployed: Deployed
) -> None:
    aws.client("lambda").delete_event_source_mapping(UUID=deployed.mapping_uuid)

    (row,) = cloudwatch_monitor(aws, [deployed.function]).snapshot().rows

    assert (row.function, row.event_source_arn, row.iterator_age_ms) == (
        deployed.function,
        None,
        None,
    )


def test_queue_urls_given_replace_the_ones_found(aws: boto3.Session, published: Deployed) -> None:
    chosen = QueueRef(ON_FAILURE, published.on_failure_url)

    depths = cloudwatch_monitor(aws, [published.function], queues=[chosen]).snapshot().queues

    assert [depth.queue for depth in depths] == [chosen]


def test_a_function_that_does_not_exist_is_a_user_error(
    aws: boto3.Session, unique_name: str
) -> None:
    with pytest.raises(UserError, match=f"no function {unique_name} in us-east-1"):
        cloudwatch_monitor(aws, [unique_name])


def test_fail_above_names_the_function_on_aws(aws: boto3.Session, published: Deployed) -> None:
    snapshot = cloudwatch_monitor(aws, [published.function]).snapshot()

    assert [b.describe() for b in breaches(snapshot, 2)] == [
        f"function {published.function} at 2.5 s"
    ]
    assert breaches(snapshot, 3) == []


# --- history, sampler, sparkline, chart ------------------------------------------------------


def snapshot_at(at_: float, age_ms: float | None, rate: float | None) -> MonitorSnapshot:
    from streams.monitor.model import Row, Totals

    row = Row(
        label="shardId-1",
        function="ProcessorFunction",
        event_source_arn=STREAM_ARN,
        shard_id="shardId-1",
        mapping_uuid=None,
        mapping_state="running",
        state="open",
        checkpoint=None,
        iterator_age_ms=age_ms,
        records_per_second=rate,
        processed=0,
        parked=0,
        parked_by_reason={},
        event_counts={},
        last_outcome=None,
        updated_at=None,
    )
    totals = Totals(0, 0, {}, rate, age_ms, {})
    return MonitorSnapshot(at_, "local", (row,), (), totals)


def test_the_history_keeps_the_newest_samples_up_to_its_limit() -> None:
    history = MonitorHistory(limit=3)

    for second in range(5):
        history.add(snapshot_at(NOW + second, 1000.0 * second, float(second)))

    assert [sample.at for sample in history.samples] == [NOW + 2, NOW + 3, NOW + 4]
    assert history.iterator_ages("shardId-1", 2) == [3000, 4000]


class CountingMonitor:
    two_reads_for_rates = True

    def __init__(self) -> None:
        self.reads = 0

    def snapshot(self) -> MonitorSnapshot:
        self.reads += 1
        return snapshot_at(NOW + self.reads, 100.0 * self.reads, None)


def test_the_sampler_samples_on_entering_and_on_leaving() -> None:
    monitor = CountingMonitor()

    with MonitorSampler(monitor, interval=3600) as sampler:
        pass

    assert [sample.iterator_age_ms for sample in sampler.history.samples] == [
        {"shardId-1": 100.0},
        {"shardId-1": 200.0},
    ]


def test_a_failed_read_costs_the_sampler_one_sample_not_the_run(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class Failing(CountingMonitor):
        def snapshot(self) -> MonitorSnapshot:
            raise UserError("endpoint gone")

    with MonitorSampler(Failing(), interval=3600) as sampler:
        pass

    assert sampler.history.samples == ()
    assert "no sample this time (endpoint gone)" in caplog.text


def test_a_sparkline_scales_from_zero_to_the_largest_and_leaves_gaps_blank() -> None:
    assert sparkline([0, 50, 100, None, 25]) == "▁▅█ ▃"
    assert sparkline([0, 0]) == "▁▁"
    assert sparkline([]) == ""


def burst(seconds: int = 60) -> list[Sample]:
    """Iterator age rising and falling with a burst, on two shards."""
    samples = []
    for second in range(0, seconds, 2):
        peak = max(0.0, 20_000 - abs(second - seconds / 2) * 700)
        samples.append(
            Sample(
                at=NOW + second,
                iterator_age_ms={"shardId-1": peak, "shardId-2": peak * 0.6},
                records_per_second=800.0 if 10 < second < 50 else 50.0,
            )
        )
    return samples


def test_the_chart_is_a_png_of_age_and_throughput(tmp_path: Path) -> None:
    path = write_chart(burst(), tmp_path / "charts" / "monitor.png", title="demo")

    data = path.read_bytes()
    assert data.startswith(PNG_MAGIC)
    assert len(data) > 20_000  # two panels with lines, labels and legends, not a blank image


def test_a_chart_without_samples_still_says_so(tmp_path: Path) -> None:
    path = write_chart([], tmp_path / "empty.png")

    assert path.read_bytes().startswith(PNG_MAGIC)


@pytest.fixture
def without_matplotlib(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    # A None entry in sys.modules makes the import fail, as it does without the extra.
    for name in ("matplotlib", "matplotlib.figure", "matplotlib.ticker"):
        monkeypatch.setitem(sys.modules, name, None)
    yield


@pytest.mark.usefixtures("without_matplotlib")
def test_without_matplotlib_the_chart_asks_for_the_plot_extra(tmp_path: Path) -> None:
    with pytest.raises(UserError) as raised:
        write_chart(burst(), tmp_path / "monitor.png")

    assert str(raised.value) == PLOT_EXTRA_HINT
