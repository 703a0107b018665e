"""The emulator's server: TLS WebSocket endpoint, per-connection records, lifecycle."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections.abc import Callable
from http import HTTPStatus
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, TypeVar
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from phone_agent.emulator import protocol, rest
from phone_agent.emulator.auth_tokens import Admitted, AuthTokens, Refused, admit_connection
from phone_agent.emulator.conversation import Conversation, Options
from phone_agent.emulator.pacing import CLOCKS, Changes, ClockName
from phone_agent.emulator.script import EmulatorScript
from phone_agent.emulator.session import EmulatorSession, Observe
from phone_agent.emulator.tls import EmulatorTLS

if TYPE_CHECKING:
    from google.genai.types import HttpOptionsDict

log = logging.getLogger(__name__)

T = TypeVar("T")

_METHODS = ("BidiGenerateContent", "BidiGenerateContentConstrained")
_MAX_MESSAGE_BYTES = 16 * 1024 * 1024


class GeminiEmulator:
    """A local Gemini Live API endpoint for the real google-genai SDK, driven by a script.

    `speed` paces the model's audio relative to real time (2.0 is twice real time, as the service
    does; `math.inf` sends as fast as possible); it also divides `Pause` and `Recorded` offsets.
    `chunk_ms` is the length of each audio message.
    `clock` is what paces replies and `GoAway`: ``"wall"`` time, or ``"audio"``, the caller audio
    received on the connection, so that replays are deterministic whatever the transport's speed
    (a connection that stops sending audio then stalls its reply; see `emulator.pacing`).
    `vad_threshold_dbfs` is the RMS level above which caller audio counts as speech.
    `record_messages=False` keeps session records small for long-running use (offline mode): no
    per-message records and no caller PCM, only setup, speech, replies and how the session ended.
    `observe` is told, with timestamps, of every audio chunk and text in and every message out
    (benchmarks: see `session.Observe`).
    `api_key`, when set, is the only key REST calls and plain Live sessions are accepted with.
    The same port serves `auth_tokens.create` (REST) and enforces ephemeral tokens on
    `BidiGenerateContentConstrained`: see `emulator.auth_tokens`; `auth_tokens` holds the tokens
    issued and the clock that expires them.

    Use as `async with GeminiEmulator(script) as emu:` or with `start()` / `close()`; point the SDK
    at it with `http_options(emu)`. Each connection gets its own `EmulatorSession` in `sessions`.
    """

    def __init__(
        self,
        script: EmulatorScript | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        speed: float = 2.0,
        chunk_ms: int = 40,
        vad_threshold_dbfs: float = -40.0,
        record_messages: bool = True,
        setup_delay_s: float = 0.0,
        clock: ClockName = "wall",
        observe: Observe | None = None,
        api_key: str | None = None,
    ) -> None:
        if not speed > 0:
            raise ValueError(f"speed must be positive, got {speed}")
        if chunk_ms <= 0:
            raise ValueError(f"chunk_ms must be positive, got {chunk_ms}")
        if clock not in CLOCKS:
            raise ValueError(f"clock must be one of {', '.join(CLOCKS)}, got {clock!r}")
        self.script = script if script is not None else EmulatorScript()
        """The script new connections follow; may be replaced between connections."""
        self.host = host
        self._requested_port = port
        self._options = Options(
            speed=speed,
            chunk_ms=chunk_ms,
            vad_threshold_dbfs=vad_threshold_dbfs,
            record_messages=record_messages,
            setup_delay_s=setup_delay_s,
            clock=clock,
            observe=observe,
        )
        self._tls: EmulatorTLS | None = None
        self._server: Server | None = None
        self._port: int | None = None
        self._sessions: list[EmulatorSession] = []
        self._live: set[Conversation] = set()
        self._handles: dict[str, int] = {}
        self._changes: Changes | None = None
        self._closed = False
        self.auth_tokens = AuthTokens(api_key=api_key)
        """Ephemeral tokens issued here; tests may replace its `clock`."""

    # -- lifecycle ---------------------------------------------------------------------------------

    async def start(self) -> GeminiEmulator:
        """Make the certificates and start listening."""
        if self._server is not None or self._closed:
            raise RuntimeError("a GeminiEmulator can be started only once")
        self._changes = Changes()
        self._tls = EmulatorTLS()
        try:
            self._server = await serve(
                self._handle,
                self.host,
                self._requested_port,
                ssl=self._tls.server_context(),
                process_request=_check_path,
                compression=None,
                max_size=_MAX_MESSAGE_BYTES,
                close_timeout=2.0,
                create_connection=rest.connection_class(self.auth_tokens.handle),
            )
        except BaseException:
            self._tls.close()
            raise
        self._port = self._server.sockets[0].getsockname()[1]
        log.info("Gemini Live emulator listening on %s", self.base_url)
        return self

    async def close(self) -> None:
        """Close every session with code 1000, stop listening and remove the temp files."""
        if self._closed:
            return
        self._closed = True
        try:
            if self._live:
                await asyncio.gather(
                    *(conv.close(protocol.CLOSE_NORMAL, "emulator closed") for conv in self._live),
                    return_exceptions=True,
                )
            if self._server is not None:
                self._server.close()
                await self._server.wait_closed()
        finally:
            if self._tls is not None:
                self._tls.close()

    async def __aenter__(self) -> GeminiEmulator:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # -- where to connect --------------------------------------------------------------------------

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("the emulator is not started")
        return self._port

    @property
    def base_url(self) -> str:
        """`https://127.0.0.1:PORT`: what the SDK's `http_options.base_url` wants."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"https://{host}:{self.port}"

    @property
    def ca_file(self) -> Path:
        """The PEM file of the CA that signed the emulator's certificate."""
        if self._tls is None:
            raise RuntimeError("the emulator is not started")
        return self._tls.ca_file

    def client_ssl_context(self) -> ssl.SSLContext:
        """A client SSL context that trusts the emulator (and nothing else)."""
        if self._tls is None:
            raise RuntimeError("the emulator is not started")
        return self._tls.client_context()

    def http_options(self) -> HttpOptionsDict:
        """What `genai.Client(http_options=...)` needs to reach this emulator."""
        return http_options(self)

    # -- observing ---------------------------------------------------------------------------------

    @property
    def sessions(self) -> list[EmulatorSession]:
        """One record per connection, in the order they connected."""
        return list(self._sessions)

    async def wait_for(
        self,
        predicate: Callable[[], T | None],
        timeout: float = 5.0,  # noqa: ASYNC109 - a plain timeout reads best in tests
    ) -> T:
        """Wait until `predicate()` is truthy and return its value; re-checked on every change.

        Raises `TimeoutError` after `timeout` seconds.
        """
        if self._changes is None:
            raise RuntimeError("the emulator is not started")
        try:
            async with asyncio.timeout(timeout):
                while not (result := predicate()):
                    await self._changes.wait()
        except TimeoutError:
            raise TimeoutError(f"emulator condition not met within {timeout} s") from None
        return result

    async def wait_for_session(
        self,
        index: int = 0,
        timeout: float = 5.0,  # noqa: ASYNC109
    ) -> EmulatorSession:
        """The `index`-th connection's record, once it has sent its setup."""
        return await self.wait_for(
            lambda: (
                self._sessions[index]
                if len(self._sessions) > index and self._sessions[index].setup is not None
                else None
            ),
            timeout,
        )

    # -- connections -------------------------------------------------------------------------------

    async def _handle(self, ws: ServerConnection) -> None:
        request = ws.request
        assert request is not None
        credential = _api_key(request)
        record = EmulatorSession(
            id=len(self._sessions) + 1,
            path=request.path,
            api_key=credential,
            started_at=time.monotonic(),
        )
        self._sessions.append(record)
        connection, decision = ws, None
        if self.auth_tokens.guards(urlsplit(request.path).path, credential):
            with contextlib.suppress(ConnectionClosed):  # gone: the conversation sees it at once
                connection, decision = await admit_connection(
                    ws,
                    self.auth_tokens,
                    credential,
                    self._handles,
                    setup_timeout_s=self._options.setup_timeout_s,
                )
        conv = Conversation(
            connection, record, self.script, self._options, self._handles, self._notify
        )
        self._live.add(conv)
        self._notify()
        try:
            if isinstance(decision, Refused):
                log.info("session %d refused: %s", record.id, decision.reason)
                record.error = decision.reason
                await conv.close(decision.code, decision.reason)
            elif isinstance(decision, Admitted) and decision.expires_at is not None:
                record.auth_token = decision.token.name if decision.token else None
                await self._run_until(conv, decision.expires_at)
            else:
                await conv.run()
        except Exception as exc:
            log.exception("session %d: emulator error", record.id)
            record.error = f"emulator error: {exc!r}"
            await conv.close(protocol.CLOSE_INTERNAL, "emulator internal error")
        finally:
            self._live.discard(conv)
            await ws.close()
            conv.finish()

    async def _run_until(self, conv: Conversation, expires_at: float) -> None:
        """Run a session admitted by an auth token; close it (1008) when the token expires."""
        delay = expires_at - self.auth_tokens.clock()
        deadline = asyncio.timeout(max(delay, 0.0))
        try:
            async with deadline:
                await conv.run()
        except TimeoutError:
            if not deadline.expired():
                raise
            conv.record.error = "auth token expired"
            await conv.close(protocol.CLOSE_POLICY, "auth token expired")

    def _notify(self) -> None:
        if self._changes is not None:
            self._changes.notify()


def http_options(emulator: GeminiEmulator) -> HttpOptionsDict:
    """`http_options` for `genai.Client` that reach `emulator` over its own TLS.

    google-genai passes `async_client_args["ssl"]` to `websockets.connect` for Live sessions (see
    `_ensure_websocket_ssl_ctx`); `api_version` must be `v1beta`, where the Live API lives.
    """
    options: HttpOptionsDict = {
        "base_url": emulator.base_url,
        "api_version": "v1beta",
        "async_client_args": {"ssl": emulator.client_ssl_context()},
    }
    return options


def _check_path(connection: ServerConnection, request: Request) -> Response | None:
    path = urlsplit(request.path).path
    if path.endswith(_METHODS):
        return None
    return connection.respond(HTTPStatus.NOT_FOUND, f"No Live API method at {path}\n")


def _api_key(request: Request) -> str | None:
    headers = request.headers
    if key := headers.get("x-goog-api-key"):
        return key
    auth = headers.get("authorization", "")
    if auth.startswith("Token "):
        return auth.removeprefix("Token ")
    query = parse_qs(urlsplit(request.path).query)
    for name in ("key", "access_token"):
        if query.get(name):
            return query[name][0]
    return None
