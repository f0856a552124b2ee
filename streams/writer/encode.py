"""Items in DynamoDB's JSON, checked against DynamoDB's rules before they are queued.

`KeySchema` (from DescribeTable) encodes an item or a key and refuses, naming the attribute, what
DynamoDB would refuse: floats, empty sets, empty or oversized keys, numbers beyond 38 digits,
maps and lists nested deeper than 32 levels, items over 400 KB by DynamoDB's own size rules.
"""

from __future__ import annotations

from collections.abc import Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from decimal import Clamped, Decimal, Inexact, Overflow, Rounded, Underflow
from typing import TYPE_CHECKING, Any, cast

from boto3.dynamodb.types import DYNAMODB_CONTEXT, Binary
from botocore.exceptions import BotoCoreError, ClientError

from streams.errors import UserError

if TYPE_CHECKING:
    from mypy_boto3_dynamodb.client import DynamoDBClient

__all__ = [
    "MAX_BATCH",
    "InvalidItemError",
    "Key",
    "KeySchema",
    "TableWriteError",
    "describe_key_schema",
    "table_error_message",
]

MAX_BATCH = 25  # BatchWriteItem takes at most 25 write requests
_MAX_ITEM_BYTES = 400 * 1024
_MAX_DEPTH = 32  # nested maps and lists
_MAX_KEY_BYTES = {"HASH": 2048, "RANGE": 1024}
_KEY_ROLES = {"HASH": "partition key", "RANGE": "sort key"}
_KEY_TYPE_NAMES = {"S": "string", "N": "number (int or Decimal)", "B": "bytes"}

Key = tuple[object, ...]


class InvalidItemError(ValueError):
    """An item or key DynamoDB would refuse, caught by `put()` or `delete()` before it is queued.

    The message names the item (by key, when it has one), the attribute, what is wrong and what
    to do; never an attribute's value (`streams write` prints it), only key values.
    """


class TableWriteError(UserError):
    """The table cannot be written at all (missing, access denied, ...).

    Raised naming the table; every write not accepted by then is listed in `report.failed`.
    """


@dataclass(frozen=True)
class _KeyAttribute:
    name: str
    type: str  # "S", "N" or "B"
    key_type: str  # "HASH" or "RANGE"

    @property
    def role(self) -> str:
        return _KEY_ROLES[self.key_type]


@dataclass(frozen=True)
class KeySchema:
    """The table's key, from DescribeTable; encodes and validates items and keys."""

    table: str
    attributes: tuple[_KeyAttribute, ...]

    def encode_item(self, item: Mapping[str, Any]) -> tuple[dict[str, Any], Key]:
        if not isinstance(item, Mapping):
            raise InvalidItemError(
                f"put() takes an item: a mapping of attribute names to values, "
                f"not {type(item).__name__}"
            )
        key = self._key_of(item)
        try:
            attributes, size = _encode_attributes(item)
        except InvalidItemError as error:
            raise InvalidItemError(f"item {self._describe(item)}: {error}") from None
        if size > _MAX_ITEM_BYTES:
            raise InvalidItemError(
                f"item {self._describe(item)} is {size:,} bytes as DynamoDB counts them, over "
                f"its {_MAX_ITEM_BYTES:,}-byte (400 KB) item limit: keep large values elsewhere "
                f"(for example in S3) and store a pointer"
            )
        return attributes, key

    def encode_key(self, key: Mapping[str, Any]) -> tuple[dict[str, Any], Key]:
        if not isinstance(key, Mapping):
            raise InvalidItemError(
                f"delete() takes a key: a mapping of key attribute names to values, "
                f"not {type(key).__name__}"
            )
        key_value = self._key_of(key)
        names = tuple(a.name for a in self.attributes)
        extra = sorted(str(name) for name in key if name not in names)
        if extra:
            raise InvalidItemError(
                f"delete() takes only the key of table {self.table!r} "
                f"({', '.join(map(repr, names))}); remove {', '.join(map(repr, extra))}"
            )
        return {a.name: _encode(key[a.name], a.name)[0] for a in self.attributes}, key_value

    def key_of_request(self, request: Mapping[str, Any]) -> Key:
        """The key of a write request in DynamoDB's JSON (as in `UnprocessedItems`)."""
        if "PutRequest" in request:
            attributes = request["PutRequest"]["Item"]
        else:
            attributes = request["DeleteRequest"]["Key"]
        return tuple(_key_part(a.type, attributes[a.name][a.type]) for a in self.attributes)

    def _key_of(self, item: Mapping[str, Any]) -> Key:
        parts: list[object] = []
        for attribute in self.attributes:
            if attribute.name not in item:
                raise self._key_error(attribute, item, "is missing: every item needs it")
            value = item[attribute.name]
            if not _has_key_type(value, attribute.type):
                raise self._key_error(
                    attribute,
                    item,
                    f"must be a {_KEY_TYPE_NAMES[attribute.type]}, not {type(value).__name__}",
                )
            try:
                encoded = _encode(value, repr(attribute.name))[0][attribute.type]
            except InvalidItemError as error:
                raise self._key_error(attribute, item, str(error)) from None
            if attribute.type != "N":
                size = (
                    len(encoded)
                    if attribute.type == "B"
                    else _utf8_size(encoded, repr(attribute.name))
                )
                if size == 0:
                    raise self._key_error(
                        attribute, item, "is empty: DynamoDB refuses empty key values"
                    )
                limit = _MAX_KEY_BYTES[attribute.key_type]
                if size > limit:
                    raise self._key_error(
                        attribute, item, f"is {size:,} bytes: DynamoDB allows at most {limit:,}"
                    )
            parts.append(_key_part(attribute.type, encoded))
        return tuple(parts)

    def _key_error(
        self, attribute: _KeyAttribute, item: Mapping[str, Any], problem: str
    ) -> InvalidItemError:
        return InvalidItemError(
            f"{attribute.name!r}, the {attribute.role} of table {self.table!r}, {problem} "
            f"(in an item with attributes {_names(item)})"
        )

    def _describe(self, item: Mapping[str, Any]) -> str:
        return ", ".join(f"{a.name}={item[a.name]!r}" for a in self.attributes)


def describe_key_schema(client: DynamoDBClient, table: str) -> KeySchema:
    where = f"{client.meta.endpoint_url} (region {client.meta.region_name})"
    try:
        description = client.describe_table(TableName=table)["Table"]
    except ClientError as error:
        raise TableWriteError(table_error_message(table, where, error)) from error
    except BotoCoreError as error:
        raise TableWriteError(f"cannot describe table {table!r} at {where}: {error}") from error
    types = {d["AttributeName"]: d["AttributeType"] for d in description["AttributeDefinitions"]}
    # KeySchema lists the partition key first, then the sort key if there is one.
    attributes = tuple(
        _KeyAttribute(k["AttributeName"], types[k["AttributeName"]], k["KeyType"])
        for k in description["KeySchema"]
    )
    return KeySchema(table, attributes)


def table_error_message(table: str, where: str, error: ClientError) -> str:
    code = error.response.get("Error", {}).get("Code", "")
    message = error.response.get("Error", {}).get("Message", "")
    if code == "ResourceNotFoundException":
        return (
            f"table {table!r} does not exist at {where}: check the table name and the region, "
            f"or create the table first"
        )
    if code in ("AccessDeniedException", "UnrecognizedClientException"):
        return f"not allowed to write to table {table!r} at {where}: {code}: {message}"
    return f"cannot write to table {table!r} at {where}: {code}: {message}"


def _encode_attributes(item: Mapping[str, Any]) -> tuple[dict[str, Any], int]:
    """An item's attributes in DynamoDB's JSON, and the item's size as DynamoDB counts it."""
    attributes: dict[str, Any] = {}
    size = 0
    for name, value in item.items():
        if not isinstance(name, str):
            raise InvalidItemError(f"attribute name {name!r} is not a string")
        attributes[name], value_size = _encode(value, repr(name))
        size += _utf8_size(name, "an attribute name") + value_size
    return attributes, size


def _encode(value: object, path: str, depth: int = 0) -> tuple[dict[str, Any], int]:
    """DynamoDB's attribute value for a Python value, and its size as DynamoDB counts it.

    Accepts what boto3's TypeSerializer does, and refuses (naming the attribute's path) what
    DynamoDB would. Sizes follow DynamoDB's item size rules: strings and binary by their bytes,
    numbers one byte per two significant digits plus one, lists and maps three bytes plus one per
    element, names by their bytes.
    """
    if value is None:
        return {"NULL": True}, 1
    if isinstance(value, bool):
        return {"BOOL": value}, 1
    if isinstance(value, str):
        return {"S": value}, _utf8_size(value, path)
    if isinstance(value, float):
        raise InvalidItemError(
            f"{path} is a float; DynamoDB numbers are exact decimals, so the writer takes "
            f"Decimal: use Decimal(str(value)), or parse JSON with "
            f"json.loads(text, parse_float=Decimal)"
        )
    if isinstance(value, int | Decimal):
        text = _number_text(value, path)
        return {"N": text}, _number_size(text)
    if isinstance(value, bytes | bytearray | Binary):
        data = bytes(cast(Any, value).value if isinstance(value, Binary) else value)
        return {"B": data}, len(data)
    if isinstance(value, Mapping | list | tuple) and depth >= _MAX_DEPTH:
        raise InvalidItemError(
            f"{path} is nested deeper than DynamoDB's {_MAX_DEPTH} levels of maps and lists"
        )
    if isinstance(value, Mapping):
        members: dict[str, Any] = {}
        size = 3
        for name, member in value.items():
            if not isinstance(name, str):
                raise InvalidItemError(f"{path} has a name that is not a string: {name!r}")
            members[name], member_size = _encode(member, f"{path}.{name}", depth + 1)
            size += _utf8_size(name, f"a name in {path}") + member_size + 1
        return {"M": members}, size
    if isinstance(value, list | tuple):
        elements: list[dict[str, Any]] = []
        size = 3
        for index, element in enumerate(value):
            encoded, element_size = _encode(element, f"{path}[{index}]", depth + 1)
            elements.append(encoded)
            size += element_size + 1
        return {"L": elements}, size
    if isinstance(value, AbstractSet):
        return _encode_set(value, path)
    raise InvalidItemError(
        f"{path} is of type {type(value).__name__}, which DynamoDB cannot store: use str, int or "
        f"Decimal, bool, None, bytes, list, dict or set"
    )


def _encode_set(value: AbstractSet[object], path: str) -> tuple[dict[str, Any], int]:
    if not value:
        raise InvalidItemError(
            f"{path} is an empty set, which DynamoDB cannot store: leave the attribute out, or "
            f"use a list"
        )
    members = list(value)
    if all(isinstance(m, str) for m in members):
        strings = cast(list[str], members)
        return {"SS": strings}, sum(_utf8_size(m, f"a member of {path}") for m in strings)
    if all(isinstance(m, int | Decimal) and not isinstance(m, bool) for m in members):
        numbers = [_number_text(cast(int | Decimal, m), path) for m in members]
        return {"NS": numbers}, sum(map(_number_size, numbers))
    if all(isinstance(m, bytes | bytearray | Binary) for m in members):
        blobs = [_encode(m, path)[0]["B"] for m in members]
        return {"BS": blobs}, sum(map(len, blobs))
    for member in members:
        _encode(member, f"a member of {path}")  # a float or an unsupported type: its own message
    raise InvalidItemError(
        f"{path} mixes types; a DynamoDB set holds only strings, only numbers or only binary"
    )


def _number_text(value: int | Decimal, path: str) -> str:
    if isinstance(value, Decimal) and not value.is_finite():
        raise InvalidItemError(f"{path} is not a finite number, which DynamoDB cannot store")
    try:
        return str(DYNAMODB_CONTEXT.create_decimal(value))
    except (Inexact, Rounded):
        raise InvalidItemError(
            f"{path} has more than 38 significant digits, DynamoDB's limit"
        ) from None
    except (Overflow, Underflow, Clamped):
        raise InvalidItemError(
            f"{path} is outside DynamoDB's number range (magnitudes from 1E-130 to under 1E+126)"
        ) from None


def _number_size(text: str) -> int:
    digits = Decimal(text).as_tuple().digits
    significant = len("".join(map(str, digits)).strip("0"))
    return (significant + 1) // 2 + 1


def _utf8_size(text: str, what: str) -> int:
    if text.isascii():
        return len(text)
    try:
        return len(text.encode("utf-8"))
    except UnicodeEncodeError as error:
        raise InvalidItemError(
            f"{what} is not valid Unicode text ({error.reason} at character {error.start})"
        ) from None


def _has_key_type(value: object, key_type: str) -> bool:
    if key_type == "S":
        return isinstance(value, str)
    if key_type == "N":
        return isinstance(value, int | Decimal) and not isinstance(value, bool)
    return isinstance(value, bytes | bytearray | Binary)


def _key_part(key_type: str, encoded: Any) -> object:
    """A key attribute, from its DynamoDB JSON value, as one comparable part of a key."""
    if key_type == "N":
        return Decimal(encoded)  # so that 1, Decimal("1") and Decimal("1.0") are the same key
    if key_type == "B":
        return bytes(encoded)
    return encoded


def _names(item: Mapping[str, Any]) -> str:
    """The item's attribute names, for a message: its values stay out of it."""
    text = ", ".join(map(repr, item))
    return text if len(text) <= 120 else text[:117] + "..."
