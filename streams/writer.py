"""Write bursts of items to a DynamoDB table without losing one silently.

`TableWriter` batches puts and deletes into `BatchWriteItem` calls of up to 25 writes, retries what
DynamoDB leaves unprocessed or refuses for capacity, paces itself to what the table accepts, keeps
the order of writes per key, and accounts for every write in a `WriteReport`::

    with TableWriter("my-table") as writer:
        for update in updates:
            writer.put(update)                 # plain Python values; Decimal for numbers
        writer.delete({"childId": "c-1"})
    report = writer.report                     # written, retried, throttled, failed (with reasons)

Who retries what:

- botocore retries a call refused as a whole (throttling errors, 5xx, dropped connections) as the
  client is configured: by default its DynamoDB-tuned legacy mode (10 attempts, 50 ms doubling);
  `AWS_RETRY_MODE` or the client's `retries` config choose standard or adaptive instead. The
  writer watches those attempts (botocore's `response-received` event) to count throttles and to
  slow down while botocore retries.
- The writer retries what botocore does not: the writes DynamoDB returns in `UnprocessedItems`,
  and calls still refused when botocore gives up. It waits `Backoff` between attempts and keeps
  trying until the deadline (or for ever without one).
- `SendingRate` paces every call: it slows down on throttling and speeds up when calm, never above
  `max_rate`.
"""

from __future__ import annotations

import enum
import heapq
import itertools
import logging
import math
import random as random_module
import threading
import time
import warnings
import weakref
from collections import deque
from collections.abc import Callable, Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from decimal import Clamped, Decimal, Inexact, Overflow, Rounded, Underflow
from typing import TYPE_CHECKING, Any, Literal, cast

import boto3
from boto3.dynamodb.types import DYNAMODB_CONTEXT, Binary, TypeDeserializer
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, HTTPClientError
from botocore.exceptions import ConnectionError as BotocoreConnectionError

from streams.backoff import full_jitter
from streams.errors import UserError

if TYPE_CHECKING:
    from mypy_boto3_dynamodb.client import DynamoDBClient

__all__ = [
    "Backoff",
    "FailedWrite",
    "InvalidItemError",
    "RatePolicy",
    "TableWriteError",
    "TableWriter",
    "WriteReport",
]

logger = logging.getLogger(__name__)

_MAX_BATCH = 25  # BatchWriteItem takes at most 25 write requests
_MAX_ITEM_BYTES = 400 * 1024
_MAX_KEY_BYTES = {"HASH": 2048, "RANGE": 1024}
_KEY_ROLES = {"HASH": "partition key", "RANGE": "sort key"}
_KEY_TYPE_NAMES = {"S": "string", "N": "number (int or Decimal)", "B": "bytes"}

# DynamoDB refuses the call for capacity: nothing in it was written, all of it can be sent again.
_THROTTLING_ERRORS = frozenset(
    {"ProvisionedThroughputExceededException", "ThrottlingException", "RequestLimitExceeded"}
)
# Something in the request is refused, not the table: split the batch to find the item.
_REJECTED_ITEM_ERRORS = frozenset(
    {"ValidationException", "ItemCollectionSizeLimitExceededException"}
)
# Passing trouble on AWS's side (besides any 5xx status): send again after a backoff.
_TRANSIENT_ERRORS = frozenset(
    {"InternalServerError", "ServiceUnavailable", "ReplicatedWriteConflictException"}
)

WriteKind = Literal["put", "delete"]
_Key = tuple[object, ...]


class InvalidItemError(ValueError):
    """An item or key DynamoDB would refuse, caught by `put()` or `delete()` before it is queued.

    The message names the item (by key, when it has one), what is wrong and what to do.
    """


class TableWriteError(UserError):
    """The table cannot be written at all (missing, access denied, ...).

    Raised naming the table; every write not accepted by then is listed in `report.failed`.
    """


@dataclass(frozen=True)
class FailedWrite:
    """A write DynamoDB did not accept, for good."""

    seq: int
    """The number `put()` or `delete()` returned for it."""
    kind: WriteKind
    item: Mapping[str, Any]
    """The item that was to be put, or the key that was to be deleted (numbers as Decimal)."""
    reason: str


@dataclass(frozen=True)
class WriteReport:
    """Where every write given to a `TableWriter` went.

    Once `flush()` has returned, `submitted == written + replaced + len(failed)`.
    """

    submitted: int = 0
    """Writes given to `put()` and `delete()`."""
    written: int = 0
    """Writes DynamoDB accepted."""
    replaced: int = 0
    """Writes never sent because a later write of the same key took their place first (the table
    ends the same; a table stream sees only the later write)."""
    retried: int = 0
    """Times the writer sent a write again, after `UnprocessedItems`, a throttling error or a
    transient error that botocore gave up on. (botocore's own repeats are in `throttled`.)"""
    unprocessed: int = 0
    """Writes DynamoDB returned in `UnprocessedItems`."""
    throttled: int = 0
    """`BatchWriteItem` attempts DynamoDB refused for capacity (botocore's repeats included)."""
    failed: tuple[FailedWrite, ...] = ()
    """Writes that will not be written, each with its reason."""

    @property
    def pending(self) -> int:
        """Writes neither accepted, replaced nor failed yet."""
        return self.submitted - self.written - self.replaced - len(self.failed)


@dataclass(frozen=True)
class Backoff:
    """How long a refused write waits before it is sent again.

    Truncated binary exponential backoff with full jitter, as botocore's standard mode::

        delay(attempt) = random() * min(cap, base * 2 ** (attempt - 1))      attempt = 1, 2, ...

    `base` is 50 ms as in botocore's DynamoDB settings: DynamoDB's throttling is usually over
    within tens of milliseconds, and the jitter keeps parallel senders from retrying in step.
    """

    base: float = 0.05
    cap: float = 20.0

    def delay(self, attempt: int, random: Callable[[], float]) -> float:
        return full_jitter(attempt - 1, self.base, self.cap, random)


@dataclass(frozen=True)
class RatePolicy:
    """How the sending rate (writes per second) follows throttling.

    With `r_cut` the rate set by the last cut, at time `t_cut`::

        rate(t) = min(ceiling, r_cut * growth ** (t - t_cut))      speeds up while calm
        on a throttle at t (at most once per `cooldown` seconds):
            r_cut = max(floor, decrease * min(rate(t), accepted(t)));  t_cut = t

    where `accepted(t)` is the rate at which DynamoDB accepted writes over the last `window`
    seconds: after a cut the writer sends a little below what the table just took, and then probes
    upwards again. Before the first throttle the rate is the ceiling (unlimited without one).
    The cooldown keeps the answers to calls sent before a cut from cutting again.
    """

    decrease: float = 0.7
    growth: float = 2.0
    cooldown: float = 0.5
    window: float = 1.0
    floor: float = float(_MAX_BATCH)


class SendingRate:
    """Paces calls so that writes go out at most at the current rate of a `RatePolicy`.

    `reserve(n)` books the next `n` writes and says how long to wait before sending them: calls
    start at least `n / rate` seconds apart (a virtual-time scheduler, so no burst beyond one call
    builds up while idle). Thread-safe; time comes from the injected clock.
    """

    def __init__(
        self, ceiling: float | None, policy: RatePolicy, clock: Callable[[], float]
    ) -> None:
        self._ceiling = math.inf if ceiling is None else ceiling
        self._policy = policy
        self._clock = clock
        self._lock = threading.Lock()
        self._cut: tuple[float, float] | None = None  # (r_cut, t_cut)
        self._accepted: deque[tuple[float, int]] = deque()
        self._accepted_in_window = 0
        self._next_start = -math.inf

    def rate(self) -> float:
        """The current rate in writes per second (`inf` when nothing limits it)."""
        with self._lock:
            return self._rate_at(self._clock())

    def reserve(self, writes: int) -> float:
        """Book `writes` writes; return how many seconds to wait before sending them."""
        with self._lock:
            now = self._clock()
            rate = self._rate_at(now)
            if math.isinf(rate):
                return 0.0
            start = max(self._next_start, now)
            self._next_start = start + writes / rate
            return start - now

    def accepted(self, writes: int) -> None:
        """DynamoDB accepted `writes` writes just now."""
        with self._lock:
            now = self._clock()
            self._accepted.append((now, writes))
            self._accepted_in_window += writes
            self._trim(now)

    def throttled(self) -> None:
        """DynamoDB refused something for capacity just now: slow down (see `RatePolicy`)."""
        policy = self._policy
        with self._lock:
            now = self._clock()
            if self._cut is not None and now - self._cut[1] < policy.cooldown:
                return
            self._trim(now)
            measured = self._accepted_in_window / policy.window
            rate = min(self._rate_at(now), measured)
            self._cut = (max(policy.floor, policy.decrease * rate), now)

    def _rate_at(self, now: float) -> float:
        if self._cut is None:
            return self._ceiling
        rate, since = self._cut
        try:
            grown = rate * math.pow(self._policy.growth, now - since)
        except OverflowError:
            grown = math.inf
        return min(self._ceiling, grown)

    def _trim(self, now: float) -> None:
        while self._accepted and self._accepted[0][0] <= now - self._policy.window:
            self._accepted_in_window -= self._accepted.popleft()[1]


class TableWriter:
    """Writes items to one DynamoDB table in batches; see the module's docstring.

    `put()` and `delete()` are thread-safe and return the write's sequence number. They raise
    `InvalidItemError` for what DynamoDB would refuse (a float, a missing or empty key attribute,
    an item over 400 KB, ...); everything else is sent by `senders` background threads, and
    `put()` blocks while `max_pending` writes are unsettled, so memory stays bounded.

    Per key, writes apply in the order given: a write is never sent while an earlier write of its
    key is unaccepted. With `coalesce` (the default), a later write that arrives before the
    earlier one was sent (or after DynamoDB refused it) replaces it, counted in
    `report.replaced`; without it every write is sent, so a table stream sees every update.

    An item DynamoDB rejects is isolated by splitting its batch and listed in `report.failed`;
    its neighbours are written. Only table-level errors raise (`TableWriteError`, from `put()`,
    `flush()` or leaving the `with` block).

    `flush()` (and leaving the `with` block) returns once every write was accepted or is listed
    in `report.failed`. A writer garbage-collected with unsettled writes logs an error and warns
    (`ResourceWarning`).

    `deadline` is in seconds from construction: from then on nothing more is sent, and what is
    unaccepted is listed in `report.failed`. `max_rate` caps writes per second. `clock`, `sleep`
    and `random` are injectable so tests run backoff and pacing on a fake clock.

    `client` is a low-level DynamoDB client (`boto3.client("dynamodb")`), not a resource's
    `meta.client`, whose hooks would encode the items a second time. While the writer is open
    it observes the client's `BatchWriteItem` answers (see the module's docstring).
    """

    def __init__(
        self,
        table_name: str,
        *,
        client: DynamoDBClient | None = None,
        max_rate: float | None = None,
        deadline: float | None = None,
        senders: int = 4,
        max_pending: int = 1000,
        coalesce: bool = True,
        backoff: Backoff | None = None,
        rate_policy: RatePolicy | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        random: Callable[[], float] = random_module.random,
    ) -> None:
        if senders < 1:
            raise ValueError(f"senders must be 1 or more, not {senders}")
        if max_pending < 1:
            raise ValueError(f"max_pending must be 1 or more, not {max_pending}")
        if max_rate is not None and max_rate <= 0:
            raise ValueError(f"max_rate is writes per second, more than 0, not {max_rate}")
        if deadline is not None and deadline <= 0:
            raise ValueError(f"deadline is seconds from now, more than 0, not {deadline}")
        if client is None:
            client = boto3.client("dynamodb", config=Config(max_pool_connections=max(10, senders)))
        self._pipeline = _Pipeline(
            table_name,
            client,
            _describe_key_schema(client, table_name),
            rate=SendingRate(max_rate, rate_policy or RatePolicy(), clock),
            backoff=backoff or Backoff(),
            deadline=deadline,
            senders=senders,
            max_pending=max_pending,
            coalesce=coalesce,
            clock=clock,
            sleep=sleep,
            random=random,
        )
        self._finalizer = weakref.finalize(self, self._pipeline.abandon)

    def put(self, item: Mapping[str, Any]) -> int:
        """Queue a put of `item` (a whole item, key attributes included); return its number."""
        attributes, key = self._pipeline.schema.encode_item(item)
        return self._pipeline.submit("put", {"PutRequest": {"Item": attributes}}, key)

    def delete(self, key: Mapping[str, Any]) -> int:
        """Queue a delete of the item with `key` (the key attributes only); return its number."""
        attributes, key_value = self._pipeline.schema.encode_key(key)
        return self._pipeline.submit("delete", {"DeleteRequest": {"Key": attributes}}, key_value)

    def flush(self) -> None:
        """Send everything queued; return when every write is accepted or in `report.failed`."""
        self._pipeline.flush()

    def close(self) -> None:
        """Flush, then stop the senders. If the flush is interrupted (Ctrl-C), what was not
        accepted is listed in `report.failed` and the interruption propagates."""
        if not self._finalizer.alive:
            return
        self._finalizer.detach()
        try:
            self._pipeline.flush()
        except BaseException:
            self._pipeline.abort("not sent: the writer was interrupted before DynamoDB accepted it")
            raise
        else:
            self._pipeline.shutdown()

    def abort(self, reason: str = "not sent: the writer was aborted") -> None:
        """Stop at once, without flushing: every write DynamoDB has not accepted is listed in
        `report.failed` with `reason` (a write in flight once its answer comes back)."""
        self._finalizer.detach()
        self._pipeline.abort(reason)

    def completed_through(self) -> int:
        """The highest number `n` such that every write numbered up to `n` is settled: accepted,
        replaced by a later write of its key, or in `report.failed` (0 before any).

        Raises `TableWriteError` once the table cannot be written: writes failed for that reason
        are settled but were never the items' fault, so no caller should count them as done.
        """
        return self._pipeline.completed_through()

    @property
    def report(self) -> WriteReport:
        """A snapshot of where the writes went so far."""
        return self._pipeline.report()

    def __enter__(self) -> TableWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


@dataclass(frozen=True)
class _KeyAttribute:
    name: str
    type: str  # "S", "N" or "B"
    key_type: str  # "HASH" or "RANGE"

    @property
    def role(self) -> str:
        return _KEY_ROLES[self.key_type]


@dataclass(frozen=True)
class _KeySchema:
    """The table's key, from DescribeTable; encodes and validates items and keys."""

    table: str
    attributes: tuple[_KeyAttribute, ...]

    def encode_item(self, item: Mapping[str, Any]) -> tuple[dict[str, Any], _Key]:
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

    def encode_key(self, key: Mapping[str, Any]) -> tuple[dict[str, Any], _Key]:
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

    def key_of_request(self, request: Mapping[str, Any]) -> _Key:
        """The key of a write request in DynamoDB's JSON (as in `UnprocessedItems`)."""
        if "PutRequest" in request:
            attributes = request["PutRequest"]["Item"]
        else:
            attributes = request["DeleteRequest"]["Key"]
        return tuple(_key_part(a.type, attributes[a.name][a.type]) for a in self.attributes)

    def _key_of(self, item: Mapping[str, Any]) -> _Key:
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
                size = len(encoded) if attribute.type == "B" else _utf8_size(encoded)
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
            f"(in {_preview(item)})"
        )

    def _describe(self, item: Mapping[str, Any]) -> str:
        return ", ".join(f"{a.name}={item[a.name]!r}" for a in self.attributes)


def _describe_key_schema(client: DynamoDBClient, table: str) -> _KeySchema:
    where = f"{client.meta.endpoint_url} (region {client.meta.region_name})"
    try:
        description = client.describe_table(TableName=table)["Table"]
    except ClientError as error:
        raise TableWriteError(_table_error_message(table, where, error)) from error
    except BotoCoreError as error:
        raise TableWriteError(f"cannot describe table {table!r} at {where}: {error}") from error
    types = {d["AttributeName"]: d["AttributeType"] for d in description["AttributeDefinitions"]}
    # KeySchema lists the partition key first, then the sort key if there is one.
    attributes = tuple(
        _KeyAttribute(k["AttributeName"], types[k["AttributeName"]], k["KeyType"])
        for k in description["KeySchema"]
    )
    return _KeySchema(table, attributes)


def _table_error_message(table: str, where: str, error: ClientError) -> str:
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
        size += _utf8_size(name) + value_size
    return attributes, size


def _encode(value: object, path: str) -> tuple[dict[str, Any], int]:
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
        return {"S": value}, _utf8_size(value)
    if isinstance(value, float):
        raise InvalidItemError(
            f"{path} is a float ({value!r}); DynamoDB numbers are exact decimals, so the writer "
            f"takes Decimal: use Decimal({str(value)!r}), or parse JSON with "
            f"json.loads(text, parse_float=Decimal)"
        )
    if isinstance(value, int | Decimal):
        text = _number_text(value, path)
        return {"N": text}, _number_size(text)
    if isinstance(value, bytes | bytearray | Binary):
        data = bytes(cast(Any, value).value if isinstance(value, Binary) else value)
        return {"B": data}, len(data)
    if isinstance(value, Mapping):
        members: dict[str, Any] = {}
        size = 3
        for name, member in value.items():
            if not isinstance(name, str):
                raise InvalidItemError(f"{path} has a name that is not a string: {name!r}")
            members[name], member_size = _encode(member, f"{path}.{name}")
            size += _utf8_size(name) + member_size + 1
        return {"M": members}, size
    if isinstance(value, list | tuple):
        elements: list[dict[str, Any]] = []
        size = 3
        for index, element in enumerate(value):
            encoded, element_size = _encode(element, f"{path}[{index}]")
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
        return {"SS": strings}, sum(map(_utf8_size, strings))
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
        raise InvalidItemError(f"{path} is {value}, which DynamoDB cannot store")
    try:
        return str(DYNAMODB_CONTEXT.create_decimal(value))
    except (Inexact, Rounded):
        raise InvalidItemError(
            f"{path} ({value}) has more than 38 significant digits, DynamoDB's limit"
        ) from None
    except (Overflow, Underflow, Clamped):
        raise InvalidItemError(
            f"{path} ({value}) is outside DynamoDB's number range (magnitudes from 1E-130 to "
            f"under 1E+126)"
        ) from None


def _number_size(text: str) -> int:
    digits = Decimal(text).as_tuple().digits
    significant = len("".join(map(str, digits)).strip("0"))
    return (significant + 1) // 2 + 1


def _utf8_size(text: str) -> int:
    if text.isascii():
        return len(text)
    try:
        return len(text.encode("utf-8"))
    except UnicodeEncodeError as error:
        raise InvalidItemError(f"{text[:40]!r} is not valid Unicode text ({error})") from None


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


def _preview(item: Mapping[str, Any]) -> str:
    text = repr(dict(item))
    return text if len(text) <= 120 else text[:117] + "..."


class _State(enum.Enum):
    READY = "ready"  # in the ready queue, in no request
    DELAYED = "delayed"  # refused; waiting out its backoff
    SENDING = "sending"  # in a request whose answer has not come back


@dataclass(eq=False)
class _Write:
    seq: int
    kind: WriteKind
    request: dict[str, Any]  # the WriteRequest in DynamoDB's JSON
    key: _Key
    attempts: int = 0  # times DynamoDB refused it (unprocessed, throttled, transient error)


@dataclass(eq=False)
class _Slot:
    """The unsettled writes of one key: the one being delivered and the later ones behind it.

    When coalescing, at most one waits, and only while the active write is in a request:
    otherwise a later write takes the active one's place.
    """

    active: _Write
    state: _State = _State.READY
    due: float = 0.0
    waiting: deque[_Write] = field(default_factory=deque)


class _ThrottleObserver:
    """Counts the throttled attempts of the calling thread's `BatchWriteItem` call, including
    those botocore's retry mode repeated, and reports each at once (so pacing slows down while
    botocore is still retrying). Registered on botocore's `response-received` event."""

    def __init__(self, on_throttle: Callable[[], None]) -> None:
        self._on_throttle = on_throttle
        self._local = threading.local()

    def start(self) -> None:
        self._local.count = 0

    def stop(self) -> int:
        count: int = self._local.count
        self._local.count = None
        return count

    def __call__(self, *, parsed_response: Mapping[str, Any] | None = None, **_: Any) -> None:
        count: int | None = getattr(self._local, "count", None)
        if count is None or parsed_response is None:
            return  # another caller's request on a shared client, or no answer at all
        if parsed_response.get("Error", {}).get("Code") in _THROTTLING_ERRORS:
            self._local.count = count + 1
            self._on_throttle()


_OBSERVED_EVENT = "response-received.dynamodb.BatchWriteItem"


class _Pipeline:
    """The writer's state and its sender threads. Holds no reference to the `TableWriter`, so a
    forgotten writer can be garbage-collected (and warn) while its senders still run."""

    def __init__(
        self,
        table: str,
        client: DynamoDBClient,
        schema: _KeySchema,
        *,
        rate: SendingRate,
        backoff: Backoff,
        deadline: float | None,
        senders: int,
        max_pending: int,
        coalesce: bool,
        clock: Callable[[], float],
        sleep: Callable[[float], None],
        random: Callable[[], float],
    ) -> None:
        self.table = table
        self.schema = schema
        self._client = client
        self._rate = rate
        self._backoff = backoff
        self._deadline = deadline
        self._stop_at = None if deadline is None else clock() + deadline
        self._max_pending = max_pending
        self._coalesce = coalesce
        self._clock = clock
        self._sleep = sleep
        self._random = random
        self._deserializer = TypeDeserializer()

        self._lock = threading.Lock()
        self._work = threading.Condition(self._lock)  # senders wait here for something to send
        self._progress = threading.Condition(self._lock)  # put() and flush() wait for settling
        self._slots: dict[_Key, _Slot] = {}
        self._ready: deque[_Key] = deque()
        self._delayed: list[tuple[float, int, _Key]] = []  # heap of (due, tiebreak, key)
        self._tiebreak = itertools.count()
        self._unsettled: set[int] = set()
        self._seq = 0
        self._written = self._replaced = self._retried = self._unprocessed = self._throttled = 0
        self._failed: list[FailedWrite] = []
        self._flushing = 0
        self._blocked = 0
        self._timer_taken = False
        self._stop_reason: str | None = None
        self._error: BaseException | None = None
        self._closing = False

        self._observer = _ThrottleObserver(rate.throttled)
        self._observer_id = f"streams-writer-{id(self)}"
        client.meta.events.register(_OBSERVED_EVENT, self._observer, unique_id=self._observer_id)
        self._threads = [
            threading.Thread(target=self._run_sender, name=f"writer-{table}-{i}", daemon=True)
            for i in range(senders)
        ]
        for thread in self._threads:
            thread.start()

    # -- the caller's side -------------------------------------------------------------------

    def submit(self, kind: WriteKind, request: dict[str, Any], key: _Key) -> int:
        with self._lock:
            self._raise_if_unusable()
            while len(self._unsettled) >= self._max_pending and self._stop_reason is None:
                self._blocked += 1
                self._work.notify_all()  # partial batches may go now: the caller is waiting
                try:
                    self._progress.wait()
                finally:
                    self._blocked -= 1
                self._raise_if_unusable()
            self._check_deadline(self._clock())
            self._seq += 1
            write = _Write(self._seq, kind, request, key)
            self._unsettled.add(write.seq)
            slot = self._slots.get(key)
            if self._stop_reason is not None:
                self._finish(write, self._stop_reason)
            elif slot is None:
                self._slots[key] = _Slot(write)
                self._ready.append(key)
                if len(self._ready) >= _MAX_BATCH:
                    self._work.notify()
            elif slot.state is _State.SENDING or not self._coalesce:
                # Per-key order: it waits until the writes before it are accepted or failed.
                if self._coalesce and slot.waiting:
                    self._finish(slot.waiting.pop(), "replaced")
                slot.waiting.append(write)
            else:
                # The queued write was never applied (not sent yet, or refused): the later write
                # of its key takes its place, and its backoff.
                write.attempts = slot.active.attempts
                self._finish(slot.active, "replaced")
                slot.active = write
            return write.seq

    def flush(self) -> None:
        with self._lock:
            self._flushing += 1
            self._work.notify_all()
            try:
                while self._unsettled:
                    self._progress.wait()
            finally:
                self._flushing -= 1
            self._raise_if_failed()

    def completed_through(self) -> int:
        with self._lock:
            self._raise_if_failed()
            return min(self._unsettled) - 1 if self._unsettled else self._seq

    def report(self) -> WriteReport:
        with self._lock:
            return WriteReport(
                submitted=self._seq,
                written=self._written,
                replaced=self._replaced,
                retried=self._retried,
                unprocessed=self._unprocessed,
                throttled=self._throttled,
                failed=tuple(self._failed),
            )

    def shutdown(self) -> None:
        """Stop the senders (nothing is pending) and leave the client as it was."""
        with self._lock:
            self._closing = True
            self._work.notify_all()
        for thread in self._threads:
            thread.join()
        self._client.meta.events.unregister(_OBSERVED_EVENT, unique_id=self._observer_id)

    def abort(self, reason: str) -> None:
        """Stop without waiting: what is not accepted is failed with `reason` (writes in flight
        are failed by their sender if DynamoDB does not accept them)."""
        with self._lock:
            if self._stop_reason is None:
                self._stop(reason)
            self._closing = True
            self._work.notify_all()
        self._client.meta.events.unregister(_OBSERVED_EVENT, unique_id=self._observer_id)

    def abandon(self) -> None:
        """The writer was garbage-collected (or the interpreter exits) without `close()`."""
        with self._lock:
            unsettled = len(self._unsettled)
        if unsettled:
            message = (
                f"TableWriter for table {self.table!r} was garbage-collected with {unsettled} "
                f"writes DynamoDB has not accepted; they will not be written. Use "
                f"`with TableWriter(...)`, or call flush() or close() before letting it go."
            )
            logger.error(message)
            warnings.warn(message, ResourceWarning, stacklevel=2)
        self.abort("not sent: the writer was garbage-collected before it sent the write")

    # -- the senders' side -------------------------------------------------------------------

    def _run_sender(self) -> None:
        batch: list[_Write] = []
        try:
            while (taken := self._take()) is not None:
                batch = taken
                self._send(batch)
                batch = []
        except Exception as error:
            # A bug here or in the client: fail loudly (put() and flush() raise it), never hang.
            logger.exception("writer for table %r stopped", self.table)
            with self._lock:
                self._error = self._error or error
                reason = f"not written: the writer failed ({error!r})"
                if self._stop_reason is None:
                    self._stop(reason)
                for write in batch:
                    if write.seq in self._unsettled:
                        self._settle(write, reason)
                self._progress.notify_all()

    def _take(self) -> list[_Write] | None:
        """Wait for something to send; return it as one batch (None: stop)."""
        with self._lock:
            while True:
                if self._closing:
                    return None
                now = self._clock()
                self._check_deadline(now)
                self._release_due(now)
                urgent = self._flushing > 0 or self._blocked > 0
                if self._ready and (urgent or len(self._ready) >= _MAX_BATCH):
                    batch = self._take_batch()
                    if self._ready and (urgent or len(self._ready) >= _MAX_BATCH):
                        self._work.notify()  # more to send: another sender can take it
                    return batch
                if urgent and self._delayed and not self._timer_taken:
                    # Nothing to send until a backoff ends: one sender sleeps until then.
                    wake_at = self._delayed[0][0]
                    if self._stop_at is not None:
                        wake_at = min(wake_at, self._stop_at)
                    self._timer_taken = True
                    self._lock.release()
                    try:
                        self._sleep(max(0.0, wake_at - now))
                    finally:
                        self._lock.acquire()
                        self._timer_taken = False
                    continue
                self._work.wait()

    def _take_batch(self) -> list[_Write]:
        batch: list[_Write] = []
        while self._ready and len(batch) < _MAX_BATCH:
            slot = self._slots[self._ready.popleft()]
            slot.state = _State.SENDING
            if slot.active.attempts:
                self._retried += 1
            batch.append(slot.active)
        return batch

    def _send(self, batch: list[_Write]) -> None:
        wait = self._rate.reserve(len(batch))
        if wait > 0:
            if self._stop_at is not None:
                wait = min(wait, max(0.0, self._stop_at - self._clock()))
            self._sleep(wait)
        with self._lock:
            self._check_deadline(self._clock())
            if self._stop_reason is not None:
                for write in batch:
                    self._settle(write, self._stop_reason)
                self._progress.notify_all()
                return
        self._deliver(batch)

    def _deliver(self, writes: list[_Write]) -> None:
        """One BatchWriteItem call for `writes`, and what follows from its answer."""
        outcome: Mapping[str, Any] | ClientError | BotoCoreError
        self._observer.start()
        try:
            outcome = cast(
                Mapping[str, Any],
                self._client.batch_write_item(
                    RequestItems={self.table: [cast(Any, w.request) for w in writes]}
                ),
            )
        except (ClientError, BotocoreConnectionError, HTTPClientError) as error:
            outcome = error
        finally:
            throttled_attempts = self._observer.stop()

        if isinstance(outcome, Mapping):
            self._on_answer(writes, outcome, throttled_attempts)
        elif isinstance(outcome, ClientError):
            self._on_client_error(writes, outcome, throttled_attempts)
        else:
            logger.warning(
                "BatchWriteItem to table %r failed (%s); sending its %d writes again later",
                self.table,
                outcome,
                len(writes),
            )
            self._refuse(writes, throttled_attempts)

    def _on_answer(
        self, writes: list[_Write], answer: Mapping[str, Any], throttled_attempts: int
    ) -> None:
        unprocessed = answer.get("UnprocessedItems", {}).get(self.table, [])
        refused = {self.schema.key_of_request(request) for request in unprocessed}
        self._rate.accepted(sum(1 for w in writes if w.key not in refused))
        if refused:
            self._rate.throttled()
        with self._lock:
            now = self._clock()
            self._throttled += throttled_attempts
            for write in writes:
                if write.key in refused:
                    self._unprocessed += 1
                    self._settle_refused(write, now)
                else:
                    self._settle(write, "written")
            self._progress.notify_all()
            self._work.notify_all()

    def _on_client_error(
        self, writes: list[_Write], error: ClientError, throttled_attempts: int
    ) -> None:
        code = error.response.get("Error", {}).get("Code", "")
        message = error.response.get("Error", {}).get("Message", "")
        status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        if code in _THROTTLING_ERRORS:
            if throttled_attempts == 0:
                # Refused before any attempt reached botocore's HTTP layer (so unobserved).
                self._rate.throttled()
            self._refuse(writes, max(throttled_attempts, 1))
        elif code in _REJECTED_ITEM_ERRORS and len(writes) > 1:
            # One bad item refuses the whole call: halve the batch until it stands alone.
            logger.info(
                "table %r rejected a batch of %d writes (%s: %s); splitting it to find the item",
                self.table,
                len(writes),
                code,
                message,
            )
            self._count_throttled(throttled_attempts)
            middle = len(writes) // 2
            self._deliver(writes[:middle])
            self._deliver(writes[middle:])
        elif code in _REJECTED_ITEM_ERRORS:
            with self._lock:
                self._throttled += throttled_attempts
                self._settle(writes[0], f"{code}: {message}")
                self._progress.notify_all()
                self._work.notify_all()
        elif code in _TRANSIENT_ERRORS or status >= 500:
            logger.warning(
                "BatchWriteItem to table %r failed (%s: %s); sending its %d writes again later",
                self.table,
                code,
                message,
                len(writes),
            )
            self._refuse(writes, throttled_attempts)
        else:
            where = f"{self._client.meta.endpoint_url} (region {self._client.meta.region_name})"
            table_error = TableWriteError(_table_error_message(self.table, where, error))
            logger.error("%s", table_error)
            with self._lock:
                self._throttled += throttled_attempts
                self._error = self._error or table_error
                reason = f"not written: {table_error}"
                if self._stop_reason is None:
                    self._stop(reason)
                for write in writes:
                    self._settle(write, reason)
                self._progress.notify_all()

    def _count_throttled(self, attempts: int) -> None:
        with self._lock:
            self._throttled += attempts

    def _refuse(self, writes: list[_Write], throttled_attempts: int) -> None:
        """Nothing in the call was written: every write is sent again after its backoff."""
        with self._lock:
            now = self._clock()
            self._throttled += throttled_attempts
            for write in writes:
                self._settle_refused(write, now)
            self._progress.notify_all()
            self._work.notify_all()

    # -- bookkeeping, with the lock held -----------------------------------------------------

    def _settle(self, write: _Write, outcome: str) -> None:
        """`write` is done ("written", or failed for the reason `outcome`): the next write of
        its key may go."""
        self._finish(write, outcome)
        self._advance(write.key)

    def _settle_refused(self, write: _Write, now: float) -> None:
        if self._stop_reason is not None:
            self._settle(write, self._stop_reason)
            return
        slot = self._slots[write.key]
        write.attempts += 1
        if self._coalesce and slot.waiting:
            # The refused write was never applied: the later write of its key goes instead.
            self._finish(write, "replaced")
            slot.active = slot.waiting.pop()
            slot.active.attempts = write.attempts
        slot.state = _State.DELAYED
        slot.due = now + self._backoff.delay(slot.active.attempts, self._random)
        heapq.heappush(self._delayed, (slot.due, next(self._tiebreak), write.key))

    def _advance(self, key: _Key) -> None:
        """The slot's active write is settled: the first waiting write, if any, is next."""
        slot = self._slots[key]
        if not slot.waiting:
            del self._slots[key]
            return
        slot.active = slot.waiting.popleft()
        slot.state = _State.READY
        self._ready.append(key)

    def _finish(self, write: _Write, outcome: str) -> None:
        """Account for a write that is settled: "written", "replaced", or failed for `outcome`."""
        self._unsettled.discard(write.seq)
        if outcome == "written":
            self._written += 1
        elif outcome == "replaced":
            self._replaced += 1
        else:
            self._failed.append(FailedWrite(write.seq, write.kind, self._plain(write), outcome))

    def _plain(self, write: _Write) -> dict[str, Any]:
        if write.kind == "put":
            attributes = write.request["PutRequest"]["Item"]
        else:
            attributes = write.request["DeleteRequest"]["Key"]
        return {name: self._deserializer.deserialize(v) for name, v in attributes.items()}

    def _release_due(self, now: float) -> None:
        """Move writes whose backoff has ended to the front of the ready queue."""
        while self._delayed:
            due, _, key = self._delayed[0]
            slot = self._slots.get(key)
            stale = slot is None or slot.state is not _State.DELAYED or slot.due != due
            if not stale and due > now:
                return
            heapq.heappop(self._delayed)
            if not stale and slot is not None:
                slot.state = _State.READY
                self._ready.appendleft(key)

    def _check_deadline(self, now: float) -> None:
        if self._stop_reason is None and self._stop_at is not None and now >= self._stop_at:
            self._stop(f"deadline: not accepted within {self._deadline:g} s of the writer's start")

    def _stop(self, reason: str) -> None:
        """From now on nothing more is sent: every write not in flight fails with `reason`."""
        self._stop_reason = reason
        for key, slot in list(self._slots.items()):
            for write in slot.waiting:
                self._finish(write, reason)
            slot.waiting.clear()
            if slot.state is not _State.SENDING:
                self._finish(slot.active, reason)
                del self._slots[key]
        self._ready.clear()
        self._delayed.clear()
        self._progress.notify_all()
        self._work.notify_all()

    def _raise_if_failed(self) -> None:
        if isinstance(self._error, TableWriteError):
            raise TableWriteError(str(self._error))
        if self._error is not None:
            raise RuntimeError(f"the writer for table {self.table!r} failed") from self._error

    def _raise_if_unusable(self) -> None:
        self._raise_if_failed()
        if self._closing:
            raise RuntimeError(f"the writer for table {self.table!r} is closed")
