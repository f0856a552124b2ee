"""Errors a user can cause. The CLI prints them as one line and exits non-zero."""

from __future__ import annotations


class UserError(Exception):
    """A mistake the user can fix (bad flag, missing table, malformed input).

    The message says what is wrong and what to do; the CLI prints it without a traceback.
    """


class EventError(ValueError):
    """A Lambda event that is not a stream batch this library can process (the envelope)."""
