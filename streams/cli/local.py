"""`streams local up` and `streams local create`: the embedded AWS endpoint and its resources."""

from __future__ import annotations

import argparse
import json
import sys
import threading
from dataclasses import asdict
from importlib import metadata
from pathlib import Path
from typing import Any, TextIO

from streams.cli.common import add_parameter_overrides, sigterm_as_interrupt
from streams.cli.endpoint import current_endpoint
from streams.errors import UserError
from streams.local.endpoint import (
    STATE_FILE,
    endpoint_recorded,
    read_recorded_endpoint,
    start_endpoint,
)
from streams.local.stack import DEFAULT_STACK_NAME, DeployedStack, deploy_template
from streams.local.template import DEFAULT_TEMPLATE, parse_parameter_overrides

DEFAULT_PORT = 4566  # the port local AWS endpoints conventionally use


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    local = subparsers.add_parser(
        "local",
        help="a local AWS endpoint (moto) with the template's resources",
        description="A local AWS endpoint: moto's server on 127.0.0.1, with the data resources "
        "of a SAM template created by the SAM translator and moto's CloudFormation.",
    )
    local.set_defaults(func=lambda _: _usage(local))
    commands = local.add_subparsers(title="commands", metavar="COMMAND")

    up = commands.add_parser(
        "up",
        help="start the endpoint, create the template's resources, serve until Ctrl-C",
        description=f"Start moto's server on 127.0.0.1, create the template's resources in it, "
        f"print the endpoint and the stack's outputs, and serve until Ctrl-C. The endpoint is "
        f"recorded in {STATE_FILE} (in the current directory), where the other streams "
        f"commands started here find it.",
    )
    up.add_argument(
        "--port",
        type=int,
        default=DEFAULT_PORT,
        help=f"port on 127.0.0.1 (default {DEFAULT_PORT}; 0 picks a free one)",
    )
    _template_arguments(up, DEFAULT_TEMPLATE, DEFAULT_STACK_NAME)
    up.set_defaults(func=_up)

    create = commands.add_parser(
        "create",
        help="create the template's resources in the endpoint AWS_ENDPOINT_URL names",
        description="Create (or update) the template's resources in a running local endpoint: "
        f"AWS_ENDPOINT_URL, else the one `streams local up` recorded in {STATE_FILE}. Running "
        "it again with the same template changes nothing.",
    )
    _template_arguments(create, DEFAULT_TEMPLATE, None)
    create.set_defaults(func=_create)


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


def _template_arguments(
    parser: argparse.ArgumentParser, template: Path, stack_name: str | None
) -> None:
    parser.add_argument(
        "--template", default=str(template), help=f"SAM or CloudFormation template ({template})"
    )
    parser.add_argument(
        "--stack-name",
        default=stack_name,
        help="stack to create or update (default: the recorded one, else streams-local)"
        if stack_name is None
        else f"stack to create (default {stack_name})",
    )
    add_parameter_overrides(parser)
    parser.add_argument("--region", help="region (default: AWS_REGION, else us-east-1)")
    parser.add_argument(
        "--json",
        action="store_true",
        help="print the stack as one JSON document on stdout (messages go to stderr)",
    )


def _stack_json(stack: DeployedStack) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(json.dumps(asdict(stack), default=str))
    return document


def _print_stack(stack: DeployedStack, out: TextIO) -> None:
    print(f"stack {stack.stack_name}: {stack.status} from {stack.template}", file=out)
    if stack.resources:
        print("resources:", file=out)
        width = max(len(resource.logical_id) for resource in stack.resources)
        for resource in stack.resources:
            print(
                f"  {resource.logical_id:<{width}}  {resource.resource_type:<22}  "
                f"{resource.physical_id}",
                file=out,
            )
    if stack.outputs:
        print("outputs:", file=out)
        width = max(len(key) for key in stack.outputs)
        for key, value in stack.outputs.items():
            print(f"  {key:<{width}}  {value}", file=out)
    for function in stack.functions.values():
        print(
            f"function {function.logical_id}: {function.handler} ({function.runtime}, "
            f"{function.timeout} s, {function.memory_size} MB) from {function.code_uri}",
            file=out,
        )
        for source in function.event_sources:
            print(f"  {source.logical_id}: {source.event_source_arn}", file=out)
    reasons: dict[str, list[str]] = {}
    for part in stack.skipped:
        reasons.setdefault(part.reason, []).append(part.name)
    if reasons:
        print("left out locally:", file=out)
        for reason, names in reasons.items():
            print(f"  {', '.join(names)}: {reason}", file=out)


def _report(stack: DeployedStack, as_json: bool) -> None:
    if as_json:
        print(json.dumps(_stack_json(stack)), flush=True)
    else:
        _print_stack(stack, sys.stdout)


def _up(args: argparse.Namespace) -> int:
    messages = sys.stderr if args.json else sys.stdout
    overrides = parse_parameter_overrides(args.parameter_overrides)
    serving = read_recorded_endpoint()
    if serving is not None:
        raise UserError(
            f"`streams local up` already serves {serving.endpoint_url} for this directory "
            f"(pid {serving.pid}): use it, or stop it first"
        )
    with sigterm_as_interrupt(), start_endpoint(args.port) as endpoint:
        print(
            f"streams: local endpoint {endpoint.url} (moto {metadata.version('moto')})",
            file=messages,
            flush=True,
        )
        stack = deploy_template(
            args.template,
            endpoint_url=endpoint.url,
            stack_name=args.stack_name,
            parameter_overrides=overrides,
            region=args.region,
        )
        _report(stack, args.json)
        with endpoint_recorded(endpoint.url, stack, stack.template) as state:
            print(
                f"recorded in {state}: streams commands started in this directory use it; "
                f"for other tools: export AWS_ENDPOINT_URL={endpoint.url}\n"
                "serving until Ctrl-C",
                file=messages,
                flush=True,
            )
            try:
                threading.Event().wait()
            except KeyboardInterrupt:
                print("streams: stopping the local endpoint", file=messages, flush=True)
    return 0


NO_LOCAL_ENDPOINT = (
    "no local endpoint: start `streams local up` in this directory, or set AWS_ENDPOINT_URL to one"
)


def deploy_to_local_endpoint(
    args: argparse.Namespace, *, messages: TextIO, refusal: str = NO_LOCAL_ENDPOINT
) -> DeployedStack:
    """Deploy `args.template` (with --stack-name, --parameter-overrides, --region) into the
    current endpoint, saying which; `refusal` when that is AWS itself."""
    overrides = parse_parameter_overrides(args.parameter_overrides)
    endpoint = current_endpoint()
    if endpoint.url is None:
        raise UserError(refusal)
    print(f"streams: {endpoint.describe()}", file=messages, flush=True)
    return deploy_template(
        args.template,
        endpoint_url=endpoint.url,
        stack_name=args.stack_name or endpoint.stack_name,
        parameter_overrides=overrides,
        region=args.region or endpoint.region,
    )


def _create(args: argparse.Namespace) -> int:
    stack = deploy_to_local_endpoint(args, messages=sys.stderr if args.json else sys.stdout)
    _report(stack, args.json)
    return 0
