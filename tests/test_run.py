"""`LocalMapping`: a template's function fed by its stream on moto's server, with worker
processes, the state table and its lease."""

from __future__ import annotations

import json
import logging
import uuid
from dataclasses import dataclass
from pathlib import Path

import boto3
import pytest

from processor.naughty_nice import read_child
from streams.backoff import Backoff
from streams.errors import UserError
from streams.local.run import LocalMapping
from streams.local.stack import DeployedStack, deploy_template
from streams.mapping import Invocation
from streams.mapping.function.pool import WorkerFunctionError
from streams.mapping.sqs import QueueSettings
from streams.mapping.state.layout import MappingId
from streams.mapping.state.table import DynamoDBCheckpointStore
from tests.conftest import REGION
from tests.run_functions import (
    KINESIS_TEMPLATE,
    InBackground,
    Instrumented,
    deploy_instrumented,
    item_keys,
    pid_running,
    wait_until,
)

REPOSITORY = Path(__file__).parent.parent
# Retry a failed batch at once: the rules here are about what is retried, not when.
NO_PAUSE = Backoff(base=0.01, cap=0.01, jitter=False)


# --- the real template and processor, end to end ------------------------------------------


@dataclass(frozen=True)
class Projection:
    """The real template after a run of its mapping over a few children, one malformed."""

    stack: DeployedStack
    session: boto3.Session
    valid: tuple[str, ...]
    malformed: str
    invocations: tuple[Invocation, ...]
    mapping: LocalMapping


def _child(child_id: str, status: str) -> dict[str, dict[str, object]]:
    return {
        "childId": {"S": child_id},
        "name": {"S": "Ada"},
        "status": {"S": status},
        "region": {"S": "north"},
        "address": {"M": {"city": {"S": "Oslo"}, "street": {"S": "Main 1"}}},
    }


@pytest.fixture(scope="module")
def projection(moto_endpoint: str) -> Projection:
    """GIVEN template.yaml deployed, 12 valid children and 1 with an unknown status written
    WHEN its mapping runs until idle"""
    stack = deploy_template(
        REPOSITORY / "template.yaml",
        endpoint_url=moto_endpoint,
        stack_name=f"run-{uuid.uuid4().hex[:8]}",
    )
    session = boto3.Session(region_name=REGION)
    dynamodb = session.client("dynamodb")
    valid = tuple(f"child-{number:02d}" for number in range(12))
    malformed = "child-grumpy"
    for child_id in valid[:6]:
        dynamodb.put_item(TableName=stack.outputs["SourceTableName"], Item=_child(child_id, "nice"))
    dynamodb.put_item(TableName=stack.outputs["SourceTableName"], Item=_child(malformed, "grumpy"))
    for child_id in valid[6:]:
        dynamodb.put_item(
            TableName=stack.outputs["SourceTableName"], Item=_child(child_id, "naughty")
        )
    invocations: list[Invocation] = []
    mapping = LocalMapping(stack, on_invocation=invocations.append)
    mapping.run(exit_when_idle=1.0)
    return Projection(stack, session, valid, malformed, tuple(invocations), mapping)


def test_the_processor_projects_valid_items_and_parks_the_malformed_one_in_the_dead_letter_queue(
    projection: Projection,
) -> None:
    outputs = projection.stack.outputs
    dynamodb = projection.session.client("dynamodb")
    sqs = projection.session.client("sqs")

    delivered = {
        child_id: read_child(dynamodb, outputs["DeliveryTableName"], child_id)
        for child_id in (*projection.valid, projection.malformed)
    }
    parked = sqs.receive_message(
        QueueUrl=outputs["DeadLetterQueueUrl"], MaxNumberOfMessages=10, VisibilityTimeout=0
    ).get("Messages", [])

    assert all(delivered[child_id] is not None for child_id in projection.valid)
    assert delivered[projection.malformed] is None
    (message,) = (json.loads(message["Body"]) for message in parked)
    assert message["reason"] == "poison"
    assert message["record"]["dynamodb"]["Keys"] == {"childId": {"S": projection.malformed}}
    assert all(invocation.succeeded for invocation in projection.invocations)


def _last_sequence_number(projection: Projection) -> str:
    """The sequence number of the source stream's newest record, read from the stream."""
    table = projection.stack.outputs["SourceTableName"]
    streams = projection.session.client("dynamodbstreams")
    stream_arn = projection.session.client("dynamodb").describe_table(TableName=table)["Table"][
        "LatestStreamArn"
    ]
    (shard,) = streams.describe_stream(StreamArn=stream_arn)["StreamDescription"]["Shards"]
    iterator = streams.get_shard_iterator(
        StreamArn=stream_arn, ShardId=shard["ShardId"], ShardIteratorType="TRIM_HORIZON"
    )["ShardIterator"]
    records = streams.get_records(ShardIterator=iterator)["Records"]
    assert len(records) == len(projection.valid) + 1  # every child written, in one read
    return records[-1]["dynamodb"]["SequenceNumber"]


def test_the_state_table_shows_each_shards_state_outcome_and_the_functions_own_counts(
    projection: Projection,
) -> None:
    (stream,) = projection.mapping.streams
    store = DynamoDBCheckpointStore(
        MappingId("ProcessorFunction", stream.spec.event_source_arn),
        client=projection.session.client("dynamodb"),
    )

    snapshot = store.read_all()

    (shard,) = snapshot.shards
    assert shard.counts["function:RecordsProcessed"] == len(projection.valid)
    assert shard.counts["function:RecordsParked:reason=poison"] == 1
    assert shard.counts["InvokedEventCount"] == len(projection.valid) + 1
    assert (shard.state, shard.last_outcome) == ("open", "ok")
    assert shard.iterator_age_ms is not None
    assert shard.checkpoint == _last_sequence_number(projection)
    assert snapshot.lease is not None
    assert snapshot.lease.expires_at == 0  # released on the clean stop


def test_the_hydrate_functions_sqs_event_source_is_run_with_the_templates_settings(
    projection: Projection,
) -> None:
    on_failure_arn = projection.session.client("sqs").get_queue_attributes(
        QueueUrl=projection.stack.outputs["OnFailureQueueUrl"], AttributeNames=["QueueArn"]
    )["Attributes"]["QueueArn"]

    hydrate = LocalMapping(projection.stack, "HydrateFunction")

    (queue,) = hydrate.queues
    assert (queue.spec.logical_id, queue.spec.queue_arn) == (
        "HydrateFunctionOnFailure",
        on_failure_arn,
    )
    assert queue.settings == QueueSettings(batch_size=10, report_batch_item_failures=True)
    assert hydrate.streams == ()
    assert projection.mapping.queues == ()  # ProcessorFunction's own sources: its stream only
    assert hydrate.skipped == projection.mapping.skipped == ()


# --- shard states on a Kinesis stream -----------------------------------------------------


def test_a_split_kinesis_shard_is_reported_finished_once_drained_and_its_children_open(
    moto_endpoint: str, aws: boto3.Session, unique_name: str, tmp_path: Path
) -> None:
    # GIVEN 20 records in a shard that is then split (moto keeps them in the closed parent)
    stack = deploy_template(
        KINESIS_TEMPLATE,
        endpoint_url=moto_endpoint,
        stack_name=unique_name,
        parameter_overrides={"RecordFile": str(tmp_path / "records.jsonl")},
    )
    function = Instrumented(stack, tmp_path / "records.jsonl", tmp_path / "once", {})
    kinesis = aws.client("kinesis")
    stream = stack.outputs["StreamName"]
    kinesis.put_records(
        StreamName=stream,
        Records=[{"Data": b"{}", "PartitionKey": key} for key in item_keys(20)],
    )
    (parent,) = (shard["ShardId"] for shard in kinesis.list_shards(StreamName=stream)["Shards"])
    kinesis.split_shard(StreamName=stream, ShardToSplit=parent, NewStartingHashKey=str(2**127))
    mapping = LocalMapping(stack)

    # WHEN its mapping runs until idle
    mapping.run(exit_when_idle=1.5)

    # THEN the state table has the parent finished and both children open
    (source,) = mapping.streams
    store = DynamoDBCheckpointStore(
        MappingId("KinesisRecorder", source.spec.event_source_arn), client=aws.client("dynamodb")
    )
    states = {shard.shard_id: shard.state for shard in store.read_all().shards}
    children = {
        shard["ShardId"]
        for shard in kinesis.list_shards(StreamName=stream)["Shards"]
        if shard.get("ParentShardId") == parent
    }
    assert states == {parent: "finished", **dict.fromkeys(children, "open")}
    assert sorted(record.pk for record in function.handled()) == item_keys(20)


# --- what a misbehaving function costs ------------------------------------------------------


def test_a_hanging_handler_is_killed_at_its_timeout_and_its_batch_delivered_again(
    moto_endpoint: str, unique_name: str, tmp_path: Path
) -> None:
    function = deploy_instrumented(
        moto_endpoint, unique_name, tmp_path, Behaviour="hang-once", FunctionTimeout=1
    )
    function.put_items(item_keys(5))
    invocations: list[Invocation] = []

    LocalMapping(function.stack, backoff=NO_PAUSE, on_invocation=invocations.append).run(
        exit_when_idle=0.5
    )

    hung, retried = invocations
    assert isinstance(hung.result.error, WorkerFunctionError)
    assert hung.result.error.kind == "timeout"
    assert hung.outcome == "function error Sandbox.Timedout"  # its message: in the result
    assert hung.result.error is not None
    assert hung.result.error.message.endswith("Error: Task timed out after 1.00 seconds")
    assert not pid_running(function.once_pid())
    assert (hung.records, retried.records, retried.succeeded) == (5, 5, True)
    assert [record.pk for record in function.handled()] == item_keys(5)


def test_a_handler_that_exits_its_process_costs_one_invocation_and_the_next_runs_in_a_new_one(
    moto_endpoint: str, unique_name: str, tmp_path: Path
) -> None:
    function = deploy_instrumented(moto_endpoint, unique_name, tmp_path, Behaviour="exit-once")
    function.put_items(item_keys(5))
    invocations: list[Invocation] = []

    LocalMapping(function.stack, backoff=NO_PAUSE, on_invocation=invocations.append).run(
        exit_when_idle=0.5
    )

    crashed, retried = invocations
    assert crashed.result.error is not None
    assert crashed.result.error.error_type == "Runtime.ExitError"
    assert crashed.outcome == "function error Runtime.ExitError"
    assert crashed.result.error.message.endswith("Runtime exited with error: exit status 1")
    assert retried.succeeded
    handled = function.handled()
    assert [record.pk for record in handled] == item_keys(5)
    assert function.once_pid() not in {record.pid for record in handled}


def test_the_function_talks_to_the_stacks_endpoint_with_the_local_credentials_not_the_callers(
    moto_endpoint: str, unique_name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    function = deploy_instrumented(moto_endpoint, unique_name, tmp_path)
    function.put_items(item_keys(2))
    monkeypatch.delenv("AWS_ENDPOINT_URL")  # as when `streams local up` recorded the endpoint
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "the-callers-own")

    LocalMapping(function.stack).run(exit_when_idle=0.5)

    given = {(record.endpoint, record.access_key_id) for record in function.handled()}
    assert given == {(moto_endpoint, "testing")}


# --- the lease ----------------------------------------------------------------------------


def test_a_second_mapping_of_the_same_function_waits_while_the_first_holds_the_lease(
    moto_endpoint: str,
    unique_name: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="streams.run")
    function = deploy_instrumented(moto_endpoint, unique_name, tmp_path)
    first_invocations: list[Invocation] = []
    second_invocations: list[Invocation] = []
    first = LocalMapping(function.stack, on_invocation=first_invocations.append)
    second = LocalMapping(function.stack, on_invocation=second_invocations.append)

    def said(text: str) -> int:
        return sum(text in record.getMessage() for record in caplog.records)

    with InBackground(first) as first_run:
        wait_until(lambda: said("lease taken") == 1, "the first mapping to take the lease")
        with InBackground(second):
            wait_until(lambda: said("waiting, another mapping runs it") == 1, "the second to wait")
            function.put_items(item_keys(3))
            wait_until(lambda: len(function.handled()) == 3, "the first 3 records")
            first_run.stop()
            wait_until(lambda: said("lease taken") == 2, "the second mapping to take the lease")
            function.put_items(item_keys(2, start=3))
            wait_until(lambda: len(function.handled()) == 5, "the last 2 records")

    assert said("waiting, another mapping runs it") == 1
    assert sum(invocation.records for invocation in first_invocations) == 3
    assert sum(invocation.records for invocation in second_invocations) == 2
    assert [record.pk for record in function.handled()] == item_keys(5)


# --- settings -----------------------------------------------------------------------------


def test_a_setting_aws_would_refuse_is_refused_with_one_line_naming_the_property(
    moto_endpoint: str, unique_name: str, tmp_path: Path
) -> None:
    function = deploy_instrumented(moto_endpoint, unique_name, tmp_path, MaximumRecordAge=30)

    with pytest.raises(UserError) as refused:
        LocalMapping(function.stack)

    assert str(refused.value) == (
        "RecorderStream: event source mapping property MaximumRecordAgeInSeconds: "
        "must be -1 or between 60 and 604800, got 30"
    )
