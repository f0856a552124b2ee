"""What an invocation's result means for its batch (ESM-SPEC sections 3 and 6).

With `ReportBatchItemFailures`, the function may return `{"batchItemFailures":
[{"itemIdentifier": "<sequence number>"}]}`:

| returned | meaning |
| --- | --- |
| `[]`, `null`, `{}`, `""`, no or empty/null `batchItemFailures` | the batch succeeded |
| identifiers of records in the batch | the records from the lowest one on failed (rewind) |
| an identifier empty, null, under another key, or not in the batch | the whole batch failed |

Without it the returned value is ignored. With tumbling windows the value must be an object with
a `state` object, else the invocation failed. Only a function error (raised, timed out, crashed)
is a *function* error: it alone may bisect, and it alone fills `functionError`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from streams.mapping.invoke import InvokeResult

__all__ = ["Outcome", "interpret"]


@dataclass(frozen=True)
class Outcome:
    """One invocation's verdict on its batch.

    `failed_from` is the index of the first record to deliver again (None: all done; 0: the
    whole batch failed). `function_error` is the function's own error (`Unhandled`), None when
    the batch failed by what it returned. `state` is the tumbling window state returned.
    """

    failed_from: int | None
    description: str
    function_error: str | None = None
    error_type: str | None = None
    state: dict[str, Any] | None = None

    @property
    def succeeded(self) -> bool:
        return self.failed_from is None


def _lowest_failure(payload: object, sequence_numbers: Sequence[str]) -> int | str | None:
    """Index of the lowest reported record, None for none, or a description of a bad report."""
    if not isinstance(payload, dict):
        return None
    failures = payload.get("batchItemFailures")
    if failures is None or failures == []:
        return None
    if not isinstance(failures, list):
        return "batchItemFailures is not a list"
    positions = {number: index for index, number in enumerate(sequence_numbers)}
    lowest: int | None = None
    for failure in failures:
        identifier = failure.get("itemIdentifier") if isinstance(failure, dict) else None
        if not isinstance(identifier, str) or identifier not in positions:
            return f"itemIdentifier {identifier!r} is not a record of the batch"
        index = positions[identifier]
        lowest = index if lowest is None else min(lowest, index)
    return lowest


def interpret(
    result: InvokeResult,
    sequence_numbers: Sequence[str],
    *,
    report_batch_item_failures: bool,
    tumbling_window: bool,
) -> Outcome:
    """The outcome of `result` for a batch whose records have `sequence_numbers`, in order."""
    if result.error is not None:
        return Outcome(
            failed_from=0,
            description=f"function error {result.error.error_type}: {result.error.message[:200]}",
            function_error=result.error.function_error,
            error_type=result.error.error_type,
        )
    payload = result.payload
    state: dict[str, Any] | None = None
    if tumbling_window:
        returned_state = payload.get("state") if isinstance(payload, dict) else None
        if not isinstance(returned_state, dict):
            return Outcome(failed_from=0, description="response has no state object")
        state = returned_state
    if not report_batch_item_failures:
        return Outcome(failed_from=None, description="ok", state=state)
    lowest = _lowest_failure(payload, sequence_numbers)
    if isinstance(lowest, str):
        return Outcome(failed_from=0, description=f"invalid partial batch response: {lowest}")
    if lowest is None:
        return Outcome(failed_from=None, description="ok", state=state)
    return Outcome(
        failed_from=lowest,
        description=f"partial failure from record {lowest + 1} of {len(sequence_numbers)}",
        state=state,
    )
