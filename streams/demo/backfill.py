"""`streams demo --scenario backfill`: a new projection of a table that already holds children.

The worked example's source table holds the children before the projection starts following its
stream: on AWS their writes would be older than the stream's 24 hours and gone from it. moto keeps
every record, so the scenario moves the stream's trim horizon past them: the mapping's iterator at
`TRIM_HORIZON` starts after the last of those writes (a botocore hook on the mapping's own
`GetShardIterator` calls, nothing else), as it would on AWS a day later. Then, in the order
README's "Backfill" states as the contract:

1. the mapping starts, at `TRIM_HORIZON`;
2. `streams backfill`'s core scans the table and offers every item to the handler, in warm
   worker processes of its own, while updates keep arriving (a share of the children change,
   some several times; about 1% of the writes are malformed);
3. the stream is drained.

Verified from the outputs alone (a scan of the delivery table, a read of the dead-letter queue):
the writes accounted for are the table's state at the horizon (each child's newest write before
it, unless it was valid and the scan read, and parked, a malformed update that had replaced it)
followed by every update written after it; `lost` counts those accounted for by neither the
delivery table (each child's newest valid write) nor the dead-letter queue (a malformed one:
reason `backfill` when the scan offered it, `poison` when the stream did); `stale` counts the
children the delivery table holds at an older state than their newest valid write. The scenario
passes only when both are 0 and every child written only before the horizon was delivered by
the scan (the delivery table holds it with the backfill's sequence number, 0): so a trim horizon
that did not move, letting the stream deliver them, fails the scenario too.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from streams.demo.burst import (
    FUNCTION,
    Verification,
    delivered_children,
    is_valid,
    parked_images,
    projection,
    verify,
)
from streams.demo.common import (
    Delay,
    FaultCounts,
    Faults,
    MappingRun,
    fault_directory,
    peak_iterator_age_ms,
    write_scenario_chart,
)
from streams.demo.generate import generate_updates
from streams.local.backfill import (
    BACKFILL_SEQUENCE_NUMBER,
    BackfillSettings,
    BackfillSummary,
    BackfillTarget,
    dynamodb_stream_of,
    function_backfill,
    local_positions,
)
from streams.local.endpoint import EndpointProcess, local_session
from streams.local.run import LocalMapping
from streams.local.stack import deploy_template
from streams.local.template import DEFAULT_TEMPLATE
from streams.monitor.history import MonitorSampler
from streams.monitor.local import LocalMonitor
from streams.monitor.model import queues_from_outputs
from streams.ops.dlq import DeadLetterQueueReader, ParkedMessage
from streams.writer import TableWriter

if TYPE_CHECKING:
    import boto3

__all__ = ["BackfillDemoResult", "BackfillScenario", "move_trim_horizon"]

DRAINED_AFTER_IDLE_SECONDS = 2.0
#: Updates written while the backfill runs go in groups of this many, one group a tick.
GROUP = 25
TICK_SECONDS = 0.2
SEGMENTS = 4


def move_trim_horizon(session: boto3.Session, after: Mapping[str, str]) -> None:
    """Every DynamoDB Streams client `session` makes from now on starts a shard's
    `TRIM_HORIZON` iterator after `after[shard id]`, as if the records up to it had aged out of
    the stream's 24 hours (moto never trims them)."""

    def horizon(params: dict[str, Any], **_: Any) -> None:
        shard = params.get("ShardId")
        if (
            params.get("ShardIteratorType") == "TRIM_HORIZON"
            and isinstance(shard, str)
            and (shard in after)
        ):
            params["ShardIteratorType"] = "AFTER_SEQUENCE_NUMBER"
            params["SequenceNumber"] = after[shard]

    session.events.register("provide-client-params.dynamodb-streams.GetShardIterator", horizon)


def last_sequence_numbers(streams: Any, stream_arn: str) -> dict[str, str]:
    """Each shard's last record's sequence number now (shards without records: none)."""
    last: dict[str, str] = {}
    shards = streams.describe_stream(StreamArn=stream_arn)["StreamDescription"]["Shards"]
    for shard in shards:
        iterator = streams.get_shard_iterator(
            StreamArn=stream_arn, ShardId=shard["ShardId"], ShardIteratorType="TRIM_HORIZON"
        ).get("ShardIterator")
        while iterator:
            page = streams.get_records(ShardIterator=iterator, Limit=1000)
            if not page["Records"]:
                break  # moto answers every record up to an open shard's tip, then nothing
            last[shard["ShardId"]] = page["Records"][-1]["dynamodb"]["SequenceNumber"]
            iterator = page.get("NextShardIterator")
    return last


def at_the_horizon(
    written: Sequence[Mapping[str, Any]], failed: set[int]
) -> list[Mapping[str, Any]]:
    """What the table held when the horizon moved: each child's newest write that DynamoDB
    took, in the order of those writes."""
    newest: dict[str, int] = {}
    for position, update in enumerate(written):
        if position not in failed:
            newest[str(update["childId"])] = position
    return [written[position] for position in sorted(newest.values())]


@dataclass(frozen=True)
class BackfillDemoResult:
    verification: Verification
    stale: int
    #: Valid children with no write after the horizon: only the scan can deliver them.
    only_in_table: int
    #: Of those, how many the delivery table holds from the scan (sequence number 0).
    delivered_by_scan: int
    #: Children whose malformed state the scan offered and the handler parked.
    parked_from_scan: int
    children_before: int
    updates_after: int
    backfill: BackfillSummary
    seconds: float
    delay: Delay
    concurrency: int
    faults: FaultCounts | None
    failed_invocations: int
    chart: Path | None

    @property
    def ok(self) -> bool:
        return (
            self.verification.ok
            and self.stale == 0
            and self.delivered_by_scan == self.only_in_table
        )


class BackfillScenario:
    """One run: `children` children in the table before, `updates` written during the backfill,
    into `template`'s stack (the worked example's: its ProcessorFunction and tables); `say`
    receives progress lines."""

    def __init__(
        self,
        *,
        children: int,
        updates: int,
        template: Path = DEFAULT_TEMPLATE,
        poison_rate: float,
        seed: int,
        faults: float = 0.0,
        port: int = 0,
        chart: Path | None = None,
        say: Callable[[str], None] = print,
    ) -> None:
        self.children = children
        self.updates = updates
        self.template = template
        self.poison_rate = poison_rate
        self.seed = seed
        self.faults = faults
        self.port = port
        self.chart = chart
        self.say = say

    def run(self) -> BackfillDemoResult:
        start = time.monotonic()
        with EndpointProcess(self.port) as endpoint, fault_directory() as directory:
            self.say(f"endpoint: {endpoint.url} (moto's server, in a process of its own)")
            stack = deploy_template(self.template, endpoint_url=endpoint.url)
            faults = Faults(self.faults, seed=self.seed, region=stack.region, directory=directory)
            session = local_session(stack.region)
            dynamodb = session.client("dynamodb", endpoint_url=endpoint.url)
            sqs = session.client("sqs", endpoint_url=endpoint.url)
            source = stack.outputs["SourceTableName"]
            # Two writes per child before (each child's second write replaces its first), then
            # `updates` after: the same generator, so versions keep counting up.
            everything = list(
                generate_updates(
                    2 * self.children + self.updates,
                    children=self.children,
                    poison_rate=self.poison_rate,
                    seed=self.seed,
                )
            )
            before, after = everything[: 2 * self.children], everything[2 * self.children :]
            with TableWriter(source, client=dynamodb) as writer:
                for update in before:
                    writer.put(update)
            failed_before = {failure.seq for failure in writer.report.failed}
            stream_arn = dynamodb_stream_of(stack.function(FUNCTION))
            horizon = last_sequence_numbers(
                session.client("dynamodbstreams", endpoint_url=endpoint.url), stream_arn
            )
            table_before = at_the_horizon(before, failed_before)
            self.say(
                f"[{time.monotonic() - start:5.1f} s] the table holds {len(table_before):,} "
                f"children; the stream's trim horizon moved past their writes"
            )

            run = MappingRun(
                stack,
                FUNCTION,
                faults,
                prepare=lambda mapping_session: move_trim_horizon(mapping_session, horizon),
            )
            mapping = run.start()
            monitor = LocalMonitor(
                dynamodb=session.client("dynamodb", endpoint_url=endpoint.url),
                sqs=sqs,
                queues=queues_from_outputs(stack.outputs),
            )
            with MonitorSampler(monitor, interval=1.0) as sampler:
                summary, failed_after, last_write = self._backfill_while_updating(
                    stack, faults, stream_arn, after, start
                )
                run.stop()
                run.drain(DRAINED_AFTER_IDLE_SECONDS)

            delivered = delivered_children(dynamodb, stack.outputs["DeliveryTableName"])
            reader = DeadLetterQueueReader(
                stack.outputs["DeadLetterQueueUrl"],
                sqs=sqs,
                s3=session.client("s3", endpoint_url=endpoint.url),
                bucket=stack.outputs.get("DeadLetterBucketName"),
            )
            # A child whose malformed state the scan read (and parked) had a valid state at the
            # horizon only if a malformed update replaced it before the scan got there: that
            # state was gone from the table and the stream alike, nothing could offer it.
            messages = reader.peek()
            scanned_malformed = parked_by_scan(messages)
            accounted = [
                *(
                    update
                    for update in table_before
                    if not (is_valid(update) and str(update["childId"]) in scanned_malformed)
                ),
                *(u for i, u in enumerate(after) if i not in failed_after),
            ]
            verification = verify(
                accounted, delivered, parked_images(messages, reasons=("poison", "backfill"))
            )
            changed_after = {str(update["childId"]) for update in after}
            only_in_table = {
                str(update["childId"])
                for update in table_before
                if is_valid(update) and str(update["childId"]) not in changed_after
            }
            chart = write_scenario_chart(sampler, self.chart, "backfill")
            delivered_after = None if run.last_delivery is None else run.last_delivery - last_write
            return BackfillDemoResult(
                verification=verification,
                stale=stale_children(accounted, delivered),
                only_in_table=len(only_in_table),
                parked_from_scan=len(scanned_malformed),
                delivered_by_scan=sum(
                    1
                    for child in only_in_table
                    if int(str(delivered.get(child, {}).get("sequenceNumber", "-1"))) == 0
                ),
                children_before=len(table_before),
                updates_after=len(after),
                backfill=summary,
                seconds=time.monotonic() - start,
                delay=Delay(peak_iterator_age_ms(sampler.history.samples), delivered_after),
                concurrency=int(mapping.function.environment.get("STREAMS_CONCURRENCY", "1")),
                faults=faults.counts() if faults.on else None,
                failed_invocations=run.failed_invocations,
                chart=chart,
            )

    def _backfill_while_updating(
        self,
        stack: Any,
        faults: Faults,
        stream_arn: str,
        after: Sequence[Mapping[str, Any]],
        start: float,
    ) -> tuple[BackfillSummary, set[int], float]:
        """The backfill in a thread; meanwhile `after` is written, a group a tick, until the
        backfill ends (the rest then at once). Returns its summary, the positions in `after`
        DynamoDB refused for good, and when the last write was made."""
        backfill_session = faults.session("backfill")
        # The function's spec and state table, as `streams backfill` finds them; never run.
        mapping = LocalMapping(
            stack,
            FUNCTION,
            session=backfill_session,
            environment=faults.worker_environment(),
        )
        dynamodb = backfill_session.client("dynamodb", endpoint_url=stack.endpoint_url)
        target = BackfillTarget.of(dynamodb, stream_arn)
        positions = local_positions(mapping, dynamodb, stream_arn, SEGMENTS, state=None, fresh=True)
        outcome: list[BackfillSummary] = []
        errors: list[BaseException] = []

        def backfill() -> None:
            try:
                with function_backfill(
                    mapping,
                    backfill_session,
                    target,
                    settings=BackfillSettings(segments=SEGMENTS),
                    positions=positions,
                ) as running:
                    outcome.append(running.run())
            except BaseException as error:  # raised again in the scenario's thread
                errors.append(error)

        thread = threading.Thread(target=backfill, name="backfill", daemon=True)
        writer_client = faults.session("writer").client("dynamodb", endpoint_url=stack.endpoint_url)
        with TableWriter(stack.outputs["SourceTableName"], client=writer_client) as writer:
            thread.start()
            self.say(
                f"[{time.monotonic() - start:5.1f} s] backfill started ({SEGMENTS} segments); "
                f"writing {len(after):,} updates meanwhile"
            )
            for first in range(0, len(after), GROUP):
                for update in after[first : first + GROUP]:
                    writer.put(update)
                if thread.is_alive():
                    time.sleep(TICK_SECONDS)
        last_write = time.time()
        thread.join()
        if errors:
            raise errors[0]
        summary = outcome[0]
        self.say(
            f"[{time.monotonic() - start:5.1f} s] backfill offered {summary.offered:,} items in "
            f"{summary.seconds:.1f} s ({summary.offered / max(summary.seconds, 1e-9):,.0f} "
            f"items/s); parked {summary.parked}"
        )
        return summary, {failure.seq for failure in writer.report.failed}, last_write


def parked_by_scan(messages: Sequence[ParkedMessage]) -> set[str]:
    """The children parked from a synthetic record (the backfill's sequence number)."""
    return {
        str(message.record["dynamodb"]["Keys"]["childId"]["S"])
        for message in messages
        if message.record.get("dynamodb", {}).get("SequenceNumber") == BACKFILL_SEQUENCE_NUMBER
    }


def stale_children(
    accounted: Sequence[Mapping[str, Any]], delivered: Mapping[str, Mapping[str, Any]]
) -> int:
    """Children the delivery table holds, but not at their newest valid write."""
    newest: dict[str, Mapping[str, Any]] = {}
    for update in accounted:
        if is_valid(update):
            newest[str(update["childId"])] = update
    return sum(
        1
        for child, item in delivered.items()
        if child in newest and projection(item) != projection(newest[child])
    )
