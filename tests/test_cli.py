"""The `streams` command as a whole: what it says about itself."""

from __future__ import annotations

import importlib.metadata

import pytest

from streams.cli import main


def test_version_is_the_installed_packages(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])

    assert exit_.value.code == 0
    assert capsys.readouterr().out == f"streams {importlib.metadata.version('streams')}\n"
