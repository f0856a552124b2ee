"""The deployed function, invoked with Lambda's `Invoke` (`streams backfill --invoke deployed`).

The code and the permissions that run are the deployed ones. `DeployedFunction` is an `Invoker`:
the mapping's rules for reading its answer apply (`streams.mapping.responses.interpret`: a
function error fails the whole batch, a partial batch response names the records that failed).
Lambda's own throttling (`TooManyRequestsException`: the function's reserved concurrency, the
account's) and its 5xx answers raise `NotInvoked`: the caller backs off and offers the batch
again without using up an attempt.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from botocore.exceptions import ClientError

from streams.batch import TransientErrors
from streams.errors import UserError
from streams.mapping.invoke import FunctionError, InvokeResult, NotInvoked

if TYPE_CHECKING:
    from mypy_boto3_lambda.client import LambdaClient

__all__ = ["DeployedFunction", "DeployedSource"]

#: Throttling, 5xx, dropped connections and timeouts: the batch core's own rule.
_TRANSIENT = TransientErrors()

#: Answers of Invoke that mean the request is wrong for good (the function, its permissions).
_REFUSED = frozenset(
    {"ResourceNotFoundException", "AccessDeniedException", "InvalidParameterValueException"}
)


def _code(error: BaseException) -> str:
    if isinstance(error, ClientError):
        return str(error.response.get("Error", {}).get("Code", ""))
    return ""


class DeployedFunction:
    """`name` (a function's name or ARN, with a qualifier if wanted), invoked synchronously."""

    def __init__(self, client: LambdaClient, name: str) -> None:
        self._client, self.name = client, name

    def __call__(self, event: Mapping[str, Any], deadline_seconds: float) -> InvokeResult:
        body = json.dumps(event, separators=(",", ":")).encode()
        try:
            response = self._client.invoke(
                FunctionName=self.name, InvocationType="RequestResponse", Payload=body
            )
        except Exception as error:
            code = _code(error)
            if _TRANSIENT(error):
                # Offered again: a handler with a newer-than guard repeats harmlessly (a timeout
                # may come after the function ran).
                raise NotInvoked(code or type(error).__name__) from None
            if code in _REFUSED:
                raise UserError(f"cannot invoke {self.name}: {code}") from None
            raise
        raw = response["Payload"].read()
        payload = json.loads(raw) if raw else None
        request_id = response.get("ResponseMetadata", {}).get("RequestId", "")
        version = response.get("ExecutedVersion", "$LATEST")
        if "FunctionError" in response:
            error_type = payload.get("errorType") if isinstance(payload, dict) else None
            # The type only: the message can repeat an attribute value.
            failure = FunctionError(
                str(error_type or response["FunctionError"]), "", response["FunctionError"]
            )
            return InvokeResult(
                payload=payload,
                error=failure,
                request_id=request_id,
                executed_version=version,
                status_code=response["StatusCode"],
            )
        return InvokeResult(
            payload=payload,
            request_id=request_id,
            executed_version=version,
            status_code=response["StatusCode"],
        )


@dataclass(frozen=True)
class DeployedSource:
    """What a deployed function reads and where it parks: its DynamoDB stream (from its event
    source mappings) and its environment (`DEAD_LETTER_QUEUE_URL`, `DEAD_LETTER_BUCKET`)."""

    function_name: str
    stream_arn: str
    environment: Mapping[str, str]

    @classmethod
    def of(cls, client: LambdaClient, name: str) -> DeployedSource:
        try:
            configuration = client.get_function_configuration(FunctionName=name)
            streams = sorted(
                {
                    mapping["EventSourceArn"]
                    for page in client.get_paginator("list_event_source_mappings").paginate(
                        FunctionName=name
                    )
                    for mapping in page["EventSourceMappings"]
                    if ":dynamodb:" in mapping.get("EventSourceArn", "")
                }
            )
        except ClientError as error:
            code = _code(error)
            if code == "ResourceNotFoundException":
                raise UserError(f"no function {name} in this account and region") from None
            if code in _REFUSED:
                raise UserError(f"cannot read function {name}'s configuration: {code}") from None
            raise
        if len(streams) != 1:
            raise UserError(
                f"function {name} has {len(streams)} DynamoDB stream event source mappings: "
                "backfill needs exactly one"
            )
        environment = configuration.get("Environment", {}).get("Variables", {})
        return cls(configuration["FunctionName"], streams[0], dict(environment))
