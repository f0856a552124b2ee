"""The one backoff formula the project's retry policies share."""

from __future__ import annotations

from collections.abc import Callable


def exponential(attempt: int, base: float, cap: float) -> float:
    """Truncated binary exponential backoff, `attempt` counted from 0: min(base * 2 ** attempt,
    cap). The exponent is bounded so that a long streak of failures cannot overflow a float."""
    return min(base * 2.0 ** min(attempt, 62), cap)


def full_jitter(attempt: int, base: float, cap: float, random: Callable[[], float]) -> float:
    """`exponential` with full jitter: t = random() * min(base * 2 ** attempt, cap)."""
    return random() * exponential(attempt, base, cap)
