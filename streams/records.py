"""Read-only views over one Lambda stream record, as delivered (ESM-SPEC section 5).

Views decode lazily: constructing one costs nothing, each property is computed on first access
and kept, and an item image decodes an attribute only when it is read, at most once. A handler
that reads three attributes pays for three.

Attribute values decode to exactly what boto3's `TypeDeserializer` gives once base64 binary is
decoded, with `Binary` unwrapped to `bytes`: `Decimal` for numbers (DynamoDB's 38-digit context),
`set` for string, number and binary sets, `dict` for maps, `list` for lists. Content that is not
valid DynamoDB JSON raises `RecordDecodeError`, which the batch core treats as poison.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from decimal import Clamped, Context, Decimal, Inexact, Overflow, Rounded, Underflow
from functools import cached_property
from typing import Any, Literal, TypeAlias

from streams.errors import EventError

__all__ = [
    "DynamoDBRecord",
    "Image",
    "KinesisRecord",
    "RecordDecodeError",
    "StreamRecord",
    "decode_attribute_value",
    "parse_records",
]

EventSource: TypeAlias = Literal["aws:dynamodb", "aws:kinesis"]


class RecordDecodeError(ValueError):
    """The record's content is not what the stream delivers (poison: it will never decode)."""


# The context boto3's TypeDeserializer uses: 38 digits, and anything inexact is an error.
_NUMBER_CONTEXT = Context(
    Emin=-128,
    Emax=126,
    prec=38,
    traps=[Clamped, Overflow, Inexact, Rounded, Underflow],
)
_create_decimal = _NUMBER_CONTEXT.create_decimal


def _number(value: object) -> Decimal:
    if type(value) is not str:
        raise RecordDecodeError(f"number attribute must be a string, got {type(value).__name__}")
    try:
        number = _create_decimal(value)
    except ArithmeticError as error:  # Inexact, Rounded, Overflow, ...: not a DynamoDB number
        raise RecordDecodeError(f"invalid number {value[:50]!r}: {error!r}") from None
    if not number.is_finite():
        # boto3 would return NaN here (InvalidOperation is not trapped); DynamoDB never sends it.
        raise RecordDecodeError(f"invalid number {value[:50]!r}")
    return number


def _binary(value: object) -> bytes:
    if type(value) is not str:
        raise RecordDecodeError(
            f"binary attribute must be a base64 string, got {type(value).__name__}"
        )
    try:
        return base64.b64decode(value, validate=True)
    except binascii.Error as error:
        raise RecordDecodeError(f"invalid base64 in binary attribute: {error}") from None


def _string(value: object) -> str:
    if type(value) is not str:
        raise RecordDecodeError(f"string attribute must be a string, got {type(value).__name__}")
    return value


def _boolean(value: object) -> bool:
    if type(value) is not bool:
        raise RecordDecodeError(f"BOOL attribute must be true or false, got {value!r:.50}")
    return value


def _null(value: object) -> None:
    if value is not True:
        raise RecordDecodeError(f"NULL attribute must be true, got {value!r:.50}")


def _map(value: object) -> dict[str, Any]:
    if type(value) is not dict:
        raise RecordDecodeError(f"M attribute must be an object, got {type(value).__name__}")
    return {name: decode_attribute_value(inner) for name, inner in value.items()}


def _list(value: object) -> list[Any]:
    if type(value) is not list:
        raise RecordDecodeError(f"L attribute must be an array, got {type(value).__name__}")
    return [decode_attribute_value(inner) for inner in value]


def _members(value: object, tag: str) -> list[object]:
    if type(value) is not list:
        raise RecordDecodeError(f"{tag} attribute must be an array, got {type(value).__name__}")
    return value


def _string_set(value: object) -> set[str]:
    return {_string(member) for member in _members(value, "SS")}


def _number_set(value: object) -> set[Decimal]:
    return {_number(member) for member in _members(value, "NS")}


def _binary_set(value: object) -> set[bytes]:
    return {_binary(member) for member in _members(value, "BS")}


_DECODERS: dict[str, Any] = {
    "S": _string,
    "N": _number,
    "B": _binary,
    "BOOL": _boolean,
    "NULL": _null,
    "M": _map,
    "L": _list,
    "SS": _string_set,
    "NS": _number_set,
    "BS": _binary_set,
}


def decode_attribute_value(attribute_value: object) -> Any:
    """One DynamoDB JSON attribute value (`{"N": "101"}`) as a plain Python value."""
    if type(attribute_value) is not dict or len(attribute_value) != 1:
        raise RecordDecodeError(
            "an attribute value is an object with exactly one type key, "
            f"got {attribute_value!r:.80}"
        )
    ((tag, value),) = attribute_value.items()
    decoder = _DECODERS.get(tag)
    if decoder is None:
        raise RecordDecodeError(f"unknown attribute type {tag!r:.20}")
    return decoder(value)


_MISSING = object()


class Image(Mapping[str, Any]):
    """A read-only item image whose attributes decode on first read, once each."""

    __slots__ = ("_decoded", "_raw")

    def __init__(self, raw: Mapping[str, Any]) -> None:
        self._raw = raw
        self._decoded: dict[str, Any] = {}

    @property
    def attribute_values(self) -> Mapping[str, Any]:
        """The image as DynamoDB JSON, exactly as delivered."""
        return self._raw

    def __getitem__(self, name: str) -> Any:
        value = self._decoded.get(name, _MISSING)
        if value is _MISSING:
            value = self._decoded[name] = decode_attribute_value(self._raw[name])
        return value

    def get(self, name: str, default: Any = None) -> Any:
        if name in self._raw:
            return self[name]
        return default

    def __contains__(self, name: object) -> bool:
        return name in self._raw

    def __iter__(self) -> Iterator[str]:
        return iter(self._raw)

    def __len__(self) -> int:
        return len(self._raw)

    def __repr__(self) -> str:
        # Item images are customer data: never in logs by accident.
        return f"<Image {len(self._raw)} attributes>"


def _required(container: Mapping[str, Any], name: str, where: str) -> Any:
    try:
        return container[name]
    except KeyError:
        raise RecordDecodeError(f"record has no {where}{name}") from None


def _epoch(value: object, field: str) -> datetime:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise RecordDecodeError(f"{field} must be epoch seconds, got {value!r:.40}")
    return datetime.fromtimestamp(value, tz=UTC)


class DynamoDBRecord:
    """One DynamoDB Streams record as Lambda delivers it."""

    __slots__ = ("__dict__", "raw")
    source: EventSource = "aws:dynamodb"
    #: Lambda's DynamoDB records do not say which shard they come from.
    shard_id: str | None = None
    #: Set only for a record inside a KPL aggregate (never for DynamoDB).
    sub_sequence_number: int | None = None

    def __init__(self, raw: Mapping[str, Any]) -> None:
        self.raw = raw

    @cached_property
    def _dynamodb(self) -> Mapping[str, Any]:
        data = _required(self.raw, "dynamodb", "")
        if not isinstance(data, Mapping):
            raise RecordDecodeError("record's dynamodb field is not an object")
        return data

    @property
    def event_id(self) -> str | None:
        return self.raw.get("eventID")

    @property
    def event_name(self) -> str:
        return str(_required(self.raw, "eventName", ""))

    @property
    def event_source_arn(self) -> str | None:
        return self.raw.get("eventSourceARN")

    @cached_property
    def sequence_number(self) -> str:
        return str(_required(self._dynamodb, "SequenceNumber", "dynamodb."))

    @cached_property
    def keys(self) -> Image:
        return self._image("Keys", required=True)  # type: ignore[return-value]

    @cached_property
    def new_image(self) -> Image | None:
        """The item after the change; None when the stream view or the event has none."""
        return self._image("NewImage", required=False)

    @cached_property
    def old_image(self) -> Image | None:
        """The item before the change; None when the stream view or the event has none."""
        return self._image("OldImage", required=False)

    def _image(self, field: str, *, required: bool) -> Image | None:
        raw = self._dynamodb.get(field)
        if raw is None:
            if required:
                raise RecordDecodeError(f"record has no dynamodb.{field}")
            return None
        if type(raw) is not dict:
            raise RecordDecodeError(f"dynamodb.{field} is not an object")
        return Image(raw)

    @cached_property
    def approximate_creation_time(self) -> datetime | None:
        value = self._dynamodb.get("ApproximateCreationDateTime")
        return None if value is None else _epoch(value, "ApproximateCreationDateTime")

    @property
    def record_time(self) -> datetime | None:
        """When the change entered the stream (for ages)."""
        return self.approximate_creation_time

    @property
    def size_bytes(self) -> int | None:
        value = self._dynamodb.get("SizeBytes")
        return None if value is None else int(value)

    @property
    def is_ttl_delete(self) -> bool:
        """A REMOVE done by DynamoDB's time-to-live, not by a user."""
        identity = self.raw.get("userIdentity")
        return (
            isinstance(identity, Mapping)
            and identity.get("type") == "Service"
            and identity.get("principalId") == "dynamodb.amazonaws.com"
        )

    def log_fields(self) -> dict[str, Any]:
        """What may be logged about this record: identifiers and keys, never item images."""
        fields: dict[str, Any] = {
            "eventID": self.event_id,
            "shardId": self.shard_id,
            "sequenceNumber": self.raw.get("dynamodb", {}).get("SequenceNumber"),
        }
        try:
            fields["keys"] = dict(self.keys)
        except (RecordDecodeError, AttributeError):
            fields["keys"] = None
        return fields

    def __repr__(self) -> str:
        sequence = self.raw.get("dynamodb", {}).get("SequenceNumber")
        return f"<DynamoDBRecord {self.raw.get('eventName')} seq={sequence}>"


class KinesisRecord:
    """One Kinesis Data Streams record as Lambda delivers it."""

    __slots__ = ("__dict__", "raw", "sub_sequence_number")
    source: EventSource = "aws:kinesis"

    def __init__(self, raw: Mapping[str, Any], *, sub_sequence_number: int | None = None) -> None:
        self.raw = raw
        #: Position inside a KPL aggregate; None for an ordinary record.
        self.sub_sequence_number = sub_sequence_number

    @cached_property
    def _kinesis(self) -> Mapping[str, Any]:
        data = _required(self.raw, "kinesis", "")
        if not isinstance(data, Mapping):
            raise RecordDecodeError("record's kinesis field is not an object")
        return data

    @property
    def event_id(self) -> str | None:
        return self.raw.get("eventID")

    @property
    def event_source_arn(self) -> str | None:
        return self.raw.get("eventSourceARN")

    @cached_property
    def sequence_number(self) -> str:
        return str(_required(self._kinesis, "sequenceNumber", "kinesis."))

    @property
    def partition_key(self) -> str:
        return str(_required(self._kinesis, "partitionKey", "kinesis."))

    @cached_property
    def shard_id(self) -> str | None:
        """From `eventID` ("<shardId>:<sequenceNumber>")."""
        event_id = self.raw.get("eventID")
        if not isinstance(event_id, str) or ":" not in event_id:
            return None
        return event_id.rpartition(":")[0]

    @cached_property
    def data(self) -> bytes:
        return _binary(_required(self._kinesis, "data", "kinesis."))

    def json(self) -> Any:
        """The data parsed as JSON (numbers with a fraction or exponent as `Decimal`)."""
        try:
            return json.loads(self.data, parse_float=Decimal)
        except ValueError as error:  # JSONDecodeError and UnicodeDecodeError
            raise RecordDecodeError(f"record data is not JSON: {error}") from None

    @cached_property
    def approximate_arrival_time(self) -> datetime | None:
        value = self._kinesis.get("approximateArrivalTimestamp")
        return None if value is None else _epoch(value, "approximateArrivalTimestamp")

    @property
    def record_time(self) -> datetime | None:
        return self.approximate_arrival_time

    def log_fields(self) -> dict[str, Any]:
        """What may be logged about this record: identifiers and the partition key, never data."""
        kinesis = self.raw.get("kinesis", {})
        return {
            "eventID": self.event_id,
            "shardId": self.shard_id,
            "sequenceNumber": kinesis.get("sequenceNumber"),
            "subSequenceNumber": self.sub_sequence_number,
            "partitionKey": kinesis.get("partitionKey"),
        }

    def __repr__(self) -> str:
        return f"<KinesisRecord seq={self.raw.get('kinesis', {}).get('sequenceNumber')}>"


StreamRecord: TypeAlias = DynamoDBRecord | KinesisRecord

_VIEWS: dict[str, type[DynamoDBRecord] | type[KinesisRecord]] = {
    "aws:dynamodb": DynamoDBRecord,
    "aws:kinesis": KinesisRecord,
}


def parse_records(event: object) -> list[StreamRecord]:
    """The records of a Lambda stream event, as views; raises `EventError` on a bad envelope.

    The envelope (what Lambda itself guarantees) is checked here; the content of each record is
    checked lazily, and a record whose content is bad is poison, not an envelope error.
    """
    if not isinstance(event, Mapping):
        raise EventError(f"a stream event is a JSON object, got {type(event).__name__}")
    if "window" in event or "isFinalInvokeForWindow" in event:
        raise EventError(
            "tumbling-window events are not supported by StreamProcessor yet "
            "(remove TumblingWindowInSeconds or handle the window yourself)"
        )
    records = event.get("Records")
    if not isinstance(records, list):
        raise EventError("not a stream event: it has no Records list")
    views: list[StreamRecord] = []
    source_arn: object = _MISSING
    for position, raw in enumerate(records):
        if not isinstance(raw, Mapping):
            raise EventError(f"record {position} is not a JSON object")
        source = raw.get("eventSource")
        if source is None:
            raise EventError(f"record {position} has no eventSource")
        view_type = _VIEWS.get(source)
        if view_type is None:
            raise EventError(
                f"record {position} comes from {source!r:.40}; StreamProcessor handles "
                "aws:dynamodb and aws:kinesis"
            )
        arn = raw.get("eventSourceARN")
        if source_arn is _MISSING:
            source_arn = arn
        elif arn != source_arn:
            raise EventError(
                f"records come from more than one eventSourceARN ({source_arn!r} and {arn!r}); "
                "Lambda never mixes sources or shards in one batch"
            )
        view = view_type(raw)
        try:
            view.sequence_number  # noqa: B018  (the checkpoint needs it: envelope, not content)
        except RecordDecodeError:
            raise EventError(f"record {position} has no sequence number") from None
        views.append(view)
    return views
