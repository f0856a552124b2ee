"""The `streams` command. Each sub-command lives in its own module and registers itself here."""

from __future__ import annotations

import argparse
import importlib.metadata
import sys
from collections.abc import Callable, Sequence

from botocore.exceptions import EndpointConnectionError, NoCredentialsError

from streams.errors import UserError

# A sub-command module exposes `register(subparsers)`, which adds its parser and sets
# `func=<callable(args) -> int>` as the parser default.
Register = Callable[["argparse._SubParsersAction[argparse.ArgumentParser]"], None]


def _registrations() -> list[Register]:
    from streams.cli import backfill, check, demo, dlq, kcl, local, monitor, run, write

    # In the order of DESIGN.md's "user's day".
    return [
        demo.register,
        local.register,
        run.register,
        backfill.register,
        write.register,
        monitor.register,
        dlq.register,
        check.register,
        kcl.register,
    ]


def _installed_version() -> str:
    """The version pip installed (the package's metadata), or why there is none."""
    try:
        return importlib.metadata.version("streams")
    except importlib.metadata.PackageNotFoundError:
        return "(not installed: run from a source tree)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="streams",
        description="Process DynamoDB and Kinesis change streams: poison-safe, ordered, "
        "nothing lost silently.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_installed_version()}")
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND")
    for register in _registrations():
        register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] | None = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 2
    try:
        return func(args)
    except UserError as error:
        print(f"streams: error: {error}", file=sys.stderr)
        return 2
    except NoCredentialsError:
        print(
            "streams: error: no AWS credentials: configure them (aws configure, AWS_PROFILE), "
            "or work locally (`streams local up`, or AWS_ENDPOINT_URL)",
            file=sys.stderr,
        )
        return 2
    except EndpointConnectionError as error:
        # Commands that know which endpoint they meant say so themselves (`streams monitor`).
        print(
            f"streams: error: cannot reach {error.kwargs.get('endpoint_url')}: is "
            "`streams local up` still running, or is the endpoint right?",
            file=sys.stderr,
        )
        return 2
    except KeyboardInterrupt:
        print("streams: interrupted", file=sys.stderr)
        return 130
