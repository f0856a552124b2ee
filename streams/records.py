"""Read-only views over one Lambda stream record, as delivered (docs/esm.md section 5).

Views decode lazily: constructing one costs nothing, each property is computed on first access
and kept, and an item image decodes an attribute only when it is read, at most once. A handler
that reads three attributes pays for three.

Attribute values decode to exactly what boto3's `TypeDeserializer` gives once base64 binary is
decoded, with `Binary` unwrapped to `bytes`: `Decimal` for numbers (DynamoDB's 38-digit context),
`set` for string, number and binary sets, `dict` for maps, `list` for lists. Content that is not
valid DynamoDB JSON raises `RecordDecodeError`, which the batch core treats as poison.
"""

from __future__ import annotations

import binascii
import json
from collections.abc import Callable, ItemsView, Iterator, Mapping, ValuesView
from datetime import UTC, datetime, timedelta
from decimal import Clamped, Context, Decimal, Inexact, Overflow, Rounded, Underflow
from typing import Any, Literal, TypeAlias

from streams.errors import EventError
from streams.kpl import deaggregate, may_be_aggregate

__all__ = [
    "DynamoDBChange",
    "DynamoDBRecord",
    "EventSource",
    "Image",
    "KinesisRecord",
    "RecordDecodeError",
    "StreamRecord",
    "decode_attribute_value",
    "parse_records",
]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

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
    if value.__class__ is not str:
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
        # Strict mode accepts exactly what base64.b64decode(validate=True) accepts, in C.
        return _a2b_base64(value, strict_mode=True)
    except ValueError as error:  # binascii.Error, and non-ASCII text
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


def _map(value: object) -> Image:
    if type(value) is not dict:
        raise RecordDecodeError(f"M attribute must be an object, got {type(value).__name__}")
    return Image(value)


# The checked decoder of each type (see _decode_checked).
_DECODERS: dict[str, Callable[[Any], Any]] = {
    "S": _string,
    "N": _number,
    "M": _map,
    "L": _list,
    "B": _binary,
    "BOOL": _boolean,
    "NULL": _null,
    "SS": _string_set,
    "NS": _number_set,
    "BS": _binary_set,
}

_a2b_base64 = binascii.a2b_base64
_is_finite = Decimal.is_finite


def decode_attribute_value(attribute_value: object) -> Any:
    """One DynamoDB JSON attribute value (`{"N": "101"}`) as a plain Python value.

    Maps decode to a lazy, read-only `Image` (equal to the dict boto3 gives), so a handler that
    binds a map and reads one field pays for one field.
    """
    # Well-formed values decode here without a further call, and in C where the standard
    # library can: sets through map, base64 through binascii. Anything else, errors included,
    # goes to _decode_checked, which says precisely what is wrong.
    try:
        [(tag, value)] = attribute_value.items()  # type: ignore[attr-defined]
    except (AttributeError, ValueError, TypeError):  # not an object with exactly one key
        return _decode_checked(attribute_value)
    kind = value.__class__
    if tag == "S":
        if kind is str:
            return value
    elif tag == "N":
        if kind is str:
            try:
                number = _create_decimal(value)
            except ArithmeticError:
                pass
            else:
                if number.is_finite():
                    return number
    elif tag == "M":
        if kind is dict:
            return Image(value)
    elif tag == "L":
        if kind is list:  # maps, the usual members, made images inline
            return [
                Image(inner)
                if member.__class__ is dict
                and len(member) == 1
                and (inner := member.get("M")).__class__ is dict
                else decode_attribute_value(member)
                for member in value
            ]
    elif tag == "BOOL":
        if kind is bool:
            return value
    elif tag == "NULL":
        if value is True:
            return None
    elif tag == "B":
        if kind is str:
            try:
                return _a2b_base64(value, strict_mode=True)
            except ValueError:
                pass
    elif kind is list:
        try:
            "".join(value)  # raises TypeError unless every member is a string, in one C call
            if tag == "SS":
                return set(value)
            if tag == "NS":
                numbers = set(map(_create_decimal, value))
                if all(map(_is_finite, numbers)):
                    return numbers
            elif tag == "BS":
                return {_a2b_base64(member, strict_mode=True) for member in value}
        except (TypeError, ValueError, ArithmeticError):
            pass  # a member that is not what its type says: _decode_checked says which
    return _decode_checked(attribute_value)


def _decode_checked(attribute_value: object) -> Any:
    """decode_attribute_value the long way: the type's checked decoder, which raises
    RecordDecodeError for anything that is not valid DynamoDB JSON."""
    try:
        [(tag, value)] = attribute_value.items()  # type: ignore[attr-defined]
    except (AttributeError, ValueError, TypeError):
        raise RecordDecodeError(
            "an attribute value is an object with exactly one type key, "
            f"got {attribute_value!r:.80}"
        ) from None
    decoder = _DECODERS.get(tag)
    if decoder is None:
        raise RecordDecodeError(f"unknown attribute type {tag!r:.20}")
    return decoder(value)


def _decode_not_string(attribute: Any) -> Any:
    """decode_attribute_value for a value known not to be a well-formed string: numbers, maps
    and binary found by a lookup each, without decode_attribute_value's tag unpacking. (Image's
    whole-image decoding inlines the same steps; the property tests hold both to boto3.)"""
    try:
        if len(attribute) == 1:
            value = attribute.get("N")
            if value.__class__ is str:
                try:
                    number = _create_decimal(value)
                except ArithmeticError:
                    pass
                else:
                    if number.is_finite():
                        return number
            elif value is None:
                if (value := attribute.get("M")).__class__ is dict:
                    return Image(value)
                if value is None and (value := attribute.get("B")).__class__ is str:
                    try:
                        return _a2b_base64(value, strict_mode=True)
                    except ValueError:
                        pass
    except (AttributeError, TypeError):  # not an object
        pass
    return decode_attribute_value(attribute)


_MISSING: Any = object()


# The decoded cache of an image nothing has been cached in: shared, never written (an image
# gets its own dict on its first cached value), so an image a handler reads only strings of
# costs no dict.
_NOTHING_CACHED: dict[str, Any] = {}


class Image(Mapping[str, Any]):
    """A read-only item image (or map attribute) that decodes each attribute on first read, once.

    Iterating over values or items decodes what is left in one pass.
    """

    __slots__ = ("_decoded", "_raw")

    def __init__(self, raw: dict[str, Any]) -> None:
        self._raw = raw
        # Decoded values by name; holds every attribute once the image is decoded whole.
        self._decoded = _NOTHING_CACHED

    @property
    def attribute_values(self) -> Mapping[str, Any]:
        """The image as DynamoDB JSON, exactly as delivered."""
        return self._raw

    def __getitem__(self, name: str) -> Any:
        attribute = self._raw[name]
        # A well-formed string (most attributes) is its own value: returned without the cache,
        # it is still the same object at every read.
        try:
            value = attribute.get("S")
        except AttributeError:
            value = None  # not an object: decode_attribute_value says so
        if value.__class__ is str and len(attribute) == 1:
            return value
        decoded = self._decoded
        if name in decoded:
            return decoded[name]
        value = _decode_not_string(attribute)
        if decoded is _NOTHING_CACHED:
            decoded = self._decoded = {name: value}
        else:
            decoded[name] = value
        if len(decoded) == len(self._raw):  # all cached, in the order read: the image's order
            self._decoded = {name: decoded[name] for name in self._raw}
        return value

    def get(self, name: str, default: Any = None) -> Any:
        if name in self._raw:
            return self[name]
        return default

    def _all(self) -> dict[str, Any]:
        """Every attribute decoded, in the image's order."""
        decoded = self._decoded
        if len(decoded) != len(self._raw):
            decoded = self._decode_rest()
        return decoded

    def _decode_rest(self) -> dict[str, Any]:
        """Decodes what has not been read yet and keeps the whole image decoded: strings,
        numbers, maps and binary inline, anything else by decode_attribute_value."""
        raw, cached = self._raw, self._decoded
        if cached:  # some were read already: keep the image's own order
            decoded = {
                name: cached[name] if name in cached else decode_attribute_value(attribute)
                for name, attribute in raw.items()
            }
        else:
            decoded = {}
            for name, attribute in raw.items():
                try:
                    value = attribute.get("S")
                except AttributeError:
                    value = attribute  # not an object: decode_attribute_value says so
                else:
                    if value.__class__ is str:
                        if len(attribute) == 1:
                            decoded[name] = value
                            continue
                    elif value is None and len(attribute) == 1:
                        value = attribute.get("N")
                        if value.__class__ is str:
                            try:
                                number = _create_decimal(value)
                            except ArithmeticError:
                                pass
                            else:
                                if number.is_finite():
                                    decoded[name] = number
                                    continue
                        elif value is None and (value := attribute.get("M")).__class__ is dict:
                            decoded[name] = Image(value)
                            continue
                        elif value is None and (value := attribute.get("B")).__class__ is str:
                            try:
                                decoded[name] = _a2b_base64(value, strict_mode=True)
                            except ValueError:
                                pass
                            else:
                                continue
                decoded[name] = decode_attribute_value(attribute)
        self._decoded = decoded
        return decoded

    def values(self) -> ValuesView[Any]:
        decoded = self._decoded
        if len(decoded) != len(self._raw):
            decoded = self._decode_rest()
        return decoded.values()

    def items(self) -> ItemsView[str, Any]:
        decoded = self._decoded
        if len(decoded) != len(self._raw):
            decoded = self._decode_rest()
        return decoded.items()

    def __contains__(self, name: object) -> bool:
        return name in self._raw

    def __iter__(self) -> Iterator[str]:
        return iter(self._raw)

    def __len__(self) -> int:
        return len(self._raw)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Image):
            other = other._all()
        if isinstance(other, Mapping):
            return self._all() == other
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        # Item images are customer data: never in logs by accident.
        return f"<Image {len(self._raw)} attributes>"


def _epoch(value: object, field: str) -> datetime:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise RecordDecodeError(f"{field} must be epoch seconds, got {value!r:.40}")
    return datetime.fromtimestamp(value, tz=UTC)


def _no_image(raw: object, field: str) -> Image | None:
    """An image field that is not an object: absent (None), unless the record requires it."""
    if raw is None and field != "Keys":
        return None
    if raw is None:
        raise RecordDecodeError(f"record has no dynamodb.{field}")
    raise RecordDecodeError(f"dynamodb.{field} is not an object")


class _ItemChange:
    """What a DynamoDB change says of its item, wherever it travels (a DynamoDB stream, or a
    Kinesis data stream): event name, keys and images, decoded lazily, the same way."""

    __slots__ = ("_created", "_data", "_keys", "_new", "_old", "raw")

    raw: Mapping[str, Any]
    _data: dict[str, Any]

    def _release(self) -> None:
        """Lets go of the decoded images. The batch core calls this when it is done with the
        record, so that a batch does not hold its whole event decoded until it ends (many
        times the event's size, in objects the collector keeps walking)."""
        self._keys = self._new = self._old = _MISSING

    @property
    def event_id(self) -> str | None:
        return self.raw.get("eventID")

    @property
    def event_name(self) -> str:
        name = self.raw.get("eventName")
        if type(name) is not str:
            raise RecordDecodeError("record has no eventName")
        return name

    @property
    def keys(self) -> Image:
        keys = self._keys
        if keys is _MISSING:
            raw = self._data.get("Keys")
            keys = self._keys = Image(raw) if raw.__class__ is dict else _no_image(raw, "Keys")
        return keys  # type: ignore[no-any-return]

    @property
    def new_image(self) -> Image | None:
        """The item after the change; None when the stream view or the event has none."""
        image = self._new
        if image is _MISSING:
            raw = self._data.get("NewImage")
            image = self._new = Image(raw) if raw.__class__ is dict else _no_image(raw, "NewImage")
        return image  # type: ignore[no-any-return]

    @property
    def old_image(self) -> Image | None:
        """The item before the change; None when the stream view or the event has none."""
        image = self._old
        if image is _MISSING:
            raw = self._data.get("OldImage")
            image = self._old = Image(raw) if raw.__class__ is dict else _no_image(raw, "OldImage")
        return image  # type: ignore[no-any-return]

    @property
    def size_bytes(self) -> int | None:
        value = self._data.get("SizeBytes")
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


class DynamoDBRecord(_ItemChange):
    """One DynamoDB Streams record as Lambda delivers it.

    Properties are computed on first access and kept; images decode attribute by attribute.
    The batch core lets go of the decoded images once it is done with a record: read again
    afterwards, they decode again.
    """

    __slots__ = ("sequence_number",)
    source: EventSource = "aws:dynamodb"
    #: Lambda's DynamoDB records do not say which shard they come from.
    shard_id: str | None = None
    #: Set only for a record inside a KPL aggregate (never for DynamoDB).
    sub_sequence_number: int | None = None

    def __init__(self, raw: Mapping[str, Any]) -> None:
        """Raises `RecordDecodeError` if the record has no `dynamodb.SequenceNumber`."""
        self.raw = raw
        data = raw.get("dynamodb")
        sequence = data.get("SequenceNumber") if data.__class__ is dict else None
        if sequence.__class__ is not str or not sequence:
            raise RecordDecodeError("record has no dynamodb.SequenceNumber")
        self._data = data  # type: ignore[assignment]
        self.sequence_number: str = sequence
        self._keys = self._new = self._old = self._created = _MISSING

    @property
    def event_source_arn(self) -> str | None:
        return self.raw.get("eventSourceARN")

    @property
    def approximate_creation_time(self) -> datetime | None:
        created = self._created
        if created is _MISSING:
            value = self._data.get("ApproximateCreationDateTime")
            created = self._created = (
                None if value is None else _epoch(value, "ApproximateCreationDateTime")
            )
        return created  # type: ignore[no-any-return]

    @property
    def record_time(self) -> datetime | None:
        """When the change entered the stream (for ages)."""
        return self.approximate_creation_time

    def log_fields(self) -> dict[str, Any]:
        """What may be logged about this record: identifiers and keys, never item images."""
        try:
            keys: dict[str, Any] | None = dict(self.keys)
        except RecordDecodeError:
            keys = None
        return {
            "eventID": self.event_id,
            "shardId": self.shard_id,
            "sequenceNumber": self.sequence_number,
            "keys": keys,
        }

    def __repr__(self) -> str:
        return f"<DynamoDBRecord {self.raw.get('eventName')} seq={self.sequence_number}>"


class DynamoDBChange(_ItemChange):
    """A DynamoDB change carried by a Kinesis data stream (Kinesis Data Streams for DynamoDB):
    the same reads as `DynamoDBRecord`, decoded the same way, from the record's JSON data.

    There is no DynamoDB sequence number: on Kinesis, changes of one item can arrive out of
    order and more than once, and `approximate_creation_time` is what orders them.
    """

    __slots__ = ()

    def __init__(self, document: object) -> None:
        """Raises `RecordDecodeError` unless `document` is a DynamoDB change record."""
        if not isinstance(document, dict) or document.get("eventSource") != "aws:dynamodb":
            raise RecordDecodeError("record data is not a DynamoDB change (eventSource)")
        data = document.get("dynamodb")
        if data.__class__ is not dict:
            raise RecordDecodeError("record data has no dynamodb object")
        self.raw = document
        self._data = data
        self._keys = self._new = self._old = self._created = _MISSING

    @property
    def table_name(self) -> str | None:
        return self.raw.get("tableName")

    @property
    def approximate_creation_time(self) -> datetime | None:
        """When the item changed, at the precision the table sends: epoch milliseconds or
        microseconds (`ApproximateCreationDateTimePrecision`), told apart by magnitude (any
        time after 1970-04-26 in microseconds is over 10**13, and in milliseconds under it
        until the year 2286)."""
        created = self._created
        if created is _MISSING:
            value = self._data.get("ApproximateCreationDateTime")
            created = self._created = None if value is None else _epoch_fine(value)
        return created  # type: ignore[no-any-return]

    def __repr__(self) -> str:
        return f"<DynamoDBChange {self.raw.get('eventName')} table={self.table_name}>"


def _epoch_fine(value: object) -> datetime:
    if isinstance(value, bool) or not isinstance(value, int):
        raise RecordDecodeError(
            f"ApproximateCreationDateTime must be whole epoch milli- or microseconds, "
            f"got {type(value).__name__}"
        )
    micros = value if value >= 10**13 else value * 1000
    return _EPOCH + timedelta(microseconds=micros)


class KinesisRecord:
    """One Kinesis Data Streams record as Lambda delivers it."""

    __slots__ = ("_change", "_data", "_decoded", "raw", "sequence_number", "sub_sequence_number")
    source: EventSource = "aws:kinesis"

    def __init__(self, raw: Mapping[str, Any], *, sub_sequence_number: int | None = None) -> None:
        """Raises `RecordDecodeError` if the record has no `kinesis.sequenceNumber`."""
        self.raw = raw
        data = raw.get("kinesis")
        sequence = data.get("sequenceNumber") if data.__class__ is dict else None
        if sequence.__class__ is not str or not sequence:
            raise RecordDecodeError("record has no kinesis.sequenceNumber")
        self._data: dict[str, Any] = data  # type: ignore[assignment]
        self.sequence_number: str = sequence
        #: Position inside a KPL aggregate; None for an ordinary record.
        self.sub_sequence_number = sub_sequence_number
        self._decoded: bytes | None = None
        self._change: DynamoDBChange | None = None

    def _release(self) -> None:
        """Lets go of the decoded data (see DynamoDBRecord._release)."""
        self._decoded = None
        self._change = None

    @property
    def event_id(self) -> str | None:
        return self.raw.get("eventID")

    @property
    def event_source_arn(self) -> str | None:
        return self.raw.get("eventSourceARN")

    @property
    def partition_key(self) -> str:
        key = self._data.get("partitionKey")
        if type(key) is not str:
            raise RecordDecodeError("record has no kinesis.partitionKey")
        return key

    @property
    def shard_id(self) -> str | None:
        """From `eventID` ("<shardId>:<sequenceNumber>")."""
        event_id = self.raw.get("eventID")
        if not isinstance(event_id, str) or ":" not in event_id:
            return None
        return event_id.rpartition(":")[0]

    @property
    def data(self) -> bytes:
        if self._decoded is None:
            self._decoded = _binary(self._data.get("data"))
        return self._decoded

    def json(self) -> Any:
        """The data parsed as JSON (numbers with a fraction or exponent as `Decimal`)."""
        try:
            return json.loads(self.data, parse_float=Decimal)
        except ValueError as error:  # JSONDecodeError and UnicodeDecodeError
            raise RecordDecodeError(f"record data is not JSON: {error}") from None

    @property
    def dynamodb(self) -> DynamoDBChange:
        """The DynamoDB change this record carries (Kinesis Data Streams for DynamoDB);
        raises `RecordDecodeError` (poison) when the data is not one."""
        change = self._change
        if change is None:
            change = self._change = DynamoDBChange(self.json())
        return change

    @property
    def approximate_arrival_time(self) -> datetime | None:
        value = self._data.get("approximateArrivalTimestamp")
        return None if value is None else _epoch(value, "approximateArrivalTimestamp")

    @property
    def record_time(self) -> datetime | None:
        return self.approximate_arrival_time

    def log_fields(self) -> dict[str, Any]:
        """What may be logged about this record: identifiers and the partition key, never data."""
        return {
            "eventID": self.event_id,
            "shardId": self.shard_id,
            "sequenceNumber": self.sequence_number,
            "subSequenceNumber": self.sub_sequence_number,
            "partitionKey": self._data.get("partitionKey"),
        }

    def __repr__(self) -> str:
        return f"<KinesisRecord seq={self.sequence_number}>"


StreamRecord: TypeAlias = DynamoDBRecord | KinesisRecord

_VIEWS: dict[str, type[DynamoDBRecord] | type[KinesisRecord]] = {
    "aws:dynamodb": DynamoDBRecord,
    "aws:kinesis": KinesisRecord,
}


def parse_records(event: object) -> list[StreamRecord]:
    """The records of a Lambda stream event, as views; raises `EventError` on a bad envelope.

    The envelope (what Lambda itself guarantees: a source, one source ARN, sequence numbers) is
    checked here; the content of each record is checked lazily, and a record whose content is
    bad is poison, not an envelope error.
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
    if not records:
        return []
    first = records[0]
    source = first.get("eventSource") if isinstance(first, Mapping) else None
    source_arn = first.get("eventSourceARN") if isinstance(first, Mapping) else None
    view_type = _VIEWS.get(source)  # type: ignore[arg-type]
    kinesis = view_type is KinesisRecord  # only Kinesis records can be KPL aggregates
    views: list[StreamRecord] = []
    append = views.append
    for raw in records:
        try:
            if raw["eventSource"] != source:
                raise EventError(
                    f"record {_position(records, raw)} comes from {raw['eventSource']!r:.40}"
                )
            if raw.get("eventSourceARN") != source_arn:
                raise EventError(
                    f"records come from more than one eventSourceARN ({source_arn!r} and "
                    f"{raw.get('eventSourceARN')!r}); Lambda never mixes sources or shards"
                )
            view = view_type(raw)  # type: ignore[misc]
        except (KeyError, TypeError, AttributeError, RecordDecodeError) as error:
            raise _envelope_error(_position(records, raw), raw) from error
        if kinesis and may_be_aggregate(raw):
            # A KPL aggregate becomes its user records (the aggregation library loads only here).
            views.extend(KinesisRecord(user, sub_sequence_number=n) for user, n in deaggregate(raw))
        else:
            append(view)
    return views


def _position(records: list[Any], raw: object) -> int:
    """Where a record is in its event, for error messages (counted only when one is raised)."""
    return next(position for position, record in enumerate(records) if record is raw)


def _envelope_error(position: int, raw: object) -> EventError:
    """Why a record is not a stream record Lambda could have delivered."""
    if not isinstance(raw, Mapping):
        return EventError(f"record {position} is not a JSON object")
    source = raw.get("eventSource")
    if source is None:
        return EventError(f"record {position} has no eventSource")
    if source not in _VIEWS:
        return EventError(
            f"record {position} comes from {source!r:.40}; StreamProcessor handles "
            "aws:dynamodb and aws:kinesis"
        )
    return EventError(f"record {position} has no sequence number")
