"""Finding a user's per-record handler from `--handler module:function`."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
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
