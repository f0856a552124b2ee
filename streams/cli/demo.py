"""`streams demo`: the README's main command (see streams/demo.py)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from streams.demo.burst import Demo, DemoResult, Progress
from streams.errors import UserError
from streams.local.endpoint import STATE_FILE, EndpointProcess
from streams.local.template import DEFAULT_TEMPLATE


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="the whole thing on this machine: burst, processing, verified summary",
        description="Starts the embedded AWS endpoint, creates template.yaml's resources, runs "
        "the processor function with Lambda's rules, writes a burst of naughty-and-nice "
        "updates (about 1% malformed) through TableWriter, and verifies the result from the "
        "delivery table and the dead-letter queue alone. Exit code 0 only if nothing was lost. "
        "While it runs, `streams monitor` in another terminal shows the shards.",
    )
    parser.add_argument("--updates", type=int, default=10_000, help="updates to write (10,000)")
    parser.add_argument("--children", type=int, default=3_000, help="children they touch (3,000)")
    parser.add_argument(
        "--poison-rate", type=float, default=0.01, help="fraction of malformed updates (0.01)"
    )
    parser.add_argument("--seed", type=int, default=2026, help="the burst's random seed")
    parser.add_argument("--template", type=Path, default=DEFAULT_TEMPLATE)
    parser.add_argument("--port", type=int, default=0, help="the endpoint's port (default: free)")
    parser.add_argument(
        "--chart",
        type=Path,
        default=Path(".streams/demo.png"),
        help="where the chart of iterator age and throughput goes (.streams/demo.png)",
    )
    parser.add_argument("--no-chart", action="store_true", help="write no chart")
    parser.add_argument(
        "--serve",
        action="store_true",
        help="keep the endpoint up after the summary (until Ctrl-C), to try `streams dlq list`",
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
        f"  updates written        {v.updates:>8,}  for {v.children:,} children",
        f"  valid                  {v.valid:>8,}  -> newest per child in the delivery table: "
        f"{v.children_delivered:,} children",
        f"  delivered              {v.delivered:>8,}  (superseded updates count as delivered)",
        f"  malformed              {v.malformed:>8,}",
        f"  parked (poison)        {v.parked:>8,}",
        f"  superseded malformed   {v.superseded:>8,}  (a newer update of the child followed)",
        f"  refused by DynamoDB    {v.failed_writes:>8,}  (listed by the writer, never written)",
        f"  writes retried         {result.report.retried:>8,}  "
        f"throttled {result.report.throttled:,}",
        f"  lost                   {v.lost:>8,}",
    ]
    if v.lost_children:
        shown = ", ".join(v.lost_children[:10])
        lines.append(
            f"  children with a lost update: {shown}{' ...' if len(v.lost_children) > 10 else ''}"
        )
    if result.chart is not None:
        lines.append(f"chart of iterator age and throughput: {result.chart}")
    print("\n".join(lines))


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
    if args.updates < 1 or args.children < 1:
        raise UserError("--updates and --children must be at least 1")
    if not 0 <= args.poison_rate <= 1:
        raise UserError("--poison-rate is a fraction between 0 and 1")
    if not args.template.is_file():
        raise UserError(
            f"template not found: {args.template} (run from the repository, or --template)"
        )

    def after(result: DemoResult, endpoint: EndpointProcess) -> None:
        view.close()
        _summary(result)
        if args.serve:
            _serve(endpoint)

    with _View(args.updates) as view:
        result = Demo(
            template=args.template,
            updates=args.updates,
            children=args.children,
            poison_rate=args.poison_rate,
            seed=args.seed,
            chart=None if args.no_chart else args.chart,
            port=args.port,
            state_file=STATE_FILE,
            show=view.show,
        ).run(after=after)
    return 0 if result.verification.ok else 1
