"""`streams check`: settings in a template that would lose records or defeat the batch core."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from streams.cli.common import add_parameter_overrides
from streams.local.check import check_template
from streams.local.template import DEFAULT_TEMPLATE, parse_parameter_overrides


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "check",
        help="find settings that would lose records or defeat the batch core",
        description="Reads a SAM template and reports, one line each with the property named, "
        "settings that would lose records or defeat the batch core. A function's code is read "
        "from its CodeUri, relative to the template's folder; a function whose code cannot be "
        "read is named and checked with every rule. Exit code 1 when it finds any.",
    )
    parser.add_argument("--template", type=Path, default=DEFAULT_TEMPLATE)
    add_parameter_overrides(parser)
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    findings = check_template(
        args.template, parameter_overrides=parse_parameter_overrides(args.parameter_overrides)
    )
    for finding in findings:
        print(finding)
    if findings:
        print(f"{len(findings)} finding(s)", file=sys.stderr)
        return 1
    print(f"{args.template}: no settings that would lose records or defeat the batch core")
    return 0
