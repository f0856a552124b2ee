"""`streams check`: one line per setting that would lose records or defeat the batch core."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from streams.cli import main
from streams.local.check import check_template

ROOT = Path(__file__).resolve().parent.parent


def test_the_projects_template_is_clean(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", "--template", str(ROOT / "template.yaml")]) == 0
    assert "no settings that would lose records" in capsys.readouterr().out


def _variant(
    tmp_path: Path, change: list[tuple[str, str]], handler_source: str | None = None
) -> Path:
    """template.yaml with one change, next to a copy of the code it points at."""
    shutil.copytree(ROOT / "processor", tmp_path / "processor")
    text = (ROOT / "template.yaml").read_text()
    for old, new in change:
        assert old in text, old
        text = text.replace(old, new)
    if handler_source is not None:
        (tmp_path / "processor" / "app.py").write_text(handler_source)
    path = tmp_path / "template.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("change", "prop"),
    [
        (
            [("            FunctionResponseTypes:\n              - ReportBatchItemFailures\n", "")],
            "FunctionResponseTypes",
        ),
        ([("MaximumRetryAttempts: -1", "MaximumRetryAttempts: 5")], "MaximumRetryAttempts"),
        (
            [("MaximumRecordAgeInSeconds: 43200", "MaximumRecordAgeInSeconds: 3600")],
            "MaximumRecordAgeInSeconds",
        ),
        (
            [
                (
                    "            DestinationConfig:\n              OnFailure:\n"
                    "                Type: SQS\n"
                    "                Destination: !GetAtt OnFailureQueue.Arn\n",
                    "",
                )
            ],
            "DestinationConfig.OnFailure",
        ),
        (
            [("          DEAD_LETTER_QUEUE_URL: !Ref DeadLetterQueue\n", "")],
            "Environment.Variables.DEAD_LETTER_QUEUE_URL",
        ),
    ],
    ids=[
        "no-report-batch-item-failures",
        "finite-retries",
        "age-below-core",
        "no-on-failure",
        "no-dlq",
    ],
)
def test_each_setting_that_would_lose_records_is_named(
    tmp_path: Path, change: list[tuple[str, str]], prop: str
) -> None:
    findings = check_template(_variant(tmp_path, change))
    assert len(findings) == 1, findings
    assert f" {prop}: " in str(findings[0])


def test_the_core_age_limit_comes_from_the_parameter_the_function_reads(tmp_path: Path) -> None:
    path = _variant(
        tmp_path, [("MaximumRecordAgeInSeconds: 43200", "MaximumRecordAgeInSeconds: 7200")]
    )
    # The parameter's default (21600 s) is above 7200 s: finding; an override below it: none.
    assert len(check_template(path)) == 1
    assert check_template(path, parameter_overrides={"MaxRecordAgeSeconds": "3600"}) == []


def test_halt_after_with_bisect_is_named(tmp_path: Path) -> None:
    source = (
        (ROOT / "processor" / "app.py")
        .read_text()
        .replace("StreamProcessor(handle,", "StreamProcessor(handle, halt_after=5,")
    )
    assert "halt_after=5" in source
    findings = check_template(_variant(tmp_path, [], handler_source=source))
    assert [" BisectBatchOnFunctionError: " in str(f) for f in findings] == [True]


def test_a_function_without_the_core_is_only_checked_for_its_destination(tmp_path: Path) -> None:
    plain = "def lambda_handler(event, context):\n    return None\n"
    path = _variant(tmp_path, [("MaximumRetryAttempts: -1", "MaximumRetryAttempts: 5")], plain)
    assert check_template(path) == []


def test_findings_exit_non_zero_one_line_each(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _variant(tmp_path, [("MaximumRetryAttempts: -1", "MaximumRetryAttempts: 2")])
    assert main(["check", "--template", str(path)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 1 and "MaximumRetryAttempts" in out[0]


def test_a_missing_template_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["check", "--template", str(tmp_path / "nope.yaml")]) == 2
    assert "template not found" in capsys.readouterr().err


def test_a_function_whose_code_cannot_be_read_is_named_and_checked_with_every_rule(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # GIVEN the template alone, outside the project: its CodeUri names a folder without the code
    alone = tmp_path / "elsewhere"
    alone.mkdir()
    text = (ROOT / "template.yaml").read_text()
    (alone / "template.yaml").write_text(
        text.replace("MaximumRetryAttempts: -1", "MaximumRetryAttempts: 2")
    )
    monkeypatch.chdir(tmp_path)

    # WHEN it is checked from another directory
    code = main(["check", "--template", str(alone / "template.yaml")])

    # THEN the function is named, every rule applies (the worst is assumed), never all clear
    out = capsys.readouterr().out
    assert code == 1
    assert "no settings that would lose records" not in out
    (unread,) = [line for line in out.splitlines() if " CodeUri: " in line]
    assert unread.startswith("template.yaml: ProcessorFunction CodeUri: cannot read the handler")
    assert str(alone / "processor" / "app.py") in unread
    assert " MaximumRetryAttempts: 2: " in out
    assert " BisectBatchOnFunctionError: " in out  # halt_after assumed


def test_the_code_is_read_relative_to_the_template_from_any_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = (
        (ROOT / "processor" / "app.py")
        .read_text()
        .replace("StreamProcessor(handle,", "StreamProcessor(handle, halt_after=5,")
    )
    assert "halt_after=5" in source
    path = _variant(tmp_path / "project", [], handler_source=source)
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")

    findings = check_template(path)

    # The copy beside the template was read (halt_after is only there), and nothing else named.
    assert [" BisectBatchOnFunctionError: " in str(f) for f in findings] == [True]
