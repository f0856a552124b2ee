"""`FilterCriteria`: the EventBridge pattern subset Lambda applies to stream records (section 7).

A pattern is a JSON object whose leaves are arrays of rules; a record matches when every field
named in the pattern matches one of its rules (fields the pattern does not name are ignored).
Rules: exact values (strings, numbers, booleans, `null`, `""`), `prefix`, `suffix`,
`equals-ignore-case`, `anything-but` (values, or a `prefix` / `suffix` / `equals-ignore-case`),
`exists` and `numeric`; `$or` takes a list of patterns of which one must match. As in
EventBridge:

- `exists` looks at leaf values only: `{"exists": false}` also matches a field whose value is an
  object (recorded from AWS: `NewImage.presentKey` holding `{"S": ...}` passes `exists: false`);
- `numeric` matches JSON numbers only, so it never matches DynamoDB attribute values, which are
  strings (`{"N": "42"}`), but does match `ApproximateCreationDateTime`;
- numbers equal exactly when their type and value do (`300` is not `300.0`);
- a field holding an array matches when one of its elements does;
- a duplicate key in a pattern keeps its last value.

Records are matched as Lambda matches them: a DynamoDB record as delivered (`dynamodb`, plus
metadata such as `eventName`); a Kinesis record as its metadata with `data` decoded from base64
and JSON. A Kinesis record whose data is not JSON never matches a pattern on `data`.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from streams.sources.base import EventSource

__all__ = ["INVALID_PATTERN", "FilterPattern", "InvalidFilterPattern", "RecordFilter"]

# Lambda's own message for a pattern it refuses (recorded: test_dynamodb_invalid_event_filter).
INVALID_PATTERN: Final = "Invalid filter pattern definition."

_MISSING: Final = object()
_NUMERIC_OPERATORS: Final = frozenset({"=", "<", "<=", ">", ">="})
_LOWER_BOUNDS: Final = frozenset({">", ">="})
_UPPER_BOUNDS: Final = frozenset({"<", "<="})


class InvalidFilterPattern(ValueError):
    """A pattern Lambda would refuse when the mapping is created."""


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _same_value(left: object, right: object) -> bool:
    # Exact matching compares JSON values: types must agree, so 300 differs from 300.0, and
    # True is not 1.
    return type(left) is type(right) and left == right


# --- rules --------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Exact:
    value: object

    def matches(self, value: object) -> bool:
        return _same_value(self.value, value)


@dataclass(frozen=True)
class _Prefix:
    prefix: str

    def matches(self, value: object) -> bool:
        return isinstance(value, str) and value.startswith(self.prefix)


@dataclass(frozen=True)
class _Suffix:
    suffix: str

    def matches(self, value: object) -> bool:
        return isinstance(value, str) and value.endswith(self.suffix)


@dataclass(frozen=True)
class _EqualsIgnoreCase:
    values: tuple[str, ...]

    def matches(self, value: object) -> bool:
        return isinstance(value, str) and value.casefold() in self.values


@dataclass(frozen=True)
class _AnythingBut:
    excluded: _Exact | _Prefix | _Suffix | _EqualsIgnoreCase | tuple[_Exact, ...]

    def matches(self, value: object) -> bool:
        if isinstance(self.excluded, tuple):
            return not any(rule.matches(value) for rule in self.excluded)
        return not self.excluded.matches(value)


@dataclass(frozen=True)
class _Numeric:
    conditions: tuple[tuple[str, float], ...]

    def matches(self, value: object) -> bool:
        if not _is_number(value):
            return False
        number = float(value)  # type: ignore[arg-type]  # _is_number checked it
        return all(_compare(number, operator, bound) for operator, bound in self.conditions)


def _compare(number: float, operator: str, bound: float) -> bool:
    if operator == "=":
        return number == bound
    if operator == "<":
        return number < bound
    if operator == "<=":
        return number <= bound
    if operator == ">":
        return number > bound
    return number >= bound


_Rule = _Exact | _Prefix | _Suffix | _EqualsIgnoreCase | _AnythingBut | _Numeric


@dataclass(frozen=True)
class _Leaf:
    """An array of rules: the field matches when one rule does."""

    rules: tuple[_Rule, ...]
    exists: bool | None  # an `exists` rule, if the array has one

    def matches(self, value: object) -> bool:
        if value is _MISSING or isinstance(value, dict) or value == []:
            # No leaf value here: only `exists: false` can match.
            return self.exists is False
        if self.exists is True:
            return True
        if isinstance(value, list):
            return any(self._matches_scalar(element) for element in value)
        return self._matches_scalar(value)

    def _matches_scalar(self, value: object) -> bool:
        return any(rule.matches(value) for rule in self.rules)


@dataclass(frozen=True)
class _Object:
    """A pattern object: every named field matches, and one alternative of each `$or`."""

    fields: tuple[tuple[str, _Object | _Leaf], ...]
    alternatives: tuple[tuple[_Object, ...], ...] = ()

    def matches(self, value: object) -> bool:
        if isinstance(value, list):
            return any(self.matches(element) for element in value)
        fields: Mapping[str, Any] = value if isinstance(value, dict) else {}
        for name, node in self.fields:
            if not node.matches(fields.get(name, _MISSING)):
                return False
        return all(
            any(alternative.matches(fields) for alternative in choice)
            for choice in self.alternatives
        )

    def names(self) -> set[str]:
        """Top-level field names, including those inside `$or` alternatives."""
        names = {name for name, _ in self.fields}
        for choice in self.alternatives:
            for alternative in choice:
                names |= alternative.names()
        return names


# --- compiling ----------------------------------------------------------------------------


def _invalid() -> InvalidFilterPattern:
    return InvalidFilterPattern(INVALID_PATTERN)


def _string(value: object) -> str:
    if not isinstance(value, str):
        raise _invalid()
    return value


def _scalar(value: object) -> _Exact:
    if isinstance(value, dict | list):
        raise _invalid()
    return _Exact(value)


def _ignore_case(value: object) -> _EqualsIgnoreCase:
    values = value if isinstance(value, list) else [value]
    if not values:
        raise _invalid()
    return _EqualsIgnoreCase(tuple(_string(item).casefold() for item in values))


def _anything_but(value: object) -> _AnythingBut:
    if isinstance(value, list):
        if not value:
            raise _invalid()
        return _AnythingBut(tuple(_scalar(item) for item in value))
    if isinstance(value, dict):
        if len(value) != 1:
            raise _invalid()
        ((operator, operand),) = value.items()
        if operator == "prefix":
            return _AnythingBut(_Prefix(_string(operand)))
        if operator == "suffix":
            return _AnythingBut(_Suffix(_string(operand)))
        if operator == "equals-ignore-case":
            return _AnythingBut(_ignore_case(operand))
        raise _invalid()
    return _AnythingBut(_scalar(value))


def _numeric(value: object) -> _Numeric:
    if not isinstance(value, list) or len(value) not in (2, 4):
        raise _invalid()
    conditions: list[tuple[str, float]] = []
    for index in range(0, len(value), 2):
        operator, bound = value[index], value[index + 1]
        if operator not in _NUMERIC_OPERATORS or not _is_number(bound):
            raise _invalid()
        conditions.append((operator, float(bound)))
    if len(conditions) == 2:
        # A range: one lower bound, then one upper bound (`["<", 10, "=", 3]` means nothing).
        (low, _), (high, _) = conditions
        if low not in _LOWER_BOUNDS or high not in _UPPER_BOUNDS:
            raise _invalid()
    return _Numeric(tuple(conditions))


def _rule(value: object) -> _Rule | bool:
    """One element of a rule array; a bool is an `exists` rule."""
    if not isinstance(value, dict):
        return _scalar(value)
    if len(value) != 1:
        raise _invalid()
    ((operator, operand),) = value.items()
    if operator == "exists":
        if not isinstance(operand, bool):
            raise _invalid()
        return operand
    if operator == "prefix":
        return _Prefix(_string(operand))
    if operator == "suffix":
        return _Suffix(_string(operand))
    if operator == "equals-ignore-case":
        return _EqualsIgnoreCase((_string(operand).casefold(),))
    if operator == "anything-but":
        return _anything_but(operand)
    if operator == "numeric":
        return _numeric(operand)
    raise _invalid()


def _leaf(values: list[Any]) -> _Leaf:
    if not values:
        raise _invalid()
    rules: list[_Rule] = []
    exists: bool | None = None
    for value in values:
        rule = _rule(value)
        if isinstance(rule, bool):
            if exists is not None:
                raise _invalid()
            exists = rule
        else:
            rules.append(rule)
    if exists is not None and rules:
        raise _invalid()  # `exists` stands alone in its array
    return _Leaf(tuple(rules), exists)


def _object(pattern: object) -> _Object:
    if not isinstance(pattern, dict) or not pattern:
        raise _invalid()
    fields: list[tuple[str, _Object | _Leaf]] = []
    alternatives: list[tuple[_Object, ...]] = []
    for name, value in pattern.items():
        if name == "$or":
            if not isinstance(value, list) or len(value) < 2:
                raise _invalid()
            alternatives.append(tuple(_object(alternative) for alternative in value))
        elif isinstance(value, dict):
            fields.append((name, _object(value)))
        elif isinstance(value, list):
            fields.append((name, _leaf(value)))
        else:
            raise _invalid()
    return _Object(tuple(fields), tuple(alternatives))


@dataclass(frozen=True)
class FilterPattern:
    """One `FilterCriteria.Filters[].Pattern`, compiled. Raises `InvalidFilterPattern`."""

    text: str
    _root: _Object = field(init=False, repr=False, compare=False)
    names_data: bool = field(init=False, repr=False, compare=False)  # looks into Kinesis `data`

    def __post_init__(self) -> None:
        try:
            parsed = json.loads(self.text)
        except (json.JSONDecodeError, TypeError):
            raise _invalid() from None
        root = _object(parsed)
        object.__setattr__(self, "_root", root)
        object.__setattr__(self, "names_data", "data" in root.names())

    def matches(self, value: Mapping[str, Any]) -> bool:
        return self._root.matches(value)


class RecordFilter:
    """The mapping's filters, ORed: a record passes when one pattern matches it."""

    def __init__(self, event_source: EventSource, patterns: Sequence[FilterPattern]) -> None:
        self._event_source = event_source
        self._patterns = tuple(patterns)

    def __bool__(self) -> bool:
        return bool(self._patterns)

    def passes(self, record: Mapping[str, Any]) -> bool:
        if not self._patterns:
            return True
        if self._event_source == "aws:dynamodb":
            return any(pattern.matches(record) for pattern in self._patterns)
        view, data_is_json = _kinesis_view(record)
        return any(
            pattern.matches(view)
            for pattern in self._patterns
            if data_is_json or not pattern.names_data
        )


def _kinesis_view(record: Mapping[str, Any]) -> tuple[dict[str, Any], bool]:
    """A Kinesis record as filters see it: metadata with `data` decoded; and whether it was JSON."""
    kinesis: Mapping[str, Any] = record["kinesis"]
    view: dict[str, Any] = {name: value for name, value in record.items() if name != "kinesis"}
    view.update((name, value) for name, value in kinesis.items() if name != "data")
    try:
        view["data"] = json.loads(base64.b64decode(kinesis["data"], validate=True))
    except (binascii.Error, UnicodeDecodeError, json.JSONDecodeError):
        return view, False
    return view, True
