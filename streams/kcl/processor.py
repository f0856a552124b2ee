"""The amazon-kclpy record processor: the batch core on a fleet run by the Kinesis Client Library.

KCL's Java MultiLangDaemon leases shards (a DynamoDB lease table), starts one child process per
shard lease (`streams kcl worker`) and talks to it in line-delimited JSON over stdin/stdout.
amazon-kclpy's `KCLProcess` runs that loop in the child and calls `KclRecordProcessor`, which
hands each batch to the same `StreamProcessor` (and so the same handler, poison rules and
dead-letter message) that runs in Lambda:

- Each KCL record becomes the Lambda record shape (docs/esm.md section 5), so a handler cannot tell
  where it runs; a KPL aggregate that reaches the worker whole is split into its user records.
- Poison is parked and the batch goes on. A record that must be tried again *holds the shard*:
  KCL has no partial batch response, so the rest of the batch runs again after a backoff, until
  the record succeeds or is old enough for the core to park it as `too-old`.
- KCL resumes *after* a checkpoint, so the processor checkpoints at `BatchResult.last_done`
  (Lambda resumes *at* `BatchResult.failed_record`): after each batch, and after the records
  done before a held one.
- Checkpoint errors: `ThrottlingException` and `KinesisClientLibDependencyException` are retried
  with backoff; `ShutdownException` (the lease is gone) stops the batch; anything else is fatal.
- `shard_ended` always checkpoints (KCL starts the child shards only then), `shutdown_requested`
  checkpoints what is done (graceful lease hand-off), `lease_lost` never checkpoints.
- Fatal errors end the process with status 1. amazon-kclpy would otherwise log an exception from a
  processor and report the action done, skipping the batch. The MultiLangDaemon exits when a child
  fails; restarted, the worker resumes each shard after its last checkpoint.
"""

from __future__ import annotations

import os
import sys
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal, Protocol, TextIO

from amazon_kclpy import kcl as _kcl  # type: ignore[import-untyped]
from amazon_kclpy.v3 import processor as _v3  # type: ignore[import-untyped]

from streams.backoff import Backoff
from streams.batch import Halted, StreamProcessor
from streams.kpl import deaggregate, may_be_aggregate
from streams.records import KinesisRecord, StreamRecord

__all__ = [
    "DEFAULT_CHECKPOINT_BACKOFF",
    "DEFAULT_HOLD",
    "RETRYABLE_CHECKPOINT_ERRORS",
    "CheckpointFailed",
    "KclRecordProcessor",
    "RecordPosition",
    "StreamSource",
    "claim_stdout",
    "lambda_record",
    "run",
]

#: Checkpoint errors worth another try (the MultiLangDaemon sends the Java exception's simple name).
RETRYABLE_CHECKPOINT_ERRORS = frozenset(
    {"ThrottlingException", "KinesisClientLibDependencyException"}
)
#: The lease is no longer this worker's: checkpointing can never succeed again.
SHUTDOWN_EXCEPTION = "ShutdownException"
_SHARD_END = {"sequenceNumber": "SHARD_END"}

#: How a checkpoint ended: "given up" after the retryable errors used every attempt.
CheckpointOutcome = Literal["checkpointed", "given up", "lease gone"]


class KclRecord(Protocol):
    """A record as amazon-kclpy delivers it (`amazon_kclpy.messages.Record`)."""

    @property
    def sequence_number(self) -> str: ...
    @property
    def sub_sequence_number(self) -> int: ...
    @property
    def partition_key(self) -> str: ...
    @property
    def data(self) -> str: ...
    @property
    def timestamp_millis(self) -> int: ...


class Checkpointer(Protocol):
    def checkpoint(
        self, sequence_number: str | None = None, sub_sequence_number: int | None = None
    ) -> None: ...


class InitializeInput(Protocol):
    @property
    def shard_id(self) -> str: ...
    @property
    def sequence_number(self) -> str | None: ...
    @property
    def sub_sequence_number(self) -> int | None: ...


class ProcessRecordsInput(Protocol):
    @property
    def records(self) -> Sequence[KclRecord]: ...
    @property
    def checkpointer(self) -> Checkpointer: ...
    @property
    def millis_behind_latest(self) -> int | None: ...


class CheckpointInput(Protocol):
    """What `shardEnded` and `shutdownRequested` carry."""

    @property
    def checkpointer(self) -> Checkpointer: ...


class CheckpointFailed(RuntimeError):
    """A checkpoint error that no retry can fix (fatal)."""


#: The reruns of a batch held on a record: 1 s doubling to 30 s, with full jitter.
DEFAULT_HOLD = Backoff(base=1.0, cap=30.0)
#: The retries of a throttled checkpoint: 0.5 s doubling to 10 s, with full jitter.
DEFAULT_CHECKPOINT_BACKOFF = Backoff(base=0.5, cap=10.0)


@dataclass(frozen=True)
class StreamSource:
    """Where the records come from, for the Lambda record shape (KCL's records do not say)."""

    stream_arn: str | None = None
    region: str | None = None


@dataclass(frozen=True)
class RecordPosition:
    """A place in the shard that KCL delivered: a checkpoint there resumes after it."""

    sequence_number: str
    sub_sequence_number: int


def lambda_record(record: KclRecord, shard_id: str, source: StreamSource) -> dict[str, Any]:
    """One KCL record in the shape Lambda delivers (docs/esm.md section 5).

    KCL gives the arrival time in epoch milliseconds; Lambda in epoch seconds. Lambda's
    `invokeIdentityArn` (the function's role) has no counterpart on a fleet: it is None.
    """
    sequence = record.sequence_number
    return {
        "kinesis": {
            "kinesisSchemaVersion": "1.0",
            "partitionKey": record.partition_key,
            "sequenceNumber": sequence,
            "data": record.data,
            "approximateArrivalTimestamp": record.timestamp_millis / 1000,
        },
        "eventSource": "aws:kinesis",
        "eventVersion": "1.0",
        "eventID": f"{shard_id}:{sequence}",
        "eventName": "aws:kinesis:record",
        "invokeIdentityArn": None,
        "awsRegion": source.region,
        "eventSourceARN": source.stream_arn,
    }


class KclRecordProcessor(_v3.RecordProcessorBase):  # type: ignore[misc]
    """An amazon-kclpy v3 record processor around a `StreamProcessor`; see the module docstring.

    `hold` paces the reruns of a batch held on a record; `checkpoint_backoff` the retries of a
    throttled checkpoint, at most `checkpoint_attempts` tries in all (then the checkpoint is left
    to the next batch, and the records done since it may be delivered again after a failover).
    `random`, when given, is the randomness of both backoffs' jitter.
    """

    def __init__(
        self,
        core: StreamProcessor,
        *,
        source: StreamSource | None = None,
        hold: Backoff | None = None,
        checkpoint_backoff: Backoff | None = None,
        checkpoint_attempts: int = 8,
        sleep: Callable[[float], None] = time.sleep,
        random: Callable[[], float] | None = None,
    ) -> None:
        if checkpoint_attempts < 1:
            raise ValueError("checkpoint_attempts must be at least 1")
        self.core = core
        self.source = source if source is not None else StreamSource()
        self.hold = (hold or DEFAULT_HOLD).drawing_from(random)
        self.checkpoint_backoff = (checkpoint_backoff or DEFAULT_CHECKPOINT_BACKOFF).drawing_from(
            random
        )
        self.checkpoint_attempts = checkpoint_attempts
        self.shard_id = ""
        self._sleep = sleep
        self._done: RecordPosition | None = None
        self._checkpointed: RecordPosition | None = None

    # amazon-kclpy's v3 interface -------------------------------------------------------------

    def initialize(self, initialize_input: InitializeInput) -> None:
        with self._fatal_on_error("initialize"):
            self.shard_id = initialize_input.shard_id
            self.core.logger.append_keys(shardId=self.shard_id)
            # Where KCL resumes the shard: after this checkpoint (or TRIM_HORIZON, LATEST, ...).
            self.core.logger.info(
                "shard lease taken",
                extra={
                    "checkpoint": initialize_input.sequence_number,
                    "subSequenceNumber": initialize_input.sub_sequence_number,
                },
            )

    def process_records(self, process_records_input: ProcessRecordsInput) -> None:
        with self._fatal_on_error("processRecords"):
            records, positions = self._views(process_records_input.records)
            if records:
                self._process(records, positions, process_records_input.checkpointer)

    def lease_lost(self, lease_lost_input: object) -> None:
        # Another worker holds the shard now: a checkpoint would fail, and must not be tried.
        self.core.logger.warning("shard lease lost: stopping without a checkpoint")

    def shard_ended(self, shard_ended_input: CheckpointInput) -> None:
        with self._fatal_on_error("shardEnded"):
            # KCL starts a closed shard's children only once its end is checkpointed.
            self.core.logger.info("end of shard: checkpointing it")
            # No position: KCL checkpoints the end of the shard (SHARD_END).
            self._retrying(shard_ended_input.checkpointer.checkpoint, _SHARD_END)

    def shutdown_requested(self, shutdown_requested_input: CheckpointInput) -> None:
        with self._fatal_on_error("shutdownRequested"):
            if self._done is None:
                self.core.logger.info("shutdown requested: nothing processed to checkpoint")
                return
            self.core.logger.info("shutdown requested: checkpointing what is done")
            self._checkpoint(shutdown_requested_input.checkpointer, self._done)

    # ------------------------------------------------------------------------------------------

    def _views(
        self, records: Sequence[KclRecord]
    ) -> tuple[list[StreamRecord], list[RecordPosition | None]]:
        """The batch as views, each with the position to checkpoint at once it is done.

        KCL accepts a checkpoint only at a position it delivered. A KPL aggregate that KCL
        delivered whole (KCL normally splits aggregates itself) is one position: it can be
        checkpointed once its last user record is done, and until then only before it.
        """
        views: list[StreamRecord] = []
        positions: list[RecordPosition | None] = []
        before = self._done
        for record in records:
            raw = lambda_record(record, self.shard_id, self.source)
            position = RecordPosition(record.sequence_number, record.sub_sequence_number)
            if may_be_aggregate(raw):
                user_records = deaggregate(raw)
                for index, (user, sub_sequence_number) in enumerate(user_records, start=1):
                    views.append(
                        KinesisRecord(
                            user,
                            sub_sequence_number=(
                                record.sub_sequence_number
                                if sub_sequence_number is None
                                else sub_sequence_number
                            ),
                        )
                    )
                    positions.append(position if index == len(user_records) else before)
            else:
                views.append(KinesisRecord(raw, sub_sequence_number=record.sub_sequence_number))
                positions.append(position)
            before = position
        return views, positions

    def _process(
        self,
        records: list[StreamRecord],
        positions: list[RecordPosition | None],
        checkpointer: Checkpointer,
    ) -> None:
        """Run the batch through the core, holding on a record that must be tried again."""
        start = 0
        held = 0
        while True:
            result = self.core.run(records[start:])
            start += result.done
            reached = positions[start - 1] if result.done else None
            if reached is not None:
                self._done = reached
            if result.stop_cause is None:
                break
            # The records before the held one are done: checkpoint them before waiting, so that
            # a lease hand-off during the wait does not deliver them again.
            if reached is not None and self._checkpoint(checkpointer, reached) == "lease gone":
                return
            delay = self.hold.delay(held)
            held += 1
            failed = result.failed_record
            self.core.logger.warning(
                "holding the shard on a record that must be tried again",
                extra={
                    "cause": result.stop_cause,
                    "holds": held,
                    "delay": round(delay, 3),
                    **(failed.log_fields() if failed is not None else {}),
                },
            )
            self._sleep(delay)
        if self._done is not None and self._done != self._checkpointed:
            self._checkpoint(checkpointer, self._done)

    def _checkpoint(
        self, checkpointer: Checkpointer, position: RecordPosition
    ) -> CheckpointOutcome:
        """Checkpoint at `position`: KCL resumes after it."""
        outcome = self._retrying(
            lambda: checkpointer.checkpoint(position.sequence_number, position.sub_sequence_number),
            _position_fields(position),
        )
        if outcome == "checkpointed":
            self._checkpointed = position
        return outcome

    def _retrying(self, checkpoint: Callable[[], None], where: dict[str, Any]) -> CheckpointOutcome:
        """One checkpoint, tried again on a retryable error; `CheckpointFailed` on the others."""
        attempt = 0
        while True:
            attempt += 1
            try:
                checkpoint()
            except _kcl.CheckpointError as error:
                name = str(error.value)
                if name == SHUTDOWN_EXCEPTION:
                    self.core.logger.warning(
                        "checkpoint refused: the shard lease is gone; stopping", extra=where
                    )
                    return "lease gone"
                if name not in RETRYABLE_CHECKPOINT_ERRORS:
                    raise CheckpointFailed(f"checkpoint at {where} failed with {name}") from error
                if attempt >= self.checkpoint_attempts:
                    self.core.logger.exception(
                        "checkpoint given up: the next one covers these records",
                        extra={"error": name, "attempts": attempt, **where},
                    )
                    return "given up"
                delay = self.checkpoint_backoff.delay(attempt - 1)
                self.core.logger.warning(
                    "checkpoint failed: trying again",
                    extra={"error": name, "attempts": attempt, "delay": round(delay, 3), **where},
                )
                self._sleep(delay)
            else:
                return "checkpointed"

    @contextmanager
    def _fatal_on_error(self, action: str) -> Iterator[None]:
        try:
            yield
        except Exception as error:
            self._log_fatal(action, error)
            raise SystemExit(1) from None

    def _log_fatal(self, action: str, error: Exception) -> None:
        # Types and frames, not messages: the error can be `Halted` by a handler's error whose
        # message repeats an attribute value, and logs never carry one.
        self.core.logger.error(
            "fatal error: the worker exits; KCL resumes the shard after its last checkpoint",
            extra={
                "action": action,
                "errorType": type(error).__name__,
                "stackTrace": _traceback_without_messages(error),
            },
        )


def _traceback_without_messages(error: BaseException) -> str:
    """`error`'s traceback and its causes' (as Python prints them), each exception named by its
    type only, but for ours that are worded from positions, counts and type names."""
    chain: list[BaseException] = []
    current: BaseException | None = error
    while current is not None and all(current is not seen for seen in chain):
        chain.append(current)
        current = current.__cause__ or (
            None if current.__suppress_context__ else current.__context__
        )
    parts: list[str] = []
    for position, exception in enumerate(reversed(chain)):
        if position:
            caused = exception.__cause__ is chain[len(chain) - position]
            parts.append(
                "\nThe above exception was the direct cause of the following exception:\n\n"
                if caused
                else "\nDuring handling of the above exception, another exception occurred:\n\n"
            )
        frames = traceback.format_list(traceback.extract_tb(exception.__traceback__))
        parts.append("Traceback (most recent call last):\n")
        parts.extend(frames)
        name = f"{type(exception).__module__}.{type(exception).__qualname__}"
        if isinstance(exception, CheckpointFailed | Halted):
            name += f": {exception}"
        parts.append(name + "\n")
    return "".join(parts)


def _position_fields(position: RecordPosition) -> dict[str, Any]:
    return {
        "sequenceNumber": position.sequence_number,
        "subSequenceNumber": position.sub_sequence_number,
    }


def claim_stdout() -> TextIO:
    """Keep the process's stdout for the protocol; send everything else written there to stderr.

    The MultiLangDaemon reads every line on the child's stdout as a protocol message. The real
    stdout moves to a new file descriptor for amazon-kclpy; file descriptor 1 and `sys.stdout`
    become stderr, so prints, logs and Powertools metrics (EMF printed to stdout), from Python or
    from anything the process starts, never reach the protocol stream. Call it first, before any
    other code can write.
    """
    sys.stdout.flush()
    protocol = os.fdopen(os.dup(1), "w", encoding="utf-8")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return protocol


def run(processor: KclRecordProcessor, *, stdin: TextIO, stdout: TextIO, stderr: TextIO) -> None:
    """amazon-kclpy's processing loop, until the MultiLangDaemon closes stdin."""
    _kcl.KCLProcess(processor, input_file=stdin, output_file=stdout, error_file=stderr).run()
