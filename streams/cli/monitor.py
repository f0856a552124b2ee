"""`streams monitor`: iterator age, throughput, parked records and queue depths, live."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import TYPE_CHECKING, Final

from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError

from streams.arn import Arn
from streams.cli.common import positive_seconds
from streams.cli.endpoint import Endpoint, current_endpoint
from streams.endpoints import service_endpoint
from streams.errors import UserError
from streams.local.stack import DEFAULT_STACK_NAME
from streams.mapping.state.layout import DEFAULT_TABLE_NAME
from streams.mapping.state.snapshot import read_mappings
from streams.monitor.chart import write_chart
from streams.monitor.cloudwatch import CloudWatchMonitor
from streams.monitor.history import MonitorHistory, sparkline
from streams.monitor.local import LocalMonitor
from streams.monitor.model import (
    DEAD_LETTER,
    ON_FAILURE,
    Monitor,
    MonitorSnapshot,
    QueueRef,
    breaches,
    queues_from_stack,
)

if TYPE_CHECKING:
    from rich.console import Console, RenderableType

DEFAULT_INTERVAL = 2.0
DEFAULT_WINDOW = 3600.0
HISTORY_WIDTH = 40  # samples in a row's sparkline
# Error codes of calls refused for the caller's credentials: the user's to fix.
_CREDENTIAL_ERRORS = frozenset(
    {
        "AccessDenied",
        "AccessDeniedException",
        "ExpiredToken",
        "ExpiredTokenException",
        "InvalidClientTokenId",
        "UnrecognizedClientException",
    }
)


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "monitor",
        help="per-shard iterator age, throughput, parked records and queue depths, live",
        description="A live view of how far behind processing is. Locally it reads what the "
        "mapping records (its state table, docs/mapping-state.md) and the queues' depths, "
        "from the endpoint `streams local up` or `streams demo` recorded (or AWS_ENDPOINT_URL); "
        "it never reads a shard. With --function it reads a deployed function from "
        "CloudWatch, Lambda and SQS instead. Ctrl-C leaves.",
    )
    parser.add_argument(
        "--function",
        dest="functions",
        action="append",
        metavar="NAME",
        help="a deployed function to read from CloudWatch (repeat for more)",
    )
    parser.add_argument(
        "--interval",
        type=positive_seconds,
        default=DEFAULT_INTERVAL,
        metavar="SECONDS",
        help=f"seconds between refreshes (default {DEFAULT_INTERVAL:g})",
    )
    parser.add_argument(
        "--once",
        action="store_true",
        help="print one snapshot and exit (locally it reads twice, --interval apart, for "
        "records/s)",
    )
    parser.add_argument(
        "--json", action="store_true", help="one JSON document per snapshot, one per line"
    )
    parser.add_argument(
        "--fail-above",
        type=positive_seconds,
        metavar="SECONDS",
        help="exit 1, naming the shard or function, as soon as an iterator age is above this",
    )
    parser.add_argument(
        "--plot",
        metavar="FILE.png",
        help="write a chart of iterator age and throughput over the samples taken when "
        "leaving (needs the plot extra: pip install 'streams[plot]')",
    )
    parser.add_argument(
        "--duration",
        type=positive_seconds,
        metavar="SECONDS",
        help="leave after this long (with --plot: sample for this long, then write the chart)",
    )
    parser.add_argument(
        "--window",
        type=positive_seconds,
        default=DEFAULT_WINDOW,
        metavar="SECONDS",
        help=f"with --function: the CloudWatch window counts are summed over (default "
        f"{DEFAULT_WINDOW:g})",
    )
    parser.add_argument(
        "--stack-name",
        help=f"the local stack whose outputs name the queues (default: the recorded one, else "
        f"{DEFAULT_STACK_NAME})",
    )
    parser.add_argument(
        "--state-table",
        default=DEFAULT_TABLE_NAME,
        metavar="NAME",
        help=f"the local mapping's state table (default {DEFAULT_TABLE_NAME})",
    )
    parser.add_argument(
        "--dead-letter-queue-url",
        metavar="URL",
        help="the dead-letter queue (default: from the stack, or the function's environment)",
    )
    parser.add_argument(
        "--on-failure-queue-url",
        metavar="URL",
        help="the on-failure queue (default: from the stack, or the function's mappings)",
    )
    parser.set_defaults(func=_monitor)


def _monitor(args: argparse.Namespace) -> int:
    endpoint = current_endpoint()
    print(endpoint.describe(), file=sys.stderr)
    from rich.console import Console

    with _aws_errors(endpoint):
        monitor, title = (
            _cloudwatch_monitor(args, endpoint)
            if args.functions
            else _local_monitor(args, endpoint)
        )
        return run(args, monitor, title=title, console=Console())


def _explicit_queues(args: argparse.Namespace) -> list[QueueRef]:
    queues = []
    if args.dead_letter_queue_url:
        queues.append(QueueRef(DEAD_LETTER, args.dead_letter_queue_url))
    if args.on_failure_queue_url:
        queues.append(QueueRef(ON_FAILURE, args.on_failure_queue_url))
    return queues


def _local_monitor(args: argparse.Namespace, endpoint: Endpoint) -> tuple[Monitor, str]:
    if not endpoint.is_local:
        raise UserError(
            "no local endpoint recorded here: run `streams local up` (or `streams demo`) in "
            "this directory, set AWS_ENDPOINT_URL, or pass --function NAME for a deployed function"
        )
    session = endpoint.session()
    dynamodb = session.client("dynamodb", endpoint_url=service_endpoint("dynamodb", endpoint.url))
    if not read_mappings(dynamodb, args.state_table):
        raise UserError(
            f"no mapping has run here yet (no state in table {args.state_table} at "
            f"{endpoint.url}): start one with `streams run` or `streams demo`"
        )
    queues = _explicit_queues(args)
    if not queues:
        stack_name = args.stack_name or endpoint.stack_name or DEFAULT_STACK_NAME
        cloudformation = session.client(
            "cloudformation", endpoint_url=service_endpoint("cloudformation", endpoint.url)
        )
        found = queues_from_stack(cloudformation, stack_name)
        if found is None:
            print(
                f"no stack {stack_name} in the endpoint: queue depths not shown (pass "
                "--stack-name, or --dead-letter-queue-url and --on-failure-queue-url)",
                file=sys.stderr,
            )
        queues = list(found or ())
    monitor = LocalMonitor(
        dynamodb=dynamodb,
        sqs=session.client("sqs", endpoint_url=service_endpoint("sqs", endpoint.url)),
        queues=queues,
        table_name=args.state_table,
    )
    return monitor, "Iterator age and throughput: local mapping"


def _cloudwatch_monitor(args: argparse.Namespace, endpoint: Endpoint) -> tuple[Monitor, str]:
    session = endpoint.session()
    queues = _explicit_queues(args)
    monitor = CloudWatchMonitor(
        args.functions,
        lambda_client=session.client(
            "lambda", endpoint_url=service_endpoint("lambda", endpoint.url)
        ),
        cloudwatch=session.client(
            "cloudwatch", endpoint_url=service_endpoint("cloudwatch", endpoint.url)
        ),
        sqs=session.client("sqs", endpoint_url=service_endpoint("sqs", endpoint.url)),
        queues=queues or None,
        window_seconds=args.window,
    )
    names = ", ".join(function.name for function in monitor.functions)
    return monitor, f"Iterator age and throughput: {names} (CloudWatch)"


@contextmanager
def _aws_errors(endpoint: Endpoint) -> Iterator[None]:
    """Calls the user can make fail (endpoint gone, no credentials): one line, not a trace."""
    where = endpoint.url or f"AWS ({endpoint.region})"
    try:
        yield
    except EndpointConnectionError:
        raise UserError(
            f"cannot reach {where}: is `streams local up` (or the demo) still running?"
        ) from None
    except NoCredentialsError:
        raise UserError("no AWS credentials: configure them (aws configure, AWS_PROFILE)") from None
    except ClientError as error:
        code = error.response.get("Error", {}).get("Code", "")
        if code not in _CREDENTIAL_ERRORS:
            raise
        message = error.response.get("Error", {}).get("Message", code)
        raise UserError(f"{where} refused {error.operation_name}: {message}") from None


def run(
    args: argparse.Namespace,
    monitor: Monitor,
    *,
    title: str,
    console: Console,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> int:
    """Show snapshots until told to stop (--once, --duration, --fail-above, Ctrl-C), then
    write the chart (--plot) of the samples taken, even when a read failed (the endpoint went
    away). Returns the exit code: 1 when an iterator age was too high."""
    history = MonitorHistory()
    try:
        if args.once:
            snapshot = _read_once(monitor, history, args.interval, sleep)
            if args.json:
                print(json.dumps(snapshot.to_json()), flush=True)
            else:
                console.print(_render(snapshot, history, title, args.fail_above))
            too_old = _too_old(snapshot, args.fail_above)
        else:
            too_old = _watch(
                args, monitor, history, title=title, console=console, sleep=sleep, clock=clock
            )
    finally:
        if args.plot and history.samples:
            path = write_chart(history.samples, args.plot, title=title)
            print(f"chart: {path}", file=sys.stderr)
    if too_old:
        print(f"streams: {too_old}", file=sys.stderr)
        return 1
    return 0


def _read_once(
    monitor: Monitor, history: MonitorHistory, interval: float, sleep: Callable[[float], None]
) -> MonitorSnapshot:
    snapshot = monitor.snapshot()
    history.add(snapshot)
    if monitor.two_reads_for_rates:  # records/s needs the counters' growth between two reads
        sleep(interval)
        snapshot = monitor.snapshot()
        history.add(snapshot)
    return snapshot


def _watch(
    args: argparse.Namespace,
    monitor: Monitor,
    history: MonitorHistory,
    *,
    title: str,
    console: Console,
    sleep: Callable[[float], None],
    clock: Callable[[], float],
) -> str | None:
    """Refresh until --duration, a breach of --fail-above (its line) or Ctrl-C (None)."""
    from rich.live import Live

    started = clock()
    live: AbstractContextManager[Live | None] = (
        nullcontext() if args.json else Live(console=console, auto_refresh=False)
    )
    with live as view:
        try:
            while True:
                snapshot = monitor.snapshot()
                history.add(snapshot)
                if view is None:
                    print(json.dumps(snapshot.to_json()), flush=True)
                else:
                    view.update(_render(snapshot, history, title, args.fail_above), refresh=True)
                too_old = _too_old(snapshot, args.fail_above)
                if too_old or (args.duration is not None and clock() - started >= args.duration):
                    return too_old
                sleep(args.interval)
        except KeyboardInterrupt:  # Ctrl-C: leave cleanly, the chart is still written
            return None


def _too_old(snapshot: MonitorSnapshot, limit: float | None) -> str | None:
    found = [] if limit is None else breaches(snapshot, limit)
    if not found:
        return None
    return f"iterator age above {limit:g} s: " + "; ".join(b.describe() for b in found)


# --- the view --------------------------------------------------------------------------------


def _render(
    snapshot: MonitorSnapshot, history: MonitorHistory, title: str, limit: float | None
) -> RenderableType:
    from rich.console import Group
    from rich.text import Text

    taken = time.strftime("%H:%M:%S", time.gmtime(snapshot.taken_at))
    names = _row_names(snapshot)
    parts: list[RenderableType] = [
        _rows_table(snapshot, names, f"{title} at {taken} UTC", limit),
        *(Text(line, style="bold red") for line in _loss_lines(snapshot, names)),
        _history_block(snapshot, names, history),
    ]
    if snapshot.queues:
        parts.append(_queues_table(snapshot))
    notes = _outcome_notes(snapshot, names)
    by_reason = _by_reason(snapshot.totals.parked_by_reason)
    if by_reason:
        notes.append(f"parked by reason: {by_reason}")
    if snapshot.source == "local":
        mappings = dict.fromkeys(
            (row.function, row.event_source_arn, row.mapping_state) for row in snapshot.rows
        )
        notes += [f"mapping {fn} on {arn}: {state}" for fn, arn, state in mappings]
    else:
        minutes = (snapshot.window_seconds or 0) / 60
        notes.append(
            f"counts: sums over the last {minutes:g} min; iterator age and records/s: the "
            "latest minute with data (AWS publishes no per-shard iterator age)"
        )
    parts += [Text(note, style="dim") for note in notes]
    return Group(*parts)


#: Records lost to the function or to the on-failure destination: a line each, once there are any.
_LOSSES: Final = (
    ("DroppedEventCount", "records dropped"),
    ("DestinationDeliveryFailures", "failed sends to the on-failure destination"),
    ("ExpiredRanges", "ranges of records expired from the stream before they were read"),
)
#: A shard is named by the last characters of its id that tell it from the others, at least
#: these many (a DynamoDB shard id ends in 8 characters of its own), so the table fits 80 columns.
_SHARD_TAIL = 8
#: Last outcomes that need no note (Lambda's own wording on AWS).
_QUIET_OUTCOMES: Final = frozenset({"ok", "no records processed"})


def _row_names(snapshot: MonitorSnapshot) -> dict[str, str]:
    """How the view names each row: locally the shortest tail of the shard id (at least
    _SHARD_TAIL characters) that no other shard shares, after the function when the state
    table holds more than one mapping; on AWS the function's name."""
    if snapshot.source != "local":
        return {row.label: row.label for row in snapshot.rows}
    shard_ids = list(dict.fromkeys(row.shard_id or row.label for row in snapshot.rows))
    tails = unique_tails(shard_ids, _SHARD_TAIL)
    names: dict[str, str] = {}
    for row in snapshot.rows:
        tail = tails[row.shard_id or row.label]
        names[row.label] = tail if row.label == row.shard_id else f"{row.function} {tail}"
    return names


def unique_tails(labels: list[str], shortest: int) -> dict[str, str]:
    """Each label as "…" and its last n characters, n the smallest (at least `shortest`) at
    which no two labels end alike; labels no longer than that stay whole."""
    length = shortest
    while len({label[-length:] for label in labels}) < len(labels):
        length += 1
    return {label: label if len(label) <= length + 1 else "…" + label[-length:] for label in labels}


def _rows_table(
    snapshot: MonitorSnapshot, names: Mapping[str, str], title: str, limit: float | None
) -> RenderableType:
    from rich import box
    from rich.table import Table
    from rich.text import Text

    local = snapshot.source == "local"
    # A rule under the header and nothing else: the columns fit 80 characters.
    table = Table(
        title=title, title_justify="left", box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False
    )
    # Figures never wrap; names give way on a narrow terminal.
    if local:
        table.add_column("shard", overflow="fold", min_width=9)
        table.add_column("state", no_wrap=True)
        table.add_column("checkpoint", no_wrap=True)
    else:
        table.add_column("function", overflow="fold", min_width=10)
        table.add_column("event source", overflow="fold", min_width=10)
        table.add_column("mapping", no_wrap=True)
    for column in ["iterator\nage", "records/s", "processed", "parked"]:
        table.add_column(column, justify="right", no_wrap=True)

    for row in snapshot.rows:
        if local:
            labels = [names[row.label], row.state or "-", _checkpoint(row.checkpoint)]
        else:
            labels = [row.function, _source(row.event_source_arn), row.mapping_state or "-"]
        counts = [
            _age_cell(row.iterator_age_ms, limit),
            _rate(row.records_per_second),
            _count(row.processed),
            _count(row.parked),
        ]
        table.add_row(*labels, *counts)

    totals = snapshot.totals
    counts = [
        _age_cell(totals.max_iterator_age_ms, limit),
        _rate(totals.records_per_second),
        _count(totals.processed),
        _count(totals.parked),
    ]
    table.add_section()
    table.add_row(Text("total", style="bold"), "", "", *counts)
    return table


def _loss_lines(snapshot: MonitorSnapshot, names: Mapping[str, str]) -> list[str]:
    """One line per row that lost records (DroppedEventCount, DestinationDeliveryFailures,
    ExpiredRanges)."""
    lines = []
    for row in snapshot.rows:
        lost = [
            f"{row.event_counts[metric]:,.0f} {what}"
            for metric, what in _LOSSES
            if row.event_counts.get(metric)
        ]
        if lost:
            lines.append(f"{names[row.label]}: " + ", ".join(lost))
    return lines


def _outcome_notes(snapshot: MonitorSnapshot, names: Mapping[str, str]) -> list[str]:
    """One line per row whose last invocation did not simply succeed."""
    return [
        f"last outcome of {names[row.label]}: {row.last_outcome}"
        for row in snapshot.rows
        if row.last_outcome is not None and row.last_outcome.lower() not in _QUIET_OUTCOMES
    ]


def _history_block(
    snapshot: MonitorSnapshot, names: Mapping[str, str], history: MonitorHistory
) -> RenderableType:
    """Each row's iterator age over the last samples, as a sparkline."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    local = snapshot.source == "local"
    every = "per sample" if local else "per minute"
    block = Table.grid(padding=(0, 2))
    block.add_column(no_wrap=True)
    block.add_column(no_wrap=True)
    block.add_column(style="dim")
    rows = {row.label: row for row in snapshot.rows}  # on AWS a function may have several
    for label, row in rows.items():
        ages = history.iterator_ages(label, HISTORY_WIDTH)
        known = [age for age in ages if age is not None]
        detail = f"peak {_age(max(known))}" if known else "no age yet"
        if row.updated_at is not None:
            detail += f", recorded {_ago(row.updated_at, snapshot.taken_at)}"
        block.add_row(names[label], sparkline(ages) or "-", detail)
    return Group(Text(f"iterator age, {every}, oldest first:", style="bold"), block)


def _queues_table(snapshot: MonitorSnapshot) -> RenderableType:
    from rich import box
    from rich.table import Table

    table = Table(
        title="queues", title_justify="left", box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False
    )
    table.add_column("queue", no_wrap=True)
    table.add_column("name", overflow="fold")  # an id: wrapped, never cut short
    for column in ("visible", "in flight"):
        table.add_column(column, justify="right", no_wrap=True)
    table.add_column("oldest", no_wrap=True)
    for depth in snapshot.queues:
        oldest = depth.oldest_age_seconds
        table.add_row(
            depth.queue.role,
            depth.queue.name,
            _count(depth.visible),
            _count(depth.in_flight),
            "-" if oldest is None else _age(oldest * 1000),
        )
    return table


def _age(ms: float | None) -> str:
    if ms is None:
        return "-"
    seconds = ms / 1000
    if seconds < 1:
        return f"{ms:.0f} ms"
    if seconds < 60:
        return f"{seconds:.1f} s"
    if seconds < 3600:
        return f"{int(seconds // 60)} m {int(seconds % 60):02d} s"
    return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60):02d} m"


def _age_cell(ms: float | None, limit: float | None) -> str:
    text = _age(ms)
    if ms is not None and limit is not None and ms > limit * 1000:
        return f"[bold red]{text}[/]"
    return text


def _count(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:,.1f}"


def _by_reason(by_reason: Mapping[str, float]) -> str:
    return ", ".join(
        f"{reason} {value:,.0f}" for reason, value in sorted(by_reason.items()) if value
    )


def _checkpoint(sequence_number: str | None) -> str:
    if sequence_number is None:
        return "-"
    return sequence_number if len(sequence_number) <= 9 else "…" + sequence_number[-8:]


def _source(arn: str | None) -> str:
    if arn is None:
        return "-"
    parsed = Arn.of(arn)
    if parsed is None:
        return arn
    # table/NAME/stream/… or stream/NAME
    parts = parsed.resource.split("/")
    return "/".join(parts[:2]) if len(parts) > 1 else parsed.resource


def _ago(at: float, now: float) -> str:
    return f"{_age(max(0.0, now - at) * 1000)} ago"
