"""What a function's result means for its batch: the partial batch response table (section 3).

The success and failure forms are those LocalStack recorded against AWS
(`test_dynamodb_report_batch_item_success_scenarios` / `..._failure_scenarios`).
"""

from __future__ import annotations

from typing import Any

import pytest

from streams.mapping import FunctionError, InvokeResult
from streams.mapping.responses import interpret

BATCH = ["101", "102", "103"]


def _outcome(payload: Any, *, report: bool = True, window: bool = False) -> Any:
    return interpret(
        InvokeResult(payload=payload),
        BATCH,
        report_batch_item_failures=report,
        tumbling_window=window,
    )


@pytest.mark.parametrize(
    "payload",
    [[], None, {}, {"batchItemFailures": []}, {"batchItemFailures": None}, ""],
    ids=["empty-list", "null", "empty-dict", "empty-failures", "null-failures", "empty-string"],
)
def test_the_recorded_success_forms_mean_the_whole_batch_is_done(payload: Any) -> None:
    assert _outcome(payload).succeeded


@pytest.mark.parametrize(
    "failure",
    [
        {"itemIdentifier": 123},
        {"itemIdentifier": ""},
        {"itemIdentifier": None},
        {"foo": 123},
        {"foo": None},
        {"itemIdentifier": "999"},
        "103",
    ],
    ids=["number", "empty", "null", "other-key", "other-key-null", "not-in-batch", "not-object"],
)
def test_a_bad_identifier_fails_the_whole_batch_without_a_function_error(failure: Any) -> None:
    outcome = _outcome({"batchItemFailures": [failure]})

    assert (outcome.failed_from, outcome.function_error) == (0, None)


def test_failures_that_are_not_a_list_fail_the_whole_batch() -> None:
    outcome = _outcome({"batchItemFailures": {"itemIdentifier": "101"}})

    assert (outcome.failed_from, outcome.function_error) == (0, None)


def test_the_batch_rewinds_to_the_lowest_reported_record() -> None:
    outcome = _outcome(
        {"batchItemFailures": [{"itemIdentifier": "103"}, {"itemIdentifier": "102"}]}
    )

    assert (outcome.failed_from, outcome.function_error) == (1, None)


def test_without_report_batch_item_failures_the_response_is_ignored() -> None:
    assert _outcome({"batchItemFailures": [{"itemIdentifier": "nope"}]}, report=False).succeeded


def test_a_function_error_fails_the_whole_batch_as_a_function_error() -> None:
    outcome = interpret(
        InvokeResult(error=FunctionError("ZeroDivisionError", "division by zero")),
        BATCH,
        report_batch_item_failures=True,
        tumbling_window=False,
    )

    assert (outcome.failed_from, outcome.function_error, outcome.error_type) == (
        0,
        "Unhandled",
        "ZeroDivisionError",
    )


def test_in_a_tumbling_window_the_response_must_hold_a_state_object() -> None:
    assert _outcome({"state": {"n": 1}}, window=True).state == {"n": 1}
    assert _outcome({"state": "n"}, window=True).failed_from == 0
    assert _outcome({}, window=True, report=False).failed_from == 0
    partial = _outcome(
        {"state": {"n": 1}, "batchItemFailures": [{"itemIdentifier": "102"}]}, window=True
    )
    assert (partial.failed_from, partial.state) == (1, {"n": 1})
