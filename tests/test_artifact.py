"""What ships to Lambda is the core's folders, and the functions run from them alone."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# The folders the Makefile's LAMBDA_FOLDERS names: what a function may import of ours.
CORE = {"streams", "streams.sources", "streams.writer", "processor"}
# Every sub-package of streams: the laptop's and the KCL host's, never the function's.
LAPTOP = sorted(
    "streams." + path.parent.relative_to(ROOT / "streams").as_posix().replace("/", ".")
    for path in (ROOT / "streams").rglob("__init__.py")
    if path.parent != ROOT / "streams"
    and "streams." + path.parent.relative_to(ROOT / "streams").as_posix().replace("/", ".")
    not in CORE
)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    artifacts = tmp_path_factory.mktemp("artifact")
    result = subprocess.run(
        ["make", "-s", "build-ProcessorFunction", f"ARTIFACTS_DIR={artifacts}"],
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
        env={**os.environ, "PYTHON": sys.executable},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return artifacts


def _package(module_file: Path, root: Path) -> str:
    return module_file.parent.relative_to(root).as_posix().replace("/", ".")


def test_the_artifact_holds_only_the_cores_folders(built: Path) -> None:
    ours = [*built.glob("streams/**/*.py"), *built.glob("processor/**/*.py")]
    assert {_package(path, built) for path in ours} == CORE
    assert LAPTOP  # the test looks at something: mapping, local, cli, ...
    for package in LAPTOP:
        assert not (built / package.replace(".", "/")).exists(), package


def test_the_functions_import_nothing_of_ours_beyond_the_core_in_a_clean_interpreter(
    built: Path, lambda_runtime: Path
) -> None:
    # GIVEN a python3.12 with boto3 only, and the artifact first on its path
    script = textwrap.dedent(
        f"""
        import importlib.util, json, sys
        sys.path.insert(0, {str(built)!r})
        import processor.app, processor.hydrate
        loaded = sorted(
            name for name in sys.modules if name.split(".")[0] in ("streams", "processor")
        )
        def findable(name):
            try:
                return importlib.util.find_spec(name) is not None
            except ModuleNotFoundError:  # its parent package is not there either
                return False
        findable = [name for name in {LAPTOP!r} if findable(name)]
        print(json.dumps({{"loaded": loaded, "findable": findable,
                          "file": processor.app.__file__}}))
        """
    )
    env = {
        "PATH": os.environ["PATH"],
        "AWS_REGION": "us-east-1",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "DELIVERY_TABLE_NAME": "deliveries",
        "DEAD_LETTER_QUEUE_URL": "https://sqs.us-east-1.amazonaws.com/123456789012/dead-letters",
    }
    # WHEN both functions' modules are imported there
    result = subprocess.run(
        [lambda_runtime, "-I", "-c", script],
        capture_output=True,
        text=True,
        check=False,
        env=env,
        cwd=built.parent,
    )
    # THEN only core modules were imported, and no other module of ours can be
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout.strip().splitlines()[-1])
    assert found["file"].startswith(str(built))
    outside = [
        name for name in found["loaded"] if name not in CORE and name.rpartition(".")[0] not in CORE
    ]
    assert outside == []
    assert found["findable"] == []
    assert "streams.batch" in found["loaded"] and "streams.hydrate" in found["loaded"]
