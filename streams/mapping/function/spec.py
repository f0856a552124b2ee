"""A function as the local mapping runs it: the template's settings, checked as Lambda checks them,
and the environment its processes get."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "CREDENTIALS_CHAIN",
    "RUNTIME",
    "FunctionSpec",
    "base_environment",
    "function_environment",
]

RUNTIME = re.compile(r"python(\d+)\.(\d+)")


# The caller's credentials chain: left out when the function is given its own credentials.
CREDENTIALS_CHAIN = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_PROFILE",
    "AWS_CONFIG_FILE",
    "AWS_SHARED_CREDENTIALS_FILE",
)


# From our environment into the function's: the shell basics and the credentials chain
# (locally the credentials are not the execution role's, as on Lambda, but the caller's).
_PASSTHROUGH = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", *CREDENTIALS_CHAIN, "AWS_CA_BUNDLE")


# Lambda refuses a function whose variables set these (CreateFunction's reserved keys).
_RESERVED = frozenset(
    {
        "_HANDLER",
        "_X_AMZN_TRACE_ID",
        "AWS_DEFAULT_REGION",
        "AWS_REGION",
        "AWS_EXECUTION_ENV",
        "AWS_LAMBDA_FUNCTION_NAME",
        "AWS_LAMBDA_FUNCTION_MEMORY_SIZE",
        "AWS_LAMBDA_FUNCTION_VERSION",
        "AWS_LAMBDA_INITIALIZATION_TYPE",
        "AWS_LAMBDA_LOG_GROUP_NAME",
        "AWS_LAMBDA_LOG_STREAM_NAME",
        "AWS_ACCESS_KEY",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_LAMBDA_RUNTIME_API",
        "LAMBDA_TASK_ROOT",
        "LAMBDA_RUNTIME_DIR",
    }
)


def _default_region() -> str:
    return os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"


@dataclass(frozen=True)
class FunctionSpec:
    """A function as the template declares it (`CodeUri` resolved against the template)."""

    name: str
    code_uri: Path
    handler: str
    runtime: str = "python3.12"
    timeout: int = 3  # seconds; Lambda's default
    memory_size: int = 128  # MB; Lambda's default
    environment: Mapping[str, str] = field(default_factory=dict)
    region: str = field(default_factory=_default_region)
    account_id: str = "123456789012"
    #: The function's credentials (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, and
    #: `AWS_SESSION_TOKEN` if any), as Lambda gives a function its execution role's. Given, they
    #: replace the caller's credentials chain; empty, the caller's passes through.
    credentials: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # Absolute: the worker runs in it, and puts it on its import path.
        object.__setattr__(self, "code_uri", Path(self.code_uri).resolve())
        # The ranges and messages of Lambda's CreateFunction.
        if not 1 <= self.timeout <= 900:
            raise ValueError(f"Timeout {self.timeout}: must be 1 to 900 seconds")
        if not 128 <= self.memory_size <= 10240:
            raise ValueError(f"MemorySize {self.memory_size}: must be 128 to 10240 MB")
        module, _, function = self.handler.rpartition(".")
        if not module or not function:
            raise ValueError(f"Handler {self.handler!r}: must be module.function")
        if not RUNTIME.fullmatch(self.runtime):
            raise ValueError(f"Runtime {self.runtime!r}: only Python runtimes (python3.N) run here")
        if not self.code_uri.is_dir():
            raise ValueError(f"CodeUri {self.code_uri}: not a directory")
        reserved = sorted(_RESERVED.intersection(self.environment))
        if reserved:
            raise ValueError(
                f"Environment.Variables: {', '.join(reserved)} reserved by Lambda: remove them"
            )

    @property
    def arn(self) -> str:
        return f"arn:aws:lambda:{self.region}:{self.account_id}:function:{self.name}"


def base_environment() -> dict[str, str]:
    return {name: os.environ[name] for name in _PASSTHROUGH if name in os.environ}


def function_environment(
    spec: FunctionSpec, python_version: str, log_stream: str
) -> dict[str, str]:
    environment = base_environment()
    if spec.credentials:
        for name in CREDENTIALS_CHAIN:
            environment.pop(name, None)
        environment.update(spec.credentials)
    # The local endpoint (and any service-specific one) reaches the function as it reaches us.
    environment.update(
        (name, value) for name, value in os.environ.items() if name.startswith("AWS_ENDPOINT_URL")
    )
    environment.update(spec.environment)
    environment.update(
        {
            "AWS_LAMBDA_FUNCTION_NAME": spec.name,
            "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(spec.memory_size),
            "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
            "AWS_LAMBDA_LOG_GROUP_NAME": f"/aws/lambda/{spec.name}",
            "AWS_LAMBDA_LOG_STREAM_NAME": log_stream,
            "AWS_LAMBDA_INITIALIZATION_TYPE": "on-demand",
            "AWS_REGION": spec.region,
            "AWS_DEFAULT_REGION": spec.region,
            "AWS_EXECUTION_ENV": f"AWS_Lambda_python{python_version}",
            "LAMBDA_TASK_ROOT": str(spec.code_uri),
            "_HANDLER": spec.handler,
            "TZ": ":UTC",
        }
    )
    return environment
