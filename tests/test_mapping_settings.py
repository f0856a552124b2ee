"""Mapping settings: AWS's defaults, and its refusals as one line naming the property."""

from __future__ import annotations

from typing import Any

import pytest

from streams.errors import UserError
from streams.mapping import MappingSettings

QUEUE = "arn:aws:sqs:us-east-1:123456789012:on-failure"


def _settings(event_source: Any = "aws:dynamodb", **properties: Any) -> MappingSettings:
    return MappingSettings.from_properties(
        {"StartingPosition": "TRIM_HORIZON", **properties}, event_source
    )


def test_absent_properties_take_awss_defaults() -> None:
    settings = _settings()

    assert settings == MappingSettings(
        event_source="aws:dynamodb",
        starting_position="TRIM_HORIZON",
        batch_size=100,
        maximum_batching_window_in_seconds=0,
        bisect_batch_on_function_error=False,
        maximum_retry_attempts=-1,
        maximum_record_age_in_seconds=-1,
        on_failure_destination=None,
        parallelization_factor=1,
        tumbling_window_in_seconds=0,
        filters=(),
        report_batch_item_failures=False,
        enabled=True,
        event_count_metrics=False,
    )


def test_every_property_is_read_as_cloudformation_names_it() -> None:
    settings = MappingSettings.from_properties(
        {
            "EventSourceArn": "arn:aws:kinesis:us-east-1:123456789012:stream/s",
            "StartingPosition": "AT_TIMESTAMP",
            "StartingPositionTimestamp": 1700000000,
            "BatchSize": 250,
            "MaximumBatchingWindowInSeconds": 5,
            "BisectBatchOnFunctionError": True,
            "MaximumRetryAttempts": 3,
            "MaximumRecordAgeInSeconds": 3600,
            "DestinationConfig": {"OnFailure": {"Destination": QUEUE}},
            "ParallelizationFactor": 4,
            "TumblingWindowInSeconds": 120,
            "FilterCriteria": {"Filters": [{"Pattern": '{"data": {"kind": ["a"]}}'}]},
            "FunctionResponseTypes": ["ReportBatchItemFailures"],
            "Enabled": False,
            "MetricsConfig": {"Metrics": ["EventCount"]},
        },
        "aws:kinesis",
    )

    assert (settings.starting_position, settings.starting_position_timestamp) == (
        "AT_TIMESTAMP",
        1700000000.0,
    )
    assert (settings.batch_size, settings.maximum_batching_window_in_seconds) == (250, 5)
    assert settings.bisect_batch_on_function_error is True
    assert (settings.maximum_retry_attempts, settings.maximum_record_age_in_seconds) == (3, 3600)
    assert settings.on_failure_destination == QUEUE
    assert (settings.parallelization_factor, settings.tumbling_window_in_seconds) == (4, 120)
    assert [pattern.text for pattern in settings.filters] == ['{"data": {"kind": ["a"]}}']
    assert settings.report_batch_item_failures is True
    assert settings.enabled is False
    assert settings.event_count_metrics is True


def test_cloudformations_string_forms_of_numbers_and_booleans_are_accepted() -> None:
    settings = _settings(BatchSize="7", BisectBatchOnFunctionError="true", Enabled="False")

    assert (settings.batch_size, settings.bisect_batch_on_function_error, settings.enabled) == (
        7,
        True,
        False,
    )


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("BatchSize", 0),
        ("BatchSize", 10_001),
        ("MaximumBatchingWindowInSeconds", -1),
        ("MaximumBatchingWindowInSeconds", 301),
        ("MaximumRetryAttempts", -2),
        ("MaximumRetryAttempts", 10_001),
        ("MaximumRecordAgeInSeconds", 1),
        ("MaximumRecordAgeInSeconds", 59),
        ("MaximumRecordAgeInSeconds", 0),
        ("MaximumRecordAgeInSeconds", 604_801),
        ("ParallelizationFactor", 0),
        ("ParallelizationFactor", 11),
        ("TumblingWindowInSeconds", -1),
        ("TumblingWindowInSeconds", 901),
        ("BatchSize", "many"),
        ("BatchSize", True),
        ("BisectBatchOnFunctionError", "yes"),
    ],
)
def test_out_of_range_or_mistyped_values_are_refused_naming_the_property(
    name: str, value: object
) -> None:
    with pytest.raises(UserError, match=rf"^event source mapping property {name}: ") as refused:
        _settings(**{name: value})

    assert "\n" not in str(refused.value)


_FIELDS = {
    "BatchSize": "batch_size",
    "MaximumBatchingWindowInSeconds": "maximum_batching_window_in_seconds",
    "MaximumRetryAttempts": "maximum_retry_attempts",
    "MaximumRecordAgeInSeconds": "maximum_record_age_in_seconds",
    "ParallelizationFactor": "parallelization_factor",
    "TumblingWindowInSeconds": "tumbling_window_in_seconds",
}


@pytest.mark.parametrize(
    ("name", "value"),
    [
        # The lowest and the largest value AWS allows for each; one beyond each is refused
        # (test_out_of_range_or_mistyped_values_are_refused_naming_the_property).
        ("BatchSize", 1),
        ("BatchSize", 10_000),
        ("MaximumBatchingWindowInSeconds", 0),
        ("MaximumBatchingWindowInSeconds", 300),
        ("MaximumRetryAttempts", -1),
        ("MaximumRetryAttempts", 10_000),
        ("MaximumRecordAgeInSeconds", -1),
        ("MaximumRecordAgeInSeconds", 60),
        ("MaximumRecordAgeInSeconds", 604_800),
        ("ParallelizationFactor", 1),
        ("ParallelizationFactor", 10),
        ("TumblingWindowInSeconds", 0),
        ("TumblingWindowInSeconds", 900),
    ],
)
def test_the_edges_of_each_range_are_accepted(name: str, value: int) -> None:
    assert getattr(_settings(**{name: value}), _FIELDS[name]) == value


@pytest.mark.parametrize(
    ("properties", "named"),
    [
        ({"FilterCriteria": "eventName=INSERT"}, "FilterCriteria"),
        ({"FilterCriteria": {"Filters": {"Pattern": "{}"}}}, r"FilterCriteria\.Filters"),
        ({"FilterCriteria": {"Filters": [{"Pattern": {"a": ["b"]}}]}}, r"Filters\[0\]\.Pattern"),
        ({"FilterCriteria": {"Filter": []}}, r"FilterCriteria\.Filter"),
        ({"DestinationConfig": {"OnFailure": "arn"}}, r"DestinationConfig\.OnFailure"),
        ({"DestinationConfig": {"OnFailure": {"Type": "SQS"}}}, r"OnFailure\.Type"),
        ({"DestinationConfig": {"OnFailure": {"Destination": 7}}}, r"OnFailure\.Destination"),
        ({"MetricsConfig": {"Metric": ["EventCount"]}}, r"MetricsConfig\.Metric"),
    ],
)
def test_mistyped_structures_are_refused_naming_the_part(
    properties: dict[str, Any], named: str
) -> None:
    with pytest.raises(UserError, match=named):
        _settings(**properties)


def test_a_timestamp_is_unix_seconds_as_a_number_or_its_text() -> None:
    settings = _settings(
        "aws:kinesis", StartingPosition="AT_TIMESTAMP", StartingPositionTimestamp="1700000000.5"
    )

    assert settings.starting_position_timestamp == 1700000000.5
    with pytest.raises(UserError, match="StartingPositionTimestamp: expected Unix seconds"):
        _settings("aws:kinesis", StartingPosition="AT_TIMESTAMP", StartingPositionTimestamp="soon")


def test_the_starting_position_is_required() -> None:
    with pytest.raises(UserError, match="StartingPosition: required"):
        MappingSettings.from_properties({}, "aws:dynamodb")


def test_dynamodb_has_no_at_timestamp_position() -> None:
    with pytest.raises(UserError, match="StartingPosition: 'AT_TIMESTAMP' is not valid"):
        _settings(StartingPosition="AT_TIMESTAMP", StartingPositionTimestamp=1)


def test_at_timestamp_needs_its_timestamp_and_only_it_takes_one() -> None:
    with pytest.raises(UserError, match="StartingPositionTimestamp: required"):
        _settings("aws:kinesis", StartingPosition="AT_TIMESTAMP")
    with pytest.raises(UserError, match="StartingPositionTimestamp: only valid with AT_TIMESTAMP"):
        _settings("aws:kinesis", StartingPositionTimestamp=1)


# Recorded from AWS: CreateEventSourceMapping refused these patterns with this message
# (test_dynamodb_invalid_event_filter[single-string], [[{"eventName": ["INSERT"=123}]]).
@pytest.mark.parametrize("pattern", ["single-string", '[{"eventName": ["INSERT"=123}]'])
def test_invalid_filter_patterns_are_refused_with_lambdas_message(pattern: str) -> None:
    with pytest.raises(
        UserError,
        match=r"FilterCriteria\.Filters\[0\]\.Pattern: Invalid filter pattern definition\.$",
    ):
        _settings(FilterCriteria={"Filters": [{"Pattern": pattern}]})


def test_more_than_five_filters_are_refused() -> None:
    filters = [{"Pattern": f'{{"eventName": ["E{i}"]}}'} for i in range(6)]

    with pytest.raises(UserError, match=r"FilterCriteria\.Filters: 6 filters, more than"):
        _settings(FilterCriteria={"Filters": filters})


def test_a_destination_must_be_an_sqs_sns_or_s3_arn() -> None:
    for arn in (QUEUE, "arn:aws:sns:us-east-1:1:t", "arn:aws:s3:::bucket"):
        _settings(DestinationConfig={"OnFailure": {"Destination": arn}})

    with pytest.raises(UserError, match=r"DestinationConfig\.OnFailure\.Destination"):
        _settings(DestinationConfig={"OnFailure": {"Destination": "arn:aws:lambda:x:1:f:g"}})
    with pytest.raises(UserError, match=r"DestinationConfig\.OnSuccess"):
        _settings(DestinationConfig={"OnSuccess": {"Destination": QUEUE}})


def test_an_empty_on_failure_config_means_no_destination() -> None:
    # Recorded from AWS: a mapping created without one reports `"OnFailure": {}`.
    assert _settings(DestinationConfig={"OnFailure": {}}).on_failure_destination is None


def test_unknown_response_types_and_metrics_are_refused() -> None:
    with pytest.raises(UserError, match="FunctionResponseTypes"):
        _settings(FunctionResponseTypes=["ReportEverything"])
    with pytest.raises(UserError, match=r"MetricsConfig\.Metrics"):
        _settings(MetricsConfig={"Metrics": ["KafkaMetrics"]})


def test_properties_of_other_event_sources_and_unknown_ones_are_refused() -> None:
    with pytest.raises(UserError, match="Queues: not valid for aws:dynamodb event sources"):
        _settings(Queues=["q"])
    with pytest.raises(UserError, match="BatchSise: unknown property"):
        _settings(BatchSise=10)


def test_settings_made_directly_are_checked_as_well() -> None:
    with pytest.raises(UserError, match="ParallelizationFactor"):
        MappingSettings("aws:kinesis", "LATEST", parallelization_factor=20)
