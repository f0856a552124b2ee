"""template.yaml's least privilege and safe defaults (issue 10), and checkov on it.

Managed policies and grants on every resource are looked for in the template as the SAM
translator expands it (what CloudFormation receives). Each role's grants are pinned, and checked
against the AWS calls its function's code makes, recorded with a botocore hook while the function
runs against moto.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from streams.local import deploy_template, translate_template
from tests.test_template import ROOT, TEMPLATE, _template

CHECKOV = Path(sys.prefix) / "checkov" / "bin" / "checkov"
FUNCTIONS = ("ProcessorFunction", "HydrateFunction")
# Services whose actions read or write data: none of them may be granted on every resource.
_DATA_SERVICES = frozenset({"dynamodb", "sqs", "s3", "kinesis", "kms", "logs"})
# An ARN whose resource part names no resource ("*", "table/*", "log-group:*").
_UNSCOPED_ARN = re.compile(r"^arn:[^:]*:[^:]*:[^:]*:[^:]*:(\*|[\w-]+[/:]\*)$")
# IAM authorises a batch call as its single-message action.
_BATCH_ACTIONS = {
    "sqs:SendMessageBatch": "sqs:SendMessage",
    "sqs:DeleteMessageBatch": "sqs:DeleteMessage",
    "sqs:ChangeMessageVisibilityBatch": "sqs:ChangeMessageVisibility",
}


def _expanded(path: Path = TEMPLATE) -> dict[str, Any]:
    return translate_template(path)


def _branches(value: Any) -> Iterator[Any]:
    """Both outcomes of an Fn::If (either may be deployed), or the value itself."""
    if isinstance(value, dict) and set(value) in ({"Fn::If"}, {"If"}):
        _, when_true, when_false = next(iter(value.values()))
        yield from _branches(when_true)
        yield from _branches(when_false)
    elif value != {"Ref": "AWS::NoValue"}:
        yield value


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def _policy_documents(resources: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    for logical_id, resource in resources.items():
        properties = resource.get("Properties", {})
        if resource["Type"] == "AWS::IAM::Role":
            for policy in properties.get("Policies", []):
                for chosen in _branches(policy):
                    yield logical_id, chosen["PolicyDocument"]
        elif resource["Type"] in {"AWS::IAM::Policy", "AWS::IAM::ManagedPolicy"}:
            yield logical_id, properties["PolicyDocument"]


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


def _sub_text(resource: Any) -> Any:
    """A Fn::Sub's string, else the resource as it is."""
    if isinstance(resource, dict) and "Fn::Sub" in resource:
        text = resource["Fn::Sub"]
        return text if isinstance(text, str) else text[0]
    return resource


def _is_unscoped(resource: Any) -> bool:
    if not isinstance(resource, str):
        return False  # Ref or Fn::GetAtt: one resource of the template, or a parameter
    # ${AWS::Partition} and the like hold colons; a ${Resource.Arn} names a resource.
    plain = re.sub(r"\$\{[^}]*\}", "x", resource)
    return plain == "*" or bool(_UNSCOPED_ARN.match(plain))


def _is_data_action(action: str) -> bool:
    service = action.split(":", 1)[0].lower()
    return action == "*" or service in _DATA_SERVICES


def _over_privileged(template: dict[str, Any]) -> list[str]:
    """Managed policies and data actions on every resource, one line each."""
    resources: dict[str, Any] = template["Resources"]
    found: list[str] = []
    for logical_id, resource in resources.items():
        if resource.get("Properties", {}).get("ManagedPolicyArns"):
            found.append(f"{logical_id}: ManagedPolicyArns")
        found.extend(
            f"{logical_id}: {text}" for text in _strings(resource) if ":iam::aws:policy/" in text
        )
    for logical_id, document in _policy_documents(resources):
        for statement in _as_list(document["Statement"]):
            if statement["Effect"] != "Allow":
                continue
            texts = [_sub_text(resource) for resource in _as_list(statement["Resource"])]
            unscoped = [text for text in texts if _is_unscoped(text)]
            actions = [a for a in _as_list(statement["Action"]) if _is_data_action(a)]
            if unscoped and actions:
                found.append(f"{logical_id}: {', '.join(actions)} on {unscoped[0]}")
    return found


def test_no_role_has_a_managed_policy_or_a_data_action_on_every_resource() -> None:
    assert _over_privileged(_expanded()) == []


def test_the_privilege_check_sees_a_data_action_on_every_resource() -> None:
    template = _expanded()
    role = template["Resources"]["HydrateRole"]["Properties"]
    role["Policies"][0]["PolicyDocument"]["Statement"].append(
        {"Effect": "Allow", "Action": ["sqs:ReceiveMessage"], "Resource": "*"}
    )
    role["Policies"].append(
        {
            "PolicyName": "streams",
            "PolicyDocument": {
                "Statement": {
                    "Effect": "Allow",
                    "Action": "dynamodb:GetRecords",
                    "Resource": {"Fn::Sub": "arn:${AWS::Partition}:dynamodb:*:*:table/*"},
                }
            },
        }
    )
    assert _over_privileged(template) == [
        "HydrateRole: sqs:ReceiveMessage on *",
        "HydrateRole: dynamodb:GetRecords on arn:${AWS::Partition}:dynamodb:*:*:table/*",
    ]


def _resource_text(value: Any) -> str:
    """A resource as written in template.yaml: `X.Arn`, a Sub string or a parameter's name."""
    if isinstance(value, dict):
        ((_, argument),) = value.items()
        return str(argument)
    return str(value)


def _grants(template: dict[str, Any], function: str) -> set[tuple[str, str]]:
    """(action, resource) for everything the function's role allows, conditional parts too."""
    role = template["Resources"][function]["Properties"]["Role"]["GetAtt"].split(".")[0]
    resources = {role: template["Resources"][role]}
    granted: set[tuple[str, str]] = set()
    for _, document in _policy_documents(resources):
        for statement in _as_list(document["Statement"]):
            assert statement["Effect"] == "Allow"
            for action in _as_list(statement["Action"]):
                for resource in _as_list(statement["Resource"]):
                    granted.add((action, _resource_text(resource)))
    return granted


# What each function may do, and why: its event source mapping's calls (Lambda polls, and sends
# to the on-failure destination, with the function's role), its code's calls (recorded below),
# its own log group, and the dead-letter key when one is given.
EXPECTED_GRANTS = {
    "ProcessorFunction": {
        ("logs:CreateLogStream", "ProcessorLogGroup.Arn"),
        ("logs:PutLogEvents", "ProcessorLogGroup.Arn"),
        ("dynamodb:DescribeStream", "SourceTable.StreamArn"),
        ("dynamodb:GetShardIterator", "SourceTable.StreamArn"),
        ("dynamodb:GetRecords", "SourceTable.StreamArn"),
        ("dynamodb:ListStreams", "${SourceTable.Arn}/stream/*"),
        ("sqs:SendMessage", "OnFailureQueue.Arn"),
        ("dynamodb:PutItem", "DeliveryTable.Arn"),
        ("sqs:SendMessage", "DeadLetterQueue.Arn"),
        ("sqs:GetQueueAttributes", "DeadLetterQueue.Arn"),
        ("s3:PutObject", "${DeadLetterBucket.Arn}/dead-letters/*"),
        ("kms:GenerateDataKey", "DeadLetterKmsKeyArn"),
        ("kms:Decrypt", "DeadLetterKmsKeyArn"),
    },
    "HydrateFunction": {
        ("logs:CreateLogStream", "HydrateLogGroup.Arn"),
        ("logs:PutLogEvents", "HydrateLogGroup.Arn"),
        ("sqs:ReceiveMessage", "OnFailureQueue.Arn"),
        ("sqs:DeleteMessage", "OnFailureQueue.Arn"),
        ("sqs:GetQueueAttributes", "OnFailureQueue.Arn"),
        ("dynamodb:DescribeStream", "${SourceTable.Arn}/stream/*"),
        ("dynamodb:GetShardIterator", "${SourceTable.Arn}/stream/*"),
        ("dynamodb:GetRecords", "${SourceTable.Arn}/stream/*"),
        ("sqs:SendMessage", "DeadLetterQueue.Arn"),
        ("sqs:GetQueueAttributes", "DeadLetterQueue.Arn"),
        ("s3:PutObject", "${DeadLetterBucket.Arn}/dead-letters/*"),
        ("kms:GenerateDataKey", "DeadLetterKmsKeyArn"),
        ("kms:Decrypt", "DeadLetterKmsKeyArn"),
    },
}


@pytest.mark.parametrize("function", FUNCTIONS)
def test_each_function_role_grants_exactly_what_the_function_and_its_mapping_use(
    function: str,
) -> None:
    assert _grants(_template(), function) == EXPECTED_GRANTS[function]


def test_the_key_is_granted_only_when_one_is_given() -> None:
    template = _template()
    for function in FUNCTIONS:
        role = template["Resources"][function]["Properties"]["Role"]["GetAtt"].split(".")[0]
        policies = template["Resources"][role]["Properties"]["Policies"]
        unconditional = [p for p in policies if "If" not in p]
        conditional = [p["If"] for p in policies if "If" in p]
        assert all("kms:" not in json.dumps(policy["PolicyDocument"]) for policy in unconditional)
        assert [(condition, no) for condition, _, no in conditional] == [
            ("HasDeadLetterKey", {"Ref": "AWS::NoValue"})
        ]
    assert template["Conditions"]["HasDeadLetterKey"] == {
        "Not": [{"Equals": [{"Ref": "DeadLetterKmsKeyArn"}, ""]}]
    }


# --- the calls the functions' code makes, recorded --------------------------------------------


@pytest.fixture
def recorded_calls(monkeypatch: pytest.MonkeyPatch, moto_endpoint: str) -> set[str]:
    """IAM actions of every AWS call made through boto3's default session from now on."""
    calls: set[str] = set()

    def record(model: Any, **_: Any) -> None:
        action = f"{model.service_model.signing_name}:{model.name}"
        calls.add(_BATCH_ACTIONS.get(action, action))

    session = boto3.Session()
    session.events.register("before-call", record)
    monkeypatch.setattr(boto3, "DEFAULT_SESSION", session)
    return calls


def _granted_actions(function: str) -> set[str]:
    return {action for action, _ in _grants(_template(), function)}


@pytest.fixture
def parking(aws: boto3.Session, unique_name: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """A dead-letter queue and overflow bucket, as the functions find them; messages over
    1 KiB (SQS's smallest limit) overflow, so that the bucket is written."""
    sqs, s3 = aws.client("sqs"), aws.client("s3")
    queue = sqs.create_queue(QueueName=unique_name, Attributes={"MaximumMessageSize": "1024"})
    s3.create_bucket(Bucket=unique_name)
    monkeypatch.setenv("DEAD_LETTER_QUEUE_URL", queue["QueueUrl"])
    monkeypatch.setenv("DEAD_LETTER_BUCKET", unique_name)
    return unique_name


def _table(aws: boto3.Session, name: str, *, stream: bool = False) -> dict[str, Any]:
    extra: dict[str, Any] = {}
    if stream:
        extra["StreamSpecification"] = {
            "StreamEnabled": True,
            "StreamViewType": "NEW_AND_OLD_IMAGES",
        }
    description: dict[str, Any] = aws.client("dynamodb").create_table(
        TableName=name,
        KeySchema=[{"AttributeName": "childId", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "childId", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
        **extra,
    )["TableDescription"]
    return description


def _change(sequence: str, child: str, status: str, name: str) -> dict[str, Any]:
    image = {
        "childId": {"S": child},
        "name": {"S": name},
        "status": {"S": status},
        "address": {"M": {"city": {"S": "Oslo"}}},
    }
    return {
        "eventID": sequence.zfill(32),
        "eventName": "INSERT",
        "eventVersion": "1.1",
        "eventSource": "aws:dynamodb",
        "awsRegion": "us-east-1",
        "eventSourceARN": "arn:aws:dynamodb:us-east-1:123456789012:table/s/stream/x",
        "dynamodb": {
            "ApproximateCreationDateTime": 1795000000,
            "Keys": {"childId": {"S": child}},
            "NewImage": image,
            "SequenceNumber": sequence,
            "SizeBytes": 60,
            "StreamViewType": "NEW_AND_OLD_IMAGES",
        },
    }


def test_the_processor_calls_only_what_its_role_grants(
    aws: boto3.Session,
    unique_name: str,
    parking: str,
    recorded_calls: set[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    delivery = _table(aws, f"{unique_name}-delivery")["TableName"]
    monkeypatch.setenv("DELIVERY_TABLE_NAME", delivery)
    monkeypatch.delitem(sys.modules, "processor.app", raising=False)
    app = importlib.import_module("processor.app")
    event = {
        "Records": [
            _change("101", "c-1", "nice", "Ada"),
            _change("102", "c-2", "grumpy", "x" * 2000),  # poison, and too large for the queue
        ]
    }

    assert app.lambda_handler(event, None) == {"batchItemFailures": []}

    assert recorded_calls == {
        "dynamodb:PutItem",
        "sqs:GetQueueAttributes",
        "s3:PutObject",
        "sqs:SendMessage",
    }
    assert recorded_calls <= _granted_actions("ProcessorFunction")
    assert aws.client("s3").list_objects_v2(Bucket=parking)["KeyCount"] == 1


def test_the_hydrate_function_calls_only_what_its_role_grants(
    aws: boto3.Session,
    unique_name: str,
    parking: str,
    recorded_calls: set[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    stream_arn = _table(aws, unique_name, stream=True)["LatestStreamArn"]
    dynamodb = aws.client("dynamodb")
    for child, name in (("c-1", "Ada"), ("c-2", "x" * 2000)):
        dynamodb.put_item(
            TableName=unique_name,
            Item={"childId": {"S": child}, "name": {"S": name}, "status": {"S": "?"}},
        )
    streams_client = aws.client("dynamodbstreams")
    shard = streams_client.describe_stream(StreamArn=stream_arn)["StreamDescription"]["Shards"][0]
    iterator = streams_client.get_shard_iterator(
        StreamArn=stream_arn, ShardId=shard["ShardId"], ShardIteratorType="TRIM_HORIZON"
    )["ShardIterator"]
    first, last = (
        change["dynamodb"]["SequenceNumber"]
        for change in streams_client.get_records(ShardIterator=iterator)["Records"]
    )
    on_failure = {
        "requestContext": {
            "requestId": "r-1",
            "functionArn": "arn:aws:lambda:us-east-1:123456789012:function:processor",
            "condition": "RetryAttemptsExhausted",
            "approximateInvokeCount": 3,
        },
        "responseContext": {"statusCode": 200, "executedVersion": "$LATEST", "functionError": None},
        "version": "1.0",
        "timestamp": "2026-11-22T00:00:00.000Z",
        "DDBStreamBatchInfo": {
            "shardId": shard["ShardId"],
            "startSequenceNumber": first,
            "endSequenceNumber": last,
            "approximateArrivalOfFirstRecord": "2026-11-22T00:00:00Z",
            "approximateArrivalOfLastRecord": "2026-11-22T00:00:00Z",
            "batchSize": 2,
            "streamArn": stream_arn,
        },
    }
    monkeypatch.delitem(sys.modules, "processor.hydrate", raising=False)
    hydrate = importlib.import_module("processor.hydrate")
    event = {"Records": [{"messageId": "m-1", "body": json.dumps(on_failure)}]}

    assert hydrate.lambda_handler(event, None) == {"batchItemFailures": []}

    assert {"dynamodb:GetShardIterator", "dynamodb:GetRecords", "sqs:SendMessage"} <= (
        recorded_calls
    )
    assert recorded_calls <= _granted_actions("HydrateFunction")
    assert aws.client("s3").list_objects_v2(Bucket=parking)["KeyCount"] == 2  # both over 1 KiB


# --- log groups, retention, concurrency ---------------------------------------------------------


@pytest.mark.parametrize("function", FUNCTIONS)
def test_each_function_has_its_own_log_group_with_the_retention_parameter(function: str) -> None:
    template = _template()
    resources = template["Resources"]
    name = resources[function]["Properties"]["FunctionName"]["Sub"]
    (log_group,) = (
        logical_id
        for logical_id, resource in resources.items()
        if resource["Type"] == "AWS::Logs::LogGroup"
        and resource["Properties"]["LogGroupName"] == {"Sub": f"/aws/lambda/{name}"}
    )
    assert resources[log_group]["Properties"]["RetentionInDays"] == {"Ref": "LogRetentionDays"}
    assert template["Parameters"]["LogRetentionDays"]["Default"] == 30
    logs = {grant for grant in _grants(template, function) if grant[0].startswith("logs:")}
    assert logs == {
        ("logs:CreateLogStream", f"{log_group}.Arn"),
        ("logs:PutLogEvents", f"{log_group}.Arn"),
    }


def test_the_hydrate_function_reads_the_stream_with_at_most_two_invocations() -> None:
    mapping = _expanded()["Resources"]["HydrateFunctionOnFailure"]
    assert mapping["Type"] == "AWS::Lambda::EventSourceMapping"
    assert mapping["Properties"]["ScalingConfig"] == {"MaximumConcurrency": 2}


# --- what is kept, and who may write the dead letters ------------------------------------------


@pytest.mark.parametrize(
    "logical_id",
    [
        "SourceTable",
        "DeadLetterQueue",
        "DeadLetterBucket",
        # A retained queue or bucket keeps its TLS-only policy.
        "DeadLetterQueuePolicy",
        "DeadLetterBucketPolicy",
    ],
)
def test_data_that_cannot_be_recreated_outlives_the_stack(logical_id: str) -> None:
    resource = _template()["Resources"][logical_id]
    assert resource["DeletionPolicy"] == "Retain"
    assert resource["UpdateReplacePolicy"] == "Retain"


def test_the_source_table_refuses_deletion() -> None:
    properties = _template()["Resources"]["SourceTable"]["Properties"]
    assert properties["DeletionProtectionEnabled"] is True


def _resource_policy(kind: str, target: str) -> list[dict[str, Any]]:
    template = _template()
    (statements,) = (
        resource["Properties"]["PolicyDocument"]["Statement"]
        for resource in template["Resources"].values()
        if resource["Type"] == kind
        and {"Ref": target}
        in _as_list(resource["Properties"].get("Queues", resource["Properties"].get("Bucket")))
    )
    return list(statements)


def _function_roles() -> list[dict[str, str]]:
    template = _template()
    return [template["Resources"][f]["Properties"]["Role"] for f in FUNCTIONS]


def _denied_without_tls(statements: list[dict[str, Any]], action: str) -> list[Any]:
    return [
        statement["Resource"]
        for statement in statements
        if statement["Effect"] == "Deny"
        and statement["Principal"] == "*"
        and statement["Action"] == action
        and statement.get("Condition") == {"Bool": {"aws:SecureTransport": "false"}}
    ]


def _denied_to_all_but(statements: list[dict[str, Any]], action: str) -> list[Any]:
    return [
        statement["Resource"]
        for statement in statements
        if statement["Effect"] == "Deny"
        and statement["Principal"] == "*"
        and statement["Action"] == action
        and statement.get("Condition") == {"ArnNotEquals": {"aws:PrincipalArn": _function_roles()}}
    ]


def test_the_dead_letter_queue_takes_only_tls_and_only_the_functions_may_park() -> None:
    statements = _resource_policy("AWS::SQS::QueuePolicy", "DeadLetterQueue")
    queue = {"GetAtt": "DeadLetterQueue.Arn"}
    assert _denied_without_tls(statements, "sqs:*") == [queue]
    assert _denied_to_all_but(statements, "sqs:SendMessage") == [queue]


def test_the_overflow_bucket_takes_only_tls_and_only_the_functions_may_write() -> None:
    statements = _resource_policy("AWS::S3::BucketPolicy", "DeadLetterBucket")
    objects = {"Sub": "${DeadLetterBucket.Arn}/*"}
    assert _denied_without_tls(statements, "s3:*") == [
        [{"GetAtt": "DeadLetterBucket.Arn"}, objects]
    ]
    assert _denied_to_all_but(statements, "s3:PutObject") == [objects]


def test_the_dead_letters_are_encrypted_with_the_key_given_and_by_the_services_without(
    aws: boto3.Session, moto_endpoint: str, unique_name: str
) -> None:
    key = aws.client("kms").create_key()["KeyMetadata"]["Arn"]
    sqs, s3 = aws.client("sqs"), aws.client("s3")

    def encryption(parameters: dict[str, str], stack_name: str) -> tuple[dict[str, str], Any]:
        stack = deploy_template(
            TEMPLATE,
            endpoint_url=moto_endpoint,
            stack_name=stack_name,
            parameter_overrides=parameters,
        )
        attributes = sqs.get_queue_attributes(
            QueueUrl=stack.outputs["DeadLetterQueueUrl"], AttributeNames=["All"]
        )["Attributes"]
        rules = s3.get_bucket_encryption(Bucket=stack.outputs["DeadLetterBucketName"])[
            "ServerSideEncryptionConfiguration"
        ]["Rules"]
        queue = {
            name: attributes[name]
            for name in ("KmsMasterKeyId", "SqsManagedSseEnabled")
            if name in attributes
        }
        return queue, rules[0]["ApplyServerSideEncryptionByDefault"]

    with_key = encryption({"DeadLetterKmsKeyArn": key}, f"{unique_name}-key")
    assert with_key == (
        {"KmsMasterKeyId": key, "SqsManagedSseEnabled": "false"},
        {"SSEAlgorithm": "aws:kms", "KMSMasterKeyID": key},
    )
    without = encryption({}, f"{unique_name}-none")
    assert without == ({"SqsManagedSseEnabled": "true"}, {"SSEAlgorithm": "AES256"})


# --- checkov -----------------------------------------------------------------------------------


def _checkov_skips() -> Iterator[tuple[str, dict[str, Any]]]:
    for logical_id, resource in _template()["Resources"].items():
        for skip in resource.get("Metadata", {}).get("checkov", {}).get("skip", []):
            yield logical_id, skip


def test_every_checkov_skip_names_a_check_and_says_why_in_one_line() -> None:
    skips = list(_checkov_skips())
    assert skips
    for logical_id, skip in skips:
        assert set(skip) == {"id", "comment"}, logical_id
        assert re.fullmatch(r"CKV_AWS_\d+", skip["id"]), logical_id
        comment = skip["comment"]
        assert comment.strip() == comment and "\n" not in comment and len(comment) > 20


def test_checkov_finds_nothing_it_is_not_told_to_skip_in_the_template() -> None:
    if not CHECKOV.exists():
        pytest.fail(f"checkov is not installed at {CHECKOV}: `make test` installs it there")
    result = subprocess.run(
        [
            CHECKOV,
            "--file",
            TEMPLATE,
            "--framework",
            "cloudformation",
            "--output",
            "json",
            # Offline: no Prisma Cloud download, no update check against PyPI.
            "--skip-download",
        ],
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
        env={**os.environ, "CKV_SKIP_PACKAGE_UPDATE_CHECK": "true"},
    )
    report = json.loads(result.stdout)
    failed = [
        f"{check['check_id']} {check['resource']}: {check['check_name']}"
        for check in report["results"]["failed_checks"]
    ]
    assert failed == []
    assert report["summary"]["parsing_errors"] == 0
    assert result.returncode == 0, result.stderr
    skipped = {
        (check["resource"].split(".", 1)[1], check["check_id"])
        for check in report["results"]["skipped_checks"]
    }
    assert skipped == {(logical_id, skip["id"]) for logical_id, skip in _checkov_skips()}
