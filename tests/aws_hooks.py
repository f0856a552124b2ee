"""Faults and edits on top of moto's real endpoint, through botocore's event hooks.

What moto cannot do (iterator expiry, throttling, trimming past a stream's retention, AWS's
end-of-shard signal, ...) is added on the client (or on a session, for the clients a command
makes itself): the request still goes to moto unless a hook fails it first.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

from botocore.awsrequest import AWSResponse

Params = dict[str, Any]


class Hooks:
    """Record each call's parameters, fail chosen calls before they reach moto, edit requests
    and replies.

    `target` is a client, or a `boto3.Session` (then `service`, botocore's hyphenated service
    id such as ``dynamodb-streams``, names the service and every client the session makes
    later carries the hooks).
    """

    def __init__(self, target: Any, service: str | None = None) -> None:
        meta = getattr(target, "meta", None)
        self._events = meta.events if meta is not None else target.events
        self._service = service or target.meta.service_model.service_id.hyphenize()
        self.calls: list[tuple[str, Params]] = []
        self._events.register(f"provide-client-params.{self._service}", self._record)

    def _record(self, params: Params, model: Any, context: dict[str, Any], **_: Any) -> None:
        self.calls.append((model.name, copy.deepcopy(params)))
        context["test_params"] = params

    def params(self, operation: str) -> list[Params]:
        return [params for name, params in self.calls if name == operation]

    def fail_next(self, operation: str, *codes: str, status: int = 400) -> None:
        """The next calls of `operation` fail with `codes`, one each, then calls go through."""
        pending = list(codes)
        self.fail_when(operation, lambda params: pending.pop(0) if pending else None, status)

    def fail_when(
        self, operation: str, code_for: Callable[[Params], str | None], status: int = 400
    ) -> None:
        """A call of `operation` fails with `code_for(params)` unless that is None."""

        def fail(context: dict[str, Any], **_: Any) -> tuple[AWSResponse, dict[str, Any]] | None:
            code = code_for(context.get("test_params", {}))
            if code is None:
                return None
            # As botocore parses a real error reply: the status is in the metadata too.
            error = {
                "Error": {"Code": code, "Message": f"injected {code}"},
                "ResponseMetadata": {"HTTPStatusCode": status},
            }
            return AWSResponse("http://127.0.0.1/", status, {}, None), error

        self._events.register(f"before-call.{self._service}.{operation}", fail)

    def edit_requests(self, operation: str, edit: Callable[[Params], None]) -> None:
        """`edit(params)` changes a call's parameters in place before it is sent."""

        def before(params: Params, **_: Any) -> None:
            edit(params)

        self._events.register(f"before-parameter-build.{self._service}.{operation}", before)

    def edit_replies(self, operation: str, edit: Callable[[Params, Params], None]) -> None:
        """`edit(parsed, params)` changes moto's parsed reply in place."""

        def after(parsed: Params, context: dict[str, Any], **_: Any) -> None:
            edit(parsed, context["test_params"])

        self._events.register(f"after-call.{self._service}.{operation}", after)
