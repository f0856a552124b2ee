"""The one backoff formula the project's retry policies share."""

from __future__ import annotations

from collections.abc import Callable


def full_jitter(attempt: int, base: float, cap: float, random: Callable[[], float]) -> float:
    """Truncated binary exponential backoff with full jitter, `attempt` counted from 0:

        t = random() * min(base * 2 ** attempt, cap)

    The exponent is bounded so that a long streak of failures cannot overflow a float.
    """
    return random() * min(base * 2.0 ** min(attempt, 62), cap)
