"""What the commands share: the handler named by `--handler`, and SIGTERM taken as Ctrl-C."""

from __future__ import annotations

import argparse
import contextlib
import importlib
import signal
import sys
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any

from streams.errors import UserError


def load_handler(spec: str) -> Callable[[Any], object]:
    """The function named by `module:function` (the current directory is importable)."""
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise UserError(f"--handler {spec!r} is not MODULE:FUNCTION (for example app:handle)")
    if "" not in sys.path:
        sys.path.insert(0, "")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise UserError(f"cannot import handler module {module_name!r}: {error}") from None
    handler = getattr(module, attribute, None)
    if not callable(handler):
        raise UserError(f"{module_name!r} has no function {attribute!r}")
    return handler  # type: ignore[no-any-return]


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """While the block runs, `kill` stops the command as Ctrl-C does (`KeyboardInterrupt`), so
    that it cleans up the same way."""

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def positive_seconds(text: str) -> float:
    """An argparse type: a number of seconds above 0."""
    value = _seconds(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be above 0: {text}")
    return value


def seconds(text: str) -> float:
    """An argparse type: a number of seconds, 0 or more."""
    value = _seconds(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more seconds, got {text}")
    return value


def _seconds(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None


def add_parameter_overrides(parser: argparse.ArgumentParser) -> None:
    """`--parameter-overrides KEY=VALUE ...`, as `sam deploy` takes them."""
    parser.add_argument(
        "--parameter-overrides",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help="template parameters, as for `sam deploy` (others take their defaults)",
    )
