"""QueueForwarder: every change reaches the queue before its record is acknowledged, 10 to a
call; on FIFO, in order per key and once per event; refused entries are transient, records that
cannot be shaped are poison."""

from __future__ import annotations

import io
import json
import uuid
from collections.abc import Callable
from typing import Any

import boto3
import pytest
from aws_lambda_powertools import Logger
from botocore.awsrequest import AWSResponse

from streams import KinesisRecord, QueueForwarder, StreamProcessor
from streams.forward import deduplication_id, message_group_id
from streams.records import StreamRecord, parse_records
from tests.factories import FakeClock, MemorySink, dynamodb_record, kinesis_record


@pytest.fixture
def sqs(aws: boto3.Session) -> Any:
    return aws.client("sqs")


def make_queue(sqs: Any, *, fifo: bool) -> str:
    name = f"q-{uuid.uuid4().hex[:12]}" + (".fifo" if fifo else "")
    attributes = {"FifoQueue": "true"} if fifo else {}
    return str(sqs.create_queue(QueueName=name, Attributes=attributes)["QueueUrl"])


def read_all(sqs: Any, url: str) -> list[dict[str, Any]]:
    """Every message, in the order the queue gives them (received and deleted)."""
    messages: list[dict[str, Any]] = []
    empty = 0
    while empty < 3:
        got = sqs.receive_message(
            QueueUrl=url,
            MaxNumberOfMessages=10,
            MessageSystemAttributeNames=["MessageGroupId", "MessageDeduplicationId"],
            WaitTimeSeconds=0,
        ).get("Messages", [])
        empty = 0 if got else empty + 1
        messages.extend(got)
        if got:
            sqs.delete_message_batch(
                QueueUrl=url,
                Entries=[
                    {"Id": str(n), "ReceiptHandle": m["ReceiptHandle"]} for n, m in enumerate(got)
                ],
            )
    return messages


def records(keys: list[str], *, first: int = 1) -> list[StreamRecord]:
    """One DynamoDB record per key, sequence numbers first, first + 1, ..."""
    return parse_records(
        {
            "Records": [
                dynamodb_record(first + n, child=key)
                | {"eventID": f"{first + n:032x}"}  # unique per record, as AWS's
                for n, key in enumerate(keys)
            ]
        }
    )


def core(handler: Any, sink: MemorySink | None = None, **kwargs: Any) -> StreamProcessor:
    clock = FakeClock()
    return StreamProcessor(
        handler,
        dead_letters=sink if sink is not None else MemorySink(),
        clock=clock,
        sleep=clock.sleep,
        logger=Logger(service=f"test-{uuid.uuid4().hex}", stream=io.StringIO()),
        **kwargs,
    )


def sequence_of(message: dict[str, Any]) -> int:
    return int(json.loads(message["Body"])["dynamodb"]["SequenceNumber"])


class Calls:
    """The SendMessageBatch calls a client makes: how many entries each."""

    def __init__(self, client: Any) -> None:
        self.sizes: list[int] = []
        client.meta.events.register("provide-client-params.sqs.SendMessageBatch", self._seen)

    def _seen(self, params: dict[str, Any], **_: Any) -> None:
        self.sizes.append(len(params["Entries"]))


class Refuse:
    """The queue refuses the entries `refused(body, attempt)` names: they are taken out of the
    request before it reaches the endpoint and reported in the reply's `Failed`, as SQS reports
    an entry it did not take (a call left with no entry is answered here, with `Failed` only)."""

    def __init__(self, client: Any, refused: Callable[[str, int], bool]) -> None:
        self.refused = refused
        self.attempts: dict[str, int] = {}
        client.meta.events.register("provide-client-params.sqs.SendMessageBatch", self._strip)
        client.meta.events.register("before-call.sqs.SendMessageBatch", self._answer_empty)
        client.meta.events.register("after-call.sqs.SendMessageBatch", self._report)

    def _strip(self, params: dict[str, Any], context: dict[str, Any], **_: Any) -> None:
        kept, failed = [], []
        for entry in params["Entries"]:
            body = entry["MessageBody"]
            self.attempts[body] = self.attempts.get(body, 0) + 1
            (failed if self.refused(body, self.attempts[body]) else kept).append(entry)
        params["Entries"] = kept
        context["kept"] = bool(kept)
        context["refused"] = [
            {"Id": entry["Id"], "Code": "InternalError", "SenderFault": False} for entry in failed
        ]

    def _answer_empty(
        self, context: dict[str, Any], **_: Any
    ) -> tuple[AWSResponse, dict[str, Any]] | None:
        if not context["refused"] or context.get("kept"):
            return None
        return AWSResponse("http://127.0.0.1/", 200, {}, None), {
            "Successful": [],
            "Failed": context["refused"],
        }

    def _report(self, parsed: dict[str, Any], context: dict[str, Any], **_: Any) -> None:
        if context.get("kept"):
            parsed.setdefault("Failed", []).extend(context["refused"])


# -- calls of ten, acknowledged only once sent -----------------------------------------------


def test_each_change_reaches_the_queue_as_received_in_calls_of_ten(sqs: Any) -> None:
    url = make_queue(sqs, fifo=False)
    calls = Calls(sqs)
    batch = records([f"k{n}" for n in range(25)])

    result = core(QueueForwarder(url, client=sqs)).run(batch)

    assert (result.done, result.stop_cause) == (25, None)
    assert calls.sizes == [10, 10, 5]
    bodies = sorted((json.loads(m["Body"]) for m in read_all(sqs, url)), key=str)
    assert bodies == sorted((record.raw for record in batch), key=str)


def test_entries_the_queue_refuses_are_transient_and_nothing_after_them_is_sent(
    sqs: Any,
) -> None:
    url = make_queue(sqs, fifo=False)
    calls = Calls(sqs)  # before Refuse: sees what the forwarder sends
    Refuse(sqs, lambda body, attempt: '"SequenceNumber":"13"' in body)
    forward = QueueForwarder(url, client=sqs, sleep=lambda seconds: None)

    result = core(forward).run(records([f"k{n}" for n in range(25)]))

    assert result.lambda_response() == {"batchItemFailures": [{"itemIdentifier": "13"}]}
    assert result.stop_cause == "transient"
    # Call 2 (records 11-20) took all but 13, which was tried twice more, alone; 21-25 never
    # went out: Lambda delivers them again with 13.
    assert calls.sizes == [10, 10, 1, 1]
    assert sorted(sequence_of(m) for m in read_all(sqs, url)) == [
        *range(1, 13),
        *range(14, 21),
    ]


def test_an_entry_refused_once_is_sent_again_in_place(sqs: Any) -> None:
    url = make_queue(sqs, fifo=False)
    Refuse(sqs, lambda body, attempt: '"SequenceNumber":"4"' in body and attempt == 1)
    forward = QueueForwarder(url, client=sqs, sleep=lambda seconds: None)

    result = core(forward).run(records(["a", "b", "c", "d", "e"]))

    assert (result.done, result.stop_cause) == (5, None)
    assert sorted(sequence_of(m) for m in read_all(sqs, url)) == [1, 2, 3, 4, 5]


def test_a_call_refused_as_a_whole_is_retried_then_transient(sqs: Any) -> None:
    url = make_queue(sqs, fifo=False)
    forward = QueueForwarder(
        url.replace(url.rsplit("/", 1)[1], "no-such-queue"), client=sqs, sleep=lambda s: None
    )

    result = core(forward).run(records(["a", "b"]))

    assert result.lambda_response() == {"batchItemFailures": [{"itemIdentifier": "1"}]}


# -- FIFO: order per key, once per event -----------------------------------------------------


def test_on_a_fifo_queue_the_group_is_the_items_key_and_each_key_keeps_stream_order(
    sqs: Any,
) -> None:
    url = make_queue(sqs, fifo=True)
    keys = ["a", "b", "a", "c", "a", "b", "d", "a", "c", "a", "e", "b"] * 5

    result = core(QueueForwarder(url, client=sqs), concurrency=4).run(records(keys))

    assert result.done == len(keys)
    by_group: dict[str, list[int]] = {}
    for message in read_all(sqs, url):
        group = message["Attributes"]["MessageGroupId"]
        body = json.loads(message["Body"])
        assert group == body["dynamodb"]["Keys"]["childId"]["S"]
        by_group.setdefault(group, []).append(sequence_of(message))
    expected: dict[str, list[int]] = {}
    for position, key in enumerate(keys, 1):
        expected.setdefault(key, []).append(position)
    assert by_group == expected


def test_on_a_fifo_queue_a_call_never_holds_two_messages_of_one_group(sqs: Any) -> None:
    fifo, standard = make_queue(sqs, fifo=True), make_queue(sqs, fifo=False)
    calls = Calls(sqs)
    core(QueueForwarder(fifo, client=sqs)).run(records(["a", "a", "b", "a", "b", "c"]))
    # a | a b | a b c: a message of a group refused in a call cannot be overtaken by a later
    # one of its group that the same call delivered.
    assert calls.sizes == [1, 2, 3]
    calls.sizes.clear()
    core(QueueForwarder(standard, client=sqs)).run(records(["a", "a", "b", "a", "b", "c"]))
    assert calls.sizes == [6]


def test_a_batch_delivered_again_within_five_minutes_is_not_forwarded_twice(sqs: Any) -> None:
    url = make_queue(sqs, fifo=True)
    forward = QueueForwarder(url, client=sqs)
    batch = parse_records({"Records": [r.raw for r in records(["a", "b", "a", "c"])]})
    again = parse_records({"Records": [r.raw for r in records(["a", "b", "a", "c"])]})

    core(forward).run(batch)
    core(forward).run(again)  # Lambda delivers the same records again (a retried batch)

    assert sorted(sequence_of(m) for m in read_all(sqs, url)) == [1, 2, 3, 4]


def test_deduplication_ids_follow_the_event_and_kpl_sub_records_get_their_own() -> None:
    one, same = records(["a"]), records(["a"])
    other = records(["a"], first=2)
    assert deduplication_id(one[0]) == deduplication_id(same[0])
    assert deduplication_id(one[0]) != deduplication_id(other[0])
    raw = kinesis_record(7)
    sub = [KinesisRecord(raw, sub_sequence_number=n) for n in (0, 1)]
    assert deduplication_id(sub[0]) != deduplication_id(sub[1])
    assert all(len(deduplication_id(r)) <= 128 for r in [*one, *sub])


def test_a_key_sqs_cannot_take_as_a_group_id_is_hashed() -> None:
    plain = records(["ticket-42"])[0]
    spaced = records(["a key with spaces"])[0]
    assert message_group_id(plain) == "ticket-42"
    assert len(message_group_id(spaced)) == 64
    assert message_group_id(spaced) != message_group_id(records(["a key with spaces!"])[0])
    assert message_group_id(KinesisRecord(kinesis_record(1))) == "pk"


# -- shaping ---------------------------------------------------------------------------------


def test_a_record_the_shape_hook_cannot_shape_is_poison_and_parked_with_its_reason(
    sqs: Any,
) -> None:
    url = make_queue(sqs, fifo=True)

    def shape(record: Any) -> dict[str, Any]:
        image = record.new_image
        return {
            "ticket": record.keys["childId"],
            "status": image["missing"] if record.keys["childId"] == "bad" else image["status"],
        }

    sink = MemorySink()
    result = core(QueueForwarder(url, client=sqs, shape=shape), sink).run(
        records(["a", "bad", "b"])
    )

    assert (result.done, result.stop_cause) == (3, None)
    (letter,) = sink.kept
    assert (letter.reason, letter.record.sequence_number) == ("poison", "2")
    assert (letter.error.type, letter.error.message) == (
        "Poison",
        "the shape hook could not shape the record: KeyError",
    )
    assert "KeyError" in letter.error.traceback
    assert [json.loads(m["Body"]) for m in read_all(sqs, url)] == [
        {"ticket": "a", "status": "nice"},
        {"ticket": "b", "status": "nice"},
    ]


def test_a_message_sqs_would_never_accept_is_poison(sqs: Any) -> None:
    url = make_queue(sqs, fifo=False)
    bodies = {"1": "fine", "2": "x" * 300, "3": "nul \x00 inside"}
    sink = MemorySink()
    forward = QueueForwarder(
        url, client=sqs, shape=lambda r: bodies[r.sequence_number], max_message_bytes=256
    )

    result = core(forward, sink).run(records(["a", "b", "c"]))

    assert result.done == 3
    assert [(letter.record.sequence_number, letter.error.message) for letter in sink.kept] == [
        ("2", "the shaped message is 300 bytes, over the queue's 256"),
        ("3", "the shaped message holds characters SQS never accepts"),
    ]
    assert [m["Body"] for m in read_all(sqs, url)] == ["fine"]


def test_a_mapping_is_sent_as_json_with_its_numbers_exact(sqs: Any) -> None:
    url = make_queue(sqs, fifo=False)
    image = {
        "childId": {"S": "a"},
        "count": {"N": "12"},
        "price": {"N": "0.1000000000000000000000000000000000001"},
        "tags": {"SS": ["y", "x"]},
        "blob": {"B": "AAE="},
    }
    batch = parse_records({"Records": [dynamodb_record(1, new_image=image)]})

    core(QueueForwarder(url, client=sqs, shape=lambda r: r.new_image)).run(batch)

    (message,) = read_all(sqs, url)
    assert json.loads(message["Body"]) == {
        "childId": "a",
        "count": 12,
        "price": "0.1000000000000000000000000000000000001",
        "tags": ["x", "y"],
        "blob": "AAE=",
    }
