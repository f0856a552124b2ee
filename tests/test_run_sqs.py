"""The local mapping's SQS event source (`streams.mapping.sqs`): Lambda's event shape, batching
and deletion rules, on moto's queues, with the function in this process."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable, Iterator
from typing import Any

import boto3
import pytest

from streams.errors import UserError
from streams.mapping import InProcessInvoker, LambdaContext
from streams.mapping.sqs import Queue, QueuePoller, QueueSettings, check_queue, describe_queue
from tests.conftest import REGION
from tests.run_functions import wait_until

Handler = Callable[[dict[str, Any]], Any]


def _succeed(event: dict[str, Any]) -> None:
    return None


class Function:
    """An in-process function: `handler(event)` decides the result; every event is kept."""

    def __init__(self, handler: Handler = _succeed) -> None:
        self.events: list[dict[str, Any]] = []
        self._handler = handler
        self._lock = threading.Lock()

    def __call__(self, event: dict[str, Any], context: LambdaContext) -> Any:
        with self._lock:
            self.events.append(event)
        return self._handler(event)

    @property
    def batches(self) -> list[list[str]]:
        """Each invocation's message bodies."""
        with self._lock:
            return [[record["body"] for record in event["Records"]] for event in self.events]


@pytest.fixture
def sqs(aws: boto3.Session) -> Any:
    return aws.client("sqs")


@pytest.fixture
def make_queue(sqs: Any, unique_name: str) -> Iterator[Callable[..., Queue]]:
    """`make_queue(**attributes)`: a new queue (VisibilityTimeout 30 unless given), described."""
    made = 0

    def make(**attributes: str) -> Queue:
        nonlocal made
        made += 1
        fifo = attributes.get("FifoQueue") == "true"
        name = f"{unique_name}-{made}" + (".fifo" if fifo else "")
        url = sqs.create_queue(
            QueueName=name, Attributes={"VisibilityTimeout": "30", **attributes}
        )["QueueUrl"]
        arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"][
            "QueueArn"
        ]
        return describe_queue(arn, sqs)

    yield make


def _send(sqs: Any, queue: Queue, *bodies: str) -> None:
    for body in bodies:
        sqs.send_message(QueueUrl=queue.url, MessageBody=body)


def _poll_until_idle(
    sqs: Any, queue: Queue, function: Function, settings: QueueSettings | None = None
) -> None:
    """Run a poller until its first receive finds nothing (short polling: moto's queue has
    every message sent before it starts)."""
    poller = QueuePoller(
        settings or QueueSettings(),
        queue,
        InProcessInvoker(function),
        sqs=sqs,
        function_timeout=3,
        poll_wait_seconds=0,
    )
    poller.run(exit_when_idle=0)


def _counts(sqs: Any, queue: Queue) -> tuple[int, int]:
    """(visible, in flight) messages: deleted messages are in neither."""
    attributes = sqs.get_queue_attributes(
        QueueUrl=queue.url,
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )["Attributes"]
    return (
        int(attributes["ApproximateNumberOfMessages"]),
        int(attributes["ApproximateNumberOfMessagesNotVisible"]),
    )


def _report(*identifiers: object) -> Handler:
    def handler(event: dict[str, Any]) -> dict[str, Any]:
        return {"batchItemFailures": [{"itemIdentifier": value} for value in identifiers]}

    return handler


def _fail_bodies_starting_with(prefix: str) -> Handler:
    def handler(event: dict[str, Any]) -> dict[str, Any]:
        failed = [r["messageId"] for r in event["Records"] if r["body"].startswith(prefix)]
        return {"batchItemFailures": [{"itemIdentifier": message_id} for message_id in failed]}

    return handler


# --- the event ----------------------------------------------------------------------------


def test_each_message_reaches_the_function_in_lambdas_sqs_event_shape(
    sqs: Any, make_queue: Callable[..., Queue]
) -> None:
    queue = make_queue()
    sent = sqs.send_message(
        QueueUrl=queue.url,
        MessageBody='{"hello": "world"}',
        MessageAttributes={
            "reason": {"DataType": "String", "StringValue": "poison"},
            "count": {"DataType": "Number", "StringValue": "3"},
            "blob": {"DataType": "Binary", "BinaryValue": b"\x00\x01"},
        },
    )
    plain = sqs.send_message(QueueUrl=queue.url, MessageBody="plain")
    function = Function()

    _poll_until_idle(sqs, queue, function)

    ((event),) = function.events
    with_attributes, without = event["Records"]
    assert set(event) == {"Records"}
    assert set(with_attributes) == {
        "messageId",
        "receiptHandle",
        "body",
        "attributes",
        "messageAttributes",
        "md5OfMessageAttributes",
        "md5OfBody",
        "eventSource",
        "eventSourceARN",
        "awsRegion",
    }
    assert with_attributes["messageId"] == sent["MessageId"]
    assert isinstance(with_attributes["receiptHandle"], str)
    assert with_attributes["body"] == '{"hello": "world"}'
    assert set(with_attributes["attributes"]) == {
        "ApproximateReceiveCount",
        "SentTimestamp",
        "SenderId",
        "ApproximateFirstReceiveTimestamp",
    }
    assert with_attributes["attributes"]["ApproximateReceiveCount"] == "1"
    assert with_attributes["messageAttributes"] == {
        "reason": {
            "stringValue": "poison",
            "stringListValues": [],
            "binaryListValues": [],
            "dataType": "String",
        },
        "count": {
            "stringValue": "3",
            "stringListValues": [],
            "binaryListValues": [],
            "dataType": "Number",
        },
        "blob": {
            "binaryValue": "AAE=",
            "stringListValues": [],
            "binaryListValues": [],
            "dataType": "Binary",
        },
    }
    assert with_attributes["md5OfMessageAttributes"] == sent["MD5OfMessageAttributes"]
    assert with_attributes["md5OfBody"] == hashlib.md5(b'{"hello": "world"}').hexdigest()
    assert (
        with_attributes["eventSource"],
        with_attributes["eventSourceARN"],
        with_attributes["awsRegion"],
    ) == ("aws:sqs", queue.arn, REGION)
    assert (without["messageId"], without["messageAttributes"]) == (plain["MessageId"], {})
    assert without["md5OfMessageAttributes"] is None


# --- batching -----------------------------------------------------------------------------


def test_a_batch_holds_at_most_batch_size_messages(
    sqs: Any, make_queue: Callable[..., Queue]
) -> None:
    queue = make_queue()
    _send(sqs, queue, "a", "b", "c")
    function = Function()

    _poll_until_idle(sqs, queue, function, QueueSettings(batch_size=2))

    assert sorted(len(batch) for batch in function.batches) == [1, 2]
    assert sorted(body for batch in function.batches for body in batch) == ["a", "b", "c"]


def test_a_batching_window_gathers_several_receives_into_one_batch_of_batch_size(
    sqs: Any, make_queue: Callable[..., Queue]
) -> None:
    # A receive returns at most 10 messages; the window (on a clock that stands still here)
    # keeps the batch open until BatchSize is reached.
    queue = make_queue()
    _send(sqs, queue, *(f"m{number:02d}" for number in range(15)))
    function = Function()
    poller = QueuePoller(
        QueueSettings(batch_size=15, maximum_batching_window_in_seconds=5),
        queue,
        InProcessInvoker(function),
        sqs=sqs,
        function_timeout=3,
        clock=lambda: 0.0,
        poll_wait_seconds=0,
    )

    poller.run(exit_when_idle=0)

    (batch,) = function.batches
    assert sorted(batch) == [f"m{number:02d}" for number in range(15)]


# --- what is deleted ----------------------------------------------------------------------


def test_without_report_batch_item_failures_a_returning_function_deletes_the_whole_batch(
    sqs: Any, make_queue: Callable[..., Queue]
) -> None:
    queue = make_queue()
    _send(sqs, queue, "fail-1", "ok-2")
    function = Function(_fail_bodies_starting_with("fail"))  # ignored without the setting

    _poll_until_idle(sqs, queue, function, QueueSettings(report_batch_item_failures=False))

    assert _counts(sqs, queue) == (0, 0)


def test_with_report_batch_item_failures_only_the_listed_messages_stay_in_the_queue(
    sqs: Any, make_queue: Callable[..., Queue]
) -> None:
    queue = make_queue()
    _send(sqs, queue, "fail-1", "ok-2", "fail-3", "ok-4")
    function = Function(_fail_bodies_starting_with("fail"))

    _poll_until_idle(sqs, queue, function, QueueSettings(report_batch_item_failures=True))

    assert _counts(sqs, queue) == (0, 2)  # the two failed ones, in flight until they time out


@pytest.mark.parametrize(
    "response",
    [
        pytest.param({"batchItemFailures": [{"itemIdentifier": "not-in-the-batch"}]}, id="unknown"),
        pytest.param({"batchItemFailures": [{"itemIdentifier": ""}]}, id="empty"),
        pytest.param({"batchItemFailures": [{"itemIdentifier": None}]}, id="null"),
        pytest.param({"batchItemFailures": [{"messageId": "x"}]}, id="another-key"),
        pytest.param({"batchItemFailures": "all"}, id="not-a-list"),
    ],
)
def test_an_invalid_partial_batch_response_fails_the_whole_batch(
    sqs: Any, make_queue: Callable[..., Queue], response: dict[str, Any]
) -> None:
    queue = make_queue()
    _send(sqs, queue, "a", "b")
    function = Function(lambda event: response)

    _poll_until_idle(sqs, queue, function, QueueSettings(report_batch_item_failures=True))

    assert _counts(sqs, queue) == (0, 2)


@pytest.mark.parametrize(
    "response",
    [
        pytest.param(None, id="null"),
        pytest.param({}, id="empty-object"),
        pytest.param({"batchItemFailures": []}, id="empty-list"),
        pytest.param({"batchItemFailures": None}, id="null-list"),
    ],
)
def test_an_empty_partial_batch_response_is_a_full_success(
    sqs: Any, make_queue: Callable[..., Queue], response: dict[str, Any] | None
) -> None:
    queue = make_queue()
    _send(sqs, queue, "a", "b")

    _poll_until_idle(
        sqs, queue, Function(lambda event: response), QueueSettings(report_batch_item_failures=True)
    )

    assert _counts(sqs, queue) == (0, 0)


def test_a_function_error_deletes_nothing(sqs: Any, make_queue: Callable[..., Queue]) -> None:
    queue = make_queue()
    _send(sqs, queue, "a", "b")

    def crash(event: dict[str, Any]) -> None:
        raise RuntimeError("down")

    _poll_until_idle(sqs, queue, Function(crash), QueueSettings(report_batch_item_failures=True))

    assert _counts(sqs, queue) == (0, 2)


def test_a_failed_message_comes_back_after_the_visibility_timeout_and_is_delivered_again(
    sqs: Any, make_queue: Callable[..., Queue]
) -> None:
    # GIVEN a queue whose messages stay in flight 1 s, and a function that reports a message
    # as failed on its first receive only
    queue = make_queue(VisibilityTimeout="1")
    _send(sqs, queue, "flaky", "fine")

    def first_receive_fails(event: dict[str, Any]) -> dict[str, Any]:
        return {
            "batchItemFailures": [
                {"itemIdentifier": record["messageId"]}
                for record in event["Records"]
                if record["attributes"]["ApproximateReceiveCount"] == "1"
                and record["body"] == "flaky"
            ]
        }

    function = Function(first_receive_fails)
    poller = QueuePoller(
        QueueSettings(report_batch_item_failures=True),
        queue,
        InProcessInvoker(function),
        sqs=sqs,
        function_timeout=1,
    )
    thread = threading.Thread(target=poller.run, name="test-queue-poller")

    # WHEN the poller runs until the flaky message has been delivered twice
    thread.start()
    try:
        wait_until(
            lambda: sum(batch.count("flaky") for batch in function.batches) == 2,
            "the failed message to be delivered again",
        )
    finally:
        poller.stop()
        thread.join()

    # THEN its second delivery says so, and every message is deleted
    receive_counts = [
        (record["body"], record["attributes"]["ApproximateReceiveCount"])
        for event in function.events
        for record in event["Records"]
    ]
    assert sorted(receive_counts) == [("fine", "1"), ("flaky", "1"), ("flaky", "2")]
    assert _counts(sqs, queue) == (0, 0)


# --- settings and queues AWS refuses --------------------------------------------------------


@pytest.mark.parametrize(
    ("properties", "message"),
    [
        (
            {"BatchSize": 0},
            "event source mapping property BatchSize: must be between 1 and 10000, got 0",
        ),
        (
            {"BatchSize": 11},
            "event source mapping property MaximumBatchingWindowInSeconds: must be at least 1 "
            "when BatchSize is over 10 (BatchSize 11)",
        ),
        (
            {"MaximumBatchingWindowInSeconds": 301},
            "event source mapping property MaximumBatchingWindowInSeconds: must be between 0 and "
            "300, got 301",
        ),
        (
            {"StartingPosition": "LATEST"},
            "event source mapping property StartingPosition: not valid for SQS event sources",
        ),
        (
            {"FunctionResponseTypes": ["Everything"]},
            "event source mapping property FunctionResponseTypes: 'Everything' is not a "
            "response type (ReportBatchItemFailures)",
        ),
        ({"Colour": "red"}, "event source mapping property Colour: unknown property"),
    ],
)
def test_an_sqs_setting_aws_would_refuse_is_refused_with_one_line_naming_the_property(
    properties: dict[str, Any], message: str
) -> None:
    with pytest.raises(UserError) as refused:
        QueueSettings.from_properties(properties)

    assert str(refused.value) == message


def test_filter_criteria_are_refused_rather_than_ignored() -> None:
    with pytest.raises(UserError) as refused:
        QueueSettings.from_properties({"FilterCriteria": {"Filters": [{"Pattern": "{}"}]}})

    assert "FilterCriteria: not run locally for SQS event sources" in str(refused.value)


def test_the_template_properties_of_an_sqs_event_give_lambdas_defaults() -> None:
    settings = QueueSettings.from_properties(
        {"EventSourceArn": "arn:aws:sqs:us-east-1:123456789012:q", "FunctionName": "f"}
    )

    assert settings == QueueSettings(
        batch_size=10,
        maximum_batching_window_in_seconds=0,
        report_batch_item_failures=False,
        enabled=True,
    )


def test_a_queue_whose_visibility_timeout_is_below_the_functions_timeout_is_refused(
    make_queue: Callable[..., Queue],
) -> None:
    queue = make_queue(VisibilityTimeout="30")

    with pytest.raises(UserError) as refused:
        check_queue(QueueSettings(), queue, function_timeout=60)

    assert str(refused.value) == (
        f"queue {queue.name}: visibility timeout 30 s is less than the function's Timeout 60 s "
        "(Lambda refuses the mapping): raise the queue's VisibilityTimeout (AWS advises six "
        "times the function's Timeout)"
    )


def test_a_queue_that_does_not_exist_is_refused_with_one_line_naming_it(
    sqs: Any, unique_name: str
) -> None:
    arn = f"arn:aws:sqs:{REGION}:123456789012:{unique_name}-missing"

    with pytest.raises(UserError) as refused:
        describe_queue(arn, sqs)

    assert str(refused.value).startswith(f"queue {arn}: ")
    assert "\n" not in str(refused.value)


def test_a_fifo_queue_takes_batches_of_at_most_ten(make_queue: Callable[..., Queue]) -> None:
    queue = make_queue(FifoQueue="true")
    settings = QueueSettings(batch_size=11, maximum_batching_window_in_seconds=1)

    with pytest.raises(UserError) as refused:
        check_queue(settings, queue, function_timeout=3)

    assert str(refused.value) == (
        "event source mapping property BatchSize: must be between 1 and 10 for a FIFO queue, got 11"
    )


def test_a_disabled_mapping_reads_nothing(sqs: Any, make_queue: Callable[..., Queue]) -> None:
    queue = make_queue()
    _send(sqs, queue, "a")
    function = Function()

    _poll_until_idle(sqs, queue, function, QueueSettings(enabled=False))

    assert function.events == []
    assert _counts(sqs, queue) == (1, 0)
