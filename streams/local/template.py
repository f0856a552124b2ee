"""A SAM or CloudFormation template, turned into a plan for the embedded endpoint.

Real engines only: the SAM translator expands `Globals` and turns each function's events into
`AWS::Lambda::EventSourceMapping` resources (`translate_template`). `plan_template` then keeps
the data resources (tables, streams, queues, topics, buckets) for moto's CloudFormation and
leaves the rest out, each with its reason (`SkippedPart`). The functions and their mappings are
not created in moto (moto would run them inside every write); instead the plan adds outputs that
evaluate each function's settings and environment and each mapping's properties, so the stack
resolves them (`Plan.functions`). Nothing here resolves `Ref`, `Fn::GetAtt` or `Fn::Sub` itself.
"""

from __future__ import annotations

import copy
import json
import re
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from streams.arn import Arn
from streams.errors import UserError
from streams.local.endpoint import LOCAL_EXTRA_HINT, local_session, region_or_default
from streams.records import EventSource

__all__ = [
    "DEFAULT_TEMPLATE",
    "FUNCTION_TYPE",
    "MAPPING_TYPE",
    "EventSourceSpec",
    "Plan",
    "QueueSourceSpec",
    "SkippedPart",
    "TemplateFunction",
    "function_code_uri",
    "mapping_function",
    "parse_parameter_overrides",
    "plan_template",
    "translate_template",
]

DEFAULT_TEMPLATE = Path("template.yaml")

SAM_TRANSFORM = "AWS::Serverless-2016-10-31"


# The data resources created in the endpoint. Everything else is left out, with the reason.
DATA_RESOURCE_TYPES = frozenset(
    {
        "AWS::DynamoDB::Table",
        "AWS::Kinesis::Stream",
        "AWS::S3::Bucket",
        "AWS::SNS::Topic",
        "AWS::SQS::Queue",
    }
)


FUNCTION_TYPE = "AWS::Lambda::Function"

MAPPING_TYPE = "AWS::Lambda::EventSourceMapping"


# Lambda's defaults for a function that does not set them.
DEFAULT_TIMEOUT_SECONDS = 3

DEFAULT_MEMORY_MB = 128


# The SAM translator accepts only S3 locations for CodeUri. A local path is carried through
# it inside a location in this (never created) bucket, and read back from the translated
# function's Code.S3Key.
_CODE_BUCKET = "streams-local-code-uri"

_FUNCTION_OUTPUT = "StreamsLocalFunction"

_MAPPING_OUTPUT = "StreamsLocalMapping"

_PARAMETER_KEY = re.compile(r"[A-Za-z0-9]+")

_LONG_OVERRIDE = re.compile(r"ParameterKey=([^,]*),ParameterValue=(.*)", re.DOTALL)

_SUB_VARIABLE = re.compile(r"\$\{([^!}][^}]*)\}")


@dataclass(frozen=True)
class EventSourceSpec:
    """One stream event source mapping of a function, its values resolved by the stack.

    `properties` are the AWS::Lambda::EventSourceMapping properties as the SAM translator wrote
    them (BatchSize, StartingPosition, DestinationConfig.OnFailure.Destination, ...), minus
    `FunctionName`; properties the template leaves out are absent (AWS defaults apply).
    """

    logical_id: str
    event_source: EventSource
    event_source_arn: str
    properties: dict[str, Any]


@dataclass(frozen=True)
class QueueSourceSpec:
    """One SQS event source mapping of a function, its values resolved by the stack.

    `properties` as in `EventSourceSpec` (BatchSize, FunctionResponseTypes, ...).
    """

    logical_id: str
    queue_arn: str
    properties: dict[str, Any]


@dataclass(frozen=True)
class TemplateFunction:
    """What running a function locally needs. `code_uri` is absolute, or None when the code
    is not on this machine (an S3 location, inline code). `event_sources` are its streams,
    `queue_sources` its SQS queues."""

    logical_id: str
    code_uri: Path | None
    handler: str
    runtime: str
    timeout: int
    memory_size: int
    environment: dict[str, str]
    event_sources: tuple[EventSourceSpec, ...]
    function_name: str | None = None  # FunctionName when the template sets one
    queue_sources: tuple[QueueSourceSpec, ...] = ()


@dataclass(frozen=True)
class SkippedPart:
    """A part of the template that is not created or run locally, and why."""

    name: str
    kind: str
    reason: str

    def describe(self) -> str:
        return f"{self.name} ({self.kind}): {self.reason}"


def parse_parameter_overrides(items: Sequence[str]) -> dict[str, str]:
    """`Key=Value` items, or `ParameterKey=Key,ParameterValue=Value` ones, as `sam deploy`."""
    overrides: dict[str, str] = {}
    for item in items:
        if item.startswith("ParameterKey="):
            long_form = _LONG_OVERRIDE.fullmatch(item)
            key, value = long_form.groups() if long_form else ("", "")
        else:
            key, equals, value = item.partition("=")
            key = key if equals else ""
        if not _PARAMETER_KEY.fullmatch(key):
            raise UserError(
                f"bad --parameter-overrides item {item!r}: expected Key=Value "
                "(or ParameterKey=Key,ParameterValue=Value)"
            )
        overrides[key] = value
    return overrides


def _load_template(path: Path) -> dict[str, Any]:
    try:
        from samtranslator.yaml_helper import (  # type: ignore[import-untyped]
            yaml_parse,
        )
    except ImportError as error:
        raise UserError(
            f"the SAM translator is not installed ({error}): {LOCAL_EXTRA_HINT}"
        ) from None
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise UserError(f"template not found: {path} (pass --template PATH)") from None
    except OSError as error:
        raise UserError(f"cannot read template {path}: {error.strerror}") from None
    try:
        template = yaml_parse(text)
    except Exception as error:  # yaml's and json's errors: the file is not a template
        problem = " ".join(str(error).split())
        raise UserError(f"{path} is not valid YAML or JSON: {problem}") from None
    if not isinstance(template, dict) or not isinstance(template.get("Resources"), dict):
        raise UserError(f"{path} is not a CloudFormation or SAM template (no Resources section)")
    return template


def _transforms(template: Mapping[str, Any]) -> list[str]:
    transform = template.get("Transform") or []
    return [transform] if isinstance(transform, str) else [str(name) for name in transform]


def _checked_overrides(
    template: Mapping[str, Any], overrides: Mapping[str, str], path: Path
) -> dict[str, str]:
    declared: dict[str, Any] = template.get("Parameters") or {}
    for key in overrides:
        if key not in declared:
            known = ", ".join(declared) or "none"
            raise UserError(
                f"--parameter-overrides: {path} has no parameter {key} (it has: {known})"
            )
    for key, spec in declared.items():
        if key not in overrides and "Default" not in spec:
            raise UserError(
                f"parameter {key} of {path} has no default: pass --parameter-overrides {key}=VALUE"
            )
        allowed = spec.get("AllowedValues")
        if key in overrides and allowed and overrides[key] not in [str(v) for v in allowed]:
            choices = ", ".join(str(value) for value in allowed)
            raise UserError(f"--parameter-overrides: {key} must be one of {choices}")
    return dict(overrides)


def _mark_code_uris(template: dict[str, Any]) -> None:
    def mark(properties: dict[str, Any]) -> None:
        code_uri = properties.get("CodeUri")
        if isinstance(code_uri, str) and not code_uri.startswith("s3://"):
            properties["CodeUri"] = f"s3://{_CODE_BUCKET}/{urllib.parse.quote(code_uri, safe='')}"

    function_globals = (template.get("Globals") or {}).get("Function")
    if isinstance(function_globals, dict):
        mark(function_globals)
    for resource in template["Resources"].values():
        if isinstance(resource, dict) and resource.get("Type") == "AWS::Serverless::Function":
            mark(resource.setdefault("Properties", {}))


def _translate(
    template: dict[str, Any], overrides: Mapping[str, str], region: str, path: Path
) -> dict[str, Any]:
    if SAM_TRANSFORM not in _transforms(template):
        return copy.deepcopy(template)
    unsupported = [name for name in _transforms(template) if name != SAM_TRANSFORM]
    if unsupported:
        raise UserError(f"{path}: transform {', '.join(unsupported)} is not supported locally")
    # The `local` extra, imported on use (see _load_template, which checked it is there).
    from samtranslator.metrics.metrics import (  # type: ignore[import-untyped]
        DummyMetricsPublisher,
        Metrics,
    )
    from samtranslator.model.exceptions import (  # type: ignore[import-untyped]
        InvalidDocumentException,
    )
    from samtranslator.parser.parser import Parser  # type: ignore[import-untyped]
    from samtranslator.translator.translator import (  # type: ignore[import-untyped]
        Translator,
    )

    sam = copy.deepcopy(template)
    _mark_code_uris(sam)
    # Metrics go nowhere; publishing them keeps the translator from complaining at exit.
    metrics = Metrics("ServerlessTransform", DummyMetricsPublisher())
    translator = Translator(None, Parser(), boto_session=local_session(region), metrics=metrics)
    try:
        translated: dict[str, Any] = translator.translate(sam, parameter_values=dict(overrides))
    except InvalidDocumentException as error:
        causes = "; ".join(" ".join(str(cause.message).split()) for cause in error.causes)
        raise UserError(f"{path}: the SAM translator refused it: {causes}") from None
    finally:
        metrics.publish()
    return translated


def _references(value: Any) -> set[str]:
    """The logical names a template value refers to through Ref, Fn::GetAtt and Fn::Sub."""
    found: set[str] = set()
    if isinstance(value, list):
        for item in value:
            found |= _references(item)
        return found
    if not isinstance(value, dict):
        return found
    if len(value) == 1:
        ((function, argument),) = value.items()
        if function == "Ref" and isinstance(argument, str):
            return {argument}
        if function == "Fn::GetAtt":
            if isinstance(argument, str):
                return {argument.split(".", 1)[0]}
            if isinstance(argument, list) and argument and isinstance(argument[0], str):
                return {argument[0]} | _references(argument[1:])
        if function == "Fn::Sub":
            text, variables = (argument, {}) if isinstance(argument, str) else argument
            if isinstance(text, str) and isinstance(variables, dict):
                for name in _SUB_VARIABLE.findall(text):
                    if name not in variables:
                        found.add(name.split(".", 1)[0])
                return found | _references(variables)
    for item in value.values():
        found |= _references(item)
    return found


def _is_pseudo(name: str) -> bool:
    return name.startswith("AWS::")


_KEPT_SECTIONS = ("AWSTemplateFormatVersion", "Description", "Parameters", "Mappings", "Conditions")

_SKIP_REASONS = {
    "AWS::Lambda::": "functions run through `streams run`, not inside moto",
    "AWS::IAM::": "permissions are not enforced locally",
    "AWS::Serverless::": "the SAM translator left it untranslated",
}


# Types of the kind a template like ours holds that moto's CloudFormation cannot create.
_NOT_IN_MOTO = frozenset(
    {
        "AWS::CloudWatch::Alarm",
        "AWS::CloudWatch::CompositeAlarm",
        "AWS::Logs::MetricFilter",
        "AWS::S3::BucketPolicy",
        "AWS::SNS::Subscription",
        "AWS::SNS::TopicPolicy",
        "AWS::SQS::QueuePolicy",
    }
)


def _skip_reason(resource_type: str) -> str:
    for prefix, reason in _SKIP_REASONS.items():
        if resource_type.startswith(prefix):
            return reason
    if resource_type in _NOT_IN_MOTO:
        return "moto's CloudFormation cannot create this type"
    return "not created locally: only tables, streams, queues, topics and buckets are"


@dataclass(frozen=True)
class Plan:
    """The stack template for moto, and how to read the functions back from its outputs."""

    path: Path
    region: str
    overrides: dict[str, str]
    template: dict[str, Any]
    function_outputs: dict[str, str]  # function logical id → output key
    mapping_outputs: dict[str, tuple[str, str]]  # mapping logical id → (function, output key)
    code_uris: dict[str, Path | None]
    declared_variables: dict[str, tuple[str, ...]]
    skipped: tuple[SkippedPart, ...]

    @property
    def internal_outputs(self) -> set[str]:
        """The outputs the plan added to resolve functions and mappings (not the template's)."""
        return set(self.function_outputs.values()) | {
            key for _, key in self.mapping_outputs.values()
        }

    def functions(
        self, outputs: Mapping[str, str]
    ) -> tuple[dict[str, TemplateFunction], list[SkippedPart]]:
        """The functions as the stack's `outputs` resolved them, and what could not be."""
        return _functions(self, outputs)


def _not_created(kind: str, name: str, missing: Sequence[str]) -> SkippedPart:
    return SkippedPart(name, kind, f"refers to {missing[0]}, which is not created locally")


def _left_out(resources: Mapping[str, Any], path: Path, known: set[str]) -> dict[str, SkippedPart]:
    """The resources not created in moto, and why (including the data resources that refer
    to one of them: they could not be created either)."""
    left_out: dict[str, SkippedPart] = {}
    for logical_id, resource in resources.items():
        unknown = sorted(
            name
            for name in _references(resource.get("Properties", {}))
            if name not in known and not _is_pseudo(name)
        )
        if unknown:
            raise UserError(
                f"{path}: {logical_id} refers to {unknown[0]}, "
                "which is neither a parameter nor a resource"
            )
        if resource["Type"] not in DATA_RESOURCE_TYPES:
            left_out[logical_id] = SkippedPart(
                logical_id, resource["Type"], _skip_reason(resource["Type"])
            )
    changed = True
    while changed:
        changed = False
        for logical_id, resource in resources.items():
            missing = sorted(_references(resource.get("Properties", {})) & set(left_out))
            if logical_id not in left_out and missing:
                left_out[logical_id] = _not_created(resource["Type"], logical_id, missing)
                changed = True
    return left_out


def _stack_resources(resources: Mapping[str, Any], created: Sequence[str]) -> dict[str, Any]:
    stack_resources: dict[str, Any] = {}
    for logical_id in created:
        resource = copy.deepcopy(resources[logical_id])
        # moto adds an empty Properties to its stored copy, so a resource without one would
        # look changed on every update (and moto replaces a changed topic, renaming it).
        resource.setdefault("Properties", {})
        depends_on = resource.pop("DependsOn", [])
        kept = [
            name
            for name in ([depends_on] if isinstance(depends_on, str) else depends_on)
            if name in created
        ]
        if kept:
            resource["DependsOn"] = kept
        stack_resources[logical_id] = resource
    return stack_resources


def _function_settings(
    logical_id: str, properties: Mapping[str, Any], left_out: Mapping[str, SkippedPart]
) -> tuple[dict[str, Any] | None, list[SkippedPart]]:
    """What the stack must resolve to run the function, or None when it cannot run locally."""
    if "Handler" not in properties:
        reason = "no Handler: container images do not run locally"
        return None, [SkippedPart(logical_id, FUNCTION_TYPE, reason)]
    settings = {
        name: properties[name]
        for name in ("Handler", "Runtime", "Timeout", "MemorySize", "FunctionName")
        if name in properties
    }
    notes: list[SkippedPart] = []
    variables: dict[str, Any] = {}
    for name, value in (properties.get("Environment") or {}).get("Variables", {}).items():
        missing = sorted(_references(value) & set(left_out))
        if missing:
            variable = f"{logical_id}.Environment.Variables.{name}"
            notes.append(_not_created("Environment variable", variable, missing))
        else:
            variables[name] = value
    settings["Variables"] = variables
    missing = sorted(_references(settings) & set(left_out))
    if missing:
        return None, [*notes, _not_created(FUNCTION_TYPE, logical_id, missing)]
    return settings, notes


def _function_of(mapping: Mapping[str, Any], functions: Mapping[str, Any]) -> str | None:
    """The logical id of the template function a mapping's FunctionName names."""
    name = mapping.get("FunctionName")
    refs = _references(name) if isinstance(name, dict) else {name}
    matches = [ref for ref in refs if ref in functions]
    return matches[0] if len(matches) == 1 else None


def _code_uri(function: Mapping[str, Any], base: Path) -> Path | None:
    code = function.get("Code")
    if isinstance(code, dict) and code.get("S3Bucket") == _CODE_BUCKET:
        return (base / urllib.parse.unquote(str(code["S3Key"]))).resolve()
    return None


def _plan(translated: dict[str, Any], path: Path, region: str, overrides: dict[str, str]) -> Plan:
    base = path.parent
    resources: dict[str, dict[str, Any]] = translated["Resources"]
    left_out = _left_out(resources, path, set(translated.get("Parameters") or {}) | set(resources))
    notes: list[SkippedPart] = []

    outputs: dict[str, Any] = {}
    for key, output in (translated.get("Outputs") or {}).items():
        missing = sorted(_references(output) & set(left_out))
        if missing:
            notes.append(_not_created("Output", key, missing))
        else:
            outputs[key] = output

    function_outputs: dict[str, str] = {}
    code_uris: dict[str, Path | None] = {}
    declared_variables: dict[str, tuple[str, ...]] = {}
    functions = [(key, value) for key, value in resources.items() if value["Type"] == FUNCTION_TYPE]
    for index, (logical_id, resource) in enumerate(functions):
        properties = resource.get("Properties", {})
        settings, function_notes = _function_settings(logical_id, properties, left_out)
        notes.extend(function_notes)
        if settings is not None:
            function_outputs[logical_id] = f"{_FUNCTION_OUTPUT}{index}"
            outputs[function_outputs[logical_id]] = _resolving_output(settings, resource)
            code_uris[logical_id] = _code_uri(properties, base)
            declared_variables[logical_id] = tuple(settings["Variables"])

    mapping_outputs: dict[str, tuple[str, str]] = {}
    mappings = [(key, value) for key, value in resources.items() if value["Type"] == MAPPING_TYPE]
    for index, (logical_id, resource) in enumerate(mappings):
        properties = dict(resource.get("Properties", {}))
        function = _function_of(properties, function_outputs)
        properties.pop("FunctionName", None)
        missing = sorted(_references(properties) & set(left_out))
        if function is None:
            reason = "its FunctionName is not a function run locally"
            notes.append(SkippedPart(logical_id, MAPPING_TYPE, reason))
        elif missing:
            notes.append(_not_created(MAPPING_TYPE, logical_id, missing))
        else:
            output_key = f"{_MAPPING_OUTPUT}{index}"
            outputs[output_key] = _resolving_output(properties, resource)
            mapping_outputs[logical_id] = (function, output_key)

    stack_template = {key: value for key, value in translated.items() if key in _KEPT_SECTIONS}
    created = [logical_id for logical_id in resources if logical_id not in left_out]
    stack_template["Resources"] = _stack_resources(resources, created) or {
        # CloudFormation needs one resource; this one creates nothing.
        "StreamsLocalPlaceholder": {"Type": "AWS::CloudFormation::WaitConditionHandle"}
    }
    stack_template["Outputs"] = outputs
    return Plan(
        path=path,
        region=region,
        overrides=overrides,
        template=stack_template,
        function_outputs=function_outputs,
        mapping_outputs=mapping_outputs,
        code_uris=code_uris,
        declared_variables=declared_variables,
        skipped=(*left_out.values(), *notes),
    )


def _resolving_output(value: Mapping[str, Any], resource: Mapping[str, Any]) -> dict[str, Any]:
    # moto's CloudFormation evaluates the intrinsics and serialises the result.
    output: dict[str, Any] = {"Value": {"Fn::ToJsonString": dict(value)}}
    if "Condition" in resource:
        output["Condition"] = resource["Condition"]
    return output


def _environment_value(value: Any) -> str:
    # Lambda's environment holds strings; CloudFormation writes booleans as "true"/"false".
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _functions(
    plan: Plan, outputs: Mapping[str, str]
) -> tuple[dict[str, TemplateFunction], list[SkippedPart]]:
    notes: list[SkippedPart] = []
    sources: dict[str, list[EventSourceSpec]] = {name: [] for name in plan.function_outputs}
    queues: dict[str, list[QueueSourceSpec]] = {name: [] for name in plan.function_outputs}
    for logical_id, (function, output_key) in plan.mapping_outputs.items():
        if output_key not in outputs:
            continue  # its Condition is false: no such mapping
        properties: dict[str, Any] = json.loads(outputs[output_key])
        arn = str(properties.get("EventSourceArn", ""))
        parsed = Arn.of(arn)
        kind = parsed.stream_source if parsed is not None else None
        if kind is not None:
            sources[function].append(EventSourceSpec(logical_id, kind, arn, properties))
        elif parsed is not None and parsed.is_queue:
            queues[function].append(QueueSourceSpec(logical_id, arn, properties))
        else:
            notes.append(
                SkippedPart(
                    logical_id,
                    MAPPING_TYPE,
                    f"its source {arn or '(none)'} is not a DynamoDB or Kinesis stream or an "
                    "SQS queue: only those are run locally",
                )
            )

    functions: dict[str, TemplateFunction] = {}
    for logical_id, output_key in plan.function_outputs.items():
        if output_key not in outputs:
            continue  # its Condition is false: no such function
        settings: dict[str, Any] = json.loads(outputs[output_key])
        variables: dict[str, Any] = settings.get("Variables", {})
        notes.extend(
            SkippedPart(
                f"{logical_id}.Environment.Variables.{name}",
                "Environment variable",
                "moto's CloudFormation could not resolve its value",
            )
            for name in plan.declared_variables[logical_id]
            if name not in variables
        )
        functions[logical_id] = TemplateFunction(
            logical_id=logical_id,
            code_uri=plan.code_uris[logical_id],
            handler=str(settings["Handler"]),
            runtime=str(settings.get("Runtime", "")),
            timeout=int(settings.get("Timeout", DEFAULT_TIMEOUT_SECONDS)),
            memory_size=int(settings.get("MemorySize", DEFAULT_MEMORY_MB)),
            environment={name: _environment_value(value) for name, value in variables.items()},
            event_sources=tuple(sources[logical_id]),
            function_name=settings.get("FunctionName"),
            queue_sources=tuple(queues[logical_id]),
        )
    return functions, notes


def translate_template(
    template_path: str | Path,
    *,
    parameter_overrides: Mapping[str, str] | None = None,
    region: str | None = None,
) -> dict[str, Any]:
    """The template as the SAM translator expands it (Globals applied, events as mappings).

    Function code locations are marked so that `function_code_uri` finds them.
    """
    path = Path(template_path).resolve()
    template = _load_template(path)
    overrides = _checked_overrides(template, parameter_overrides or {}, path)
    return _translate(template, overrides, region_or_default(region), path)


def plan_template(
    template_path: str | Path,
    *,
    parameter_overrides: Mapping[str, str] | None = None,
    region: str | None = None,
) -> Plan:
    """What to create in the endpoint for the template, and how to read its functions back.

    Raises UserError for a template or parameters that cannot be deployed.
    """
    path = Path(template_path).resolve()
    region = region_or_default(region)
    template = _load_template(path)
    overrides = _checked_overrides(template, parameter_overrides or {}, path)
    return _plan(_translate(template, overrides, region, path), path, region, overrides)


def function_code_uri(function: Mapping[str, Any], template_path: str | Path) -> Path | None:
    """A translated function's local code directory (its CodeUri, relative to the template)."""
    return _code_uri(function, Path(template_path).resolve().parent)


def mapping_function(mapping: Mapping[str, Any], functions: Mapping[str, Any]) -> str | None:
    """The logical id of the function a translated mapping's FunctionName names, if one."""
    return _function_of(mapping, functions)
