"""The local event source mapping: one stream, one function, Lambda's rules (docs/esm.md).

`EventSourceMapping.run()` lists the stream's shards and runs a `ShardWorker` for each shard
that may start: a parent shard is finished before any of its children starts (a Kinesis merge
waits for both parents). It lists the stream again every `shard_refresh_seconds`, and at once
when a shard finishes, so it discovers new shards while it runs.

Where a shard starts:

- at its checkpoint, if it has one (after the last record done);
- else, with `TRIM_HORIZON`, at its oldest record; with `AT_TIMESTAMP`, at the timestamp;
- else (`LATEST`): a shard that appeared while the mapping runs, or whose parent this mapping
  reads, starts at its oldest record (its records are new); a closed shard listed at start is
  skipped (nothing new can come from it); an open one starts at its newest record.

Disabled (`Enabled: false`), the mapping reads nothing and leaves every checkpoint where it
is, so an enabled run later resumes there. `stop()` (or Ctrl-C in `run`) lets the invocations
under way finish and checkpoint; nothing is started after it.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Final

import boto3

from streams.backoff import Backoff
from streams.mapping.delivery import DEFAULT_RETRY_BACKOFF, MappingContext
from streams.mapping.destinations import Destination, open_destination
from streams.mapping.filters import RecordFilter
from streams.mapping.invoke import Invoker
from streams.mapping.settings import MappingSettings
from streams.mapping.shapes import RecordShape
from streams.mapping.shard import POLL_INTERVAL, ShardWorker
from streams.mapping.state import CheckpointStore, MappingObserver, MemoryCheckpointStore
from streams.mapping.stop import Stop
from streams.sources.base import Position, Shard, ShardSource
from streams.sources.lineage import startable_shards

__all__ = ["DEFAULT_RETENTION_SECONDS", "EventSourceMapping"]

logger = logging.getLogger("streams.mapping")

# How long records stay in the stream: 24 h for DynamoDB Streams and by default for Kinesis.
DEFAULT_RETENTION_SECONDS: Final = 24 * 3600.0


class EventSourceMapping:
    """Runs `invoker` on the records of `source` with the rules of `settings`.

    - `function_arn` names the function in on-failure records (`requestContext.functionArn`).
    - `checkpoints` keeps each shard's position (default: in memory, lost at exit).
    - `observer` is told per-shard iterator age and, with `MetricsConfig`, the event counts,
      each shard's state (open, closed, finished) and each invocation's outcome (from the
      shard's threads).
    - `session` makes the on-failure destination's client (default: a new boto3 session), on
      `endpoint_url` when given (a local endpoint).
    - `function_timeout` is the function's `Timeout`, passed to the invoker as its deadline.
    - `clock` (epoch seconds) and `sleep` are injectable: every wait of the mapping sleeps
      through `sleep`, and record ages, batching and tumbling windows follow `clock`.
    - `retention_seconds`: how long records stay in the stream (`MaximumRecordAgeInSeconds: -1`
      retries until then).
    - `mapping_id` names the mapping in S3 on-failure object keys (AWS: the mapping's UUID).
    """

    def __init__(
        self,
        settings: MappingSettings,
        source: ShardSource,
        invoker: Invoker,
        *,
        function_arn: str,
        checkpoints: CheckpointStore | None = None,
        observer: MappingObserver | None = None,
        session: boto3.Session | None = None,
        function_timeout: float = 3.0,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
        shard_refresh_seconds: float = 10.0,
        retention_seconds: float = DEFAULT_RETENTION_SECONDS,
        backoff: Backoff = DEFAULT_RETRY_BACKOFF,
        mapping_id: str | None = None,
        endpoint_url: str | None = None,
    ) -> None:
        if source.event_source != settings.event_source:
            raise ValueError(
                f"settings are for {settings.event_source}, the source is {source.event_source}"
            )
        self.settings = settings
        self.mapping_id = mapping_id or str(uuid.uuid4())
        self._source = source
        self._checkpoints: CheckpointStore = checkpoints or MemoryCheckpointStore()
        self._clock = clock
        self._shard_refresh_seconds = shard_refresh_seconds
        self._stop = Stop(sleep)
        destination: Destination | None = None
        if settings.on_failure_destination is not None:
            destination = open_destination(
                settings.on_failure_destination,
                session or boto3.Session(),
                mapping_id=self.mapping_id,
                endpoint_url=endpoint_url,
            )
        self._context = MappingContext(
            settings=settings,
            shape=RecordShape(settings.event_source),
            source_arn=source.source_arn,
            function_arn=function_arn,
            function_timeout=function_timeout,
            invoker=invoker,
            destination=destination,
            observer=observer or MappingObserver(),
            clock=clock,
            pause=self._stop.pause,
            stopping=self._stop.is_set,
            retention_seconds=retention_seconds,
            backoff=backoff,
        )
        self._filter = RecordFilter(settings.event_source, settings.filters)
        self._workers: dict[str, ShardWorker] = {}
        self._started: set[str] = set()
        self._read: set[str] = set()  # shards this mapping has read (not skipped)
        self._finished: set[str] = set()
        self._initial: set[str] = set()
        self._last_change = clock()
        self._ran = False

    # --- control -------------------------------------------------------------------------

    def stop(self) -> None:
        """Stop: invocations under way finish and checkpoint; `run` then returns."""
        self._stop.set()
        for worker in list(self._workers.values()):
            worker.wake()

    def run(self, *, exit_when_idle: float | None = None) -> None:
        """Process the stream until `stop()`, or until idle for `exit_when_idle` seconds.

        Idle: every shard caught up (or finished) with nothing left to deliver, no tumbling
        window open. An error in a shard's reading, the invoker or the checkpoint store stops
        the mapping (in-flight batches finish) and is raised here. Ctrl-C stops it the same way,
        then `KeyboardInterrupt` propagates.
        """
        if self._ran:
            raise RuntimeError("an EventSourceMapping runs once: make a new one to run again")
        self._ran = True
        if not self.settings.enabled:
            logger.info(
                "mapping %s for %s is disabled (Enabled: false): nothing is read, "
                "checkpoints stay where they are",
                self.mapping_id,
                self._source.source_arn,
            )
            return
        tick = POLL_INTERVAL[self.settings.event_source]
        listing = self._list()
        listed_at = self._clock()
        self._initial = {shard.shard_id for shard in listing}
        try:
            while True:
                shard_finished = self._reap()
                if self._stop.is_set():
                    break
                if shard_finished:
                    listing, listed_at = self._list(), self._clock()
                self._start_ready(listing)
                if exit_when_idle is not None and self._idle_for() >= exit_when_idle:
                    logger.info(
                        "mapping %s: idle for %ss, stopping", self.mapping_id, exit_when_idle
                    )
                    break
                if not self._stop.pause(tick):
                    break
                if self._clock() - listed_at >= self._shard_refresh_seconds:
                    listing, listed_at = self._list(), self._clock()
        except KeyboardInterrupt:
            logger.info("mapping %s: stopping, letting in-flight batches finish", self.mapping_id)
            raise
        finally:
            self.stop()
            for worker in self._workers.values():
                worker.join()
        for worker in self._workers.values():
            if worker.error is not None:
                raise worker.error

    # --- shards --------------------------------------------------------------------------

    def _reap(self) -> bool:
        """Retire finished workers; stop on a failed one. True if a shard finished."""
        finished = False
        for shard_id, worker in list(self._workers.items()):
            if worker.error is not None:
                self._stop.set()
                return False
            if worker.finished:
                worker.join()
                del self._workers[shard_id]
                self._finished.add(shard_id)
                self._last_change = self._clock()
                finished = True
        return finished

    def _list(self) -> list[Shard]:
        """The stream's shards; a shard being read that is now listed closed is `closed`."""
        listing = self._source.list_shards()
        for shard in listing:
            if shard.closed and shard.shard_id in self._workers:
                self._context.shard_state(shard.shard_id, "closed")
        return listing

    def _start_ready(self, listing: list[Shard]) -> None:
        # Skipping a shard (LATEST, closed) can make its children ready: look again until
        # nothing changes.
        while True:
            ready = startable_shards(listing, finished=self._finished, started=self._started)
            if not ready:
                return
            for shard in ready:
                self._start(shard)

    def _start(self, shard: Shard) -> None:
        self._started.add(shard.shard_id)
        self._last_change = self._clock()
        if self._checkpoints.finished(shard.shard_id):
            # Read to its end and done by an earlier run: its children may start at once.
            logger.info("shard %s: finished in an earlier run: not read again", shard.shard_id)
            self._finished.add(shard.shard_id)
            self._read.add(shard.shard_id)
            self._context.shard_state(shard.shard_id, "finished")
            return
        checkpoint = self._checkpoints.get(shard.shard_id)
        position = self._position(shard, checkpoint)
        if position is None:
            logger.info(
                "shard %s: closed before the mapping started at LATEST: skipped", shard.shard_id
            )
            self._finished.add(shard.shard_id)
            return
        logger.info("shard %s: starting at %s", shard.shard_id, _describe(position))
        worker = ShardWorker(
            shard.shard_id,
            self._source.open(shard.shard_id, position),
            context=self._context,
            record_filter=self._filter,
            checkpoints=self._checkpoints,
            start_sequence_number=checkpoint,
        )
        self._workers[shard.shard_id] = worker
        self._read.add(shard.shard_id)
        self._context.shard_state(shard.shard_id, "closed" if shard.closed else "open")
        worker.start()

    def _position(self, shard: Shard, checkpoint: str | None) -> Position | None:
        """Where a shard starts (see the module docstring); None to skip it."""
        settings = self.settings
        if checkpoint is not None:
            return Position("AFTER_SEQUENCE_NUMBER", sequence_number=checkpoint)
        if settings.starting_position == "TRIM_HORIZON":
            return Position("TRIM_HORIZON")
        if settings.starting_position == "AT_TIMESTAMP":
            assert settings.starting_position_timestamp is not None  # checked by the settings
            return Position(
                "AT_TIMESTAMP",
                timestamp=datetime.fromtimestamp(settings.starting_position_timestamp, UTC),
            )
        read_parent = any(parent in self._read for parent in shard.parent_shard_ids)
        if shard.shard_id not in self._initial or read_parent:
            return Position("TRIM_HORIZON")
        if shard.closed:
            return None
        return Position("LATEST")

    def _idle_for(self) -> float:
        """Seconds every shard has been idle, or 0 while one is busy."""
        latest = self._last_change
        for worker in self._workers.values():
            if worker.finished:
                return 0.0  # not reaped yet: once it is, its children may start
            since = worker.idle_since()
            if since is None:
                return 0.0
            latest = max(latest, since)
        return self._clock() - latest


def _describe(position: Position) -> str:
    if position.sequence_number is not None:
        return f"its checkpoint ({position.kind} {position.sequence_number})"
    if position.timestamp is not None:
        return f"{position.kind} {position.timestamp.isoformat()}"
    return position.kind
