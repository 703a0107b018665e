"""The softphone's HTTP surface, mounted only when `PHONE_AGENT_SOFTPHONE_SECRET` is set.

- `GET /softphone`: the page (static; no secret in it: the operator types the secret in), and
  `GET /softphone/static/…`: its script, audio worklets and style.
- `POST /softphone/call` with `Authorization: Bearer <secret>`: place a call. Mints the stream
  token the signed webhook would give a Twilio call (`from` is "softphone"), pre-warms the model
  session as the webhook does, and returns what the page needs to speak the Media Streams
  protocol to `/twilio/media`: `call_sid`, `stream_sid`, `account_sid`, `parameters` (the
  `customParameters` of `start`), `media_url` and `events_url` (relative to the page).
- `WS /softphone/events?call_sid=…`: the call's event feed (see `feed`), read-only; the first
  message must be `{"secret": "…"}`.

The secret never travels in a URL (proxies log those): a header on the POST, the first message on
the socket. A wrong one is a 401, or a close with 1008.
"""

from __future__ import annotations

import contextlib
import hmac
import logging
import math
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import anyio
import orjson
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from starlette.websockets import WebSocket, WebSocketDisconnect

from phone_agent.config import Settings
from phone_agent.softphone.feed import CallChannel, softphone_feed

if TYPE_CHECKING:
    from phone_agent.app import AppState

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).parent / "static"
MEDIA_URL = "twilio/media"
"""The media socket, relative to the page's URL (so a path prefix in front of the app works)."""
ACCOUNT_SID = "AC" + "0" * 32
"""What the page sends as `start.accountSid`: it is no Twilio account."""
AUTH_TIMEOUT_S = 5.0
FEED_CLOSE_UNKNOWN = 4404

_PAGE_HEADERS = {
    # Same-origin scripts, worklets and sockets only; nothing inline, no framing.
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
        "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    # The page asks for the microphone; nothing else may.
    "Permissions-Policy": "microphone=(self), camera=(), geolocation=()",
}
_STATIC_HEADERS = [(b"x-content-type-options", b"nosniff"), (b"cache-control", b"no-cache")]


def _secret_matches(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode(), expected.encode())


class _WithHeaders:
    """Adds headers to every HTTP response of the wrapped app (the static files)."""

    def __init__(self, app: ASGIApp, headers: list[tuple[bytes, bytes]]) -> None:
        self.app = app
        self.headers = headers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *self.headers]}
            await send(message)

        await self.app(scope, receive, send_with_headers)


def softphone_routes(settings: Settings, state: AppState) -> list[BaseRoute]:
    """The softphone's routes, or none when `PHONE_AGENT_SOFTPHONE_SECRET` is unset (404)."""
    if settings.softphone_secret is None:
        return []
    secret = settings.softphone_secret.get_secret_value()
    feed = softphone_feed(state, create=True)
    assert feed is not None

    async def page(request: Request) -> Response:
        return FileResponse(STATIC_DIR / "index.html", headers=_PAGE_HEADERS)

    async def place_call(request: Request) -> Response:
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not _secret_matches(given.strip(), secret):
            log.warning(
                "softphone call refused: wrong operator secret",
                extra={"event": "softphone.refused"},
            )
            return JSONResponse({"error": "wrong operator secret"}, status_code=401)
        limit = settings.max_concurrent_calls
        if limit and state.active_calls >= limit:
            return JSONResponse({"error": "all lines are busy"}, status_code=503)
        call_sid = "CA" + secrets.token_hex(16)
        if not feed.open(call_sid):
            return JSONResponse({"error": "too many softphone calls"}, status_code=503)
        # Exactly what the signed webhook gives a Twilio call's stream.
        parameters = {
            "call_sid": call_sid,
            "from": "softphone",
            **state.stream_parameters(call_sid),
        }
        if state.prewarm is not None:
            state.prewarm.start(call_sid)
        log.info("softphone call placed", extra={"event": "softphone.call", "call_sid": call_sid})
        body = {
            "call_sid": call_sid,
            "stream_sid": "MZ" + secrets.token_hex(16),
            "account_sid": ACCOUNT_SID,
            "parameters": parameters,
            "media_url": MEDIA_URL,
            "events_url": f"softphone/events?call_sid={call_sid}",
        }
        return JSONResponse(body, headers={"Cache-Control": "no-store"})

    async def events(websocket: WebSocket) -> None:
        await websocket.accept()
        channel = await _authenticate(websocket, secret, feed.channel)
        if channel is None:
            return
        stream = channel.subscribe()
        async with anyio.create_task_group() as group:

            async def watch_client() -> None:
                # The feed is read-only: anything the page sends is ignored; its going ends this.
                with contextlib.suppress(WebSocketDisconnect, RuntimeError):
                    while (await websocket.receive())["type"] != "websocket.disconnect":
                        pass
                group.cancel_scope.cancel()

            group.start_soon(watch_client)
            with anyio.CancelScope() as unused:
                # A call that never connects is given up once its stream token is useless.
                unused.deadline = anyio.current_time() + feed.unused_after_s
                async with stream:
                    async for event in stream:
                        if event.get("type") == "started":
                            unused.deadline = math.inf
                        try:
                            await websocket.send_text(orjson.dumps(event).decode())
                        except (WebSocketDisconnect, RuntimeError, OSError):
                            break
            group.cancel_scope.cancel()
        with contextlib.suppress(WebSocketDisconnect, RuntimeError, OSError):
            await websocket.close(code=1000)

    return [
        Route("/softphone", page, methods=["GET"]),
        Route("/softphone/call", place_call, methods=["POST"]),
        WebSocketRoute("/softphone/events", events),
        Mount(
            "/softphone/static",
            app=_WithHeaders(StaticFiles(directory=STATIC_DIR), _STATIC_HEADERS),
        ),
    ]


async def _authenticate(
    websocket: WebSocket, secret: str, channel_of: Callable[[str], CallChannel | None]
) -> CallChannel | None:
    """The first message must carry the operator secret; then the call must be a softphone call."""
    given = ""
    with anyio.move_on_after(AUTH_TIMEOUT_S):
        try:
            received = await websocket.receive()
        except (WebSocketDisconnect, RuntimeError):
            return None
        if received["type"] == "websocket.disconnect":
            return None
        try:
            message = orjson.loads(received.get("text") or "")
        except orjson.JSONDecodeError:
            message = None
        if isinstance(message, dict) and isinstance(message.get("secret"), str):
            given = message["secret"]
    if not given or not _secret_matches(given, secret):
        log.warning(
            "softphone feed refused: wrong operator secret", extra={"event": "softphone.refused"}
        )
        await websocket.close(code=1008, reason="wrong operator secret")
        return None
    channel = channel_of(websocket.query_params.get("call_sid", ""))
    if channel is None:
        await websocket.close(code=FEED_CLOSE_UNKNOWN, reason="no such softphone call")
        return None
    return channel
