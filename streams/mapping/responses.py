"""What an invocation's result means for its batch, stream or queue (docs/esm.md sections 3, 6).

With `ReportBatchItemFailures`, the function may return `{"batchItemFailures":
[{"itemIdentifier": "<id>"}]}`, the id being a record's sequence number (streams) or a
message's `messageId` (queues):

| returned | meaning |
| --- | --- |
| `[]`, `null`, `{}`, `""`, no or empty/null `batchItemFailures` | the batch succeeded |
| identifiers of items in the batch | those items failed |
| an identifier empty, null, under another key, or not in the batch | the whole batch failed |

Without it the returned value is ignored. A stream resumes at the lowest item reported (it and
every later record are delivered again); a queue keeps exactly the items reported. With tumbling
windows the value must be an object with a `state` object, else the invocation failed. Only a
function error (raised, timed out, crashed) is a *function* error: it alone may bisect, and it
alone fills `functionError`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from streams.mapping.invoke import InvokeResult

__all__ = ["Outcome", "interpret"]

#: What the batch's items are, in descriptions: a stream's records, a queue's messages.
ItemKind = Literal["record", "message"]


@dataclass(frozen=True)
class Outcome:
    """One invocation's verdict on its batch.

    `failed` holds the positions (in the batch) of the items that failed: none when the batch
    succeeded, all of them when it failed as a whole. `function_error` is the function's own
    error (`Unhandled`), None when the batch failed by what it returned. `state` is the tumbling
    window state returned.
    """

    failed: frozenset[int]
    description: str
    function_error: str | None = None
    error_type: str | None = None
    state: dict[str, Any] | None = None

    @property
    def succeeded(self) -> bool:
        return not self.failed

    @property
    def failed_from(self) -> int | None:
        """The first position to deliver again on a stream (None: all done)."""
        return min(self.failed) if self.failed else None


def _reported(payload: object, identifiers: Sequence[str], item: ItemKind) -> set[int] | str:
    """The positions of the items reported as failed, or why the report is invalid."""
    if not isinstance(payload, dict):
        return set()
    failures = payload.get("batchItemFailures")
    if failures is None or failures == []:
        return set()
    if not isinstance(failures, list):
        return "batchItemFailures is not a list"
    positions = {identifier: index for index, identifier in enumerate(identifiers)}
    reported: set[int] = set()
    for failure in failures:
        identifier = failure.get("itemIdentifier") if isinstance(failure, dict) else None
        if not isinstance(identifier, str) or identifier not in positions:
            # Not repeated: a function's bug can put anything there, an attribute value too.
            return f"an itemIdentifier ({type(identifier).__name__}) is not a {item} of the batch"
        reported.add(positions[identifier])
    return reported


def interpret(
    result: InvokeResult,
    identifiers: Sequence[str],
    *,
    report_batch_item_failures: bool,
    tumbling_window: bool = False,
    item: ItemKind = "record",
) -> Outcome:
    """The outcome of `result` for a batch whose items have `identifiers`, in order."""
    everything = frozenset(range(len(identifiers)))
    if result.error is not None:
        # The type only: the message can repeat an attribute value, and this description is
        # logged, kept in the state table and shown by `streams monitor`. The message is in
        # the function's own log, as on Lambda.
        return Outcome(
            failed=everything,
            description=f"function error {result.error.error_type}",
            function_error=result.error.function_error,
            error_type=result.error.error_type,
        )
    payload = result.payload
    state: dict[str, Any] | None = None
    if tumbling_window:
        returned_state = payload.get("state") if isinstance(payload, dict) else None
        if not isinstance(returned_state, dict):
            return Outcome(failed=everything, description="response has no state object")
        state = returned_state
    if not report_batch_item_failures:
        return Outcome(failed=frozenset(), description="ok", state=state)
    reported = _reported(payload, identifiers, item)
    if isinstance(reported, str):
        return Outcome(failed=everything, description=f"invalid partial batch response: {reported}")
    if not reported:
        return Outcome(failed=frozenset(), description="ok", state=state)
    if item == "message":  # a queue keeps exactly the messages reported
        described = f"partial failure: {len(reported)} of {len(identifiers)} messages failed"
        return Outcome(failed=frozenset(reported), description=described, state=state)
    # A stream resumes at the lowest record reported: it and every later one are delivered again.
    lowest = min(reported)
    return Outcome(
        failed=frozenset(range(lowest, len(identifiers))),
        description=f"partial failure from record {lowest + 1} of {len(identifiers)}",
        state=state,
    )
