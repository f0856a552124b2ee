"""The chart of iterator age and throughput (matplotlib, the ``plot`` extra, imported on use)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from streams.errors import UserError
from streams.monitor.model import Sample

if TYPE_CHECKING:
    pass

__all__ = ["PLOT_EXTRA_HINT", "write_chart"]

PLOT_EXTRA_HINT = "writing a chart needs matplotlib: pip install 'streams[plot]'"


def write_chart(
    samples: Sequence[Sample],
    path: str | Path,
    *,
    title: str = "Iterator age and throughput",
) -> Path:
    """A PNG of iterator age (seconds, one line per shard or function) and records/s over time.

    Needs matplotlib (the ``plot`` extra): `UserError` with the install line without it.
    """
    try:
        from matplotlib.figure import Figure
        from matplotlib.ticker import FuncFormatter
    except ImportError:
        raise UserError(PLOT_EXTRA_HINT) from None
    target = Path(path)
    figure = Figure(figsize=(10, 6.5), layout="constrained")
    age_axes, rate_axes = figure.subplots(2, 1, sharex=True)
    figure.suptitle(title)
    times = [sample.at for sample in samples]  # epoch seconds; ticks show the UTC time
    labels = sorted({label for sample in samples for label in sample.iterator_age_ms})
    for label in labels:
        points = [
            (when, sample.iterator_age_ms[label] / 1000)
            for when, sample in zip(times, samples, strict=True)
            if label in sample.iterator_age_ms
        ]
        age_axes.plot(
            [when for when, _ in points], [age for _, age in points], marker=".", label=label
        )
    rates = [
        (when, sample.records_per_second)
        for when, sample in zip(times, samples, strict=True)
        if sample.records_per_second is not None
    ]
    rate_axes.plot(
        [when for when, _ in rates],
        [rate for _, rate in rates],
        marker=".",
        color="tab:green",
        label="records/s (processed + parked)",
    )
    age_axes.set_ylabel("iterator age (s)")
    age_axes.set_title("How far behind: age of the last record sent to the function")
    rate_axes.set_ylabel("records/s")
    day = f", {datetime.fromtimestamp(times[0], tz=UTC):%Y-%m-%d}" if times else ""
    rate_axes.set_xlabel(f"time (UTC{day})")
    rate_axes.set_title("Throughput: records done per second")
    for axes, has_data in ((age_axes, bool(labels)), (rate_axes, bool(rates))):
        axes.grid(visible=True, alpha=0.3)
        axes.set_ylim(bottom=0)
        if has_data:
            axes.legend(loc="best", fontsize="small")
        else:
            axes.text(0.5, 0.5, "no data", transform=axes.transAxes, ha="center", va="center")
    if times:
        rate_axes.xaxis.set_major_formatter(
            FuncFormatter(lambda at, _: datetime.fromtimestamp(at, tz=UTC).strftime("%H:%M:%S"))
        )
    else:
        rate_axes.set_xticks([])  # no time to show
    target.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(target, format="png", dpi=100)
    return target
