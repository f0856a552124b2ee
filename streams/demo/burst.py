"""`streams demo` (the default scenario, `burst`): the whole product on this machine, verified
from its outputs.

It starts the embedded endpoint, creates template.yaml's resources, runs the processor function
with Lambda's rules (the local mapping), writes a burst of naughty-and-nice updates through
`TableWriter` (the last 2% trickle in slowly while the mapping works off the burst, so the
iterator age is seen to fall once the backlog is gone), shows live progress, and then checks the
result from the outputs alone: a scan of the delivery table and a read of the dead-letter queue,
never the run's own counters.

The writer sends every update (`TableWriter`'s default, not `coalesce=True`): each malformed
update must reach the stream to be parked, and `verify` accounts for every update written.
With `faults`, the writer's, the mapping's and the function's AWS calls fail at that rate and
the function's worker is killed now and then (`streams.demo.faults`).

Verification, for the updates written (in order):

- a child is *delivered* when the delivery table holds its newest valid update; then every
  valid update of that child is accounted for (an update superseded by a newer one of the same
  child counts as delivered);
- a malformed update is *parked* when the dead-letter queue holds it (with reason `poison`); a
  malformed update followed by a newer update of the same child counts as superseded;
- `lost` is every update accounted for by neither. The exit code is 0 only when it is 0.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

from boto3.dynamodb.types import TypeDeserializer
from botocore.exceptions import BotoCoreError, ClientError

from streams.demo.common import (
    Delay,
    FaultCounts,
    Faults,
    MappingRun,
    fault_directory,
    peak_iterator_age_ms,
)
from streams.demo.generate import STATUSES, generate_updates
from streams.endpoints import service_endpoint
from streams.local.endpoint import EndpointProcess, endpoint_recorded, local_session
from streams.local.stack import DeployedStack, deploy_template
from streams.monitor.history import MonitorSampler
from streams.monitor.local import LocalMonitor
from streams.monitor.model import MonitorSnapshot, queues_from_outputs
from streams.ops.dlq import DeadLetterQueueReader, ParkedMessage
from streams.writer import TableWriter, WriteReport

FUNCTION = "ProcessorFunction"
#: Stop waiting for the mapping when its counters have not moved for this long after the burst.
STALL_SECONDS = 30.0
#: The stream counts as drained when the mapping has read nothing new for this long.
DRAINED_AFTER_IDLE_SECONDS = 2.0
#: After the burst, updates keep coming, one every TRICKLE_SECONDS, until the mapping has been
#: caught up for CAUGHT_UP_SECONDS (at most the last 2% of the updates): the chart then shows the
#: iterator age falling.
CAUGHT_UP_SECONDS = 4.0
TRICKLE_SECONDS = 2.5

_deserialize = TypeDeserializer().deserialize


@dataclass(frozen=True)
class Progress:
    """What the live view shows."""

    total: int
    written: int
    throttled: int
    processed: float
    parked: float
    iterator_age_ms: float | None
    elapsed: float


@dataclass(frozen=True)
class Verification:
    """The demo's verdict, computed from the delivery table and the dead-letter queue only."""

    updates: int
    children: int
    valid: int
    malformed: int
    children_delivered: int
    delivered: int  # valid updates accounted for by their child's newest one in the table
    parked: int  # malformed updates found in the dead-letter queue
    superseded: int  # malformed updates not parked but followed by a newer update of the child
    failed_writes: int  # refused by DynamoDB for good (the writer's report lists them)
    lost: int
    lost_children: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return self.lost == 0


def is_valid(update: Mapping[str, Any]) -> bool:
    """What the processor accepts (processor/naughty_nice.py): a known status and an address."""
    return update.get("status") in STATUSES and isinstance(update.get("address"), Mapping)


def verify(
    updates: Sequence[Mapping[str, Any]],
    delivered: Mapping[str, Mapping[str, Any]],
    parked: Sequence[Mapping[str, Any]],
    failed: set[int] = frozenset(),  # type: ignore[assignment]
) -> Verification:
    """`updates` in the order written; `delivered` by childId (tombstones excluded);
    `parked` the dead-letter messages' records' new images (decoded); `failed` the positions
    of updates the writer reports as refused for good (never in the table)."""
    parked_keys = {
        (image.get("childId"), _plain(image.get("version")))
        for image in parked
        if image is not None
    }
    newest_valid: dict[str, Mapping[str, Any]] = {}
    newest_position: dict[str, int] = {}
    for position, update in enumerate(updates):
        if position in failed:
            continue
        child = str(update["childId"])
        newest_position[child] = position
        if is_valid(update):
            newest_valid[child] = update
    children_ok = {
        child
        for child, update in newest_valid.items()
        if projection(delivered.get(child)) == projection(update)
    }
    valid = malformed = accounted = parked_count = superseded = 0
    lost_children: set[str] = set()
    for position, update in enumerate(updates):
        if position in failed:
            continue
        child = str(update["childId"])
        if is_valid(update):
            valid += 1
            if child in children_ok:
                accounted += 1
            else:
                lost_children.add(child)
            continue
        malformed += 1
        if (child, _plain(update.get("version"))) in parked_keys:
            parked_count += 1
        elif newest_position[child] > position:
            superseded += 1
        else:
            lost_children.add(child)
    lost = (valid - accounted) + (malformed - parked_count - superseded)
    return Verification(
        updates=len(updates),
        children=len({str(u["childId"]) for u in updates}),
        valid=valid,
        malformed=malformed,
        children_delivered=len(children_ok),
        delivered=accounted,
        parked=parked_count,
        superseded=superseded,
        failed_writes=len(failed),
        lost=lost,
        lost_children=tuple(sorted(lost_children)),
    )


def _plain(value: Any) -> Any:
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else value
    if isinstance(value, Mapping):
        return {key: _plain(inner) for key, inner in value.items()}
    return value


def projection(item: Mapping[str, Any] | None) -> tuple[Any, ...] | None:
    """What the delivery table keeps of an update (processor/naughty_nice.py)."""
    if item is None:
        return None
    return (item.get("status"), item.get("region"), _plain(item.get("address")))


def delivered_children(client: Any, table: str) -> dict[str, dict[str, Any]]:
    """The delivery table's children by id (tombstones left out)."""
    children: dict[str, dict[str, Any]] = {}
    for page in client.get_paginator("scan").paginate(TableName=table, ConsistentRead=True):
        for raw in page["Items"]:
            item = {name: _deserialize(value) for name, value in raw.items()}
            if not item.get("deleted"):
                children[str(item["childId"])] = item
    return children


def parked_images(
    messages: Sequence[ParkedMessage], *, reasons: Sequence[str] = ("poison",)
) -> list[dict[str, Any]]:
    """The new images of the records parked for one of `reasons`, decoded."""
    images = []
    for message in messages:
        if message.reason not in reasons:
            continue
        new_image = message.record.get("dynamodb", {}).get("NewImage") or {}
        images.append({name: _deserialize(value) for name, value in new_image.items()})
    return images


@dataclass(frozen=True)
class DemoResult:
    verification: Verification
    report: WriteReport
    chart: Path | None
    seconds: float
    endpoint_url: str
    #: The function's `concurrency` (its `STREAMS_CONCURRENCY`, the template's `Concurrency`).
    concurrency: int = 1
    delay: Delay = field(default_factory=lambda: Delay(None, None))
    faults: FaultCounts | None = None
    failed_invocations: int = 0


class Demo:
    """One run of the demo; `show` receives progress while it runs (the CLI draws it)."""

    def __init__(
        self,
        *,
        template: Path,
        updates: int,
        children: int,
        poison_rate: float,
        seed: int,
        chart: Path | None,
        port: int = 0,
        state_file: Path | None = None,
        show: Callable[[Progress], None] = lambda progress: None,
        say: Callable[[str], None] = print,
        faults: float = 0.0,
    ) -> None:
        self.template = template
        self.faults = faults
        self.updates = updates
        self.children = children
        self.poison_rate = poison_rate
        self.seed = seed
        self.chart = chart
        self.port = port
        self.state_file = state_file
        self.show = show
        self.say = say

    def run(
        self, *, after: Callable[[DemoResult, EndpointProcess], None] | None = None
    ) -> DemoResult:
        """Run it; `after` is called with the result while the endpoint is still up."""
        start = time.monotonic()
        with EndpointProcess(self.port) as endpoint:
            self.say(f"endpoint: {endpoint.url} (moto's server, in a process of its own)")
            stack = deploy_template(self.template, endpoint_url=endpoint.url)
            source_table = stack.outputs["SourceTableName"]
            self.say(f"stack {stack.stack_name}: {stack.status}; source table {source_table}")
            recording = (
                contextlib.nullcontext()
                if self.state_file is None
                else endpoint_recorded(endpoint.url, stack, self.template, self.state_file)
            )
            with recording, fault_directory() as directory:
                faults = Faults(
                    self.faults, seed=self.seed, region=stack.region, directory=directory
                )
                result = self._run(endpoint, stack, start, faults)
                if after is not None:
                    after(result, endpoint)
                return result

    def _run(
        self, endpoint: EndpointProcess, stack: DeployedStack, start: float, faults: Faults
    ) -> DemoResult:
        session = local_session(stack.region)
        dynamodb = session.client(
            "dynamodb", endpoint_url=service_endpoint("dynamodb", endpoint.url)
        )
        sqs = session.client("sqs", endpoint_url=service_endpoint("sqs", endpoint.url))
        queues = queues_from_outputs(stack.outputs)
        watch = LocalMonitor(dynamodb=dynamodb, sqs=sqs, queues=queues)
        chart_monitor = LocalMonitor(dynamodb=dynamodb, sqs=sqs, queues=queues)

        updates = list(
            generate_updates(
                self.updates, children=self.children, poison_rate=self.poison_rate, seed=self.seed
            )
        )
        run = MappingRun(stack, FUNCTION, faults)
        mapping = run.start()
        with MonitorSampler(chart_monitor, interval=1.0) as sampler:
            # Every update is sent (TableWriter's default): each must reach the stream.
            writer = TableWriter(
                stack.outputs["SourceTableName"],
                client=faults.session("writer").client("dynamodb", endpoint_url=endpoint.url),
            )
            snapshot: MonitorSnapshot | None = None
            split = len(updates) - len(updates) // 50
            burst, trickle = updates[:split], updates[split:]
            with writer:
                for count, update in enumerate(burst, 1):
                    writer.put(update)
                    if count % 500 == 0:
                        snapshot = self._progress(watch, writer.report, snapshot, start)
                writer.flush()
                trickled = self._drain(watch, writer, trickle, start, run)
                for update in trickle[trickled:]:  # what the trickle did not need
                    writer.put(update)
            last_write = time.time()
            report = writer.report
            run.stop()
            # The counters say every record was handled at least once; a retried batch counts
            # twice, so make sure: a fresh mapping resumes from the checkpoints and returns only
            # once the stream has had nothing more for a while (it is read to its end).
            run.drain(DRAINED_AFTER_IDLE_SECONDS)

        verification = verify(
            updates,
            delivered_children(dynamodb, stack.outputs["DeliveryTableName"]),
            parked_images(
                DeadLetterQueueReader(
                    stack.outputs["DeadLetterQueueUrl"],
                    sqs=sqs,
                    s3=session.client("s3", endpoint_url=service_endpoint("s3", endpoint.url)),
                    bucket=stack.outputs.get("DeadLetterBucketName"),
                ).peek()
            ),
            failed={failure.seq for failure in report.failed},
        )
        chart = None
        if self.chart is not None:
            from streams.monitor.chart import write_chart

            chart = write_chart(
                sampler.history.samples, self.chart, title="The demo: iterator age and throughput"
            )
        delivered_after = None if run.last_delivery is None else run.last_delivery - last_write
        return DemoResult(
            verification,
            report,
            chart,
            time.monotonic() - start,
            endpoint.url,
            int(mapping.function.environment.get("STREAMS_CONCURRENCY", "1")),
            Delay(peak_iterator_age_ms(sampler.history.samples), delivered_after),
            faults.counts() if faults.on else None,
            run.failed_invocations,
        )

    def _progress(
        self,
        watch: LocalMonitor,
        report: WriteReport,
        previous: MonitorSnapshot | None,
        start: float,
    ) -> MonitorSnapshot | None:
        snapshot: MonitorSnapshot | None
        try:
            snapshot = watch.snapshot()
        except (BotoCoreError, ClientError):  # the view must never stop the run
            snapshot = previous
        totals = snapshot.totals if snapshot is not None else None
        self.show(
            Progress(
                total=self.updates,
                written=report.written,
                throttled=report.throttled,
                processed=(totals.processed or 0) if totals else 0,
                parked=(totals.parked or 0) if totals else 0,
                iterator_age_ms=totals.max_iterator_age_ms if totals else None,
                elapsed=time.monotonic() - start,
            )
        )
        return snapshot

    def _drain(
        self,
        watch: LocalMonitor,
        writer: TableWriter,
        trickle: Sequence[Mapping[str, Any]],
        start: float,
        run: MappingRun,
    ) -> int:
        """Trickle updates in, one every TRICKLE_SECONDS, while the mapping works off the burst;
        return once it has handled every record written and has been caught up for a few
        seconds (or makes no progress). Returns how many trickle updates were written; the
        caller writes the rest.

        The trickle is what shows the iterator age falling once the backlog is gone: records
        written after the mapping caught up are delivered within a second or two. A trickle
        record is written only after a look, so that between two of them there is time for the
        mapping to be seen caught up.
        """
        snapshot: MonitorSnapshot | None = None
        done, moved_at = -1.0, time.monotonic()
        caught_up_at: float | None = None
        written = 0
        last_trickle = time.monotonic()
        while run.failure is None:
            now = time.monotonic()
            snapshot = self._progress(watch, writer.report, snapshot, start)
            totals = snapshot.totals if snapshot is not None else None
            now_done = ((totals.processed or 0) + (totals.parked or 0)) if totals else 0
            if now_done != done:
                done, moved_at = now_done, now
            if done >= writer.report.written:
                caught_up_at = caught_up_at if caught_up_at is not None else now
                if written == len(trickle) or now - caught_up_at >= CAUGHT_UP_SECONDS:
                    return written
            if now - moved_at > STALL_SECONDS:
                self.say(f"the mapping made no progress for {STALL_SECONDS:.0f} s: verifying now")
                return written
            if written < len(trickle) and now - last_trickle >= TRICKLE_SECONDS:
                writer.put(trickle[written])  # sent once it has lingered: no flush needed
                written, last_trickle = written + 1, now
            time.sleep(1.0)  # each look costs moto a scan and two queue reads
        return written
