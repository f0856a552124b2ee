"""How long a shard reader waits after its reads were throttled."""

from __future__ import annotations

import random as _random
from collections.abc import Callable
from dataclasses import dataclass, field

from streams.backoff import full_jitter


@dataclass(frozen=True)
class Backoff:
    """Truncated binary exponential backoff with full jitter.

    `delay(attempt) = random() * min(base * 2 ** attempt, cap)` seconds, `attempt` counting
    the throttled reads in a row from 0. botocore has already retried each call by the time a
    throttling error reaches the reader; this is the pause between the reader's own polls while
    the shard stays throttled.
    """

    base: float = 0.25
    cap: float = 10.0
    random: Callable[[], float] = field(default=_random.random, compare=False)

    def __post_init__(self) -> None:
        if self.base <= 0 or self.cap < self.base:
            raise ValueError(f"need 0 < base <= cap, got base={self.base}, cap={self.cap}")

    def delay(self, attempt: int) -> float:
        return full_jitter(attempt, self.base, self.cap, self.random)
