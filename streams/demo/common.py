"""What every scenario of `streams demo` shares: faults, the mapping's run, and the delay.

- `Faults`: `--faults RATE` for the writer, the mapping and the function's workers (their
  dead-letter queue calls included), each with a fault log of its own kind (`faults.py`);
- `MappingRun`: the local mapping in a thread, and what its invocations tell: when the last
  record was delivered, how many invocations failed (a killed worker is one);
- `Delay`: the peak iterator age and the time from the last write to the last delivery.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from streams.demo.faults import (
    KINDS,
    FaultInjector,
    FaultKind,
    FaultPlan,
    count_faults,
    worker_environment,
)
from streams.local.endpoint import local_session
from streams.local.run import LocalMapping
from streams.mapping import Invocation
from streams.monitor.history import MonitorSampler
from streams.monitor.model import Sample

if TYPE_CHECKING:
    import boto3

    from streams.local.stack import DeployedStack

__all__ = ["Delay", "FaultCounts", "Faults", "MappingRun", "peak_iterator_age_ms"]

logger = logging.getLogger("streams.demo")

#: The chance a worker is killed, per AWS call attempt of the function, is the fault rate / 50:
#: at --faults 0.05, one attempt in a thousand.
KILL_SHARE = 50


@dataclass(frozen=True)
class FaultCounts:
    """The faults injected during a run, by kind and by where."""

    by_kind: Mapping[FaultKind, int]
    by_where: Mapping[str, int]

    @property
    def total(self) -> int:
        return sum(self.by_kind.values())


class Faults:
    """`--faults RATE` (0: none): faulted boto3 sessions and the workers' variables."""

    def __init__(self, rate: float, *, seed: int, region: str, directory: Path) -> None:
        self.rate = rate
        self.region = region
        self.plan = FaultPlan(
            rate=rate,
            log=str(directory / "faults.log"),
            seed=seed,
            kill_rate=rate / KILL_SHARE,
        )

    @property
    def on(self) -> bool:
        return self.rate > 0

    def session(self, where: str) -> boto3.Session:
        """A session whose clients fail `rate` of their calls (the endpoint's own otherwise)."""
        session = local_session(self.region)
        if self.on:
            # Only the workers are killed: they are the function, which Lambda restarts.
            plan = FaultPlan(rate=self.plan.rate, log=self.plan.log, seed=self.plan.seed)
            FaultInjector(plan, where).install(session.events)
        return session

    def worker_environment(self) -> dict[str, str]:
        return worker_environment(self.plan) if self.on else {}

    def counts(self) -> FaultCounts:
        counted = count_faults(Path(self.plan.log))
        by_kind: Counter[FaultKind] = Counter({kind: 0 for kind in KINDS})
        by_where: Counter[str] = Counter()
        for (where, kind), count in counted.items():
            by_kind[kind] += count
            by_where[where] += count
        return FaultCounts(dict(by_kind), dict(by_where))


@contextlib.contextmanager
def fault_directory() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="streams-demo-") as directory:
        yield Path(directory)


class MappingRun:
    """The function's local mapping in a thread, with the scenario's faults; `prepare` is given
    each session the mapping's clients are made from (a scenario's botocore hooks).

    `last_delivery` is when an invocation last succeeded with records (epoch seconds);
    `failed_invocations` counts the invocations that failed (raised, timed out, or crashed:
    a killed worker).
    """

    def __init__(
        self,
        stack: DeployedStack,
        function: str,
        faults: Faults,
        *,
        prepare: Callable[[boto3.Session], None] | None = None,
    ) -> None:
        self.stack = stack
        self.function = function
        self.faults = faults
        self._prepare = prepare
        self.last_delivery: float | None = None
        self.failed_invocations = 0
        self.invocations = 0
        self._lock = threading.Lock()
        self._mapping: LocalMapping | None = None
        self._thread: threading.Thread | None = None
        self._failure: BaseException | None = None

    def mapping(self) -> LocalMapping:
        session = self.faults.session("mapping")
        if self._prepare is not None:
            self._prepare(session)
        return LocalMapping(
            self.stack,
            self.function,
            session=session,
            environment=self.faults.worker_environment(),
            on_invocation=self._seen,
        )

    def _seen(self, invocation: Invocation) -> None:
        with self._lock:
            self.invocations += 1
            if invocation.result.error is not None:
                self.failed_invocations += 1
            elif invocation.records:
                self.last_delivery = time.time()

    def start(self) -> LocalMapping:
        self._mapping = self.mapping()
        mapping = self._mapping

        def run() -> None:
            try:
                mapping.run()
            except BaseException as error:  # raised by `stop`, in the scenario's thread
                self._failure = error

        self._thread = threading.Thread(target=run, name="local-mapping", daemon=True)
        self._thread.start()
        return mapping

    @property
    def failure(self) -> BaseException | None:
        return self._failure

    def stop(self) -> None:
        """Stop the mapping (batches in flight finish); raise what stopped it, if anything."""
        if self._mapping is not None:
            self._mapping.stop()
        if self._thread is not None:
            self._thread.join()
        if self._failure is not None:
            raise self._failure

    def drain(self, idle_seconds: float) -> None:
        """A fresh mapping from the checkpoints, until the stream has had nothing for a while:
        every record written is then delivered (the counters may count a retried one twice)."""
        self.mapping().run(exit_when_idle=idle_seconds)


def peak_iterator_age_ms(samples: Sequence[Sample]) -> float | None:
    ages = [age for sample in samples for age in sample.iterator_age_ms.values()]
    return max(ages) if ages else None


def write_scenario_chart(sampler: MonitorSampler, path: Path | None, scenario: str) -> Path | None:
    """The run's chart of iterator age and throughput, if asked for (the `plot` extra)."""
    if path is None:
        return None
    from streams.monitor.chart import write_chart

    return write_chart(
        sampler.history.samples, path, title=f"{scenario}: iterator age and throughput"
    )


@dataclass(frozen=True)
class Delay:
    """How far behind the processing fell: the peak iterator age, and the seconds from the
    last write to the last delivery."""

    peak_iterator_age_ms: float | None
    last_write_to_last_delivery: float | None
