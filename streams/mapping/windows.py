"""Tumbling windows: aggregation state passed between invocations (docs/esm.md section 6).

Windows are aligned on the epoch and follow record arrival time: a record arriving at `t`
belongs to `[t - t mod W, that + W)`. Batches never mix windows. Each invocation gets the state
the previous one of its window returned (`{}` for the first); the last one of a window has
`isFinalInvokeForWindow` set — it carries the window's last records when they are known to be
the last (the next record is in a later window, or the window's end has passed), else it has no
records. A returned state larger than 1 MB ends the window early: a final invocation with
`isWindowTerminatedEarly` follows at once, and the same window goes on with a fresh state. A
closing shard ends its window; its children start with empty state.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from streams.mapping.invoke import Event
from streams.mapping.shapes import iso_seconds

__all__ = ["MAX_STATE_BYTES", "Window", "window_start"]

MAX_STATE_BYTES: Final = 1024 * 1024


def window_start(arrival: float, seconds: int) -> float:
    """The start of the window of a record that arrived at `arrival` (epoch seconds)."""
    return float(int(arrival) - int(arrival) % seconds)


@dataclass
class Window:
    """One open window of one lane: its bounds and the state its invocations pass along."""

    start: float
    seconds: int
    state: dict[str, Any] = field(default_factory=dict)  # replaced through `pass_on`
    #: The state's size as JSON (ASCII: characters are bytes), measured once when it is set;
    #: every batch's size budget and the 1 MB limit read it.
    state_size: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        self.pass_on(self.state)

    def pass_on(self, state: dict[str, Any]) -> None:
        """The state the next invocation of this window gets."""
        self.state, self.state_size = state, len(json.dumps(state))

    @property
    def state_too_large(self) -> bool:
        return self.state_size > MAX_STATE_BYTES

    @property
    def end(self) -> float:
        return self.start + self.seconds

    def event(
        self,
        records: Sequence[str],
        *,
        shard_id: str,
        source_arn: str,
        final: bool,
        terminated_early: bool = False,
    ) -> Event:
        """The event of one invocation in this window (`records` as JSON texts), in the field
        order of AWS's examples."""
        return Event.of_records(
            records,
            window={"start": iso_seconds(self.start), "end": iso_seconds(self.end)},
            state=self.state,
            shardId=shard_id,
            eventSourceARN=source_arn,
            isFinalInvokeForWindow=final,
            isWindowTerminatedEarly=terminated_early,
        )
