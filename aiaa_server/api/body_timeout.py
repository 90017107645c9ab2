"""A request body that stops arriving fails the request (408) instead of holding a temp file and a task forever.

A pure ASGI middleware: it wraps `receive` so that each wait for the next body chunk is bounded by
`--body_timeout`. Once the last chunk arrived (`more_body` false) `receive` passes through untouched: after
the body, the only message left is `http.disconnect`, and waiting for it may rightly last as long as the
response takes.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import ClassVar

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from aiaa_server.errors import AIAAError


class BodyTimeout(AIAAError):
    status = 408
    code = "request_timeout"
    headers: ClassVar[dict[str, str]] = {"Connection": "close"}  # the rest of the body will never be read


@dataclass
class _Exchange:
    body_complete: bool = False
    timed_out: bool = False
    response_started: bool = False


class BodyTimeoutMiddleware:
    def __init__(self, app: ASGIApp, timeout_s: float) -> None:
        self.app = app
        self.timeout_s = timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        exchange = _Exchange()

        async def timed_receive() -> Message:
            if exchange.body_complete:
                return await receive()
            if exchange.timed_out:
                raise self._timeout()
            try:
                message = await asyncio.wait_for(receive(), self.timeout_s)
            except asyncio.TimeoutError:
                exchange.timed_out = True
                raise self._timeout() from None
            if message["type"] != "http.request" or not message.get("more_body", False):
                exchange.body_complete = True
            return message

        async def closing_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                exchange.response_started = True
                if exchange.timed_out:  # whatever the app answered, this connection's body is unusable
                    MutableHeaders(scope=message)["connection"] = "close"
            await send(message)

        try:
            await self.app(scope, timed_receive, closing_send)
        except BodyTimeout as exc:
            if exchange.response_started:
                raise
            await _answer(send, exc)

    def _timeout(self) -> BodyTimeout:
        return BodyTimeout(f"the request body stalled: no bytes for {self.timeout_s:g} s (see --body_timeout)")


async def _answer(send: Send, error: BodyTimeout) -> None:
    body = json.dumps(error.to_json()).encode("utf-8")
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
               (b"connection", b"close")]
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
