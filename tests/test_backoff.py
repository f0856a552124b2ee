"""One backoff formula for every retry loop, and each loop's default delays."""

from __future__ import annotations

import pytest
from botocore.exceptions import ClientError

from streams import RetryPolicy
from streams.backoff import Backoff, is_throttling
from streams.kcl.processor import DEFAULT_CHECKPOINT_BACKOFF, DEFAULT_HOLD
from streams.mapping import DEFAULT_RETRY_BACKOFF
from streams.sources.reader import DEFAULT_BACKOFF as READER_BACKOFF
from streams.writer.table import DEFAULT_BACKOFF as WRITER_BACKOFF


def _bounds(backoff: Backoff, attempts: int) -> list[float]:
    return [backoff.bound(attempt) for attempt in range(attempts)]


def test_backoff_is_full_jitter_below_a_doubling_cap() -> None:
    draws = iter([0.5, 0.5, 0.5, 0.5, 0.0])
    backoff = Backoff(base=0.25, cap=1.0, random=lambda: next(draws))
    assert [backoff.delay(attempt) for attempt in range(5)] == [0.125, 0.25, 0.5, 0.5, 0.0]


def test_backoff_without_jitter_waits_the_bound_itself() -> None:
    backoff = Backoff(base=1.0, cap=5.0, jitter=False, random=lambda: 0.0)
    assert [backoff.delay(attempt) for attempt in range(5)] == [1, 2, 4, 5, 5]


def test_a_long_streak_of_failures_stays_at_the_cap() -> None:
    assert Backoff(base=0.05, cap=20.0, random=lambda: 1.0).delay(10_000) == 20.0


def test_a_component_randomness_replaces_the_backoffs_own() -> None:
    backoff = Backoff(base=1.0, cap=8.0, random=lambda: 1.0)
    assert backoff.drawing_from(None) is backoff
    assert backoff.drawing_from(lambda: 0.5).delay(2) == 2.0


def test_negative_delays_are_refused() -> None:
    with pytest.raises(ValueError, match="base"):
        Backoff(base=-1.0, cap=1.0)


def test_the_batch_cores_retries_wait_0_2_s_doubling_to_2_s() -> None:
    backoff = RetryPolicy().backoff(lambda: 1.0)
    assert [backoff.delay(retry) for retry in range(6)] == pytest.approx([0.2, 0.4, 0.8, 1.6, 2, 2])
    assert RetryPolicy().retries == 3


def test_the_mappings_retry_pause_is_two_to_the_n_seconds_up_to_a_minute() -> None:
    assert [DEFAULT_RETRY_BACKOFF.delay(n) for n in range(8)] == [1, 2, 4, 8, 16, 32, 60, 60]


def test_the_writer_waits_50_ms_doubling_to_20_s() -> None:
    assert _bounds(WRITER_BACKOFF, 11) == pytest.approx(
        [0.05, 0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 6.4, 12.8, 20, 20]
    )
    assert WRITER_BACKOFF.jitter


def test_a_throttled_reader_waits_250_ms_doubling_to_10_s() -> None:
    assert _bounds(READER_BACKOFF, 7) == [0.25, 0.5, 1, 2, 4, 8, 10]
    assert READER_BACKOFF.jitter


def test_the_kcl_worker_holds_1_s_doubling_to_30_s_and_retries_checkpoints_from_half_a_second() -> (
    None
):
    assert _bounds(DEFAULT_HOLD, 7) == [1, 2, 4, 8, 16, 30, 30]
    assert _bounds(DEFAULT_CHECKPOINT_BACKOFF, 6) == [0.5, 1, 2, 4, 8, 10]


@pytest.mark.parametrize(
    ("code", "throttling"),
    [
        ("ProvisionedThroughputExceededException", True),  # DynamoDB, Kinesis
        ("LimitExceededException", True),  # DynamoDB Streams
        ("ThrottlingException", True),
        ("ValidationException", False),
        ("ResourceNotFoundException", False),
    ],
)
def test_throttling_is_known_by_its_error_code(code: str, throttling: bool) -> None:
    error = ClientError({"Error": {"Code": code, "Message": "m"}}, "GetRecords")
    assert is_throttling(error) is throttling
