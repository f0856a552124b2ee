"""`streams backfill --invoke deployed`: the deployed function, invoked with Lambda's Invoke.

moto cannot run a function without Docker, so Lambda's answers come from botocore's Stubber
(botocore checks each request against Lambda's model; the answers are shaped as Lambda's API
reference documents them). The scan runs against moto's server, as in tests/test_backfill.py.
"""

from __future__ import annotations

import io
import json
from typing import Any

import boto3
import pytest
from botocore.response import StreamingBody
from botocore.stub import ANY, Stubber

from streams.errors import UserError
from streams.mapping.invoke import NotInvoked
from streams.ops.deployed import DeployedFunction, DeployedSource
from tests.test_backfill import Sink, backfill, table  # noqa: F401  (the fixture)

FUNCTION = "projector"


def _body(value: Any) -> StreamingBody:
    raw = json.dumps(value).encode()
    return StreamingBody(io.BytesIO(raw), len(raw))


def _answer(payload: Any, *, function_error: str | None = None) -> dict[str, Any]:
    answer: dict[str, Any] = {
        "StatusCode": 200,
        "Payload": _body(payload),
        "ExecutedVersion": "$LATEST",
    }
    if function_error is not None:
        answer["FunctionError"] = function_error
    return answer


def _request() -> dict[str, Any]:
    return {"FunctionName": FUNCTION, "InvocationType": "RequestResponse", "Payload": ANY}


@pytest.fixture
def lambda_client() -> Any:
    return boto3.client(
        "lambda", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x"
    )


def test_a_partial_batch_response_of_the_deployed_function_is_honoured(
    aws: boto3.Session,
    table: str,  # noqa: F811  (the fixture imported above)
    lambda_client: Any,
) -> None:
    """The first batch (7 records) is reported as partly failed: its records are offered one
    at a time (their sequence numbers cannot tell which failed); the one that keeps failing is
    parked, every other record is applied."""
    sink = Sink()
    events: list[dict[str, Any]] = []
    failed = _answer({"batchItemFailures": [{"itemIdentifier": "0"}]})
    with Stubber(lambda_client) as stub:
        stub.add_response("invoke", failed, _request())
        for _ in range(6):
            stub.add_response("invoke", _answer({"batchItemFailures": []}), _request())
        for _ in range(3):  # max_attempts in tests/test_backfill.py's settings
            stub.add_response(
                "invoke", _answer({"batchItemFailures": [{"itemIdentifier": "0"}]}), _request()
            )
        for _ in range(8):  # the other 53 records, in batches of 7
            stub.add_response("invoke", _answer(None), _request())
        invoke = DeployedFunction(lambda_client, FUNCTION)

        def recording(event: Any, deadline: float) -> Any:
            events.append(event)
            return invoke(event, deadline)

        summary = backfill(aws, table, recording, sink=sink, segments=1).run()
        stub.assert_no_pending_responses()
    assert [len(event["Records"]) for event in events[:8]] == [7, 1, 1, 1, 1, 1, 1, 1]
    assert (summary.offered, summary.applied, summary.parked, summary.retried) == (60, 59, 1, 2)
    assert [letter.record.keys for letter in sink.letters] == [
        {"childId": events[0]["Records"][6]["dynamodb"]["Keys"]["childId"]["S"]}
    ]
    assert [letter.error.type for letter in sink.letters] == ["BatchItemFailure"]


def test_a_function_error_fails_the_batch_and_the_parked_letter_names_its_type_only(
    lambda_client: Any,
) -> None:
    with Stubber(lambda_client) as stub:
        stub.add_response(
            "invoke",
            _answer(
                {"errorType": "KeyError", "errorMessage": "'address' (secret value)"},
                function_error="Unhandled",
            ),
            _request(),
        )
        result = DeployedFunction(lambda_client, FUNCTION)({"Records": []}, 3.0)
    assert result.error is not None
    assert (result.error.error_type, result.error.function_error) == ("KeyError", "Unhandled")
    assert "secret" not in result.error.message


@pytest.mark.parametrize(
    ("code", "status"),
    [("TooManyRequestsException", 429), ("ServiceException", 500), ("EC2ThrottledException", 502)],
)
def test_lambdas_throttling_and_5xx_answers_mean_not_invoked(
    lambda_client: Any, code: str, status: int
) -> None:
    with Stubber(lambda_client) as stub:
        stub.add_client_error("invoke", code, http_status_code=status)
        with pytest.raises(NotInvoked):
            DeployedFunction(lambda_client, FUNCTION)({"Records": []}, 3.0)


def test_a_missing_function_is_one_clear_line(lambda_client: Any) -> None:
    with Stubber(lambda_client) as stub:
        stub.add_client_error("invoke", "ResourceNotFoundException", http_status_code=404)
        with pytest.raises(UserError, match="cannot invoke projector: ResourceNotFoundException"):
            DeployedFunction(lambda_client, FUNCTION)({"Records": []}, 3.0)


def test_the_deployed_source_is_the_functions_one_dynamodb_stream_and_its_environment(
    lambda_client: Any,
) -> None:
    stream = "arn:aws:dynamodb:us-east-1:123456789012:table/kids/stream/2026-12-04T00:00:00.000"
    queue = "arn:aws:sqs:us-east-1:123456789012:redrive"
    with Stubber(lambda_client) as stub:
        stub.add_response(
            "get_function_configuration",
            {
                "FunctionName": FUNCTION,
                "Environment": {"Variables": {"DEAD_LETTER_QUEUE_URL": "https://q"}},
            },
            {"FunctionName": FUNCTION},
        )
        stub.add_response(
            "list_event_source_mappings",
            {
                "EventSourceMappings": [
                    {"UUID": "6e9f4c1a-0000-4000-8000-000000000001", "EventSourceArn": stream},
                    {"UUID": "6e9f4c1a-0000-4000-8000-000000000002", "EventSourceArn": queue},
                ]
            },
            {"FunctionName": FUNCTION},
        )
        source = DeployedSource.of(lambda_client, FUNCTION)
    assert source.stream_arn == stream
    assert source.environment == {"DEAD_LETTER_QUEUE_URL": "https://q"}


def test_a_caller_without_permission_to_read_the_function_gets_one_clear_line(
    lambda_client: Any,
) -> None:
    with Stubber(lambda_client) as stub:
        stub.add_client_error(
            "get_function_configuration", "AccessDeniedException", http_status_code=403
        )
        with pytest.raises(UserError, match="cannot read function projector's configuration"):
            DeployedSource.of(lambda_client, FUNCTION)
