"""Which Python runs a function: the one its `Runtime` names, where it can import the function."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from streams.mapping.function.spec import RUNTIME, base_environment

__all__ = ["REQUIRED_MODULES", "Interpreter", "resolve_interpreter"]

logger = logging.getLogger(__name__)

#: What a function of this project imports that the Lambda runtime or its package provides.
REQUIRED_MODULES = ("boto3", "aws_lambda_powertools")

_PROBE_SECONDS = 30.0


@dataclass(frozen=True)
class Interpreter:
    """The Python that runs a function's workers."""

    path: str
    version: str  # "3.12"


_PROBE = """
import importlib.util, sys
sys.path.insert(0, sys.argv[1])
print("%d.%d" % sys.version_info[:2])
print(" ".join(m for m in sys.argv[2:] if importlib.util.find_spec(m) is None))
"""


def _probe(candidate: str, version: str, code_uri: Path) -> str | None:
    """Why `candidate` cannot run the function (None: it can)."""
    try:
        done = subprocess.run(
            [candidate, "-c", _PROBE, str(code_uri), *REQUIRED_MODULES],
            capture_output=True,
            text=True,
            env=base_environment(),
            timeout=_PROBE_SECONDS,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"{candidate} does not run ({error})"
    lines = done.stdout.splitlines()
    if done.returncode != 0 or len(lines) < 2:
        return f"{candidate} does not run (exit status {done.returncode})"
    if lines[0] != version:
        return f"{candidate} is Python {lines[0]}"
    if lines[1]:
        missing = ", ".join(lines[1].split())
        return f"{candidate} cannot import {missing} (install them for it, or put them in CodeUri)"
    return None


def _candidates(version: str, search_path: str | None, pyenv_root: Path) -> list[str]:
    found: list[str] = []
    on_path = shutil.which(f"python{version}", path=search_path)
    if on_path is not None:
        found.append(on_path)

    def patch_level(python: Path) -> tuple[int, ...]:
        release = python.parent.parent.name.removeprefix(f"{version}.")
        return tuple(int(part) for part in release.split(".") if part.isdigit())

    installed = pyenv_root.glob(f"versions/{version}.*/bin/python{version}")
    found.extend(str(python) for python in sorted(installed, key=patch_level, reverse=True))
    unique: dict[str, str] = {}
    for candidate in found:
        unique.setdefault(os.path.realpath(candidate), candidate)
    return list(unique.values())


def resolve_interpreter(
    runtime: str,
    code_uri: Path,
    *,
    search_path: str | None = None,
    pyenv_root: Path | None = None,
) -> Interpreter:
    """The Python to run a `runtime` function with.

    Ours when it is the runtime's version. Otherwise the first `pythonX.Y` on `search_path`
    (default: PATH), then in pyenv (`pyenv_root`, default ``$PYENV_ROOT`` or ``~/.pyenv``:
    ``versions/X.Y.*``, newest first) that can import `REQUIRED_MODULES` with `code_uri` first on
    its path. Without one, ours, with a WARNING that says why: putting our venv's
    site-packages on another version's path would load compiled packages built for ours.
    """
    match = RUNTIME.fullmatch(runtime)
    if match is None:
        raise ValueError(f"Runtime {runtime!r}: only Python runtimes (python3.N) run here")
    version = f"{match[1]}.{match[2]}"
    ours = Interpreter(sys.executable, f"{sys.version_info.major}.{sys.version_info.minor}")
    if ours.version == version:
        return ours
    root = pyenv_root or Path(os.environ.get("PYENV_ROOT", "~/.pyenv")).expanduser()
    reasons: list[str] = []
    for candidate in _candidates(version, search_path, root):
        reason = _probe(candidate, version, code_uri)
        if reason is None:
            return Interpreter(candidate, version)
        reasons.append(reason)
    if not reasons:
        reasons.append(f"no python{version} on PATH or in {root}/versions/{version}.*")
    logger.warning(
        "Runtime %s: running the function with Python %s (%s) instead, so it may behave "
        "differently than on Lambda: %s",
        runtime,
        ours.version,
        ours.path,
        "; ".join(reasons),
    )
    return ours
