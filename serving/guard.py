"""Reject what the endpoints cannot take before BentoML reads it: wrong content types and oversized bodies.

BentoML answered a `multipart/form-data` request to a JSON endpoint with 500 (it tried to parse a form into the
pydantic input), and read a 300 MB body whole before the schema said 400. `RequestGuard` answers both at the
door, as 4xx with a JSON body naming the problem:

- 415 when a POST to a guarded path is not `application/json`;
- 413 when the body is larger than `max_body_bytes`: at once from `Content-Length`, or while reading a chunked
  body (never more than the cap is held in memory).

It counts the requests inside the service per guarded path (`inside`): the churn batcher waits a millisecond
for company only when another churn request is on its way (`serving.batching.MicroBatcher`'s `settle_if`).

It also documents those answers in the OpenAPI spec BentoML serves at /docs.json, with the 400 of bad input, whose
body BentoML's spec gets wrong (`detail` is a list of field errors, not a string): `serving.schemas.ErrorResponse`.
"""

from __future__ import annotations

import collections
import contextlib
import json
from collections.abc import Awaitable, Callable, Collection, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


SPEC_PATH = "/docs.json"
ANSWERS = {
    "400": "Bad input: `detail` names each field that is wrong",
    "413": "The request body is larger than CHURNSENSE_MAX_BODY_MB",
    "415": "The request's Content-Type is not application/json",
}


NOT_FOUND = "A customer the event store does not hold (`error` names it)"

# Requests between the door and their answer, per guarded path, in this worker process (one event loop).
INSIDE: collections.Counter[str] = collections.Counter()


def inside(*paths: str) -> int:
    """How many requests to `paths` this worker has let in and not yet answered."""
    return sum(INSIDE[path] for path in paths)


class RequestGuard:
    """ASGI middleware for the JSON endpoints in `paths` (other paths pass untouched, but for the spec).

    `hidden`: endpoints answered 404 and left out of the spec (an internal hop nothing calls in this mode).
    `by_id`: endpoints that may answer 404 for a customer the event store does not hold (declared in the spec).
    """

    def __init__(
        self,
        app: ASGIApp,
        paths: Collection[str],
        max_body_bytes: int,
        hidden: Collection[str] = (),
        by_id: Collection[str] = (),
    ) -> None:
        self.app = app
        self.paths = frozenset(paths)
        self.max_body_bytes = int(max_body_bytes)
        self.hidden = frozenset(hidden)
        self.by_id = frozenset(by_id)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope.get("method") == "GET" and scope.get("path") == SPEC_PATH:
            await self.app(scope, receive, _edit_json(send, self._document_answers))
            return
        if scope["type"] == "http" and scope.get("path") in self.hidden:
            await _reply(send, 404, "not found")
            return
        if scope["type"] != "http" or scope.get("method") != "POST" or scope.get("path") not in self.paths:
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        INSIDE[path] += 1
        try:
            await self._guarded(scope, receive, send)
        finally:
            INSIDE[path] -= 1

    async def _guarded(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        media_type = headers.get("content-type", "").split(";")[0].strip().lower()
        if media_type != "application/json":
            shown = media_type or "none"
            await _reply(send, 415, f"Content-Type: expected application/json, got {shown[:80]}")
            return
        declared = headers.get("content-length", "").strip()
        if declared.isdigit() and int(declared) > self.max_body_bytes:
            await _reply(send, 413, self._too_large())
            return
        body, complete = bytearray(), False
        while not complete:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            if len(body) > self.max_body_bytes:
                await _reply(send, 413, self._too_large())
                return
            complete = not message.get("more_body", False)
        await self.app(scope, _replay(bytes(body), receive), _one_error_object(send))

    def _too_large(self) -> str:
        return f"request body: larger than {self.max_body_bytes:,} bytes (CHURNSENSE_MAX_BODY_MB)"

    def _document_answers(self, spec: dict[str, Any]) -> None:
        """Declare the 400, 413 and 415 answers of the guarded endpoints, all with `ErrorResponse` bodies."""
        from serving.schemas import ErrorResponse

        error = ErrorResponse.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas = spec.setdefault("components", {}).setdefault("schemas", {})
        schemas.update(error.pop("$defs", {}), ErrorResponse=error)
        content = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}}
        for path in self.hidden:
            spec.get("paths", {}).pop(path, None)
        for path in self.paths - self.hidden:
            operation = spec.get("paths", {}).get(path, {}).get("post")
            if operation is None:
                continue
            if "requestBody" in operation:  # a POST without a body is refused: 415 (no Content-Type) or 400
                operation["requestBody"]["required"] = True
            operation["responses"].update(
                {code: {"description": text, "content": content} for code, text in ANSWERS.items()}
            )
            if path in self.by_id:
                operation["responses"]["404"] = {"description": NOT_FOUND, "content": content}


def _replay(body: bytes, receive: Receive) -> Receive:
    """A `receive` that hands the app the body already read, then passes on what the client sends next."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


def _edit_json(send: Send, edit: Callable[[Any], None]) -> Send:
    """A `send` that passes the app's JSON response on after `edit` changed it in place (a 200 only)."""

    def rewrite(payload: bytes) -> bytes:
        document = json.loads(payload)
        edit(document)
        return json.dumps(document).encode()

    return _rewritten(send, lambda status: status == 200, rewrite)


def _one_error_object(send: Send) -> Send:
    """A `send` that answers BentoML's own errors (a 404 is `[{"error": ...}]`, a list) with the one object every
    other 4xx of this service has: `{"error": ...}`, as the spec says (`ErrorResponse`)."""

    def rewrite(payload: bytes) -> bytes:
        with contextlib.suppress(ValueError):
            document = json.loads(payload)
            if isinstance(document, list) and len(document) == 1 and isinstance(document[0], dict):
                return json.dumps(document[0]).encode()
        return payload

    return _rewritten(send, lambda status: status == 404, rewrite)


def _rewritten(send: Send, wanted: Callable[[int], bool], rewrite: Callable[[bytes], bytes]) -> Send:
    """A `send` that buffers a response whose status is `wanted` and passes on `rewrite(body)` with its length;
    any other response streams through untouched."""
    start: Message | None = None
    body = bytearray()

    async def relay(message: Message) -> None:
        nonlocal start
        if message["type"] == "http.response.start":
            if not wanted(message["status"]):
                await send(message)
                return
            start = message
            return
        if start is None or message["type"] != "http.response.body":
            await send(message)
            return
        body.extend(message.get("body", b""))
        if message.get("more_body", False):
            return
        payload = rewrite(bytes(body))
        headers = [(k, v) for k, v in start.get("headers", []) if k.lower() != b"content-length"]
        headers.append((b"content-length", str(len(payload)).encode()))
        await send({**start, "headers": headers})
        await send({"type": "http.response.body", "body": payload})

    return relay


async def _reply(send: Send, status: int, message: str) -> None:
    payload = json.dumps({"error": message}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})
