"""REST requests on the emulator's port, beside the Live WebSocket.

The SDK uses one base URL for Google's REST methods (e.g. `auth_tokens.create`) and the Live
WebSocket, so the emulator answers both on one TLS port. websockets speaks only the opening
handshake (a GET without a body): a connection whose first request is anything else is taken over
here, parsed with h11, answered with one JSON response and closed. A GET goes on to websockets
untouched, so the Live path costs nothing more than a look at the first bytes.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qs, urlsplit

import h11
import orjson
from websockets.asyncio.server import ServerConnection

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 1024 * 1024


@dataclass(frozen=True)
class RestRequest:
    method: str
    path: str
    """Without the query string."""
    query: Mapping[str, list[str]]
    headers: Mapping[str, str]
    """Lower-case names."""
    body: bytes

    def json(self) -> Any:
        """The body as JSON (`ValueError` if it is not)."""
        return orjson.loads(self.body) if self.body else {}


@dataclass(frozen=True)
class RestResponse:
    status: int
    body: Mapping[str, Any] = field(default_factory=dict)


RestHandler = Callable[[RestRequest], Awaitable[RestResponse]]


def error(status: int, grpc_status: str, message: str, **extra: Any) -> RestResponse:
    """A Google API error body: `{"error": {"code", "message", "status", ...}}`."""
    return RestResponse(
        status, {"error": {"code": status, "message": message, "status": grpc_status, **extra}}
    )


def connection_class(handler: RestHandler) -> type[ServerConnection]:
    """A `ServerConnection` for `websockets.serve(create_connection=...)` that hands non-GET
    requests to `handler`."""

    class _Connection(_RestOrWebSocket):
        rest_handler = staticmethod(handler)

    return _Connection


class _RestOrWebSocket(ServerConnection):
    rest_handler: Callable[[RestRequest], Awaitable[RestResponse]]

    _mode = "sniff"  # then "websocket" or "rest"
    _sniffed = b""
    _http: h11.Connection | None = None
    _request: h11.Request | None = None
    _body = b""
    _task: asyncio.Task[None] | None = None

    def data_received(self, data: bytes) -> None:
        if self._mode == "websocket":
            super().data_received(data)
        elif self._mode == "rest":
            self._rest_data(data)
        else:
            self._sniffed += data
            if len(self._sniffed) < 4:
                return
            data, self._sniffed = self._sniffed, b""
            if data.startswith(b"GET "):
                self._mode = "websocket"
                super().data_received(data)
            else:
                self._mode = "rest"
                self._http = h11.Connection(h11.SERVER, max_incomplete_event_size=64 * 1024)
                self._rest_data(data)

    def eof_received(self) -> None:
        if self._mode == "sniff" and self._sniffed:
            self._mode = "websocket"
            data, self._sniffed = self._sniffed, b""
            super().data_received(data)
        if self._mode == "rest":
            return None  # closing is ours, once the response is written
        return super().eof_received()

    def _rest_data(self, data: bytes) -> None:
        http = self._http
        if http is None or self._task is not None:
            return  # one request per connection; anything after it is ignored
        try:
            http.receive_data(data)
            while True:
                event = http.next_event()
                if event is h11.NEED_DATA or event is h11.PAUSED:
                    return
                if isinstance(event, h11.Request):
                    self._request = event
                elif isinstance(event, h11.Data):
                    self._body += bytes(event.data)
                    if len(self._body) > MAX_BODY_BYTES:
                        self._respond(error(413, "INVALID_ARGUMENT", "request too large"))
                        return
                elif isinstance(event, h11.EndOfMessage):
                    self._task = self.loop.create_task(self._serve())
                    return
                else:  # ConnectionClosed
                    self.transport.close()
                    return
        except h11.RemoteProtocolError as exc:
            self._respond(error(400, "INVALID_ARGUMENT", f"malformed HTTP request: {exc}"))

    async def _serve(self) -> None:
        assert self._request is not None
        target = self._request.target.decode("ascii", "replace")
        parts = urlsplit(target)
        request = RestRequest(
            method=self._request.method.decode("ascii", "replace").upper(),
            path=parts.path,
            query=parse_qs(parts.query),
            headers={
                name.decode("latin-1").lower(): value.decode("latin-1")
                for name, value in self._request.headers
            },
            body=self._body,
        )
        try:
            response = await self.rest_handler(request)
        except Exception:
            log.exception("emulator REST handler failed for %s %s", request.method, request.path)
            response = error(500, "INTERNAL", "Internal error encountered.")
        self._respond(response)

    def _respond(self, response: RestResponse) -> None:
        http = self._http
        if http is None or self.transport.is_closing():
            return
        body = orjson.dumps(response.body)
        headers = [
            ("content-type", "application/json; charset=UTF-8"),
            ("content-length", str(len(body))),
            ("connection", "close"),
        ]
        try:
            head = h11.Response(
                status_code=response.status,
                headers=headers,
                reason=HTTPStatus(response.status).phrase,
            )
            data = http.send(head)
            data = (data or b"") + (http.send(h11.Data(data=body)) or b"")
            data += http.send(h11.EndOfMessage()) or b""
        except h11.LocalProtocolError:  # e.g. a response already started
            self.transport.close()
            return
        self.transport.write(data)
        self.transport.close()
