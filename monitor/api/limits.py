"""Request-body limits, as pure ASGI middleware in front of the routes.

- **Read timeout.** A request's whole body must arrive within ``body_read_timeout_s`` of its
  headers; otherwise the answer is 408 and the connection is closed. Without it, a client that
  sends headers and then trickles (or nothing) holds a connection and its buffer for good.
- **Large bodies.** At most ``max_concurrent_large_bodies`` requests whose body is over
  ``large_body_bytes`` (or of unknown length: chunked) are handled at once; one more is
  answered 503 with Retry-After before its body is read, so a burst of big uploads cannot take
  the memory of the process.
- **Aborted uploads.** A client that disconnects mid-body is logged in one line, not as two
  tracebacks of ``ClientDisconnect``.

Settings are read per request (``Settings`` on the runtime), so a test may change them.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from fastapi import FastAPI
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from monitor.config import Settings

log = logging.getLogger(__name__)

RETRY_AFTER_S = 5


class BodyReadTimeout(Exception):
    """The body did not arrive in time (raised into the app from ``receive``)."""


@dataclass
class BodyLimits:
    """The limits' shared state: where the settings come from, and how many large bodies are
    being handled now."""

    settings: Callable[[], Settings]
    large_in_flight: int = 0


def _declared_body(headers: list[tuple[bytes, bytes]]) -> tuple[int | None, bool]:
    """(Content-Length if valid, whether the body is chunked)."""
    length: int | None = None
    chunked = False
    for name, value in headers:
        if name == b"content-length" and value.strip().isdigit():
            length = int(value)
        elif name == b"transfer-encoding" and b"chunked" in value.lower():
            chunked = True
    return length, chunked


async def _respond(send: Send, status: int, detail: str,
                   headers: dict[str, str] | None = None) -> None:
    body = json.dumps({"detail": detail}).encode()
    extra = [(name.encode(), value.encode()) for name, value in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close"), *extra]})
    await send({"type": "http.response.body", "body": body})


@dataclass
class _Upload:
    """One request's body as the app receives it, against the deadline."""

    receive: Receive
    deadline: float
    received: int = 0
    complete: bool = False
    timed_out: bool = False
    disconnected: bool = False
    response_started: bool = False
    loop: asyncio.AbstractEventLoop = field(default_factory=asyncio.get_running_loop)

    async def next_message(self) -> Message:
        if self.complete:  # after the body: http.disconnect, whenever it comes
            return await self.receive()
        remaining = max(self.deadline - self.loop.time(), 0.0)
        try:
            message = await asyncio.wait_for(self.receive(), timeout=remaining)
        except TimeoutError:
            self.timed_out = True
            raise BodyReadTimeout from None
        if message["type"] == "http.request":
            self.received += len(message.get("body", b""))
            self.complete = not message.get("more_body", False)
        elif message["type"] == "http.disconnect":
            self.disconnected = True
        return message


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, limits: BodyLimits):
        self.app = app
        self.limits = limits

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length, chunked = _declared_body(scope["headers"])
        if not chunked and not length:  # no body to wait for
            await self.app(scope, receive, send)
            return
        settings = self.limits.settings()
        large = (chunked and length is None) or (length or 0) > settings.large_body_bytes
        if large and self.limits.large_in_flight >= settings.max_concurrent_large_bodies:
            await _respond(send, 503, f"{settings.max_concurrent_large_bodies} large request "
                           "bodies are being handled already: retry shortly",
                           {"retry-after": str(RETRY_AFTER_S)})
            return
        upload = _Upload(receive, asyncio.get_running_loop().time() + settings.body_read_timeout_s)

        async def guarded_send(message: Message) -> None:
            if upload.timed_out and not upload.response_started:
                return  # the 408 below replaces whatever the app answers
            upload.response_started = True
            await send(message)

        self.limits.large_in_flight += large
        try:
            await self.app(scope, upload.next_message, guarded_send)
        except Exception:
            if not (upload.timed_out or upload.disconnected):
                raise
        finally:
            self.limits.large_in_flight -= large
        where = f"{scope['method']} {scope['path']}"
        expected = "?" if length is None else str(length)
        if upload.timed_out:
            log.warning("request body timed out after %s s: %d of %s bytes (%s)",
                        settings.body_read_timeout_s, upload.received, expected, where)
            if not upload.response_started:
                await _respond(send, 408, "the request body did not arrive within "
                               f"{settings.body_read_timeout_s:g} s")
        elif upload.disconnected and not upload.complete:
            log.warning("upload aborted: the client disconnected after %d of %s bytes (%s)",
                        upload.received, expected, where)


def install(app: FastAPI, settings: Callable[[], Settings]) -> BodyLimits:
    """Put the body limits in front of ``app``'s routes; returns their state."""
    limits = BodyLimits(settings)
    app.add_middleware(BodyLimitMiddleware, limits=limits)
    return limits
