"""`FilterCriteria`: the EventBridge pattern subset, as Lambda applies it to stream records.

Oracles: the filter cases recorded against AWS (LocalStack's AWS-validated snapshots,
`test_dynamodb_event_filter[...]` and `test_kinesis_event_filtering_json_pattern`), replayed
end to end on moto's real streams; and the operator table of Lambda's filtering guide.
"""

from __future__ import annotations

import base64
import json
import time
from typing import Any

import boto3
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.mapping import FilterPattern, RecordFilter
from streams.mapping.filters import INVALID_PATTERN, InvalidFilterPattern
from tests.test_mapping_support import (
    FastClock,
    Recorder,
    dynamodb_record,
    dynamodb_stream,
    kinesis_record,
    kinesis_stream,
    run,
)


def _matches(pattern: object, value: dict[str, Any]) -> bool:
    return FilterPattern(json.dumps(pattern)).matches(value)


# --- operators ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rule", "value", "expected"),
    [
        (["Alice"], "Alice", True),
        (["Alice"], "alice", False),
        ([100], 100, True),
        ([300], 300.0, False),  # numbers equal by their JSON form, as in EventBridge
        ([True], True, True),
        ([True], 1, False),
        ([None], None, True),
        ([None], "", False),
        ([""], "", True),
        ([{"prefix": "us-"}], "us-east-1", True),
        ([{"prefix": "us-"}], "eu-west-1", False),
        ([{"suffix": ".png"}], "cat.png", True),
        ([{"suffix": ".png"}], "cat.jpg", False),
        ([{"equals-ignore-case": "ALICE"}], "alice", True),
        ([{"anything-but": "Raining"}], "Sunny", True),
        ([{"anything-but": ["Raining", "Snowing"]}], "Snowing", False),
        ([{"anything-but": {"prefix": "init"}}], "initial", False),
        ([{"anything-but": {"suffix": ".tmp"}}], "a.txt", True),
        ([{"anything-but": {"equals-ignore-case": ["X", "Y"]}}], "x", False),
        ([{"numeric": ["=", 100]}], 100, True),
        ([{"numeric": [">", 10, "<=", 20]}], 20, True),
        ([{"numeric": [">", 10, "<=", 20]}], 10, False),
        ([{"numeric": [">", 10]}], "42", False),  # numeric never matches a string
        ([{"numeric": [">", 0]}], True, False),
        (["a", "b"], "b", True),  # a rule array is an OR
        (["b"], ["a", "b"], True),  # an array value matches when one element does
    ],
)
def test_each_rule_matches_as_in_lambdas_operator_table(
    rule: list[Any], value: object, expected: bool
) -> None:
    assert _matches({"field": rule}, {"field": value}) is expected


def test_every_field_of_a_pattern_must_match_and_others_are_ignored() -> None:
    pattern = {"Location": ["New York"], "Day": ["Monday"]}

    assert _matches(pattern, {"Location": "New York", "Day": "Monday", "Other": 1})
    assert not _matches(pattern, {"Location": "New York", "Day": "Sunday"})
    assert not _matches(pattern, {"Location": "New York"})


def test_exists_looks_at_leaf_values_only() -> None:
    exists = {"a": {"b": [{"exists": True}]}}
    absent = {"a": {"b": [{"exists": False}]}}

    assert _matches(exists, {"a": {"b": None}})
    assert not _matches(exists, {"a": {"c": 1}})
    assert _matches(absent, {"a": {}})
    assert _matches(absent, {})
    # An object is not a leaf: `exists: false` holds for it (recorded from AWS, see below).
    assert _matches(absent, {"a": {"b": {"S": "x"}}})
    assert not _matches(exists, {"a": {"b": {"S": "x"}}})


def test_or_takes_one_of_its_patterns() -> None:
    pattern = {"$or": [{"kind": ["a"]}, {"size": [{"numeric": [">", 10]}]}], "ok": [True]}

    assert _matches(pattern, {"kind": "a", "ok": True})
    assert _matches(pattern, {"size": 11, "ok": True})
    assert not _matches(pattern, {"kind": "b", "size": 1, "ok": True})
    assert not _matches(pattern, {"kind": "a", "ok": False})


def test_a_nested_pattern_matches_any_object_of_an_array() -> None:
    pattern = {"items": {"kind": ["a"]}}

    assert _matches(pattern, {"items": [{"kind": "b"}, {"kind": "a"}]})
    assert not _matches(pattern, {"items": [{"kind": "b"}]})


def test_a_duplicate_key_in_a_pattern_keeps_its_last_value() -> None:
    pattern = FilterPattern('{"k": ["hello"], "u": ["x"], "k": ["world"]}')

    assert pattern.matches({"k": "world", "u": "x"})
    assert not pattern.matches({"k": "hello", "u": "x"})


@pytest.mark.parametrize(
    "text",
    [
        "single-string",  # recorded: AWS refuses it
        '[{"eventName": ["INSERT"=123}]',  # recorded: AWS refuses it
        "[]",
        "{}",
        '{"a": "b"}',
        '{"a": []}',
        '{"a": [["nested"]]}',
        '{"a": [{"prefix": 1}]}',
        '{"a": [{"numeric": [">", "1"]}]}',
        '{"a": [{"numeric": ["<", 1, ">", 0]}]}',
        '{"a": [{"exists": "yes"}]}',
        '{"a": [{"exists": true}, "b"]}',
        '{"a": [{"wildcard": "*"}]}',
        '{"$or": [{"a": ["b"]}]}',
    ],
)
def test_invalid_patterns_are_refused_with_lambdas_message(text: str) -> None:
    with pytest.raises(InvalidFilterPattern, match=f"^{INVALID_PATTERN}$"):
        FilterPattern(text)


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=5),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3)
    ),
    max_leaves=12,
)


@settings(deadline=None)  # a slow machine must not fail it: hypothesis's deadline is a timing
@given(pattern=_json, value=st.dictionaries(st.text(max_size=5), _json, max_size=4))
def test_any_json_is_either_refused_as_a_pattern_or_matches_without_error(
    pattern: object, value: dict[str, Any]
) -> None:
    try:
        compiled = FilterPattern(json.dumps(pattern))
    except InvalidFilterPattern:
        return
    assert compiled.matches(value) in (True, False)


_names = st.sampled_from(["a", "b", "c"])
_words = st.sampled_from(["x", "y", "z"])
_patterns = st.recursive(
    st.lists(_words, min_size=1, max_size=3, unique=True),
    lambda children: st.dictionaries(_names, children, min_size=1, max_size=3),
    max_leaves=6,
).filter(lambda pattern: isinstance(pattern, dict))
_values = st.recursive(_words, lambda children: st.dictionaries(_names, children, max_size=3))


def naive_match(pattern: dict[str, Any], value: object) -> bool:
    """Lambda's filter rule for exact values, as its documentation states it: every field of
    the pattern is in the record, a nested pattern matches a nested object, and a list of
    values matches a field equal to one of them."""
    if not isinstance(value, dict):
        return False
    for name, wanted in pattern.items():
        if name not in value:
            return False
        if isinstance(wanted, dict):
            if not naive_match(wanted, value[name]):
                return False
        elif not isinstance(value[name], str) or value[name] not in wanted:
            return False
    return True


@settings(deadline=None)
@given(pattern=_patterns, value=st.dictionaries(_names, _values, max_size=3))
def test_exact_value_patterns_match_as_a_naive_reading_of_the_rules_does(
    pattern: dict[str, Any], value: dict[str, Any]
) -> None:
    assert FilterPattern(json.dumps(pattern)).matches(value) == naive_match(pattern, value)


# --- what a record looks like to a filter -------------------------------------------------


def test_a_kinesis_filter_sees_the_data_decoded_from_base64_and_json() -> None:
    only_buys = RecordFilter(
        "aws:kinesis", [FilterPattern('{"data": {"order": {"type": ["buy"]}}}')]
    )

    assert only_buys.passes(kinesis_record(1, data={"order": {"type": "buy"}}))
    assert not only_buys.passes(kinesis_record(2, data={"order": {"type": "sell"}}))


def test_a_kinesis_record_whose_data_is_not_json_is_dropped_by_a_data_pattern() -> None:
    record = kinesis_record(1)
    record["kinesis"]["data"] = base64.b64encode(b"not json").decode()
    on_data = RecordFilter("aws:kinesis", [FilterPattern('{"data": {"a": [{"exists": false}]}}')])
    on_metadata = RecordFilter("aws:kinesis", [FilterPattern('{"partitionKey": ["pk-1"]}')])

    assert not on_data.passes(record)
    assert on_metadata.passes(record)
    either = RecordFilter(
        "aws:kinesis",
        [FilterPattern('{"$or": [{"data": {"a": ["b"]}}, {"eventName": ["aws:kinesis:record"]}]}')],
    )
    assert not either.passes(record)


def test_filters_are_ored() -> None:
    either = RecordFilter(
        "aws:dynamodb",
        [FilterPattern('{"eventName": ["INSERT"]}'), FilterPattern('{"eventName": ["REMOVE"]}')],
    )

    assert either.passes(dynamodb_record(1, event_name="REMOVE"))
    assert not either.passes(dynamodb_record(2, event_name="MODIFY"))


# --- recorded from AWS, replayed on moto's streams ------------------------------------------

# Each case of LocalStack's test_dynamodb_event_filter (validated against AWS): the pattern,
# the two items put in turn (the same key twice makes the second a MODIFY), and what AWS
# delivered ("lambda-multiple-log-events"), as (eventName, NewImage).
RECORDED_DYNAMODB_CASES: dict[
    str, tuple[dict[str, Any], dict[str, Any], dict[str, Any], list[Any]]
] = {
    "insert_same_entry_twice": (
        {"eventName": ["INSERT"]},
        {"id": {"S": "id_value"}, "id2": {"S": "id2_value"}},
        {"id": {"S": "id_value"}, "id2": {"S": "id2_value"}},
        [("INSERT", {"id2": {"S": "id2_value"}, "id": {"S": "id_value"}})],
    ),
    "content_or_filter": (
        {"eventName": ["INSERT", "MODIFY"]},
        {"id": {"S": "id_value"}},
        {"id": {"S": "id_value"}, "id2": {"S": "id2_new_value"}},
        [
            ("INSERT", {"id": {"S": "id_value"}}),
            ("MODIFY", {"id2": {"S": "id2_new_value"}, "id": {"S": "id_value"}}),
        ],
    ),
    "content_multiple_filters": (
        {"eventName": ["INSERT"], "eventSource": ["aws:dynamodb"]},
        {"id": {"S": "id_value"}},
        {"id": {"S": "id_value"}, "id2": {"S": "id2_new_value"}},
        [("INSERT", {"id": {"S": "id_value"}})],
    ),
    "content_filter_type": (
        {"dynamodb": {"NewImage": {"presentKey": {"S": ["presentValue"]}}}},
        {"id": {"S": "id_value_1"}, "presentKey": {"S": "presentValue"}},
        {"id": {"S": "id_value_2"}},
        [("INSERT", {"id": {"S": "id_value_1"}, "presentKey": {"S": "presentValue"}})],
    ),
    "exists_filter_type": (
        {"dynamodb": {"NewImage": {"presentKey": {"S": [{"exists": True}]}}}},
        {"id": {"S": "id_value_1"}, "presentKey": {"S": "presentValue"}},
        {"id": {"S": "id_value_2"}},
        [("INSERT", {"id": {"S": "id_value_1"}, "presentKey": {"S": "presentValue"}})],
    ),
    "exists_false_filter": (
        {"dynamodb": {"NewImage": {"presentKey": [{"exists": False}]}}},
        {"id": {"S": "id_value_1"}},
        {"id": {"S": "id_value_2"}, "presentKey": {"S": "presentValue"}},
        [
            ("INSERT", {"id": {"S": "id_value_1"}}),
            ("INSERT", {"id": {"S": "id_value_2"}, "presentKey": {"S": "presentValue"}}),
        ],
    ),
    "numeric_filter": (
        {
            "dynamodb": {
                "NewImage": {
                    "numericFilter": {"N": [{"numeric": [">", 100]}, {"anything-but": "101"}]}
                }
            }
        },
        {"id": {"S": "id_value_1"}, "numericFilter": {"N": "42"}},
        {"id": {"S": "id_value_2"}, "numericFilter": {"N": "101"}},
        [("INSERT", {"numericFilter": {"N": "42"}, "id": {"S": "id_value_1"}})],
    ),
    "prefix_filter": (
        {"dynamodb": {"NewImage": {"prefix": {"S": [{"prefix": "us-1"}]}}}},
        {"id": {"S": "id_value_1"}, "prefix": {"S": "us-1-other-suffix"}},
        {"id": {"S": "id_value_1"}, "prefix": {"S": "other-suffix"}},
        [("INSERT", {"prefix": {"S": "us-1-other-suffix"}, "id": {"S": "id_value_1"}})],
    ),
    "date_time_conversion": (
        {"dynamodb": {"ApproximateCreationDateTime": [{"numeric": [">", 0]}]}},
        {"id": {"S": "id_value_1"}},
        {"id": {"S": "id_value_2"}},
        [("INSERT", {"id": {"S": "id_value_1"}}), ("INSERT", {"id": {"S": "id_value_2"}})],
    ),
}


@pytest.mark.parametrize("case", sorted(RECORDED_DYNAMODB_CASES))
def test_recorded_dynamodb_filter_cases_deliver_what_aws_delivered(
    case: str, aws: boto3.Session, unique_name: str
) -> None:
    pattern, first, second, delivered = RECORDED_DYNAMODB_CASES[case]
    source = dynamodb_stream(aws, unique_name, key="id")
    table = aws.client("dynamodb")
    table.put_item(TableName=unique_name, Item=first)
    table.put_item(TableName=unique_name, Item=second)
    recorder = Recorder()

    result = run(
        {
            "BatchSize": 1,
            "MaximumRetryAttempts": 1,
            "FilterCriteria": {"Filters": [{"Pattern": json.dumps(pattern)}]},
            "MetricsConfig": {"Metrics": ["EventCount"]},
        },
        source,
        recorder,
        clock=FastClock(start=time.time()),
    )

    got = [
        (record["eventName"], record["dynamodb"]["NewImage"])
        for event in recorder.events
        for record in event["Records"]
    ]
    assert got == delivered
    polled = result.metrics.count("PolledEventCount")
    assert result.metrics.count("FilteredOutEventCount") == polled - len(delivered)


def test_omitting_the_dynamodb_type_does_not_match(aws: boto3.Session, unique_name: str) -> None:
    # LocalStack's note on the recorded case: without the "S", the pattern matches nothing.
    source = dynamodb_stream(aws, unique_name, key="id")
    aws.client("dynamodb").put_item(
        TableName=unique_name, Item={"id": {"S": "1"}, "presentKey": {"S": "presentValue"}}
    )
    recorder = Recorder()
    pattern = {"dynamodb": {"NewImage": {"presentKey": ["presentValue"]}}}

    run(
        {"FilterCriteria": {"Filters": [{"Pattern": json.dumps(pattern)}]}},
        source,
        recorder,
        clock=FastClock(start=time.time()),
    )

    assert recorder.events == []


def test_recorded_kinesis_json_filter_sends_each_function_its_own_records(
    aws: boto3.Session, unique_name: str
) -> None:
    # test_kinesis_event_filtering_json_pattern: two mappings on one stream, one filter each.
    source = kinesis_stream(aws, unique_name)
    client = aws.client("kinesis")
    for message in (
        {"event_type": "function_1", "message": "foo"},
        {"event_type": "function_2", "message": "bar"},
    ):
        client.put_record(
            StreamName=unique_name, Data=json.dumps(message).encode(), PartitionKey="custom"
        )
    delivered: dict[str, list[Any]] = {}
    for function in ("function_1", "function_2"):
        recorder = Recorder()
        pattern = {"data": {"event_type": [function]}}
        run(
            {
                "BatchSize": 1,
                "MaximumRetryAttempts": 1,
                "FilterCriteria": {"Filters": [{"Pattern": json.dumps(pattern)}]},
            },
            source,
            recorder,
            clock=FastClock(start=time.time()),
        )
        delivered[function] = [
            json.loads(base64.b64decode(record["kinesis"]["data"]))
            for event in recorder.events
            for record in event["Records"]
        ]

    assert delivered == {
        "function_1": [{"event_type": "function_1", "message": "foo"}],
        "function_2": [{"event_type": "function_2", "message": "bar"}],
    }
