"""`streams run`: a template's function, fed by its streams with Lambda's rules, locally.

Deploys the template into the local endpoint (idempotently, as `streams local create`), then
runs `streams.run.LocalMapping` until Ctrl-C (or SIGTERM), or until idle with
`--exit-when-idle`. Output: the endpoint, the function and its event sources, the function's
own log lines, warnings, and a summary line now and then; `-v` adds one line per invocation
(shard, batch size, outcome, duration) and the function's EMF metric documents.
"""

from __future__ import annotations

import argparse
import logging
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TextIO

from streams.cli.common import add_parameter_overrides, seconds, sigterm_as_interrupt
from streams.cli.local import deploy_to_local_endpoint
from streams.endpoints import service_endpoint
from streams.errors import UserError
from streams.local.run import LocalMapping
from streams.local.template import DEFAULT_TEMPLATE
from streams.mapping import Invocation
from streams.mapping.state.lease import LeaseLost

# Quiet mode: one summary line at most this often (seconds), while invocations happen.
SUMMARY_SECONDS = 10.0


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    run = subparsers.add_parser(
        "run",
        help="run the template's function on its streams, with Lambda's rules, locally",
        description="Deploy the template into the local endpoint (AWS_ENDPOINT_URL, else the one "
        "`streams local up` recorded in this directory) and feed its function from its DynamoDB "
        "and Kinesis streams and SQS queues as Lambda's event source mapping does, until Ctrl-C. "
        "Checkpoints, the lease and per-shard metrics live in the endpoint's state table, where "
        "a restart and `streams monitor` find them.",
    )
    run.add_argument(
        "--template", default=str(DEFAULT_TEMPLATE), help=f"SAM template ({DEFAULT_TEMPLATE})"
    )
    run.add_argument(
        "--function",
        metavar="LOGICAL_ID",
        help="the function to run (needed when the template has several stream functions, "
        "and for a function fed by SQS queues only)",
    )
    run.add_argument(
        "--exit-when-idle",
        type=seconds,
        metavar="SECONDS",
        help="stop once no shard has had records to deliver for this long",
    )
    run.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="one line per invocation, and the function's metric documents",
    )
    run.add_argument(
        "--stack-name", help="stack to deploy into (default: the recorded one, else streams-local)"
    )
    add_parameter_overrides(run)
    run.add_argument("--region", help="region (default: the endpoint's, else us-east-1)")
    run.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    out = sys.stdout
    stack = deploy_to_local_endpoint(
        args,
        messages=out,
        refusal="no local endpoint: streams run feeds the function from a local endpoint only "
        "(on AWS, Lambda runs the mapping: sam deploy); start `streams local up` in this "
        "directory, or set AWS_ENDPOINT_URL to one",
    )
    print(f"stack {stack.stack_name}: {stack.status} from {stack.template}", file=out)
    summary = Summary(out, verbose=args.verbose)
    mapping = LocalMapping(stack, args.function, on_invocation=summary.invoked)
    _describe(mapping, args.exit_when_idle, out)
    with _logging(args.verbose, out), sigterm_as_interrupt():
        try:
            mapping.run(exit_when_idle=args.exit_when_idle)
        except KeyboardInterrupt:
            print("streams: stopped (Ctrl-C): batches in flight finished", file=out)
        except LeaseLost as lost:
            raise UserError(f"{lost}: stopped (one mapping per function and stream)") from None
        finally:
            summary.finish()
    return 0


def _describe(mapping: LocalMapping, exit_when_idle: float | None, out: TextIO) -> None:
    function = mapping.function
    print(
        f"function {function.logical_id}: {function.handler} ({function.runtime}, "
        f"{function.timeout} s, {function.memory_size} MB) from {function.code_uri}",
        file=out,
    )
    # botocore's AWS_ENDPOINT_URL_<SERVICE> may send one service elsewhere (a stream on
    # kinesis-mock, the tables in moto): each service the mapping calls, and where.
    services = ["dynamodb"]  # the state table
    services += [
        "kinesis" if stream.spec.event_source == "aws:kinesis" else "dynamodbstreams"
        for stream in mapping.streams
    ]
    services.append("sqs")  # queues, on-failure destinations
    endpoints = {name: service_endpoint(name, mapping.endpoint_url) for name in services}
    print("endpoints: " + ", ".join(f"{name} {url}" for name, url in endpoints.items()), file=out)
    for stream in mapping.streams:
        settings = stream.settings
        print(
            f"  {stream.spec.logical_id}: {stream.spec.event_source_arn} (BatchSize "
            f"{settings.batch_size}, ParallelizationFactor {settings.parallelization_factor}, "
            f"StartingPosition {settings.starting_position})",
            file=out,
        )
    for queue in mapping.queues:
        response_types = (
            ", ReportBatchItemFailures" if queue.settings.report_batch_item_failures else ""
        )
        print(
            f"  {queue.spec.logical_id}: {queue.spec.queue_arn} (BatchSize "
            f"{queue.settings.batch_size}, MaximumBatchingWindowInSeconds "
            f"{queue.settings.maximum_batching_window_in_seconds}{response_types})",
            file=out,
        )
    for part in mapping.skipped:
        print(f"not run here: {part.name}: {part.reason}", file=out)
    until = "Ctrl-C" if exit_when_idle is None else f"idle for {exit_when_idle:g} s, or Ctrl-C"
    print(f"running until {until}", file=out, flush=True)


@dataclass
class _Counts:
    invocations: int = 0
    records: int = 0
    failed: int = 0
    last_failure: str | None = None

    def add(self, invocation: Invocation) -> None:
        self.invocations += 1
        self.records += invocation.records
        if not invocation.succeeded:
            self.failed += 1
            self.last_failure = invocation.outcome

    def describe(self) -> str:
        text = f"{self.invocations:,} invocations, {self.records:,} records, {self.failed:,} failed"
        if self.last_failure is not None:
            text += f" (last: {self.last_failure})"
        return text


class Summary:
    """Counts invocations (`invoked`, called from the shards' threads) and, unless `verbose`
    (which prints one line per invocation instead), prints a summary line at most every
    `interval` seconds while invocations happen, and the totals at the end (`finish`)."""

    def __init__(
        self,
        out: TextIO,
        *,
        verbose: bool = False,
        interval: float = SUMMARY_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.total = _Counts()
        self._out = out
        self._verbose = verbose
        self._interval = interval
        self._clock = clock
        self._lock = threading.Lock()
        self._window = _Counts()
        self._since: float | None = None

    def invoked(self, invocation: Invocation) -> None:
        now = self._clock()
        with self._lock:
            self.total.add(invocation)
            self._window.add(invocation)
            if self._since is None:
                self._since = now
            if self._verbose or now - self._since < self._interval:
                return
            line = f"last {now - self._since:.0f} s: {self._window.describe()}"
            self._window, self._since = _Counts(), now
        print(f"{time.strftime('%H:%M:%S')} {line}", file=self._out, flush=True)

    def finish(self) -> None:
        with self._lock:
            line = f"in all: {self.total.describe()}"
        print(line, file=self._out, flush=True)


class _Formatter(logging.Formatter):
    """`HH:MM:SS message`, with the level named from WARNING up."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        if record.levelno >= logging.WARNING:
            return f"{self.formatTime(record, '%H:%M:%S')} {record.levelname} {text}"
        return f"{self.formatTime(record, '%H:%M:%S')} {text}"


def _not_a_metric_document(record: logging.LogRecord) -> bool:
    # The function's EMF documents are its metrics: kept in the state table, shown with -v.
    return '"_aws"' not in record.getMessage()


@contextmanager
def _logging(verbose: bool, out: TextIO) -> Iterator[None]:
    """Our loggers to `out` while the mapping runs: the mapping's per-invocation lines with
    `verbose` only (warnings always), the function's own lines always."""
    handler = logging.StreamHandler(out)
    handler.setFormatter(_Formatter("%(message)s"))
    levels = {
        "streams": logging.INFO,
        "streams.mapping": logging.INFO if verbose else logging.WARNING,
        "streams.mapping.function": logging.INFO,
    }
    loggers = {name: logging.getLogger(name) for name in levels}
    previous = {name: logger.level for name, logger in loggers.items()}
    function_logs = loggers["streams.mapping.function"]
    for name, level in levels.items():
        loggers[name].setLevel(level)
    loggers["streams"].addHandler(handler)
    if not verbose:
        function_logs.addFilter(_not_a_metric_document)
    try:
        yield
    finally:
        function_logs.removeFilter(_not_a_metric_document)
        loggers["streams"].removeHandler(handler)
        for name, level in previous.items():
            loggers[name].setLevel(level)
