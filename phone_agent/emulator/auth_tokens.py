"""Ephemeral auth tokens, issued and enforced as the Gemini API documents them.

Minting: `POST /v1alpha/auth_tokens` (what `client.auth_tokens.create` sends), authenticated by the
API key (`x-goog-api-key` or `?key=`). The body's fields are top level: `uses`, `expireTime`,
`newSessionExpireTime`, `bidiGenerateContentSetup` (the locked setup: `model`, `generationConfig`,
`systemInstruction`, ...) and `fieldMask`. The answer is `{"name": "auth_tokens/<id>"}` only: the
other fields are input only.

Using: the Live method `BidiGenerateContentConstrained` with the token as credential
(`?access_token=`, `Authorization: Token …`, or the SDK's `x-goog-api-key`). The emulator reads the
setup, then either admits the session or closes the connection with 1008 and a reason, the way
Google closes a Live connection it refuses (after the upgrade, not with an HTTP error), so the SDK
raises `APIError(1008, reason)` from `connect`. Google does not document its codes and reasons for
token refusals: these are the emulator's own.

- unknown token, no token, or a token on the plain `BidiGenerateContent` method: refused (the
  last with the message Google is reported to send);
- `expireTime` (default 30 min, at most 20 h ahead) passed: refused; a session still open then is
  closed with 1008 ("Gemini may preemptively close the session after this time");
- `newSessionExpireTime` (default 60 s) passed: no new sessions;
- `uses` (default 1; 0: no limit): each admitted session uses one. Resuming a session (a
  resumption handle the emulator issued) uses none, and is not bound by `newSessionExpireTime`;
- a token naming a model admits sessions of that model only;
- with the emulator's `api_key` set, a plain session with another key: 1007, "API key not valid".

Locked fields (`bidiGenerateContentSetup`): without `fieldMask`, the whole setup is the token's and
what the client sends is ignored; with `fieldMask` (the SDK's `lock_additional_fields`), only the
listed paths are the token's (unset there: removed) and the rest is the client's. The client's
resumption handle is always kept: it is the session's state, not its configuration. Paths match
in either casing (`generationConfig.top_k`).

`clock` (epoch seconds) decides expiry; tests move it, e.g. `emu.auth_tokens.clock = lambda:
time.time() + 3600`.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import secrets
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, cast

import orjson
from websockets.asyncio.server import ServerConnection

from phone_agent.emulator import protocol
from phone_agent.emulator.rest import RestRequest, RestResponse, error

log = logging.getLogger(__name__)

TOKEN_PREFIX = "auth_tokens/"
CONSTRAINED_METHOD = "BidiGenerateContentConstrained"
PATHS = frozenset({"/v1alpha/auth_tokens", "/v1beta/auth_tokens"})
DEFAULT_EXPIRE_S = 30 * 60
DEFAULT_NEW_SESSION_S = 60
MAX_AHEAD_S = 20 * 3600

UNREGISTERED = (
    "Method doesn't allow unregistered callers (callers without established identity). Please "
    "use API Key or other form of API consumer identity to call this API."
)
BAD_KEY = "API key not valid. Please pass a valid API key."
_FIELDS = {
    "uses": "uses",
    "expire_time": "expire_time",
    "new_session_expire_time": "new_session_expire_time",
    "bidi_generate_content_setup": "setup",
    "field_mask": "field_mask",
    "name": "name",
}


@dataclass
class IssuedToken:
    name: str
    expire_time: float
    """Epoch seconds."""
    new_session_expire_time: float
    uses: int
    """0: no limit."""
    setup: dict[str, Any] | None
    """The locked setup, keys snake_case; None: the token locks nothing."""
    field_mask: tuple[tuple[str, ...], ...] | None
    """The locked paths; None with a setup: all of it."""
    sessions: int = 0
    """Sessions admitted (resumptions included)."""
    used: int = 0
    """Uses spent (resumptions excluded)."""

    @property
    def model(self) -> str | None:
        model = (self.setup or {}).get("model")
        return _model_name(model) if isinstance(model, str) and model else None


@dataclass(frozen=True)
class Admitted:
    setup: dict[str, Any]
    """The effective setup: the client's, with the token's locks applied."""
    token: IssuedToken | None = None
    expires_at: float | None = None
    """Epoch seconds after which the session is closed."""


@dataclass(frozen=True)
class Refused:
    code: int
    reason: str


@dataclass
class AuthTokens:
    """The tokens an emulator issued, and the rules for Live connections.

    `api_key`: the key REST calls (and plain Live sessions) must present; None accepts any key.
    """

    api_key: str | None = None
    clock: Callable[[], float] = time.time
    tokens: dict[str, IssuedToken] = field(default_factory=dict)
    create_calls: int = 0
    """`auth_tokens.create` requests received, refused ones included."""

    # -- minting -----------------------------------------------------------------------------------

    async def handle(self, request: RestRequest) -> RestResponse:
        """The REST surface: `POST /v1alpha/auth_tokens`; anything else is not found."""
        if request.method != "POST" or request.path.rstrip("/") not in PATHS:
            return error(404, "NOT_FOUND", f"Method not found: {request.method} {request.path}")
        return self.create(request)

    def create(self, request: RestRequest) -> RestResponse:
        self.create_calls += 1
        keys = request.query.get("key") or []
        key = request.headers.get("x-goog-api-key") or (keys[0] if keys else None)
        if not key:
            return error(403, "PERMISSION_DENIED", UNREGISTERED)
        if key.startswith(TOKEN_PREFIX) or (self.api_key is not None and key != self.api_key):
            return _bad_key()
        try:
            body = request.json()
        except ValueError:
            return error(400, "INVALID_ARGUMENT", "Invalid JSON payload received.")
        if not isinstance(body, dict):
            return error(400, "INVALID_ARGUMENT", "Invalid JSON payload received.")
        try:
            token = self.issue(body)
        except ValueError as exc:
            return error(400, "INVALID_ARGUMENT", str(exc))
        return RestResponse(200, {"name": token.name})

    def issue(self, body: Mapping[str, Any]) -> IssuedToken:
        """Issue a token from a create request's body (either casing); `ValueError` if it is
        invalid. Tests may call it directly, without the REST round trip."""
        fields: dict[str, Any] = {}
        for key, value in body.items():
            name = _FIELDS.get(protocol.snake_case(key))
            if name is None:
                raise ValueError(
                    f'Invalid JSON payload received. Unknown name "{key}": Cannot find field.'
                )
            fields[name] = value
        now = self.clock()
        uses = fields.get("uses", 1)
        if isinstance(uses, bool) or not isinstance(uses, int) or uses < 0:
            raise ValueError("uses must be a non-negative integer")
        expire = _time(fields.get("expire_time"), now + DEFAULT_EXPIRE_S, now, "expire_time")
        new_session = _time(
            fields.get("new_session_expire_time"),
            now + DEFAULT_NEW_SESSION_S,
            now,
            "new_session_expire_time",
        )
        setup = fields.get("setup")
        if setup is not None and not isinstance(setup, dict):
            raise ValueError("bidi_generate_content_setup must be an object")
        mask = fields.get("field_mask")
        paths: tuple[tuple[str, ...], ...] | None = None
        if mask is not None:
            items = mask.split(",") if isinstance(mask, str) else mask
            if not isinstance(items, list) or not all(isinstance(p, str) for p in items):
                raise ValueError("field_mask must be a comma-separated string of paths")
            paths = tuple(_path(p) for p in items if p.strip())
        token = IssuedToken(
            name=TOKEN_PREFIX + secrets.token_hex(24),
            expire_time=expire,
            new_session_expire_time=new_session,
            uses=uses,
            setup=protocol.normalise(setup) if setup else None,
            field_mask=paths,
        )
        self.tokens[token.name] = token
        log.info("auth token issued (uses %d, model %s)", token.uses, token.model)
        return token

    # -- using -------------------------------------------------------------------------------------

    def guards(self, path: str, credential: str | None) -> bool:
        """Whether a Live connection must be admitted (its setup read and checked) first."""
        return (
            path.endswith(CONSTRAINED_METHOD)
            or (credential or "").startswith(TOKEN_PREFIX)
            or self.api_key is not None
        )

    def admit(
        self, path: str, credential: str | None, setup: Mapping[str, Any], *, resuming: bool
    ) -> Admitted | Refused:
        """Admit a Live session whose (normalised) setup is `setup`, or say why not.

        `resuming`: the setup carries a resumption handle the emulator issued.
        """
        if not path.endswith(CONSTRAINED_METHOD):
            if (credential or "").startswith(TOKEN_PREFIX):
                return _refuse(protocol.CLOSE_POLICY, UNREGISTERED)
            if self.api_key is not None and credential != self.api_key:
                return _refuse(protocol.CLOSE_INVALID_DATA, BAD_KEY)
            return Admitted(dict(setup))
        token = self.tokens.get(credential or "")
        if token is None:
            what = "no auth token" if not credential else "unknown auth token"
            return _refuse(protocol.CLOSE_POLICY, f"{CONSTRAINED_METHOD} refused: {what}")
        now = self.clock()
        if now >= token.expire_time:
            return _refuse(protocol.CLOSE_POLICY, "auth token expired")
        if not resuming:
            if now >= token.new_session_expire_time:
                return _refuse(protocol.CLOSE_POLICY, "auth token no longer opens new sessions")
            if token.uses and token.used >= token.uses:
                return _refuse(protocol.CLOSE_POLICY, "auth token already used")
        model = setup.get("model")
        if token.model is not None and _model_name(str(model)) != token.model:
            return _refuse(protocol.CLOSE_POLICY, f"auth token is locked to {token.model}")
        if not resuming:
            token.used += 1
        token.sessions += 1
        return Admitted(locked_setup(setup, token), token, token.expire_time)


def locked_setup(client: Mapping[str, Any], token: IssuedToken) -> dict[str, Any]:
    """The setup a session runs with: the client's, with the token's locked fields."""
    if token.setup is None:
        return copy.deepcopy(dict(client))
    if token.field_mask is None:
        effective = copy.deepcopy(token.setup)
        effective["model"] = client.get("model")
    else:
        effective = copy.deepcopy(dict(client))
        for path in token.field_mask:
            if path != ("model",):  # checked by `admit`; never taken away
                _put(effective, path, _get(token.setup, path))
    handle = _get(client, ("session_resumption", "handle"))
    if handle is not None:
        resumption = effective.setdefault("session_resumption", {})
        if isinstance(resumption, dict):
            resumption["handle"] = handle
    return effective


# -- the connection --------------------------------------------------------------------------------


async def admit_connection(
    ws: ServerConnection,
    tokens: AuthTokens,
    credential: str | None,
    handles: Mapping[str, int],
    *,
    setup_timeout_s: float,
) -> tuple[ServerConnection, Admitted | Refused]:
    """Read a guarded connection's setup and decide. Admitted, the connection is given back with
    the effective setup as its first message (for the `Conversation` to read)."""
    request = ws.request
    assert request is not None
    try:
        async with asyncio.timeout(setup_timeout_s):
            frame = await ws.recv()
        events = protocol.parse_client_message(frame)
    except TimeoutError:
        return ws, _refuse(protocol.CLOSE_POLICY, "no setup message received")
    except protocol.ProtocolError as exc:
        return ws, _refuse(exc.code, exc.reason)
    setup = events[0] if len(events) == 1 else None
    if not isinstance(setup, protocol.Setup):
        return ws, _refuse(protocol.CLOSE_POLICY, "the first message must be a setup")
    info = setup.info
    resuming = info.resumption_handle is not None and info.resumption_handle in handles
    path = request.path.split("?", 1)[0]
    decision = tokens.admit(path, credential, info.raw, resuming=resuming)
    if isinstance(decision, Refused):
        return ws, decision
    first = orjson.dumps({"setup": decision.setup})
    return cast(ServerConnection, _FirstMessage(ws, first)), decision


class _FirstMessage:
    """A connection whose first message (already read) is replaced by `first`."""

    def __init__(self, ws: ServerConnection, first: bytes) -> None:
        self._ws = ws
        self._first: bytes | None = first

    async def recv(self) -> str | bytes:
        if self._first is not None:
            first, self._first = self._first, None
            return first
        return await self._ws.recv()

    async def __aiter__(self) -> AsyncIterator[str | bytes]:
        if self._first is not None:
            first, self._first = self._first, None
            yield first
        async for message in self._ws:
            yield message

    def __getattr__(self, name: str) -> Any:
        return getattr(self._ws, name)


# -- helpers ---------------------------------------------------------------------------------------


def _refuse(code: int, reason: str) -> Refused:
    # A close frame's reason is at most 123 bytes: Google's are its error messages, cut there.
    return Refused(code, reason.encode()[:123].decode(errors="ignore"))


def _bad_key() -> RestResponse:
    detail = {"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID"}
    return error(400, "INVALID_ARGUMENT", BAD_KEY, details=[detail])


def _time(value: object, default: float, now: float, name: str) -> float:
    if value is None:
        return default
    if not isinstance(value, str):
        raise ValueError(f"{name} must be an RFC 3339 timestamp")
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"{name} must be an RFC 3339 timestamp, got {value!r}") from None
    if moment.tzinfo is None:
        raise ValueError(f"{name} must carry a time zone, got {value!r}")
    at = moment.timestamp()
    if at > now + MAX_AHEAD_S:
        raise ValueError(f"{name} must be less than 20 hours in the future")
    return at


def _model_name(model: str) -> str:
    return model if model.startswith("models/") else f"models/{model}"


def _path(text: str) -> tuple[str, ...]:
    return tuple(protocol.snake_case(part.strip()) for part in text.strip().split("."))


def _get(value: Any, path: tuple[str, ...]) -> Any:
    for key in path:
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return copy.deepcopy(value)


def _put(target: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    *parents, last = path
    for key in parents:
        child = target.get(key)
        if not isinstance(child, dict):
            if value is None:
                return
            child = target[key] = {}
        target = child
    if value is None:
        target.pop(last, None)
    else:
        target[last] = value
