"""Samples of iterator age and throughput over time: for the sparkline and the chart.

`MonitorSampler` takes them in a thread while something else runs (the demo).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from types import TracebackType
from typing import TYPE_CHECKING

from botocore.exceptions import BotoCoreError, ClientError

from streams.errors import UserError
from streams.monitor.model import Monitor, MonitorSnapshot, Sample

if TYPE_CHECKING:
    pass

logger = logging.getLogger("streams.monitor")

__all__ = ["MonitorHistory", "MonitorSampler", "sparkline"]

_SPARKS = "▁▂▃▄▅▆▇█"


class MonitorHistory:
    """Samples over time, oldest first, at most `limit` of them (the oldest go first).

    `add` keeps one sample per time: a CloudWatch snapshot brings its window's per-minute
    samples, and a later read of the same minute replaces the earlier one.
    """

    def __init__(self, limit: int = 10_000) -> None:
        if limit < 1:
            raise ValueError("limit must be positive")
        self.limit = limit
        self._samples: dict[float, Sample] = {}
        self._lock = threading.Lock()

    def add(self, snapshot: MonitorSnapshot) -> None:
        new = snapshot.series or (snapshot.sample(),)
        with self._lock:
            for sample in new:
                self._samples[sample.at] = sample
            while len(self._samples) > self.limit:
                del self._samples[min(self._samples)]

    @property
    def samples(self) -> tuple[Sample, ...]:
        with self._lock:
            return tuple(self._samples[at] for at in sorted(self._samples))

    def iterator_ages(self, label: str, last: int) -> list[float | None]:
        """The last `last` iterator ages of one row (None where a sample had none)."""
        return [sample.iterator_age_ms.get(label) for sample in self.samples[-last:]]


class MonitorSampler:
    """Takes a sample every `interval` seconds in a thread while entered (for the demo).

    One sample on entering and one on leaving, so even a short run has a start and an end.
    A read that fails is logged and skipped: the sampler watches, it must not stop the run.

        with MonitorSampler(monitor, interval=1.0) as sampler:
            ...  # run the mapping
        write_chart(sampler.history.samples, "monitor.png")
    """

    def __init__(
        self, monitor: Monitor, *, interval: float = 1.0, history: MonitorHistory | None = None
    ) -> None:
        if interval <= 0:
            raise ValueError("interval must be positive")
        self.monitor = monitor
        self.interval = interval
        self.history = history if history is not None else MonitorHistory()
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="monitor-sampler", daemon=True)

    def sample(self) -> None:
        try:
            self.history.add(self.monitor.snapshot())
        except (BotoCoreError, ClientError, UserError) as error:
            logger.warning("monitor: no sample this time (%s)", error)

    def __enter__(self) -> MonitorSampler:
        self.sample()
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._stopped.set()
        self._thread.join()
        self.sample()

    def _run(self) -> None:
        while not self._stopped.wait(self.interval):
            self.sample()


def sparkline(values: Sequence[float | None]) -> str:
    """One character per value, from ▁ (zero) to █ (the largest); a blank where None."""
    known = [value for value in values if value is not None]
    top = max(known, default=0.0)
    marks = []
    for value in values:
        if value is None:
            marks.append(" ")
        elif top <= 0:
            marks.append(_SPARKS[0])
        else:
            marks.append(_SPARKS[min(len(_SPARKS) - 1, int(value / top * len(_SPARKS)))])
    return "".join(marks)
