"""`streams write`: burst-safe writes of JSON Lines (or generated updates) to a DynamoDB table.

    streams write updates.jsonl --table NAME        # one item per line; numbers become Decimal
    streams write - --table NAME                    # the same from stdin
    streams write --generate 10000 --table NAME     # synthetic naughty-and-nice updates

Items that fail for good, and lines that are not items, go to `FILE.failed.jsonl` (or
`--failed PATH`) with their line number and reason, and the exit code is 1. The first Ctrl-C or
SIGTERM stops reading, flushes what is pending, saves the progress and exits with 128 + the
signal's number; a second one stops at once. `--resume` continues after the last line fully
written, from the progress file beside the input (`FILE.progress.json`, or `--state PATH`).

Progress goes to stderr: a bar when it is a terminal, a line every few seconds otherwise. The
summary goes to stdout (`--json` for scripts).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, NoRegionError

from streams.cli.endpoint import Endpoint, current_endpoint
from streams.demo.generate import generate_updates
from streams.endpoints import service_endpoint
from streams.errors import UserError
from streams.writer import TableWriteError, TableWriter
from streams.writer.ingest import Checkpoint, FailedFile, Ingest, Line, ProgressFile, parse_lines
from streams.writer.table import DEFAULT_LINGER

if TYPE_CHECKING:
    from mypy_boto3_dynamodb.client import DynamoDBClient

_CHECKPOINT_SECONDS = 1.0


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "write",
        help="write items to a DynamoDB table: burst-safe, resumable, with progress",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "file", nargs="?", metavar="FILE", help="JSON Lines, one item per line ('-': stdin)"
    )
    source.add_argument(
        "--generate", type=int, metavar="N", help="write N synthetic naughty-and-nice updates"
    )
    parser.add_argument("--table", required=True, metavar="NAME", help="the table to write to")
    parser.add_argument(
        "--children", type=int, metavar="K", help="with --generate: K children (default N/4)"
    )
    parser.add_argument(
        "--poison-rate",
        type=float,
        metavar="FRACTION",
        help="with --generate: this fraction of updates is malformed (default 0)",
    )
    parser.add_argument("--seed", type=int, help="with --generate: the random seed (default 0)")
    parser.add_argument(
        "--failed", metavar="PATH", help="where failed items go (default FILE.failed.jsonl)"
    )
    parser.add_argument(
        "--resume", action="store_true", help="continue after the last line fully written"
    )
    parser.add_argument(
        "--state", metavar="PATH", help="the progress file (default FILE.progress.json)"
    )
    parser.add_argument(
        "--max-rate", type=float, metavar="WRITES", help="at most this many writes per second"
    )
    parser.add_argument(
        "--deadline",
        type=float,
        metavar="SECONDS",
        help="stop retrying after this long; what is unwritten goes to the failed file",
    )
    parser.add_argument(
        "--coalesce",
        action="store_true",
        help="a line replaces a queued, not yet sent line of the same key, so fewer writes "
        "are sent; the table ends the same but its stream misses the replaced updates "
        "(by default every line is sent, in order)",
    )
    parser.add_argument(
        "--senders", type=int, default=4, metavar="N", help="parallel senders (default 4)"
    )
    parser.add_argument(
        "--linger",
        type=float,
        default=DEFAULT_LINGER,
        metavar="SECONDS",
        help="send a partial batch once its oldest write has waited this long "
        f"(default {DEFAULT_LINGER:g}; 0 sends every write at once)",
    )
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    parser.set_defaults(func=run)


@dataclass(frozen=True)
class _Options:
    table: str
    input: Path | None  # None: stdin or generated updates
    generate: int | None
    children: int | None
    poison_rate: float
    seed: int
    failed: Path
    state: Path | None  # None: progress is not saved (stdin, generated updates)
    resume: bool
    max_rate: float | None
    deadline: float | None
    senders: int
    linger: float
    coalesce: bool
    json: bool


def run(args: argparse.Namespace) -> int:
    options = _options(args)
    endpoint = current_endpoint()  # once: the client and the banner must agree
    client = _client(options, endpoint)
    print(
        f"streams write: table {options.table!r} at {_describe(client, endpoint)}",
        file=sys.stderr,
    )
    writer = TableWriter(
        options.table,
        client=client,
        max_rate=options.max_rate,
        deadline=options.deadline,
        senders=options.senders,
        coalesce=options.coalesce,
        linger=options.linger,
    )
    return _Run(options, writer).execute()


def _options(args: argparse.Namespace) -> _Options:
    generated = args.generate is not None
    if not generated:
        for flag, value in (("--children", args.children), ("--poison-rate", args.poison_rate)):
            if value is not None:
                raise UserError(f"{flag} goes with --generate N")
        if args.seed is not None:
            raise UserError("--seed goes with --generate N")
    elif args.generate < 0:
        raise UserError(f"--generate takes a number of updates, 0 or more, not {args.generate}")
    if args.children is not None and args.children < 1:
        raise UserError(f"--children must be 1 or more, not {args.children}")
    poison_rate = 0.0 if args.poison_rate is None else args.poison_rate
    if not 0.0 <= poison_rate <= 1.0:
        raise UserError(f"--poison-rate is a fraction from 0 to 1, not {poison_rate}")
    if args.senders < 1:
        raise UserError(f"--senders must be 1 or more, not {args.senders}")
    if args.max_rate is not None and args.max_rate <= 0:
        raise UserError(f"--max-rate is writes per second, more than 0, not {args.max_rate}")
    if args.deadline is not None and args.deadline <= 0:
        raise UserError(f"--deadline is seconds, more than 0, not {args.deadline}")
    if not args.linger >= 0:  # NaN too
        raise UserError(f"--linger is seconds, 0 or more, not {args.linger}")

    path = None if generated or args.file == "-" else Path(args.file)
    if path is None and (args.resume or args.state):
        what = "generated updates" if generated else "stdin"
        raise UserError(
            f"--resume and --state need an input file: {what} cannot be read again from where "
            f"it stopped (save the input to a file first)"
        )
    if path is not None and not path.is_file():
        raise UserError(f"no such file: {path}")
    if args.failed:
        failed = Path(args.failed)
    elif path is not None:
        failed = path.with_name(path.name + ".failed.jsonl")
    else:
        failed = Path(f"{args.table}.failed.jsonl")
    state = None
    if path is not None:
        state = Path(args.state) if args.state else path.with_name(path.name + ".progress.json")
    _refuse_same_file(
        [
            ("the input", path),
            ("--failed" if args.failed else "the failed file", failed),
            ("--state" if args.state else "the progress file", state),
        ]
    )
    return _Options(
        table=args.table,
        input=path,
        generate=args.generate,
        children=args.children,
        poison_rate=poison_rate,
        seed=0 if args.seed is None else args.seed,
        failed=failed,
        state=state,
        resume=args.resume,
        max_rate=args.max_rate,
        deadline=args.deadline,
        senders=args.senders,
        linger=args.linger,
        coalesce=args.coalesce,
        json=args.json,
    )


def _refuse_same_file(named: list[tuple[str, Path | None]]) -> None:
    """The input, the failed file and the progress file are three files: a fresh run empties
    the failed file, and the progress file is replaced whole."""
    given = [(name, path) for name, path in named if path is not None]
    for index, (first, first_path) in enumerate(given):
        for second, second_path in given[index + 1 :]:
            if _same_file(first_path, second_path):
                raise UserError(
                    f"{second} and {first} are the same file ({second_path}): choose another path"
                )


def _same_file(first: Path, second: Path) -> bool:
    if first.resolve() == second.resolve():
        return True
    try:
        return first.samefile(second)  # hard links
    except OSError:  # one of them does not exist yet
        return False


def _client(options: _Options, endpoint: Endpoint) -> DynamoDBClient:
    config = Config(max_pool_connections=max(10, options.senders))
    if endpoint.is_local:  # AWS_ENDPOINT_URL, or the endpoint `streams local up` recorded
        return endpoint.session().client(
            "dynamodb", endpoint_url=service_endpoint("dynamodb", endpoint.url), config=config
        )
    try:
        return boto3.client("dynamodb", config=config)
    except NoRegionError:
        raise UserError(
            "no AWS region is set: export AWS_REGION (or AWS_DEFAULT_REGION), or set a region "
            "in the AWS config file"
        ) from None


def _describe(client: DynamoDBClient, endpoint: Endpoint) -> str:
    """Which endpoint this talks to: the local one, or an AWS account and region."""
    region = client.meta.region_name
    if endpoint.is_local:
        return f"{client.meta.endpoint_url} ({endpoint.origin}, region {region})"
    if os.environ.get("AWS_ENDPOINT_URL_DYNAMODB"):
        return f"{client.meta.endpoint_url} (AWS_ENDPOINT_URL_DYNAMODB, region {region})"
    try:
        account = boto3.client("sts", region_name=region).get_caller_identity()["Account"]
    except (BotoCoreError, ClientError) as error:
        account = f"unknown ({error})"
    return f"AWS account {account}, region {region} ({client.meta.endpoint_url})"


class _Run:
    def __init__(self, options: _Options, writer: TableWriter) -> None:
        self.options = options
        self.writer = writer
        self.started = time.monotonic()
        self.first_line = 1
        self.progress = (
            ProgressFile(options.state, options.input, options.table)
            if options.state is not None and options.input is not None
            else None
        )
        self.ingest = Ingest(
            writer, FailedFile(options.failed), self.progress, on_bad_line=_say_bad
        )

    def execute(self) -> int:
        options = self.options
        if options.resume and self.progress is not None:
            self._resume(self.progress)
        elif options.failed.exists():
            options.failed.unlink()  # a fresh run: an earlier run's failures do not apply
        stopped_at_once = False
        table_error: TableWriteError | None = None
        with _StopSignals() as stop, self.ingest.failed:
            display = _BarDisplay(self) if sys.stderr.isatty() else _LineDisplay(self)
            display.start()
            try:
                exhausted = self._write_lines(stop)
                self.writer.close()
                checkpoint = self.ingest.checkpoint()
            except KeyboardInterrupt:
                self.writer.abort("not sent: stopped by a second signal")
                stopped_at_once = True
            except TableWriteError as error:
                self.writer.abort(f"not written: {error}")
                table_error = error
            finally:
                display.stop()
        if stopped_at_once:
            return self._stopped_at_once(stop.received or signal.SIGINT)
        if table_error is not None:
            raise TableWriteError(f"{table_error}{self._resume_hint()}") from None
        return self._summarize(checkpoint, None if exhausted else stop.received)

    # -- reading and writing -----------------------------------------------------------------

    def _write_lines(self, stop: _StopSignals) -> bool:
        """Put every line's item; return whether the input was read to its end."""
        last_checkpoint = time.monotonic()
        for line in self._lines():
            if stop.received is not None:
                print(
                    f"{signal.Signals(stop.received).name}: stopping after line "
                    f"{self.ingest.lines:,}; flushing what is pending (a second signal stops at "
                    f"once)",
                    file=sys.stderr,
                    flush=True,
                )
                return False
            self.ingest.put(line)
            if time.monotonic() - last_checkpoint >= _CHECKPOINT_SECONDS:
                self.ingest.checkpoint()
                last_checkpoint = time.monotonic()
        return stop.received is None

    def _lines(self) -> Iterator[Line]:
        options = self.options
        if options.generate is not None:
            updates = generate_updates(
                options.generate,
                children=options.children,
                poison_rate=options.poison_rate,
                seed=options.seed,
            )
            for number, update in enumerate(updates, start=1):
                yield Line(number, 0, 0, None, update)
        elif options.input is None:
            yield from parse_lines(sys.stdin.buffer, first_line=1, offset=0)
        else:
            with options.input.open("rb") as stream:
                stream.seek(self.ingest.position)
                yield from parse_lines(
                    stream, first_line=self.first_line, offset=self.ingest.position
                )

    def _resume(self, progress: ProgressFile) -> None:
        checkpoint = progress.load()
        if checkpoint is None:
            print(f"no progress file {progress.path} yet: starting at line 1", file=sys.stderr)
            return
        self.ingest = Ingest(
            self.writer, self.ingest.failed, progress, start=checkpoint, on_bad_line=_say_bad
        )
        self.first_line = checkpoint.line + 1
        print(f"resuming after line {checkpoint.line:,} (from {progress.path})", file=sys.stderr)

    def _resume_hint(self) -> str:
        if self.progress is None:
            return ""
        saved = self.ingest.saved
        return (
            f" (every line up to {saved:,} is written; run again with --resume to "
            f"continue from line {saved + 1:,})"
        )

    # -- the end -----------------------------------------------------------------------------

    def _summarize(self, checkpoint: Checkpoint, interrupted: int | None) -> int:
        options, ingest, report = self.options, self.ingest, self.writer.report
        seconds = time.monotonic() - self.started
        rate = report.written / seconds if seconds > 0 else 0.0
        failed_file = str(options.failed) if ingest.failed.used else None
        if options.json:
            summary = {
                "table": options.table,
                "first_line": self.first_line,
                "last_line_done": checkpoint.line,
                "items": report.submitted,
                "written": report.written,
                "replaced": report.replaced,
                "retried": report.retried,
                "unprocessed": report.unprocessed,
                "throttled": report.throttled,
                "failed": len(report.failed),
                "bad_lines": ingest.bad,
                "failed_file": failed_file,
                "seconds": round(seconds, 3),
                "items_per_second": round(rate, 1),
                "interrupted_by": signal.Signals(interrupted).name if interrupted else None,
            }
            print(json.dumps(summary))
        else:
            print(
                f"wrote {report.written:,} of {report.submitted:,} items to table "
                f"{options.table!r} in {seconds:.1f} s ({rate:,.0f} items/s); "
                f"{report.throttled:,} throttled, {report.retried:,} sent again, "
                f"{report.replaced:,} replaced by a later write of the same key"
            )
            if failed_file:
                print(
                    f"{len(report.failed):,} items failed and {ingest.bad:,} lines were bad: "
                    f"see {failed_file}"
                )
        if interrupted is not None:
            print(
                f"interrupted by {signal.Signals(interrupted).name}: flushed; every line up to "
                f"{checkpoint.line:,} is written or in the failed file{self._resume_hint()}",
                file=sys.stderr,
            )
            return 128 + interrupted
        return 1 if failed_file else 0

    def _stopped_at_once(self, signum: int) -> int:
        print(
            f"stopped at once by a second {signal.Signals(signum).name}: writes in flight may "
            f"or may not have landed{self._resume_hint()}",
            file=sys.stderr,
        )
        return 128 + signum


def _say_bad(line: Line, problem: str) -> None:
    print(f"line {line.number}: {problem}; skipped", file=sys.stderr)


class _StopSignals:
    """The first SIGINT or SIGTERM asks to stop reading (and flush); a second stops at once."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _StopSignals:
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc_info: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.received is not None:
            raise KeyboardInterrupt
        self.received = signum


class _Ticker:
    """Calls `tick` every `interval` seconds on its own thread, so the display moves while the
    main thread waits (on a full writer, or in the final flush)."""

    def __init__(self, interval: float, tick: Callable[[], None]) -> None:
        self._interval = interval
        self._tick = tick
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="write-progress", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()
        self._thread.join()

    def _loop(self) -> None:
        while not self._stopped.wait(self._interval):
            self._tick()


class _RecentRate:
    """Items written per second over the last five seconds."""

    def __init__(self) -> None:
        self._samples: deque[tuple[float, int]] = deque()

    def __call__(self, written: int) -> float:
        now = time.monotonic()
        self._samples.append((now, written))
        while now - self._samples[0][0] > 5.0:
            self._samples.popleft()
        since, written_then = self._samples[0]
        return (written - written_then) / (now - since) if now > since else 0.0


class _LineDisplay:
    """A plain line every few seconds, for logs and pipes."""

    def __init__(self, run: _Run) -> None:
        self._run = run
        self._rate = _RecentRate()
        self._ticker = _Ticker(2.0, self._tick)

    def start(self) -> None:
        self._ticker.start()

    def stop(self) -> None:
        self._ticker.stop()

    def _tick(self) -> None:
        report, ingest = self._run.writer.report, self._run.ingest
        print(
            f"{time.monotonic() - self._run.started:.0f} s: {report.written:,} written "
            f"({self._rate(report.written):,.0f}/s), {report.throttled:,} throttled, "
            f"{len(report.failed) + ingest.bad:,} failed, line {ingest.lines:,}",
            file=sys.stderr,
            flush=True,
        )


class _BarDisplay:
    """A rich progress bar on a terminal: items, items/s, throttles and time left."""

    def __init__(self, run: _Run) -> None:
        # Imported here: rich is the command's dependency, never the library's.
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            Progress,
            TaskProgressColumn,
            TextColumn,
            TimeRemainingColumn,
        )

        self._run = run
        self._rate = _RecentRate()
        self._ticker = _Ticker(0.2, self._tick)
        options = run.options
        total: float | None = None
        if options.generate is not None:
            total = options.generate
        elif options.input is not None:
            total = options.input.stat().st_size
        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TaskProgressColumn(),
            TextColumn("{task.fields[status]}"),
            TimeRemainingColumn(),
            console=Console(file=sys.stderr),
        )
        self._task = self._progress.add_task(
            f"writing to {options.table}", total=total, completed=run.ingest.position, status=""
        )

    def start(self) -> None:
        self._progress.start()
        self._ticker.start()

    def stop(self) -> None:
        self._ticker.stop()
        self._tick()
        self._progress.stop()

    def _tick(self) -> None:
        report, ingest = self._run.writer.report, self._run.ingest
        generated = self._run.options.generate is not None
        self._progress.update(
            self._task,
            completed=ingest.lines if generated else ingest.position,
            status=(
                f"{report.written:,} written · {self._rate(report.written):,.0f}/s · "
                f"{report.throttled:,} throttled · {len(report.failed) + ingest.bad:,} failed"
            ),
        )
