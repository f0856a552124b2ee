"""`streams demo`: the README's main command, and its scenarios (streams/demo/)."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from streams.demo.backfill import BackfillDemoResult, BackfillScenario
from streams.demo.burst import Demo, DemoResult, Progress
from streams.demo.common import Delay, FaultCounts
from streams.demo.ticket_queue import TicketQueueResult, TicketQueueScenario
from streams.demo.vendor_api import VendorApiResult, VendorApiScenario
from streams.errors import UserError
from streams.local.endpoint import STATE_FILE, EndpointProcess
from streams.local.template import DEFAULT_TEMPLATE

SCENARIOS = ("burst", "vendor-api", "ticket-queue", "backfill")
#: What `--updates` is when not given: records written, per scenario (backfill: while it runs).
DEFAULT_UPDATES = {"burst": 10_000, "vendor-api": 600, "ticket-queue": 300, "backfill": 1_000}
DEFAULT_CHILDREN = 3_000


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="the whole thing on this machine: a scenario, processing, verified summary",
        description="Starts the embedded AWS endpoint, creates a scenario's resources, runs its "
        "function with Lambda's rules, writes its records, and verifies the result from the "
        "outputs alone. Scenarios: burst (the default: naughty-and-nice updates, about 1%% "
        "malformed, through TableWriter into template.yaml's stack), vendor-api (a 4-shard "
        "Kinesis stream posted to a rate-limited vendor through a fleet-wide RateLimit), "
        "ticket-queue (a table's changes forwarded to a FIFO queue by QueueForwarder), "
        "backfill (a new projection of a table that already holds children: `streams "
        "backfill` while updates keep arriving; verified lost 0 and stale 0). Exit "
        "code 0 only if nothing was lost. While it runs, `streams monitor` in another "
        "terminal shows the shards.",
    )
    parser.add_argument("--scenario", choices=SCENARIOS, default="burst", help="(burst)")
    parser.add_argument(
        "--updates",
        type=int,
        metavar="N",
        help="records to write (burst 10,000; vendor-api 600; ticket-queue 300; backfill: "
        "1,000, written while the backfill runs)",
    )
    parser.add_argument(
        "--children",
        type=int,
        help=f"burst: children the updates touch; backfill: children in the table before "
        f"({DEFAULT_CHILDREN:,})",
    )
    parser.add_argument(
        "--poison-rate", type=float, default=0.01, help="fraction of malformed records (0.01)"
    )
    parser.add_argument("--seed", type=int, default=2026, help="the scenario's random seed")
    parser.add_argument(
        "--faults",
        type=float,
        default=0.0,
        metavar="RATE",
        help="this fraction of the AWS calls of the writer, the mapping and the function "
        "(dead-letter queue included) fail: throttling, 5xx, dropped connections; and the "
        "function's worker is killed mid-batch now and then (default 0)",
    )
    parser.add_argument(
        "--template", type=Path, help="burst, backfill: the template (template.yaml)"
    )
    parser.add_argument("--port", type=int, default=0, help="the endpoint's port (default: free)")
    parser.add_argument(
        "--chart",
        type=Path,
        help="where the chart of iterator age and throughput goes (.streams/SCENARIO.png; "
        ".streams/demo.png for burst)",
    )
    parser.add_argument("--no-chart", action="store_true", help="write no chart")
    parser.add_argument(
        "--serve",
        action="store_true",
        help="burst: keep the endpoint up after the summary (until Ctrl-C), to try "
        "`streams dlq list`",
    )
    parser.set_defaults(func=_run)


class _View:
    """A progress bar on a terminal; a plain line every few seconds otherwise."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.terminal = sys.stdout.isatty()
        self._last_line = 0.0
        self._progress = None
        if self.terminal:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

            self._progress = Progress(
                TextColumn("{task.description:<10}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[extra]}"),
                transient=False,
            )
            self._written = self._progress.add_task("written", total=total, extra="")
            self._done = self._progress.add_task("processed", total=total, extra="")

    def __enter__(self) -> _View:
        if self._progress is not None:
            self._progress.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    def show(self, progress: Progress) -> None:
        age = (
            "-" if progress.iterator_age_ms is None else f"{progress.iterator_age_ms / 1000:.1f} s"
        )
        done = int(progress.processed + progress.parked)
        if self._progress is not None:
            rate = progress.written / progress.elapsed if progress.elapsed else 0
            self._progress.update(
                self._written,
                completed=progress.written,
                extra=f"{rate:,.0f} items/s, {progress.throttled} throttled",
            )
            self._progress.update(
                self._done,
                completed=min(done, self.total),
                extra=f"parked {int(progress.parked)}, iterator age {age}",
            )
            return
        if progress.elapsed - self._last_line >= 3:
            self._last_line = progress.elapsed
            print(
                f"[{progress.elapsed:5.1f} s] written {progress.written:,}/{self.total:,} "
                f"(throttled {progress.throttled}), processed {done:,} (parked "
                f"{int(progress.parked)}), iterator age {age}",
                flush=True,
            )


def _summary(result: DemoResult) -> None:
    v = result.verification
    lines = [
        "",
        f"verified from the outputs (delivery table scan, dead-letter queue read), "
        f"{result.seconds:.1f} s, the function at concurrency {result.concurrency}:",
        f"  updates written        {v.updates:>8,}  for {v.children:,} children, every one "
        "sent (not --coalesce: each bad one must reach the stream to be parked)",
        f"  valid                  {v.valid:>8,}  -> newest per child in the delivery table: "
        f"{v.children_delivered:,} children",
        f"  delivered              {v.delivered:>8,}  (superseded updates count as delivered)",
        f"  malformed              {v.malformed:>8,}",
        f"  parked (poison)        {v.parked:>8,}",
        f"  superseded malformed   {v.superseded:>8,}  (a newer update of the child followed)",
        f"  refused by DynamoDB    {v.failed_writes:>8,}  (listed by the writer, never written)",
        f"  writes retried         {result.report.retried:>8,}  "
        f"throttled {result.report.throttled:,}",
        *_delay_lines(result.delay),
        *_fault_lines(result.faults, result.failed_invocations),
        f"  lost                   {v.lost:>8,}",
    ]
    print("\n".join([*lines, *_lost_children_and_chart(v.lost_children, result.chart)]))


def _lost_children_and_chart(lost_children: Sequence[str], chart: Path | None) -> list[str]:
    lines = []
    if lost_children:
        shown = ", ".join(lost_children[:10])
        more = " ..." if len(lost_children) > 10 else ""
        lines.append(f"  children with a lost update: {shown}{more}")
    if chart is not None:
        lines.append(f"chart of iterator age and throughput: {chart}")
    return lines


def _vendor_summary(result: VendorApiResult) -> None:
    v = result.verification
    held = "held" if v.limit_held else "BROKEN"
    lines = [
        "",
        f"verified from the vendor's own counts and the dead-letter queue, {result.seconds:.1f} s,"
        f" 4 shards, the function at concurrency {result.concurrency} (up to "
        f"{4 * result.concurrency} callers):",
        f"  events written         {v.events:>8,}",
        f"  valid                  {v.valid:>8,}",
        f"  reached the vendor     {v.reached:>8,}  (accepted at least once)",
        f"  repeats                {v.repeats:>8,}  (accepted again: an event posted twice)",
        f"  busiest second         {v.peak_per_second:>8,}  calls received; the limit "
        f"{result.rate} a second + burst {result.burst} = {v.limit_per_second}: {held}",
        f"  vendor's 429s          {v.too_many:>8,}  (over its limit)",
        f"  vendor's 503s          {v.unavailable:>8,}  (Retry-After honoured by the whole fleet)",
        f"  malformed              {v.malformed:>8,}",
        f"  parked (poison)        {v.parked:>8,}",
        *_delay_lines(result.delay),
        *_fault_lines(result.faults, result.failed_invocations),
        f"  lost                   {v.lost:>8,}",
    ]
    if v.lost_events:
        lines.append(f"  lost: {', '.join(v.lost_events[:10])}")
    if result.chart is not None:
        lines.append(f"chart of iterator age and throughput: {result.chart}")
    print("\n".join(lines))


def _ticket_summary(result: TicketQueueResult) -> None:
    v = result.verification
    lines = [
        "",
        f"verified from the ticket queue (read back) and the dead-letter queue, "
        f"{result.seconds:.1f} s, the function at concurrency {result.concurrency}:",
        f"  changes written        {v.updates:>8,}  for {v.tickets:,} tickets, every one sent",
        f"  valid                  {v.valid:>8,}",
        f"  arrived in the queue   {v.arrived:>8,}",
        f"  out of order           {v.out_of_order:>8,}  tickets (each ticket's changes in the "
        "order written)",
        f"  duplicates             {v.duplicates:>8,}  (FIFO deduplication: 0 expected)",
        f"  malformed              {v.malformed:>8,}",
        f"  parked (poison)        {v.parked:>8,}",
        f"  refused by DynamoDB    {v.failed_writes:>8,}  (listed by the writer, never written)",
        f"  writes retried         {result.report.retried:>8,}  "
        f"throttled {result.report.throttled:,}",
        *_delay_lines(result.delay),
        *_fault_lines(result.faults, result.failed_invocations),
        f"  lost                   {v.lost:>8,}",
    ]
    if v.lost_changes:
        lines.append(f"  lost: {', '.join(v.lost_changes[:10])}")
    if result.chart is not None:
        lines.append(f"chart of iterator age and throughput: {result.chart}")
    print("\n".join(lines))


def _backfill_summary(result: BackfillDemoResult) -> None:
    v, b = result.verification, result.backfill
    rate = b.offered / b.seconds if b.seconds else 0.0
    lines = [
        "",
        f"verified from the delivery table (scan) and the dead-letter queue, "
        f"{result.seconds:.1f} s, the function at concurrency {result.concurrency}:",
        f"  children before        {result.children_before:>8,}  in the table, their writes "
        "past the stream's trim horizon",
        f"  updates during         {result.updates_after:>8,}  written while the backfill ran",
        f"  backfill offered       {b.offered:>8,}  items in {b.seconds:.1f} s ({rate:,.0f} "
        f"items/s): applied {b.applied:,}, parked {b.parked:,}, retried {b.retried:,}, "
        f"throttled {b.throttled:,}",
        f"  newest state delivered {v.children_delivered:>8,}  children; "
        f"{result.delivered_by_scan:,} of the {result.only_in_table:,} not changed since "
        "came from the scan (only it has them)",
        f"  malformed              {v.malformed:>8,}",
        f"  parked                 {v.parked:>8,}  ({result.parked_from_scan:,} offered by the "
        "scan; the handler's poison, or `backfill` when a record kept failing)",
        f"  superseded malformed   {v.superseded:>8,}  (a newer update of the child followed)",
        *_delay_lines(result.delay),
        *_fault_lines(result.faults, result.failed_invocations),
        f"  stale                  {result.stale:>8,}  (children delivered at an older state "
        "than their newest)",
        f"  lost                   {v.lost:>8,}",
    ]
    print("\n".join([*lines, *_lost_children_and_chart(v.lost_children, result.chart)]))


def _delay_lines(delay: Delay) -> list[str]:
    age = (
        "-" if delay.peak_iterator_age_ms is None else f"{delay.peak_iterator_age_ms / 1000:,.1f} s"
    )
    after = (
        "-"
        if delay.last_write_to_last_delivery is None
        else f"{delay.last_write_to_last_delivery:,.1f} s"
    )
    return [
        f"  peak iterator age      {age:>8}",
        f"  last write -> delivered {after:>7}  (the last record delivered, after the last write)",
    ]


def _fault_lines(faults: FaultCounts | None, failed_invocations: int) -> list[str]:
    if faults is None:
        return []
    kinds = faults.by_kind
    where = ", ".join(f"{name} {count:,}" for name, count in sorted(faults.by_where.items()))
    return [
        f"  faults injected        {faults.total:>8,}  throttling {kinds['throttling']:,}, "
        f"5xx {kinds['5xx']:,}, dropped connections {kinds['connection']:,}, "
        f"workers killed {kinds['kill']:,} ({where})",
        f"  invocations failed     {failed_invocations:>8,}  (retried by the mapping)",
    ]


def _serve(endpoint: EndpointProcess) -> None:
    print(
        f"\nthe endpoint stays up at {endpoint.url}: try `streams dlq list` or `streams monitor "
        "--once` in another terminal; Ctrl-C to stop",
        flush=True,
    )
    try:
        while True:
            time.sleep(1)
    except KeyboardInterrupt:
        print("stopped")


def _run(args: argparse.Namespace) -> int:
    scenario: str = args.scenario
    updates = DEFAULT_UPDATES[scenario] if args.updates is None else args.updates
    if updates < 1:
        raise UserError("--updates must be at least 1")
    if not 0 <= args.poison_rate <= 1:
        raise UserError("--poison-rate is a fraction between 0 and 1")
    if not 0 <= args.faults < 1:
        raise UserError("--faults is a fraction of calls, from 0 to below 1")
    if args.children is not None and args.children < 1:
        raise UserError("--children must be at least 1")
    if scenario != "burst":
        for flag, given in (
            ("--children", args.children is not None and scenario != "backfill"),
            ("--template", args.template is not None and scenario != "backfill"),
            ("--serve", args.serve),
        ):
            if given:
                raise UserError(f"{flag} goes with the burst scenario only")
    chart = None
    if not args.no_chart:
        name = "demo" if scenario == "burst" else scenario
        chart = args.chart if args.chart is not None else Path(".streams") / f"{name}.png"
    if scenario == "vendor-api":
        vendor = VendorApiScenario(
            events=updates,
            poison_rate=args.poison_rate,
            seed=args.seed,
            faults=args.faults,
            port=args.port,
            chart=chart,
            say=_say,
        ).run()
        _vendor_summary(vendor)
        return 0 if vendor.verification.ok else 1
    if scenario == "ticket-queue":
        tickets = TicketQueueScenario(
            updates=updates,
            poison_rate=args.poison_rate,
            seed=args.seed,
            faults=args.faults,
            port=args.port,
            chart=chart,
            say=_say,
        ).run()
        _ticket_summary(tickets)
        return 0 if tickets.verification.ok else 1
    if scenario == "backfill":
        template = DEFAULT_TEMPLATE if args.template is None else args.template
        if not template.is_file():
            raise UserError(
                f"template not found: {template} (run from the repository, or --template)"
            )
        backfill = BackfillScenario(
            template=template,
            children=DEFAULT_CHILDREN if args.children is None else args.children,
            updates=updates,
            poison_rate=args.poison_rate,
            seed=args.seed,
            faults=args.faults,
            port=args.port,
            chart=chart,
            say=_say,
        ).run()
        _backfill_summary(backfill)
        return 0 if backfill.ok else 1
    return _run_burst(args, updates, chart)


def _say(line: str) -> None:
    print(line, flush=True)


def _run_burst(args: argparse.Namespace, updates: int, chart: Path | None) -> int:
    children = DEFAULT_CHILDREN if args.children is None else args.children
    if children < 1:
        raise UserError("--children must be at least 1")
    template = DEFAULT_TEMPLATE if args.template is None else args.template
    if not template.is_file():
        raise UserError(f"template not found: {template} (run from the repository, or --template)")

    def after(result: DemoResult, endpoint: EndpointProcess) -> None:
        view.close()
        _summary(result)
        if args.serve:
            _serve(endpoint)

    with _View(updates) as view:
        result = Demo(
            template=template,
            updates=updates,
            children=children,
            poison_rate=args.poison_rate,
            seed=args.seed,
            chart=chart,
            port=args.port,
            state_file=STATE_FILE,
            show=view.show,
            faults=args.faults,
        ).run(after=after)
    return 0 if result.verification.ok else 1
