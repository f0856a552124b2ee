"""The embedded AWS endpoint, and a template's resources in it.

`start_endpoint` runs moto's server (its real WSGI application) on 127.0.0.1 in this process.
`deploy_template` turns a SAM or CloudFormation template into resources there with real
engines only: the SAM translator expands `Globals` and turns each function's events into
`AWS::Lambda::EventSourceMapping` resources, and moto's CloudFormation creates the data
resources (tables, streams, queues, topics, buckets) as a stack, so names come from the stack
as they do on AWS. The functions and their mappings are not created in moto (moto would run
them inside every write); instead the stack resolves what the local mapping needs to run them,
as extra outputs that evaluate each function's settings and environment and each mapping's
properties. Nothing here resolves `Ref`, `Fn::GetAtt` or `Fn::Sub` itself.

`streams local up` records its endpoint in `.streams/local.json` (in the directory it was
started from) so that other commands started there find it; see `current_endpoint`.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError, EndpointConnectionError
from botocore.parsers import ResponseParserError

from streams.errors import UserError
from streams.sources.base import EventSource

if TYPE_CHECKING:
    from mypy_boto3_cloudformation import CloudFormationClient
    from mypy_boto3_cloudformation.type_defs import ParameterTypeDef
    from werkzeug.serving import BaseWSGIServer

__all__ = [
    "DEFAULT_STACK_NAME",
    "DEFAULT_TEMPLATE",
    "STATE_FILE",
    "DeployedStack",
    "EmbeddedEndpoint",
    "Endpoint",
    "EventSourceSpec",
    "FunctionSpec",
    "QueueSourceSpec",
    "RecordedEndpoint",
    "SkippedPart",
    "StackResource",
    "current_endpoint",
    "deploy_template",
    "endpoint_recorded",
    "forget_endpoint",
    "local_session",
    "parse_parameter_overrides",
    "read_recorded_endpoint",
    "record_endpoint",
    "stack_outputs",
    "start_endpoint",
]

DEFAULT_TEMPLATE = Path("template.yaml")
DEFAULT_STACK_NAME = "streams-local"
DEFAULT_REGION = "us-east-1"
STATE_FILE = Path(".streams") / "local.json"
LOOPBACK = "127.0.0.1"
LOCAL_EXTRA_HINT = "install the local extra: pip install 'streams[local]'"

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
_DIGEST_TAG = "streams:template-digest"
_FUNCTION_OUTPUT = "StreamsLocalFunction"
_MAPPING_OUTPUT = "StreamsLocalMapping"
_STACK_NAME = re.compile(r"[A-Za-z][-A-Za-z0-9]{0,127}")
_PARAMETER_KEY = re.compile(r"[A-Za-z0-9]+")
_LONG_OVERRIDE = re.compile(r"ParameterKey=([^,]*),ParameterValue=(.*)", re.DOTALL)
_SUB_VARIABLE = re.compile(r"\$\{([^!}][^}]*)\}")
# moto's static test credentials: moto accepts any, and a fresh machine has none.
_LOCAL_ACCESS_KEY = _LOCAL_SECRET_KEY = "testing"


# --- the endpoint -------------------------------------------------------------------------


class EmbeddedEndpoint:
    """moto's server, serving from a thread of this process on 127.0.0.1 until `stop()`."""

    def __init__(self, server: BaseWSGIServer) -> None:
        self._server = server
        host, port = server.server_address[:2]
        self.url = f"http://{host!s}:{port}"
        self._thread = threading.Thread(
            target=server.serve_forever, name=f"moto-server-{port}", daemon=True
        )
        self._thread.start()
        self._stopped = False

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    def wait(self) -> None:
        """Block until `stop()` (from another thread or a signal handler)."""
        self._thread.join()

    def __enter__(self) -> EmbeddedEndpoint:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


def start_endpoint(port: int = 0) -> EmbeddedEndpoint:
    """Start moto's server on 127.0.0.1:`port` (0: any free port)."""
    try:
        # The `local` extra; imported on use, since moto takes a second to import.
        from moto.moto_server.werkzeug_app import (
            DomainDispatcherApplication,
            MotoRequestHandler,
            create_backend_app,
        )
        from werkzeug.serving import make_server
    except ImportError as error:
        raise UserError(f"moto's server is not installed ({error}): {LOCAL_EXTRA_HINT}") from None

    class QuietRequestHandler(MotoRequestHandler):
        def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
            """One line per request would drown the commands' own output."""

    # Bind here rather than in werkzeug, which exits the process when the port is taken.
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((LOOPBACK, port))
        listener.listen(socket.SOMAXCONN)
        server = make_server(
            LOOPBACK,
            port,
            DomainDispatcherApplication(create_backend_app),
            threaded=True,
            request_handler=QuietRequestHandler,
            fd=listener.fileno(),
        )
    except OSError as error:
        raise UserError(
            f"cannot listen on {LOOPBACK}:{port} ({error.strerror}): "
            "choose another --port (0 picks a free one)"
        ) from None
    finally:
        listener.close()  # the server holds its own duplicate of the socket
    return EmbeddedEndpoint(server)


def serve_endpoint(port: int) -> None:
    """Serve `start_endpoint(port)` in this process until it is terminated (EndpointProcess)."""
    endpoint = start_endpoint(port)
    signal.signal(signal.SIGTERM, lambda signum, frame: endpoint.stop())
    endpoint.wait()


class EndpointProcess:
    """moto's server in a child process on 127.0.0.1 until `stop()`.

    For work that keeps this process busy (the demo runs the mapping, the writer and the
    monitor here): moto then gets a core of its own instead of sharing this interpreter.
    """

    def __init__(self, port: int = 0, *, start_timeout: float = 60.0) -> None:
        if port == 0:
            with socket.socket() as probe:  # a free port; moto binds it a moment later
                probe.bind((LOOPBACK, 0))
                port = int(probe.getsockname()[1])
        self.url = f"http://{LOOPBACK}:{port}"
        serve = f"import streams.local.endpoint as local; local.serve_endpoint({port})"
        self._process = subprocess.Popen(
            [sys.executable, "-c", serve], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        give_up = time.monotonic() + start_timeout
        while not self._answers(port):
            if self._process.poll() is not None or time.monotonic() > give_up:
                self.stop()
                raise UserError(
                    f"moto's server did not start on {LOOPBACK}:{port} (is the port taken? "
                    "choose another --port, 0 picks a free one)"
                )
            time.sleep(0.1)

    @staticmethod
    def _answers(port: int) -> bool:
        try:
            socket.create_connection((LOOPBACK, port), timeout=1).close()
        except OSError:
            return False
        return True

    def stop(self) -> None:
        if self._process.poll() is None:
            self._process.terminate()
        self._process.wait()

    def __enter__(self) -> EndpointProcess:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


def _region(region: str | None) -> str:
    return region or boto3.Session().region_name or DEFAULT_REGION


def local_session(region: str | None = None) -> boto3.Session:
    """A boto3 session for a local endpoint, with moto's test credentials.

    The region is `region`, else the configured one (AWS_REGION, AWS_DEFAULT_REGION, config),
    else us-east-1. Real credentials are never needed (nor sent) for a local endpoint.
    """
    return boto3.Session(
        aws_access_key_id=_LOCAL_ACCESS_KEY,
        aws_secret_access_key=_LOCAL_SECRET_KEY,
        region_name=_region(region),
    )


# --- where other commands find the endpoint -----------------------------------------------


@dataclass(frozen=True)
class RecordedEndpoint:
    """What `streams local up` writes to `.streams/local.json` while it serves."""

    endpoint_url: str
    region: str
    stack_name: str | None
    template: str | None
    pid: int


def record_endpoint(recorded: RecordedEndpoint, path: Path = STATE_FILE) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(asdict(recorded), indent=2) + "\n")
    temporary.replace(path)  # readers never see half a file
    return path


@contextlib.contextmanager
def endpoint_recorded(
    endpoint_url: str, stack: DeployedStack, template: str | Path, path: Path = STATE_FILE
) -> Iterator[Path]:
    """While the block runs, the endpoint and its stack are recorded in `path` for the other
    commands (`current_endpoint`); the record is removed when it ends."""
    recorded = RecordedEndpoint(
        endpoint_url=endpoint_url,
        region=stack.region,
        stack_name=stack.stack_name,
        template=str(template),
        pid=os.getpid(),
    )
    record_endpoint(recorded, path)
    try:
        yield path
    finally:
        forget_endpoint(path)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def read_recorded_endpoint(path: Path = STATE_FILE) -> RecordedEndpoint | None:
    """The endpoint `streams local up` serves, or None when none is up (absent or stale file)."""
    try:
        data = json.loads(path.read_text())
        recorded = RecordedEndpoint(
            endpoint_url=str(data["endpoint_url"]),
            region=str(data["region"]),
            stack_name=data.get("stack_name"),
            template=data.get("template"),
            pid=int(data["pid"]),
        )
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError) as error:
        raise UserError(
            f"{path} is not a file `streams local up` wrote ({error}); delete it"
        ) from None
    return recorded if _process_alive(recorded.pid) else None


def forget_endpoint(path: Path = STATE_FILE) -> None:
    """Remove the record, if this process wrote it."""
    try:
        if json.loads(path.read_text()).get("pid") == os.getpid():
            path.unlink()
    except (FileNotFoundError, ValueError):
        return


@dataclass(frozen=True)
class Endpoint:
    """The endpoint a command talks to: a local one (`url`), or AWS itself (`url` is None)."""

    url: str | None
    origin: str
    region: str
    stack_name: str | None = None

    @property
    def is_local(self) -> bool:
        return self.url is not None

    def session(self) -> boto3.Session:
        """A session for this endpoint: moto's test credentials for a local one (a fresh
        machine has none of its own), the AWS credentials chain otherwise."""
        if self.is_local:
            return local_session(self.region)
        return boto3.Session(region_name=self.region)

    def describe(self) -> str:
        if self.url is None:
            return f"endpoint: AWS, region {self.region} (credentials from the AWS chain)"
        return f"endpoint: {self.url} (from {self.origin}), region {self.region}"


def current_endpoint(state_file: Path = STATE_FILE) -> Endpoint:
    """Where commands send their calls: AWS_ENDPOINT_URL, else `streams local up`'s, else AWS."""
    url = os.environ.get("AWS_ENDPOINT_URL")
    if url:
        return Endpoint(url=url, origin="AWS_ENDPOINT_URL", region=_region(None))
    recorded = read_recorded_endpoint(state_file)
    if recorded is not None:
        return Endpoint(
            url=recorded.endpoint_url,
            origin=str(state_file),
            region=recorded.region,
            stack_name=recorded.stack_name,
        )
    return Endpoint(url=None, origin="AWS", region=_region(None))


# --- what a deployment gives the mapping --------------------------------------------------


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
class FunctionSpec:
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
class StackResource:
    logical_id: str
    resource_type: str
    physical_id: str


@dataclass(frozen=True)
class SkippedPart:
    """A part of the template that is not created or run locally, and why."""

    name: str
    kind: str
    reason: str

    def describe(self) -> str:
        return f"{self.name} ({self.kind}): {self.reason}"


@dataclass(frozen=True)
class DeployedStack:
    stack_name: str
    endpoint_url: str
    region: str
    template: Path
    status: Literal["created", "updated", "unchanged"]
    outputs: dict[str, str]
    resources: tuple[StackResource, ...]
    functions: dict[str, FunctionSpec]
    skipped: tuple[SkippedPart, ...] = ()

    def function(self, logical_id: str | None = None) -> FunctionSpec:
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


# --- template → plan ----------------------------------------------------------------------


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
class _Plan:
    """The stack template for moto, and how to read the functions back from its outputs."""

    template: dict[str, Any]
    function_outputs: dict[str, str]  # function logical id → output key
    mapping_outputs: dict[str, tuple[str, str]]  # mapping logical id → (function, output key)
    code_uris: dict[str, Path | None]
    declared_variables: dict[str, tuple[str, ...]]
    skipped: tuple[SkippedPart, ...]


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


def _plan(translated: dict[str, Any], base: Path, path: Path) -> _Plan:
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
    return _Plan(
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


# --- plan → stack -------------------------------------------------------------------------


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


def _is_queue_arn(arn: str) -> bool:
    parts = arn.split(":", 5)
    return len(parts) == 6 and parts[0] == "arn" and parts[2] == "sqs" and bool(parts[5])


def _stack_arn_kind(arn: str) -> EventSource | None:
    parts = arn.split(":", 5)
    if len(parts) != 6:
        return None
    service, resource = parts[2], parts[5]
    if service == "dynamodb" and re.fullmatch(r"table/[^/]+/stream/[^/]+", resource):
        return "aws:dynamodb"
    if service == "kinesis" and re.fullmatch(r"stream/[^/]+", resource):
        return "aws:kinesis"
    return None


def _environment_value(value: Any) -> str:
    # Lambda's environment holds strings; CloudFormation writes booleans as "true"/"false".
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _read_functions(
    plan: _Plan, outputs: Mapping[str, str]
) -> tuple[dict[str, FunctionSpec], list[SkippedPart]]:
    notes: list[SkippedPart] = []
    sources: dict[str, list[EventSourceSpec]] = {name: [] for name in plan.function_outputs}
    queues: dict[str, list[QueueSourceSpec]] = {name: [] for name in plan.function_outputs}
    for logical_id, (function, output_key) in plan.mapping_outputs.items():
        if output_key not in outputs:
            continue  # its Condition is false: no such mapping
        properties: dict[str, Any] = json.loads(outputs[output_key])
        arn = str(properties.get("EventSourceArn", ""))
        kind = _stack_arn_kind(arn)
        if kind is not None:
            sources[function].append(EventSourceSpec(logical_id, kind, arn, properties))
        elif _is_queue_arn(arn):
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

    functions: dict[str, FunctionSpec] = {}
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
        functions[logical_id] = FunctionSpec(
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
    return _translate(template, overrides, _region(region), path)


def function_code_uri(function: Mapping[str, Any], template_path: str | Path) -> Path | None:
    """A translated function's local code directory (its CodeUri, relative to the template)."""
    return _code_uri(function, Path(template_path).resolve().parent)


def mapping_function(mapping: Mapping[str, Any], functions: Mapping[str, Any]) -> str | None:
    """The logical id of the function a translated mapping's FunctionName names, if one."""
    return _function_of(mapping, functions)


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
    path = Path(template_path).resolve()
    region = _region(region)
    template = _load_template(path)
    overrides = _checked_overrides(template, parameter_overrides or {}, path)
    plan = _plan(_translate(template, overrides, region, path), path.parent, path)

    session = local_session(region)
    cfn: CloudFormationClient = session.client(
        "cloudformation",
        endpoint_url=endpoint_url,
        # A server error means moto cannot create this template; retrying cannot help.
        config=Config(retries={"total_max_attempts": 1}),
    )
    body = json.dumps(plan.template, sort_keys=True)
    try:
        status = _apply(cfn, name, body, overrides)
        (stack,) = cfn.describe_stacks(StackName=name)["Stacks"]
        summaries = cfn.list_stack_resources(StackName=name)["StackResourceSummaries"]
    except ClientError as error:
        raise UserError(f"{endpoint_url}: {error}") from None
    except EndpointConnectionError:
        raise UserError(
            f"nothing answers at {endpoint_url}: start `streams local up`, or fix AWS_ENDPOINT_URL"
        ) from None
    outputs = {output["OutputKey"]: output["OutputValue"] for output in stack.get("Outputs", [])}
    functions, notes = _read_functions(plan, outputs)
    internal = set(plan.function_outputs.values()) | {
        key for _, key in plan.mapping_outputs.values()
    }
    return DeployedStack(
        stack_name=name,
        endpoint_url=endpoint_url,
        region=region,
        template=path,
        status=status,
        outputs={key: value for key, value in outputs.items() if key not in internal},
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
