"""How fast the writer sends: a rate that follows DynamoDB's throttling."""

from __future__ import annotations

import math
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from streams.writer.encode import MAX_BATCH

__all__ = ["RatePolicy", "SendingRate"]


@dataclass(frozen=True)
class RatePolicy:
    """How the sending rate (writes per second) follows throttling.

    With `r_cut` the rate set by the last cut, at time `t_cut`::

        rate(t) = min(ceiling, r_cut * growth ** (t - t_cut))      speeds up while calm
        on a throttle at t (at most once per `cooldown` seconds):
            r_cut = max(floor, decrease * min(rate(t), accepted(t)));  t_cut = t

    where `accepted(t)` is the rate at which DynamoDB accepted writes over the last `window`
    seconds: after a cut the writer sends a little below what the table just took, and then probes
    upwards again. Before the first throttle the rate is the ceiling (unlimited without one).
    The cooldown keeps the answers to calls sent before a cut from cutting again.
    """

    decrease: float = 0.7
    growth: float = 2.0
    cooldown: float = 0.5
    window: float = 1.0
    floor: float = float(MAX_BATCH)


class SendingRate:
    """Paces calls so that writes go out at most at the current rate of a `RatePolicy`.

    `reserve(n)` books the next `n` writes and says how long to wait before sending them: calls
    start at least `n / rate` seconds apart (a virtual-time scheduler, so no burst beyond one call
    builds up while idle). Thread-safe; time comes from the injected clock.
    """

    def __init__(
        self, ceiling: float | None, policy: RatePolicy, clock: Callable[[], float]
    ) -> None:
        self._ceiling = math.inf if ceiling is None else ceiling
        self._policy = policy
        self._clock = clock
        self._lock = threading.Lock()
        self._cut: tuple[float, float] | None = None  # (r_cut, t_cut)
        self._accepted: deque[tuple[float, int]] = deque()
        self._accepted_in_window = 0
        self._next_start = -math.inf

    def rate(self) -> float:
        """The current rate in writes per second (`inf` when nothing limits it)."""
        with self._lock:
            return self._rate_at(self._clock())

    def reserve(self, writes: int) -> float:
        """Book `writes` writes; return how many seconds to wait before sending them."""
        with self._lock:
            now = self._clock()
            rate = self._rate_at(now)
            if math.isinf(rate):
                return 0.0
            start = max(self._next_start, now)
            self._next_start = start + writes / rate
            return start - now

    def accepted(self, writes: int) -> None:
        """DynamoDB accepted `writes` writes just now."""
        with self._lock:
            now = self._clock()
            self._accepted.append((now, writes))
            self._accepted_in_window += writes
            self._trim(now)

    def throttled(self) -> None:
        """DynamoDB refused something for capacity just now: slow down (see `RatePolicy`)."""
        policy = self._policy
        with self._lock:
            now = self._clock()
            if self._cut is not None and now - self._cut[1] < policy.cooldown:
                return
            self._trim(now)
            measured = self._accepted_in_window / policy.window
            rate = min(self._rate_at(now), measured)
            self._cut = (max(policy.floor, policy.decrease * rate), now)

    def _rate_at(self, now: float) -> float:
        if self._cut is None:
            return self._ceiling
        rate, since = self._cut
        try:
            grown = rate * math.pow(self._policy.growth, now - since)
        except OverflowError:
            grown = math.inf
        return min(self._ceiling, grown)

    def _trim(self, now: float) -> None:
        while self._accepted and self._accepted[0][0] <= now - self._policy.window:
            self._accepted_in_window -= self._accepted.popleft()[1]
