"""The in-process invoker reports results and failures as Lambda reports them."""

from __future__ import annotations

from typing import Any

from streams.mapping import FunctionError, InProcessInvoker, LambdaContext

ARN = "arn:aws:lambda:us-east-1:123456789012:function:processor"


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_the_handler_gets_a_copy_of_the_event_and_a_lambda_context() -> None:
    seen: list[tuple[dict[str, Any], LambdaContext]] = []
    event = {"Records": [{"n": 1}]}

    def handler(received: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
        received["Records"].clear()
        seen.append((received, context))
        return {"batchItemFailures": []}

    result = InProcessInvoker(handler, function_arn=ARN)(event, 3.0)

    ((_, context),) = seen
    assert event == {"Records": [{"n": 1}]}  # the mapping's records are untouched
    assert result.payload == {"batchItemFailures": []}
    assert result.error is None
    assert (context.function_name, context.invoked_function_arn) == ("processor", ARN)
    assert context.aws_request_id == result.request_id
    assert 0 < context.get_remaining_time_in_millis() <= 3000


def test_an_exception_is_an_unhandled_function_error_named_by_its_type() -> None:
    def handler(event: Any, context: LambdaContext) -> None:
        raise ZeroDivisionError("division by zero")

    result = InProcessInvoker(handler)({"Records": []}, 3.0)

    assert result.error == FunctionError("ZeroDivisionError", "division by zero", "Unhandled")


def test_a_handler_that_returns_after_its_timeout_timed_out() -> None:
    clock = _Clock()

    def handler(event: Any, context: LambdaContext) -> str:
        clock.now += 5
        assert context.get_remaining_time_in_millis() == 0
        return "too late"

    result = InProcessInvoker(handler, clock=clock)({"Records": []}, 3.0)

    assert result.error is not None
    assert result.error.error_type == "Sandbox.Timedout"
    assert result.payload is None


def test_a_result_that_is_not_json_fails_the_invocation() -> None:
    result = InProcessInvoker(lambda event, context: {1, 2})({"Records": []}, 3.0)

    assert result.error is not None
    assert result.error.error_type == "Runtime.MarshalError"
