"""`streams demo --scenario ticket-queue`: a ticket queue that a poison record once clogged.

A ticketing system forwarded table changes through a stream and a function into a queue; one
bad record blocked the function until everything was caught, logged and acknowledged. Here a
ticket table's stream (ticket-queue.yaml) feeds a function (`functions/ticket_queue.py`) that
forwards every change to a FIFO queue with `QueueForwarder`; a share of the changes is
malformed (no status, or one nobody knows) and is parked instead, the stream going on.

The queue is read back at the end, and the verdict comes from it and the dead-letter queue:

- every valid change arrived, and each ticket's changes arrived in the order they were written
  (`out of order` counts tickets whose didn't);
- `duplicates` counts messages beyond the first of a change (0 expected on a FIFO queue: a
  batch delivered again within five minutes is deduplicated);
- every malformed change is parked (reason `poison`);
- `lost` counts the changes accounted for by neither. The scenario passes only when it is 0
  and nothing arrived out of order.
"""

from __future__ import annotations

import json
import random
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

from boto3.dynamodb.types import TypeDeserializer

from streams.demo.common import (
    Delay,
    FaultCounts,
    Faults,
    MappingRun,
    fault_directory,
    peak_iterator_age_ms,
    write_scenario_chart,
)
from streams.demo.functions.tickets import STATUSES
from streams.local.endpoint import EndpointProcess, local_session
from streams.local.stack import deploy_template
from streams.monitor.history import MonitorSampler
from streams.monitor.local import LocalMonitor
from streams.monitor.model import queues_from_outputs
from streams.ops.dlq import DeadLetterQueueReader
from streams.writer import TableWriter, WriteReport

if TYPE_CHECKING:
    from mypy_boto3_sqs import SQSClient

__all__ = [
    "TEMPLATE",
    "TicketQueueResult",
    "TicketQueueScenario",
    "TicketVerification",
    "generate_ticket_updates",
    "verify",
]

TEMPLATE = Path(__file__).with_name("ticket-queue.yaml")
FUNCTION = "TicketFunction"
STALL_SECONDS = 60.0
DRAINED_AFTER_IDLE_SECONDS = 2.0

_deserialize = TypeDeserializer().deserialize


def generate_ticket_updates(
    n: int, *, tickets: int | None = None, poison_rate: float, seed: int
) -> list[dict[str, Any]]:
    """`n` changes to `tickets` tickets (default n / 5), each a whole item with the ticket's
    `version` (1, 2, ... per ticket); a `poison_rate` share has no status or an unknown one."""
    count = max(1, n // 5) if tickets is None else tickets
    rng = random.Random(seed)
    versions = [0] * count
    updates = []
    for _ in range(n):
        ticket = rng.randrange(count)
        versions[ticket] += 1
        update: dict[str, Any] = {
            "ticketId": f"T-{ticket:06d}",
            "version": versions[ticket],
            "title": f"Ticket {ticket}",
            "status": rng.choice(STATUSES),
        }
        if rng.random() < poison_rate:
            if rng.random() < 0.5:
                del update["status"]
            else:
                update["status"] = "lost in space"
        updates.append(update)
    return updates


def _valid(update: Mapping[str, Any]) -> bool:
    return update.get("status") in STATUSES


@dataclass(frozen=True)
class TicketVerification:
    """The verdict, from the ticket queue and the dead-letter queue."""

    updates: int
    tickets: int
    valid: int
    malformed: int
    arrived: int  # valid changes found in the queue
    out_of_order: int  # tickets whose changes arrived in another order than written
    duplicates: int  # messages beyond the first of a change
    parked: int  # malformed changes in the dead-letter queue
    failed_writes: int  # refused by DynamoDB for good: never in the stream
    lost: int
    lost_changes: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return self.lost == 0 and self.out_of_order == 0


def verify(
    updates: Sequence[Mapping[str, Any]],
    received: Sequence[Mapping[str, Any]],
    parked: set[tuple[str, int]],
    failed: set[int] = frozenset(),  # type: ignore[assignment]
) -> TicketVerification:
    """`updates` in the order written; `received` the queue's messages in the order it gave
    them; `parked` the (ticket, version) of the changes in the dead-letter queue; `failed` the
    positions of updates the writer lists as refused for good."""
    seen: Counter[tuple[str, int]] = Counter()
    arrival: dict[str, list[int]] = {}
    for message in received:
        change = (str(message["ticketId"]), int(message["version"]))
        seen[change] += 1
        if seen[change] == 1:
            arrival.setdefault(change[0], []).append(change[1])
    written: dict[str, list[int]] = {}
    valid = malformed = arrived = parked_count = 0
    lost: list[str] = []
    for position, update in enumerate(updates):
        if position in failed:
            continue
        change = (str(update["ticketId"]), int(update["version"]))
        if _valid(update):
            valid += 1
            written.setdefault(change[0], []).append(change[1])
            if seen[change]:
                arrived += 1
            else:
                lost.append(f"{change[0]} v{change[1]}")
        else:
            malformed += 1
            if change in parked:
                parked_count += 1
            else:
                lost.append(f"{change[0]} v{change[1]} (malformed)")
    out_of_order = 0
    for ticket, versions in written.items():
        # Each change's first arrival, against the order written (a lost change is lost, not
        # out of order).
        wanted = set(versions)
        arrived_order = [version for version in arrival.get(ticket, []) if version in wanted]
        out_of_order += arrived_order != [version for version in versions if seen[ticket, version]]
    return TicketVerification(
        updates=len(updates),
        tickets=len({str(update["ticketId"]) for update in updates}),
        valid=valid,
        malformed=malformed,
        arrived=arrived,
        out_of_order=out_of_order,
        duplicates=sum(count - 1 for count in seen.values()),
        parked=parked_count,
        failed_writes=len(failed),
        lost=len(lost),
        lost_changes=tuple(lost),
    )


def read_queue(sqs: SQSClient, url: str) -> list[dict[str, Any]]:
    """Every message of the FIFO queue, in the order it gives them (received, then deleted:
    a FIFO queue gives no more of a group while some of it is in flight)."""
    messages: list[dict[str, Any]] = []
    empty = 0
    while empty < 3:  # SQS samples its servers: one empty answer is not an empty queue
        got = sqs.receive_message(
            QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=0, VisibilityTimeout=60
        ).get("Messages", [])
        empty = 0 if got else empty + 1
        messages.extend(json.loads(message["Body"]) for message in got)
        if got:
            sqs.delete_message_batch(
                QueueUrl=url,
                Entries=[
                    {"Id": str(n), "ReceiptHandle": message["ReceiptHandle"]}
                    for n, message in enumerate(got)
                ],
            )
    return messages


def _plain(value: Any) -> Any:
    return int(value) if isinstance(value, Decimal) else value


@dataclass(frozen=True)
class TicketQueueResult:
    verification: TicketVerification
    report: WriteReport
    seconds: float
    delay: Delay
    concurrency: int
    faults: FaultCounts | None
    failed_invocations: int
    chart: Path | None


class TicketQueueScenario:
    """One run of the scenario; `say` receives its progress lines."""

    def __init__(
        self,
        *,
        updates: int,
        poison_rate: float,
        seed: int,
        faults: float = 0.0,
        port: int = 0,
        chart: Path | None = None,
        say: Callable[[str], None] = print,
    ) -> None:
        self.updates = updates
        self.poison_rate = poison_rate
        self.seed = seed
        self.faults = faults
        self.port = port
        self.chart = chart
        self.say = say

    def run(self) -> TicketQueueResult:
        start = time.monotonic()
        with EndpointProcess(self.port) as endpoint, fault_directory() as directory:
            self.say(f"endpoint: {endpoint.url} (moto's server, in a process of its own)")
            stack = deploy_template(TEMPLATE, endpoint_url=endpoint.url)
            queue_url = stack.outputs["TicketQueueUrl"]
            self.say(f"stack {stack.stack_name}: ticket queue {queue_url.rsplit('/', 1)[-1]}")
            faults = Faults(self.faults, seed=self.seed, region=stack.region, directory=directory)
            session = local_session(stack.region)
            sqs = session.client("sqs", endpoint_url=endpoint.url)
            monitor = LocalMonitor(
                dynamodb=session.client("dynamodb", endpoint_url=endpoint.url),
                sqs=sqs,
                queues=queues_from_outputs(stack.outputs),
            )
            updates = generate_ticket_updates(
                self.updates, poison_rate=self.poison_rate, seed=self.seed
            )
            run = MappingRun(stack, FUNCTION, faults)
            mapping = run.start()
            with MonitorSampler(monitor, interval=1.0) as sampler:
                # Every change is sent (TableWriter's default): the queue needs each one.
                with TableWriter(
                    stack.outputs["TicketTableName"],
                    client=faults.session("writer").client("dynamodb", endpoint_url=endpoint.url),
                ) as writer:
                    for update in updates:
                        writer.put(update)
                last_write = time.time()
                report = writer.report
                self.say(f"[{time.monotonic() - start:5.1f} s] written {report.written:,} changes")
                expected = sum(
                    1
                    for position, update in enumerate(updates)
                    if _valid(update) and position not in {f.seq for f in report.failed}
                )
                self._wait(sqs, queue_url, expected, start, run)
                run.stop()
                run.drain(DRAINED_AFTER_IDLE_SECONDS)
            received = read_queue(sqs, queue_url)
            parked = set()
            for message in DeadLetterQueueReader(
                stack.outputs["DeadLetterQueueUrl"], sqs=sqs
            ).peek():
                if message.reason != "poison":
                    continue
                image = message.record.get("dynamodb", {}).get("NewImage") or {}
                item = {name: _plain(_deserialize(value)) for name, value in image.items()}
                parked.add((str(item.get("ticketId")), int(item.get("version", 0))))
            verification = verify(
                updates, received, parked, {failure.seq for failure in report.failed}
            )
            delivered_after = None if run.last_delivery is None else run.last_delivery - last_write
            return TicketQueueResult(
                verification,
                report,
                time.monotonic() - start,
                Delay(peak_iterator_age_ms(sampler.history.samples), delivered_after),
                int(mapping.function.environment.get("STREAMS_CONCURRENCY", "1")),
                faults.counts() if faults.on else None,
                run.failed_invocations,
                write_scenario_chart(sampler, self.chart, "ticket-queue"),
            )

    def _wait(
        self, sqs: SQSClient, queue_url: str, expected: int, start: float, run: MappingRun
    ) -> None:
        """Until the queue holds a message for every valid change (or nothing moves)."""
        depth, moved_at, said_at = -1, time.monotonic(), 0.0
        while run.failure is None:
            attributes = sqs.get_queue_attributes(
                QueueUrl=queue_url, AttributeNames=["ApproximateNumberOfMessages"]
            )["Attributes"]
            now_depth = int(attributes["ApproximateNumberOfMessages"])
            now = time.monotonic()
            if now_depth != depth:
                depth, moved_at = now_depth, now
            if now - said_at >= 3:
                said_at = now
                self.say(f"[{now - start:5.1f} s] ticket queue holds {depth:,}/{expected:,}")
            if depth >= expected:
                return
            if now - moved_at > STALL_SECONDS:
                self.say(f"the queue took nothing for {STALL_SECONDS:.0f} s: verifying now")
                return
            time.sleep(1.0)
