"""A plan turned into a stack in the embedded endpoint, by moto's CloudFormation.

`deploy_template` creates (or updates, idempotently) the template's data resources as a stack,
so that names come from the stack as they do on AWS, and reads back what the local mapping
needs to run the functions (`DeployedStack.functions`).
"""

from __future__ import annotations

import hashlib
import json
import re
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from botocore.config import Config
from botocore.exceptions import ClientError, EndpointConnectionError
from botocore.parsers import ResponseParserError

from streams.endpoints import service_endpoint
from streams.errors import UserError
from streams.local.endpoint import local_session
from streams.local.template import SkippedPart, TemplateFunction, plan_template

if TYPE_CHECKING:
    from mypy_boto3_cloudformation import CloudFormationClient
    from mypy_boto3_cloudformation.type_defs import ParameterTypeDef

__all__ = [
    "DEFAULT_STACK_NAME",
    "DeployedStack",
    "StackResource",
    "deploy_template",
    "stack_outputs",
]

DEFAULT_STACK_NAME = "streams-local"

_DIGEST_TAG = "streams:template-digest"

_STACK_NAME = re.compile(r"[A-Za-z][-A-Za-z0-9]{0,127}")


@dataclass(frozen=True)
class StackResource:
    logical_id: str
    resource_type: str
    physical_id: str


@dataclass(frozen=True)
class DeployedStack:
    stack_name: str
    endpoint_url: str
    region: str
    template: Path
    status: Literal["created", "updated", "unchanged"]
    outputs: dict[str, str]
    resources: tuple[StackResource, ...]
    functions: dict[str, TemplateFunction]
    skipped: tuple[SkippedPart, ...] = ()

    def function(self, logical_id: str | None = None) -> TemplateFunction:
        """The function named `logical_id`; without one, the template's only stream function."""
        if logical_id is not None:
            if logical_id in self.functions:
                return self.functions[logical_id]
            names = ", ".join(sorted(self.functions)) or "none"
            raise UserError(
                f"{self.template} has no function {logical_id!r} (its functions: {names})"
            )
        with_streams = [spec for spec in self.functions.values() if spec.event_sources]
        if len(with_streams) == 1:
            return with_streams[0]
        if not with_streams:
            raise UserError(
                f"{self.template} has no function with a DynamoDB or Kinesis stream event"
            )
        names = ", ".join(spec.logical_id for spec in with_streams)
        raise UserError(f"{self.template} has several stream functions ({names}): pass --function")


def _digest(body: str, overrides: Mapping[str, str]) -> str:
    content = json.dumps({"template": body, "parameters": dict(sorted(overrides.items()))})
    return hashlib.sha256(content.encode()).hexdigest()


def stack_outputs(cfn: CloudFormationClient, stack_name: str) -> dict[str, str] | None:
    """A stack's outputs by key; None when there is no such stack."""
    try:
        stacks = cfn.describe_stacks(StackName=stack_name)["Stacks"]
    except ClientError as error:
        if error.response.get("Error", {}).get("Code") == "ValidationError":  # no such stack
            return None
        raise
    return {
        output["OutputKey"]: output["OutputValue"]
        for stack in stacks
        for output in stack.get("Outputs", [])
        if "OutputKey" in output and "OutputValue" in output
    }


def _existing_stack(cfn: CloudFormationClient, stack_name: str) -> dict[str, str] | None:
    """The stack's tags, or None when there is no such stack."""
    try:
        stacks = cfn.describe_stacks(StackName=stack_name)["Stacks"]
    except ClientError as error:
        if "does not exist" in str(error):
            return None
        raise
    if not stacks or stacks[0]["StackStatus"] == "DELETE_COMPLETE":
        return None
    return {tag["Key"]: tag["Value"] for tag in stacks[0].get("Tags", [])}


def _apply(
    cfn: CloudFormationClient, stack_name: str, body: str, overrides: Mapping[str, str]
) -> Literal["created", "updated", "unchanged"]:
    digest = _digest(body, overrides)
    tags = _existing_stack(cfn, stack_name)
    if tags is not None and tags.get(_DIGEST_TAG) == digest:
        return "unchanged"
    parameters: list[ParameterTypeDef] = [
        {"ParameterKey": key, "ParameterValue": value} for key, value in overrides.items()
    ]
    arguments: dict[str, Any] = {
        "StackName": stack_name,
        "TemplateBody": body,
        "Parameters": parameters,
        "Tags": [{"Key": _DIGEST_TAG, "Value": digest}],
    }
    try:
        if tags is None:
            cfn.create_stack(**arguments)
            return "created"
        cfn.update_stack(**arguments)
    except ClientError as error:
        raise UserError(f"stack {stack_name}: {error}") from None
    except ResponseParserError:
        # moto answers a template it cannot handle with an HTML error page.
        raise UserError(
            f"stack {stack_name}: moto's CloudFormation failed on this template (its traceback "
            "is in the endpoint's output); check the properties of its resources"
        ) from None
    return "updated"


def deploy_template(
    template_path: str | Path,
    *,
    endpoint_url: str,
    stack_name: str | None = None,
    parameter_overrides: Mapping[str, str] | None = None,
    region: str | None = None,
) -> DeployedStack:
    """Create (or update) the template's data resources as a stack in a local endpoint.

    Idempotent: deploying the same template with the same parameters again changes nothing.
    Raises UserError for a template or parameters that cannot be deployed.
    """
    host = urllib.parse.urlsplit(endpoint_url).hostname or ""
    if host.endswith(("amazonaws.com", "amazonaws.com.cn", "api.aws")):
        raise UserError(f"{endpoint_url} is AWS itself: deploy there with `sam deploy`")
    name = stack_name or DEFAULT_STACK_NAME
    if not _STACK_NAME.fullmatch(name):
        raise UserError(
            f"bad stack name {name!r}: letters, digits and hyphens, starting with a letter"
        )
    plan = plan_template(template_path, parameter_overrides=parameter_overrides, region=region)
    session = local_session(plan.region)
    cfn: CloudFormationClient = session.client(
        "cloudformation",
        endpoint_url=service_endpoint("cloudformation", endpoint_url),
        # A server error means moto cannot create this template; retrying cannot help.
        config=Config(retries={"total_max_attempts": 1}),
    )
    body = json.dumps(plan.template, sort_keys=True)
    try:
        status = _apply(cfn, name, body, plan.overrides)
        (stack,) = cfn.describe_stacks(StackName=name)["Stacks"]
        summaries = cfn.list_stack_resources(StackName=name)["StackResourceSummaries"]
    except ClientError as error:
        raise UserError(f"{endpoint_url}: {error}") from None
    except EndpointConnectionError:
        raise UserError(
            f"nothing answers at {endpoint_url}: start `streams local up`, or fix AWS_ENDPOINT_URL"
        ) from None
    outputs = {output["OutputKey"]: output["OutputValue"] for output in stack.get("Outputs", [])}
    functions, notes = plan.functions(outputs)
    return DeployedStack(
        stack_name=name,
        endpoint_url=endpoint_url,
        region=plan.region,
        template=plan.path,
        status=status,
        outputs={key: value for key, value in outputs.items() if key not in plan.internal_outputs},
        resources=tuple(
            StackResource(
                summary["LogicalResourceId"],
                summary["ResourceType"],
                summary.get("PhysicalResourceId", ""),
            )
            for summary in summaries
            if summary["ResourceType"] != "AWS::CloudFormation::WaitConditionHandle"
        ),
        functions=functions,
        skipped=plan.skipped + tuple(notes),
    )
