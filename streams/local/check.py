"""Settings in a template that would lose records or defeat the batch core.

It reads the template as the SAM translator expands it and, for each function fed by a stream,
looks at the event source mapping's settings, the function's environment and its handler
module's source (to see whether it uses `StreamProcessor`, and `halt_after`), found as SAM finds
it: `CodeUri` relative to the template's folder. A function whose code it cannot read is named,
and checked with every rule as if it used `StreamProcessor` with `halt_after`: the check never
says all clear about code it did not read.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from streams.batch import DEFAULT_MAX_RECORD_AGE, MAX_RECORD_AGE_VARIABLE
from streams.local.template import function_code_uri, mapping_function, translate_template

__all__ = ["Finding", "check_template"]

_HALT_AFTER = re.compile(r"halt_after\s*=\s*(?!None\b)")


@dataclass(frozen=True)
class Finding:
    """One setting that would lose records or defeat the core, named by its property path."""

    where: str
    message: str

    def __str__(self) -> str:
        return f"{self.where}: {self.message}"


@dataclass(frozen=True)
class _Source:
    """The function's handler module as text, or why it could not be read."""

    text: str | None
    unread: str | None = None


def _handler_source(function: Mapping[str, Any], template: Path) -> _Source:
    inline = (function.get("Code") or {}).get("ZipFile")
    if isinstance(inline, str):
        return _Source(inline)  # InlineCode: the handler is in the template
    code = function_code_uri(function, template)
    if code is None:
        return _Source(None, "its CodeUri is not a folder on this machine")
    handler = function.get("Handler")
    if not isinstance(handler, str) or "." not in handler:
        return _Source(None, f"its Handler {handler!r} is not module.function")
    module = handler.rpartition(".")[0].replace(".", "/")
    candidates = (code / f"{module}.py", code / module / "__init__.py")
    for candidate in candidates:
        if candidate.is_file():
            try:
                return _Source(candidate.read_text(errors="replace"))
            except OSError as error:
                return _Source(None, f"{candidate}: {error.strerror}")
    return _Source(None, f"no {candidates[0]} (CodeUri is relative to the template's folder)")


def _parameter_value(
    value: Any, translated: Mapping[str, Any], overrides: Mapping[str, str]
) -> Any:
    """A `Ref` to a template parameter as the value it takes (override, else default)."""
    if isinstance(value, dict) and set(value) == {"Ref"}:
        name = value["Ref"]
        if name in overrides:
            return overrides[name]
        return (translated.get("Parameters") or {}).get(name, {}).get("Default", value)
    return value


def check_template(
    template: str | Path, *, parameter_overrides: Mapping[str, str] | None = None
) -> list[Finding]:
    path = Path(template).resolve()
    overrides = dict(parameter_overrides or {})
    translated = translate_template(path, parameter_overrides=overrides)
    resources: dict[str, Any] = translated["Resources"]
    functions = {
        key: value.get("Properties", {})
        for key, value in resources.items()
        if value.get("Type") == "AWS::Lambda::Function"
    }
    findings: list[Finding] = []
    unread: set[str] = set()
    for mapping_id, resource in resources.items():
        if resource.get("Type") != "AWS::Lambda::EventSourceMapping":
            continue
        settings: dict[str, Any] = resource.get("Properties", {})
        if "StartingPosition" not in settings:
            continue  # not a stream (SQS and the like)
        function_id = mapping_function(settings, functions)
        if function_id is None:
            continue
        function = functions[function_id]
        source = _handler_source(function, path)
        if source.unread is not None and function_id not in unread:
            unread.add(function_id)
            findings.append(
                Finding(
                    f"{path.name}: {function_id} CodeUri",
                    f"cannot read the handler's code ({source.unread}): checked with every "
                    "rule, as if it used StreamProcessor with halt_after",
                )
            )
        findings.extend(
            _check_mapping(
                f"{path.name}: {function_id} ({mapping_id})",
                settings,
                function,
                source.text,
                lambda value: _parameter_value(value, translated, overrides),
            )
        )
    return findings


def _check_mapping(
    where: str,
    settings: Mapping[str, Any],
    function: Mapping[str, Any],
    source: str | None,
    resolve: Callable[[Any], Any],
) -> list[Finding]:
    """The mapping's findings; `source` None (unread) is taken as the worst case."""
    findings: list[Finding] = []

    def found(prop: str, message: str) -> None:
        findings.append(Finding(f"{where} {prop}", message))

    if not (settings.get("DestinationConfig") or {}).get("OnFailure"):
        found(
            "DestinationConfig.OnFailure",
            "no on-failure destination: records Lambda gives up on vanish without a trace "
            "(set an SQS queue or SNS topic)",
        )
    if source is not None and "StreamProcessor" not in source:
        return findings  # the remaining rules are about the batch core

    responses = settings.get("FunctionResponseTypes") or []
    if "ReportBatchItemFailures" not in responses:
        found(
            "FunctionResponseTypes",
            "StreamProcessor reports the record to resume at, but without "
            "ReportBatchItemFailures Lambda ignores it and the records after it are lost",
        )
    variables: Mapping[str, Any] = (function.get("Environment") or {}).get("Variables") or {}
    if "DEAD_LETTER_QUEUE_URL" not in variables:
        found(
            "Environment.Variables.DEAD_LETTER_QUEUE_URL",
            "not set: StreamProcessor has nowhere to park poison records and fails at start",
        )
    core_age = DEFAULT_MAX_RECORD_AGE.total_seconds()
    configured = resolve(variables.get(MAX_RECORD_AGE_VARIABLE))
    if configured is not None:
        try:
            core_age = float(configured)
        except (TypeError, ValueError):
            found(f"Environment.Variables.{MAX_RECORD_AGE_VARIABLE}", "not a number of seconds")
    retries = int(resolve(settings.get("MaximumRetryAttempts", -1)))
    if retries != -1:
        found(
            "MaximumRetryAttempts",
            f"{retries}: every transient checkpoint counts as a retry, so Lambda gives up (keeping "
            f"metadata only) before the core parks the record in full at {core_age:.0f} s; use -1",
        )
    age = int(resolve(settings.get("MaximumRecordAgeInSeconds", -1)))
    if age != -1 and age <= core_age:
        found(
            "MaximumRecordAgeInSeconds",
            f"{age} s gives up before the core's own age limit ({core_age:.0f} s): raise it or "
            f"lower {MAX_RECORD_AGE_VARIABLE}",
        )
    halts = source is None or _HALT_AFTER.search(source) is not None
    if settings.get("BisectBatchOnFunctionError") is True and halts:
        found(
            "BisectBatchOnFunctionError",
            "with halt_after, a halted batch is split and retried half by half: the halt "
            "costs many invocations before the shard stops; turn one of them off",
        )
    return findings
