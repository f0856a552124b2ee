"""When to try again, and how long to wait first: one backoff and one set of throttling codes.

Every retry loop of the project waits through a `Backoff`: the batch core's in-place retries
(`RetryPolicy`), the writer's refused writes, the shard readers' throttled polls, the KCL
worker's held batches and checkpoints, the local mapping's failed batches. Each keeps its own
defaults; the formula is this one.
"""

from __future__ import annotations

import random as _random
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from botocore.exceptions import ClientError

__all__ = ["THROTTLING_CODES", "Backoff", "is_throttling"]

#: Error codes AWS services answer when a caller must slow down (botocore's list for its retry
#: modes, plus DynamoDB Streams' `LimitExceededException` and DynamoDB's
#: `TransactionInProgressException`).
THROTTLING_CODES = frozenset(
    {
        "ThrottlingException",
        "Throttling",
        "ThrottledException",
        "RequestThrottledException",
        "TooManyRequestsException",
        "ProvisionedThroughputExceededException",
        "RequestLimitExceeded",
        "TransactionInProgressException",
        "RequestThrottled",
        "SlowDown",
        "BandwidthLimitExceeded",
        "LimitExceededException",
        "PriorRequestNotComplete",
        "EC2ThrottledException",
    }
)


def is_throttling(error: ClientError) -> bool:
    """True if the call was refused for its rate (a code of `THROTTLING_CODES`)."""
    return error.response.get("Error", {}).get("Code", "") in THROTTLING_CODES


def _exponential(attempt: int, base: float, cap: float) -> float:
    # The exponent is bounded so that a long streak of failures cannot overflow a float.
    return min(base * 2.0 ** min(attempt, 62), cap)


@dataclass(frozen=True)
class Backoff:
    """Truncated binary exponential backoff with full jitter.

    Before retry `attempt` (counted from 0) wait

        delay(attempt) = random() * min(base * 2 ** attempt, cap)      seconds,

    with `random` uniform in [0, 1) (injectable, so tests choose the draws). Without `jitter`
    the wait is the bound itself, `min(base * 2 ** attempt, cap)`: for pauses that nothing runs
    in step with (the local mapping's, one per shard).
    """

    base: float
    cap: float
    jitter: bool = True
    random: Callable[[], float] = field(default=_random.random, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.base < 0 or self.cap < self.base:
            raise ValueError(f"need 0 <= base <= cap, got base={self.base}, cap={self.cap}")

    def bound(self, attempt: int) -> float:
        """The longest wait before retry `attempt`: min(base * 2 ** attempt, cap)."""
        return _exponential(attempt, self.base, self.cap)

    def delay(self, attempt: int) -> float:
        bound = self.bound(attempt)
        return self.random() * bound if self.jitter else bound

    def drawing_from(self, random: Callable[[], float] | None) -> Backoff:
        """This backoff with `random` as its jitter's source; itself when `random` is None (a
        component's own injected randomness, given for tests, applies to all its backoffs)."""
        return self if random is None else replace(self, random=random)
