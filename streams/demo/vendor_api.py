"""`streams demo --scenario vendor-api`: a vendor that must not be overwhelmed.

A monitoring pipeline fanned out over functions once took its vendor's API down. Here a Kinesis
stream of 4 shards feeds a function (vendor-api.yaml, `functions/vendor_api.py`) that posts
each event to a vendor on 127.0.0.1 (`vendor.py`: R calls a second plus a burst, 429 above,
a small share of 503s), 8 events at once per invocation: 32 callers, more than the vendor
allows. A fleet-wide `RateLimit` keeps them to the vendor's limit.

Verified from the vendor's own counts and the dead-letter queue, never the function's:

- the most calls the vendor received in any clock second is at most R plus the burst;
- every valid event was accepted by the vendor at least once (repeats are counted: a batch
  Lambda delivers again after a refusal or a crash posts some events twice);
- every malformed event is parked (reason `poison`);
- `lost` counts the events accounted for by neither. The scenario passes only when it is 0 and
  the vendor's limit held.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from botocore.exceptions import BotoCoreError, ClientError

from streams.backoff import Backoff
from streams.demo.common import (
    Delay,
    FaultCounts,
    Faults,
    MappingRun,
    fault_directory,
    peak_iterator_age_ms,
    write_scenario_chart,
)
from streams.demo.vendor import VendorCounts, VendorProcess
from streams.local.endpoint import EndpointProcess, local_session
from streams.local.stack import deploy_template
from streams.monitor.history import MonitorSampler
from streams.monitor.local import LocalMonitor
from streams.monitor.model import queues_from_outputs
from streams.ops.dlq import DeadLetterQueueReader

if TYPE_CHECKING:
    from mypy_boto3_kinesis import KinesisClient

__all__ = ["TEMPLATE", "Event", "VendorApiResult", "VendorApiScenario", "VendorVerification"]

TEMPLATE = Path(__file__).with_name("vendor-api.yaml")
FUNCTION = "VendorFunction"
HOSTS = 40
#: Kinesis PutRecords takes at most 500 records a call.
PUT_RECORDS_LIMIT = 500
#: Give up waiting for the vendor when nothing new was accepted for this long.
STALL_SECONDS = 60.0
DRAINED_AFTER_IDLE_SECONDS = 2.0


@dataclass(frozen=True)
class Event:
    """One record written to the stream: its partition key and data, and whether it is valid
    (valid events carry an `eventId`)."""

    partition_key: str
    data: bytes
    event_id: str | None

    @property
    def valid(self) -> bool:
        return self.event_id is not None


def generate_events(n: int, *, poison_rate: float, seed: int) -> list[Event]:
    """`n` monitoring events over 40 hosts; a `poison_rate` share is malformed (not JSON, or
    no eventId)."""
    rng = random.Random(seed)
    events = []
    for index in range(n):
        host = f"host-{rng.randrange(HOSTS):02d}"
        if rng.random() < poison_rate:
            data = b"{not json" if rng.random() < 0.5 else json.dumps({"host": host}).encode()
            events.append(Event(host, data, None))
            continue
        event_id = f"evt-{index:07d}"
        body = {"eventId": event_id, "host": host, "metric": "cpu", "value": rng.random()}
        events.append(Event(host, json.dumps(body).encode(), event_id))
    return events


@dataclass(frozen=True)
class VendorVerification:
    """The verdict, from the vendor's counts and the dead-letter queue."""

    events: int
    valid: int
    malformed: int
    reached: int  # valid events the vendor accepted at least once
    repeats: int  # acceptances beyond the first
    parked: int  # malformed events in the dead-letter queue
    peak_per_second: int
    limit_per_second: int  # R plus the burst
    too_many: int  # the vendor's 429s
    unavailable: int  # the vendor's 503s
    lost: int
    lost_events: tuple[str, ...]

    @property
    def limit_held(self) -> bool:
        return self.peak_per_second <= self.limit_per_second

    @property
    def ok(self) -> bool:
        return self.lost == 0 and self.limit_held


def verify(
    events: Sequence[Event],
    positions: Sequence[tuple[str, str]],
    counts: VendorCounts,
    parked_positions: set[tuple[str, str]],
    limit_per_second: int,
) -> VendorVerification:
    """`positions[i]` is where Kinesis put `events[i]`: its shard and sequence number;
    `parked_positions` those of the records in the dead-letter queue."""
    lost: list[str] = []
    reached = parked = 0
    for event, position in zip(events, positions, strict=True):
        if event.event_id is not None:
            if counts.accepted.get(event.event_id, 0) > 0:
                reached += 1
            else:
                lost.append(event.event_id)
        elif position in parked_positions:
            parked += 1
        else:
            lost.append(f"malformed at {position[0]} {position[1]}")
    valid_ids = {event.event_id for event in events if event.event_id is not None}
    return VendorVerification(
        events=len(events),
        valid=len(valid_ids),
        malformed=len(events) - len(valid_ids),
        reached=reached,
        repeats=sum(n - 1 for event_id, n in counts.accepted.items() if event_id in valid_ids),
        parked=parked,
        peak_per_second=counts.peak_per_second,
        limit_per_second=limit_per_second,
        too_many=counts.too_many,
        unavailable=counts.unavailable,
        lost=len(lost),
        lost_events=tuple(lost),
    )


def put_events(
    kinesis: KinesisClient, stream: str, events: Sequence[Event]
) -> list[tuple[str, str]]:
    """Write the events (500 a call), retrying what Kinesis refuses; where each went (its
    shard and sequence number)."""
    sequences: list[tuple[str, str] | None] = [None] * len(events)
    backoff = Backoff(0.05, 2.0)
    pending = list(range(len(events)))
    attempt = 0
    while pending:
        refused: list[int] = []
        for start in range(0, len(pending), PUT_RECORDS_LIMIT):
            chunk = pending[start : start + PUT_RECORDS_LIMIT]
            try:
                results = kinesis.put_records(
                    StreamName=stream,
                    Records=[
                        {"Data": events[i].data, "PartitionKey": events[i].partition_key}
                        for i in chunk
                    ],
                )["Records"]
            except (BotoCoreError, ClientError):  # botocore gave up: the whole call again
                refused.extend(chunk)
                continue
            for index, result in zip(chunk, results, strict=True):
                if "SequenceNumber" in result:
                    sequences[index] = (result["ShardId"], result["SequenceNumber"])
                else:  # throttled or failed inside the call: this record again
                    refused.append(index)
        if refused:
            time.sleep(backoff.delay(attempt))
            attempt += 1
        pending = refused
    return [sequence for sequence in sequences if sequence is not None]  # all, by now


@dataclass(frozen=True)
class VendorApiResult:
    verification: VendorVerification
    seconds: float
    delay: Delay
    rate: int
    burst: int
    concurrency: int
    faults: FaultCounts | None
    failed_invocations: int
    chart: Path | None


class VendorApiScenario:
    """One run of the scenario; `say` receives its progress lines."""

    def __init__(
        self,
        *,
        events: int,
        poison_rate: float,
        seed: int,
        faults: float = 0.0,
        rate: int = 25,
        burst: int = 5,
        failure_rate: float = 0.01,
        port: int = 0,
        chart: Path | None = None,
        say: Callable[[str], None] = print,
    ) -> None:
        self.chart = chart
        self.events = events
        self.poison_rate = poison_rate
        self.seed = seed
        self.faults = faults
        self.rate = rate
        self.burst = burst
        self.failure_rate = failure_rate
        self.port = port
        self.say = say

    def run(self) -> VendorApiResult:
        start = time.monotonic()
        with (
            EndpointProcess(self.port) as endpoint,
            VendorProcess(
                rate=self.rate, burst=self.burst, failure_rate=self.failure_rate, seed=self.seed
            ) as vendor,
            fault_directory() as directory,
        ):
            self.say(f"endpoint: {endpoint.url} (moto's server, in a process of its own)")
            self.say(
                f"vendor: {vendor.url} (admits {self.rate} calls a second plus a burst of "
                f"{self.burst}; 429 above, {self.failure_rate:.0%} of calls 503)"
            )
            stack = deploy_template(
                TEMPLATE,
                endpoint_url=endpoint.url,
                parameter_overrides={"VendorUrl": vendor.url, "VendorRate": str(self.rate)},
            )
            self.say(f"stack {stack.stack_name}: 4 shards, {stack.outputs['EventStreamName']}")
            faults = Faults(self.faults, seed=self.seed, region=stack.region, directory=directory)
            session = local_session(stack.region)
            sqs = session.client("sqs", endpoint_url=endpoint.url)
            monitor = LocalMonitor(
                dynamodb=session.client("dynamodb", endpoint_url=endpoint.url),
                sqs=sqs,
                queues=queues_from_outputs(stack.outputs),
            )
            events = generate_events(self.events, poison_rate=self.poison_rate, seed=self.seed)
            run = MappingRun(stack, FUNCTION, faults)
            mapping = run.start()
            with MonitorSampler(monitor, interval=1.0) as sampler:
                kinesis = faults.session("writer").client("kinesis", endpoint_url=endpoint.url)
                sequences = put_events(kinesis, stack.outputs["EventStreamName"], events)
                last_write = time.time()
                self.say(f"[{time.monotonic() - start:5.1f} s] written {len(events):,} events")
                self._wait(vendor, events, start, run)
                run.stop()
                run.drain(DRAINED_AFTER_IDLE_SECONDS)
            parked = {
                (str(message.body.get("shardId")), str(message.body.get("sequenceNumber")))
                for message in DeadLetterQueueReader(
                    stack.outputs["DeadLetterQueueUrl"], sqs=sqs
                ).peek()
                if message.reason == "poison"
            }
            verification = verify(
                events, sequences, vendor.counts(), parked, self.rate + self.burst
            )
            chart = write_scenario_chart(sampler, self.chart, "vendor-api")
            delivered_after = None if run.last_delivery is None else run.last_delivery - last_write
            return VendorApiResult(
                verification,
                time.monotonic() - start,
                Delay(peak_iterator_age_ms(sampler.history.samples), delivered_after),
                self.rate,
                self.burst,
                int(mapping.function.environment.get("STREAMS_CONCURRENCY", "1")),
                faults.counts() if faults.on else None,
                run.failed_invocations,
                chart,
            )

    def _wait(
        self, vendor: VendorProcess, events: Sequence[Event], start: float, run: MappingRun
    ) -> None:
        """Until the vendor accepted every valid event (or nothing moves for a while)."""
        wanted = {event.event_id for event in events if event.event_id is not None}
        accepted, moved_at, said_at = -1, time.monotonic(), 0.0
        while run.failure is None:
            counts = vendor.counts()
            now_accepted = len(wanted.intersection(counts.accepted))
            now = time.monotonic()
            if now_accepted != accepted:
                accepted, moved_at = now_accepted, now
            if now - said_at >= 3:
                said_at = now
                self.say(
                    f"[{now - start:5.1f} s] vendor accepted {accepted:,}/{len(wanted):,} "
                    f"events; busiest second {counts.peak_per_second} calls; "
                    f"429s {counts.too_many}, 503s {counts.unavailable}"
                )
            if accepted == len(wanted):
                return
            if now - moved_at > STALL_SECONDS:
                self.say(f"the vendor accepted nothing for {STALL_SECONDS:.0f} s: verifying now")
                return
            time.sleep(1.0)
