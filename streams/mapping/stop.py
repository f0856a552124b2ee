"""A mapping's stop, and the waits it ends."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Final

__all__ = ["Stop"]

# The longest uninterrupted sleep: a stop is noticed within this many seconds.
_STEP: Final = 0.25


class Stop:
    """Set once, from any thread; every wait of the mapping (`pause`) ends soon after.

    Waits sleep through the injected `sleep`, in steps, so that tests of minutes-long rules run
    on a fake clock.
    """

    def __init__(self, sleep: Callable[[float], None] = time.sleep) -> None:
        self._event = threading.Event()
        self._sleep = sleep

    def set(self) -> None:
        self._event.set()

    def is_set(self) -> bool:
        return self._event.is_set()

    def pause(self, seconds: float) -> bool:
        """Sleep `seconds`; False if the stop was set meanwhile (or before)."""
        remaining = seconds
        while remaining > 0 and not self._event.is_set():
            step = min(remaining, _STEP)
            self._sleep(step)
            remaining -= step
        return not self._event.is_set()
