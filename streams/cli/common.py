"""What the commands share: the handler named by `--handler`, and SIGTERM taken as Ctrl-C."""

from __future__ import annotations

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
