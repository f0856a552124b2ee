"""The embedded endpoint and templates turned into resources by the SAM translator and moto's
CloudFormation (`streams.local.endpoint`)."""

from __future__ import annotations

import dataclasses
import os
import socket
import sys
import threading
from pathlib import Path

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import EndpointConnectionError

from streams.cli import main
from streams.cli.endpoint import current_endpoint
from streams.errors import UserError
from streams.local.endpoint import (
    RecordedEndpoint,
    forget_endpoint,
    read_recorded_endpoint,
    record_endpoint,
    start_endpoint,
)
from streams.local.stack import DeployedStack, deploy_template
from streams.local.template import parse_parameter_overrides

TEMPLATES = Path(__file__).parent / "templates"
SAM_APP = TEMPLATES / "sam-app.yaml"
PROJECT_TEMPLATE = Path(__file__).parents[1] / "template.yaml"


@pytest.fixture(scope="module")
def sam_app(moto_endpoint: str) -> DeployedStack:
    """sam-app.yaml deployed once with its parameters' defaults (tests only read it)."""
    return deploy_template(SAM_APP, endpoint_url=moto_endpoint, stack_name="sam-app-defaults")


def _resource(stack: DeployedStack, logical_id: str) -> str:
    (physical,) = [r.physical_id for r in stack.resources if r.logical_id == logical_id]
    return physical


def _queue_arn(aws: boto3.Session, queue_url: str) -> str:
    attributes = aws.client("sqs").get_queue_attributes(
        QueueUrl=queue_url, AttributeNames=["QueueArn"]
    )["Attributes"]
    return attributes["QueueArn"]


# --- the endpoint -------------------------------------------------------------------------


def test_embedded_endpoint_serves_aws_apis_on_loopback_until_stopped(unique_name: str) -> None:
    with start_endpoint() as endpoint:
        assert endpoint.url.startswith("http://127.0.0.1:")
        sqs = boto3.client("sqs", endpoint_url=endpoint.url)
        assert unique_name in sqs.create_queue(QueueName=unique_name)["QueueUrl"]

    no_retries = Config(retries={"total_max_attempts": 1})
    with pytest.raises(EndpointConnectionError):
        boto3.client("sqs", endpoint_url=endpoint.url, config=no_retries).list_queues()


def test_a_port_in_use_is_a_user_error_naming_the_port() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(UserError, match=f"127.0.0.1:{port}.*--port"):
            start_endpoint(port)


# --- resources ----------------------------------------------------------------------------


def test_only_the_data_resources_are_created_with_names_from_the_stack(
    sam_app: DeployedStack, aws: boto3.Session
) -> None:
    types = {resource.logical_id: resource.resource_type for resource in sam_app.resources}
    assert types == {
        "Changes": "AWS::DynamoDB::Table",
        "Clicks": "AWS::Kinesis::Stream",
        "DeadLetters": "AWS::SQS::Queue",
        "OnFailure": "AWS::SQS::Queue",
        "Jobs": "AWS::SQS::Queue",
        "Overflow": "AWS::S3::Bucket",
        "Alerts": "AWS::SNS::Topic",
    }
    table = aws.client("dynamodb").describe_table(TableName=_resource(sam_app, "Changes"))["Table"]
    assert table["TableName"].startswith("sam-app-defaults-Changes-")
    assert table["StreamSpecification"]["StreamViewType"] == "NEW_AND_OLD_IMAGES"
    # An explicit name in the template is kept.
    assert _resource(sam_app, "OnFailure").endswith("/sam-app-defaults-on-failure")
    stream = aws.client("kinesis").describe_stream_summary(StreamName=_resource(sam_app, "Clicks"))
    assert stream["StreamDescriptionSummary"]["OpenShardCount"] == 2
    # Nothing moto would run inside a write, and no IAM.
    functions = aws.client("lambda").list_functions()["Functions"]
    assert not [f for f in functions if f["FunctionName"].startswith("sam-app-defaults")]
    roles = aws.client("iam").list_roles()["Roles"]
    assert not [role for role in roles if role["RoleName"].startswith("sam-app-defaults")]


def test_what_is_left_out_is_listed_with_the_reason(sam_app: DeployedStack) -> None:
    reasons = {part.name: part.reason for part in sam_app.skipped}
    assert reasons["ChangesErrors"] == "moto's CloudFormation cannot create this type"
    assert reasons["AlertsByEmail"] == "moto's CloudFormation cannot create this type"
    assert "streams run" in reasons["ChangesFunction"]
    assert "streams run" in reasons["ChangesFunctionStream"]
    assert reasons["ChangesFunctionRole"] == "permissions are not enforced locally"
    # Outputs and variables that name a left-out resource cannot be resolved locally.
    assert "ChangesFunction" in reasons["ChangesFunctionName"]
    assert "ChangesErrors" in reasons["ChangesFunction.Environment.Variables.ALARM_NAME"]
    # An SQS event source is kept for `streams run`, like a stream's mapping.
    assert "streams run" in reasons["ChangesFunctionWork"]
    (work,) = sam_app.functions["ChangesFunction"].queue_sources
    assert (work.logical_id, work.queue_arn.split(":")[2]) == ("ChangesFunctionWork", "sqs")


def test_outputs_are_the_templates_own(sam_app: DeployedStack) -> None:
    assert set(sam_app.outputs) == {"ChangesTableName", "ClicksStreamArn", "OnFailureQueueUrl"}
    assert sam_app.outputs["ChangesTableName"] == _resource(sam_app, "Changes")


# --- functions ----------------------------------------------------------------------------


def test_function_settings_come_from_globals_and_the_function(sam_app: DeployedStack) -> None:
    changes = sam_app.functions["ChangesFunction"]
    clicks = sam_app.functions["ClicksFunction"]

    assert (changes.handler, changes.runtime, changes.timeout, changes.memory_size) == (
        "app.handle_changes",
        "python3.12",
        30,
        256,
    )
    # Lambda's default memory where neither Globals nor the function set it.
    assert (clicks.handler, clicks.runtime, clicks.timeout, clicks.memory_size) == (
        "clicks.handler",
        "python3.12",
        5,
        128,
    )
    assert clicks.function_name == "sam-app-defaults-clicks"
    assert changes.function_name is None


def test_code_uri_is_absolute_and_relative_to_the_template(sam_app: DeployedStack) -> None:
    assert sam_app.functions["ChangesFunction"].code_uri == TEMPLATES / "src"  # from Globals
    assert sam_app.functions["ClicksFunction"].code_uri == TEMPLATES / "functions" / "click counter"


def test_environment_variables_are_resolved_by_the_stack(
    sam_app: DeployedStack, aws: boto3.Session
) -> None:
    environment = sam_app.functions["ChangesFunction"].environment
    table_name = _resource(sam_app, "Changes")
    table = aws.client("dynamodb").describe_table(TableName=table_name)["Table"]

    assert environment == {
        "STAGE": "dev",  # Globals, merged by the SAM translator
        "TABLE_NAME": table_name,
        "STREAM_ARN": table["LatestStreamArn"],
        "DEAD_LETTER_QUEUE_URL": _resource(sam_app, "DeadLetters"),
        "DEAD_LETTER_BUCKET": _resource(sam_app, "Overflow"),
        "ALERTS_TOPIC": _resource(sam_app, "Alerts"),
        "LABEL": f"dev-{table_name}",
        "QUEUE_NAME": _resource(sam_app, "DeadLetters").rsplit("/", 1)[1],
        "LIMIT": "5",  # Lambda's environment holds strings
    }
    assert sam_app.functions["ClicksFunction"].environment == {"STAGE": "dev"}


def test_stream_event_sources_keep_sams_properties_with_values_resolved(
    sam_app: DeployedStack, aws: boto3.Session
) -> None:
    (changes,) = sam_app.functions["ChangesFunction"].event_sources
    (clicks,) = sam_app.functions["ClicksFunction"].event_sources
    table = aws.client("dynamodb").describe_table(TableName=_resource(sam_app, "Changes"))["Table"]

    assert changes.logical_id == "ChangesFunctionStream"
    assert changes.event_source == "aws:dynamodb"
    assert changes.event_source_arn == table["LatestStreamArn"]
    assert changes.properties == {
        "EventSourceArn": table["LatestStreamArn"],
        "StartingPosition": "TRIM_HORIZON",
        "BatchSize": 25,
        "MaximumBatchingWindowInSeconds": 1,
        "BisectBatchOnFunctionError": True,
        "MaximumRetryAttempts": 3,
        "MaximumRecordAgeInSeconds": 3600,
        "ParallelizationFactor": 2,
        "FunctionResponseTypes": ["ReportBatchItemFailures"],
        "FilterCriteria": {"Filters": [{"Pattern": '{"eventName": ["INSERT", "MODIFY"]}'}]},
        "MetricsConfig": {"Metrics": ["EventCount"]},
        "DestinationConfig": {
            "OnFailure": {"Destination": _queue_arn(aws, _resource(sam_app, "OnFailure"))}
        },
    }
    assert clicks.event_source == "aws:kinesis"
    assert clicks.event_source_arn == sam_app.outputs["ClicksStreamArn"]
    assert clicks.properties == {
        "EventSourceArn": sam_app.outputs["ClicksStreamArn"],
        "StartingPosition": "AT_TIMESTAMP",
        "StartingPositionTimestamp": 1700000000,
        "TumblingWindowInSeconds": 60,
        "Enabled": False,
    }


def test_parameter_overrides_change_what_the_stack_resolves(moto_endpoint: str) -> None:
    stack = deploy_template(
        SAM_APP,
        endpoint_url=moto_endpoint,
        stack_name="sam-app-prod",
        parameter_overrides={"Stage": "prod", "ChangesBatchSize": "7", "AlarmEmail": "a@b.c"},
    )
    changes = stack.functions["ChangesFunction"]

    assert changes.environment["STAGE"] == "prod"
    assert changes.environment["LABEL"].startswith("prod-sam-app-prod-Changes-")
    assert changes.event_sources[0].properties["BatchSize"] == 7


def test_a_plain_cloudformation_template_runs_its_handwritten_mapping(
    moto_endpoint: str, unique_name: str
) -> None:
    stack = deploy_template(
        TEMPLATES / "plain-cloudformation.json", endpoint_url=moto_endpoint, stack_name=unique_name
    )
    reader = stack.function()

    assert reader.logical_id == "Reader"
    assert reader.code_uri is None  # inline code is not on this machine
    assert (reader.timeout, reader.memory_size) == (3, 128)  # Lambda's defaults
    assert reader.environment == {"STREAM": _resource(stack, "Readings"), "DEBUG": "true"}
    assert [source.properties["BatchSize"] for source in reader.event_sources] == [10]


def test_deploying_again_changes_nothing_and_keeps_the_data(
    moto_endpoint: str, aws: boto3.Session, unique_name: str
) -> None:
    first = deploy_template(SAM_APP, endpoint_url=moto_endpoint, stack_name=unique_name)
    table = _resource(first, "Changes")
    aws.client("dynamodb").put_item(TableName=table, Item={"pk": {"S": "kept"}})

    again = deploy_template(SAM_APP, endpoint_url=moto_endpoint, stack_name=unique_name)
    changed = deploy_template(
        SAM_APP,
        endpoint_url=moto_endpoint,
        stack_name=unique_name,
        parameter_overrides={"Stage": "prod"},
    )

    assert (first.status, again.status, changed.status) == ("created", "unchanged", "updated")
    assert again.resources == first.resources == changed.resources
    assert again.functions == first.functions
    assert changed.functions["ChangesFunction"].environment["STAGE"] == "prod"
    items = aws.client("dynamodb").scan(TableName=table)["Items"]
    assert items == [{"pk": {"S": "kept"}}]


@pytest.mark.skipif(not PROJECT_TEMPLATE.exists(), reason="the project's template.yaml is absent")
def test_the_projects_template_deploys_into_moto(moto_endpoint: str, aws: boto3.Session) -> None:
    stack = deploy_template(PROJECT_TEMPLATE, endpoint_url=moto_endpoint, stack_name="project")
    processor = stack.function()
    (source,) = processor.event_sources
    source_table = aws.client("dynamodb").describe_table(
        TableName=stack.outputs["SourceTableName"]
    )["Table"]

    assert processor.code_uri == PROJECT_TEMPLATE.parent
    assert processor.handler == "processor.app.lambda_handler"
    assert source.event_source == "aws:dynamodb"
    assert source.event_source_arn == source_table["LatestStreamArn"]
    assert source_table["StreamSpecification"]["StreamViewType"] == "NEW_AND_OLD_IMAGES"
    assert source.properties["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
    assert source.properties["DestinationConfig"]["OnFailure"]["Destination"] == _queue_arn(
        aws, stack.outputs["OnFailureQueueUrl"]
    )
    assert processor.environment["DELIVERY_TABLE_NAME"] == stack.outputs["DeliveryTableName"]
    assert processor.environment["DEAD_LETTER_QUEUE_URL"] == stack.outputs["DeadLetterQueueUrl"]
    assert processor.environment["DEAD_LETTER_BUCKET"] == stack.outputs["DeadLetterBucketName"]


# --- choosing a function ------------------------------------------------------------------


def test_a_function_is_chosen_by_logical_id_or_as_the_only_stream_function(
    sam_app: DeployedStack,
) -> None:
    assert sam_app.function("ClicksFunction").logical_id == "ClicksFunction"
    with pytest.raises(UserError, match=r"several stream functions .* pass --function"):
        sam_app.function()
    with pytest.raises(UserError, match=r"no function 'Nope' \(its functions: "):
        sam_app.function("Nope")


def test_a_template_without_a_stream_function_says_so(moto_endpoint: str, tmp_path: Path) -> None:
    template = tmp_path / "queue-only.yaml"
    template.write_text("Resources:\n  Work:\n    Type: AWS::SQS::Queue\n")
    stack = deploy_template(template, endpoint_url=moto_endpoint, stack_name="queue-only")

    with pytest.raises(UserError, match="no function with a DynamoDB or Kinesis stream event"):
        stack.function()


# --- user errors --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "template not found: .*--template"),
        ("Resources: [unclosed", "is not valid YAML or JSON"),
        ("Description: nothing here\n", "no Resources section"),
    ],
)
def test_a_template_that_cannot_be_read_is_a_user_error(
    tmp_path: Path, moto_endpoint: str, content: str | None, message: str
) -> None:
    template = tmp_path / "template.yaml"
    if content is not None:
        template.write_text(content)
    with pytest.raises(UserError, match=message):
        deploy_template(template, endpoint_url=moto_endpoint)


@pytest.mark.parametrize(
    ("template", "overrides", "message"),
    [
        ("sam-app.yaml", {"Nope": "1"}, "has no parameter Nope"),
        ("sam-app.yaml", {"Stage": "test"}, "Stage must be one of dev, prod"),
        ("required-parameter.yaml", {}, "QueuePrefix .* has no default: pass --parameter-over"),
        ("unknown-reference.yaml", {}, "Work refers to Missing, which is neither"),
        ("invalid-sam.yaml", {}, "SAM translator refused it: .*StartingPosition"),
    ],
)
def test_templates_and_parameters_that_cannot_deploy_are_user_errors(
    moto_endpoint: str, template: str, overrides: dict[str, str], message: str
) -> None:
    with pytest.raises(UserError, match=message):
        deploy_template(
            TEMPLATES / template, endpoint_url=moto_endpoint, parameter_overrides=overrides
        )


def test_a_template_moto_cannot_create_is_a_user_error_naming_the_stack(
    moto_endpoint: str, unique_name: str
) -> None:
    with pytest.raises(UserError, match=f"^stack {unique_name}: "):
        deploy_template(
            TEMPLATES / "table-without-key.yaml", endpoint_url=moto_endpoint, stack_name=unique_name
        )


def test_a_required_parameter_can_be_given(moto_endpoint: str, aws: boto3.Session) -> None:
    stack = deploy_template(
        TEMPLATES / "required-parameter.yaml",
        endpoint_url=moto_endpoint,
        stack_name="required-parameter",
        parameter_overrides={"QueuePrefix": "given"},
    )
    assert stack.outputs["WorkQueueUrl"].endswith("/given-work")


@pytest.mark.parametrize(
    ("endpoint", "stack_name", "message"),
    [
        ("https://cloudformation.us-east-1.amazonaws.com", None, "is AWS itself: .*sam deploy"),
        ("http://127.0.0.1:9", None, "nothing answers at http://127.0.0.1:9"),
        (None, "1-starts-with-a-digit", "bad stack name"),
    ],
)
def test_an_endpoint_or_stack_name_that_cannot_be_used_is_a_user_error(
    moto_endpoint: str, endpoint: str | None, stack_name: str | None, message: str
) -> None:
    with pytest.raises(UserError, match=message):
        deploy_template(SAM_APP, endpoint_url=endpoint or moto_endpoint, stack_name=stack_name)


def test_parameter_overrides_are_read_as_sam_deploy_reads_them() -> None:
    assert parse_parameter_overrides(
        ["Stage=prod", "ParameterKey=Size,ParameterValue=7", "Query=a=b", "Empty="]
    ) == {"Stage": "prod", "Size": "7", "Query": "a=b", "Empty": ""}


@pytest.mark.parametrize("item", ["Stage", "=prod", "Bad-Key=1", "ParameterKey=,ParameterValue=1"])
def test_a_malformed_parameter_override_is_a_user_error(item: str) -> None:
    with pytest.raises(UserError, match=f"bad --parameter-overrides item '{item}'"):
        parse_parameter_overrides([item])


# --- where other commands find the endpoint -----------------------------------------------


def _recorded(pid: int) -> RecordedEndpoint:
    return RecordedEndpoint(
        endpoint_url="http://127.0.0.1:4566",
        region="eu-west-1",
        stack_name="streams-local",
        template="/somewhere/template.yaml",
        pid=pid,
    )


def test_a_recorded_endpoint_is_read_back_while_its_process_lives(tmp_path: Path) -> None:
    path = tmp_path / ".streams" / "local.json"
    record_endpoint(_recorded(os.getpid()), path)

    assert read_recorded_endpoint(path) == _recorded(os.getpid())


def test_a_record_left_by_a_dead_process_is_ignored(tmp_path: Path) -> None:
    path = tmp_path / "local.json"
    record_endpoint(_recorded(2**22 + 12345), path)  # above Linux's pid_max default

    assert read_recorded_endpoint(path) is None


def test_only_the_recording_process_removes_the_record(tmp_path: Path) -> None:
    path = tmp_path / "local.json"
    record_endpoint(_recorded(os.getpid() + 1), path)
    forget_endpoint(path)
    assert path.exists()

    record_endpoint(_recorded(os.getpid()), path)
    forget_endpoint(path)
    assert not path.exists()


def test_a_damaged_record_is_a_user_error_saying_to_delete_it(tmp_path: Path) -> None:
    path = tmp_path / "local.json"
    path.write_text("{not json")
    with pytest.raises(UserError, match="delete it"):
        read_recorded_endpoint(path)


def test_aws_endpoint_url_wins_over_the_record_which_wins_over_aws(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "local.json"
    record_endpoint(_recorded(os.getpid()), path)
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:5000")

    from_variable = current_endpoint(path)
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    from_record = current_endpoint(path)
    path.unlink()
    aws_itself = current_endpoint(path)

    assert (from_variable.url, from_variable.origin) == (
        "http://127.0.0.1:5000",
        "AWS_ENDPOINT_URL",
    )
    assert (from_record.url, from_record.region, from_record.stack_name) == (
        "http://127.0.0.1:4566",
        "eu-west-1",
        "streams-local",
    )
    assert aws_itself.url is None and not aws_itself.is_local
    assert "from AWS_ENDPOINT_URL" in from_variable.describe()
    assert aws_itself.describe().startswith("endpoint: AWS, region us-east-1")


def test_the_embedded_endpoint_applies_conditional_writes_one_at_a_time(
    moto_endpoint: str, aws: boto3.Session, unique_name: str
) -> None:
    # GIVEN one item, and threads that each take its version and write version + 1 only if it
    # is still the one they read (an optimistic lock, as the lease and the rate limit use it)
    client = aws.client("dynamodb", config=Config(max_pool_connections=20))
    client.create_table(
        TableName=unique_name,
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    )
    key = {"pk": {"S": "counter"}}
    client.put_item(TableName=unique_name, Item={**key, "version": {"N": "0"}})
    won: list[int] = []
    lock = threading.Lock()

    def take(times: int) -> None:
        for _ in range(times):
            while True:
                seen = client.get_item(TableName=unique_name, Key=key, ConsistentRead=True)
                version = int(seen["Item"]["version"]["N"])
                try:
                    client.update_item(
                        TableName=unique_name,
                        Key=key,
                        UpdateExpression="SET version = :next",
                        ConditionExpression="version = :seen",
                        ExpressionAttributeValues={
                            ":seen": {"N": str(version)},
                            ":next": {"N": str(version + 1)},
                        },
                    )
                except client.exceptions.ConditionalCheckFailedException:
                    continue
                with lock:
                    won.append(version)
                break

    # WHEN 8 threads each win 25 times, switching threads as often as the interpreter can (on
    # moto's own server, about 14 versions are then won twice)
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        threads = [threading.Thread(target=take, args=(25,)) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        sys.setswitchinterval(interval)

    # THEN no version was won twice (AWS's rule: a condition holds for exactly one writer)
    assert sorted(won) == list(range(200))


@pytest.mark.parametrize(
    "url",
    ["http://127.0.0.1:4566", "http://127.8.9.10:5000", "http://[::1]:4566", "http://LOCALHOST:1"],
)
def test_a_record_naming_a_loopback_endpoint_is_trusted(tmp_path: Path, url: str) -> None:
    path = tmp_path / "local.json"
    record_endpoint(dataclasses.replace(_recorded(os.getpid()), endpoint_url=url), path)

    recorded = read_recorded_endpoint(path)

    assert recorded is not None and recorded.endpoint_url == url


@pytest.mark.parametrize(
    "url",
    [
        "http://10.0.0.5:4566",
        "https://dynamodb.us-east-1.amazonaws.com",
        "http://127.0.0.1@attacker.example:4566",
        "http://localhost.attacker.example",
        "file:///etc/passwd",
    ],
)
def test_a_record_naming_any_other_endpoint_is_refused_in_one_line(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    url: str,
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    record_endpoint(dataclasses.replace(_recorded(os.getpid()), endpoint_url=url))

    assert main(["monitor", "--once", "--json"]) == 2

    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("streams: error: .streams/local.json names") and "loopback" in line
