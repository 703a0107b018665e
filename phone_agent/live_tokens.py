"""Gemini Live ephemeral tokens for first-party clients (the browser softphone).

`POST /v1/live-token` mints a token with the SDK's `auth_tokens.create`: single use, valid for
`PHONE_AGENT_LIVE_TOKEN_TTL_S`, opening a session only within its first 60 s, and locked to the
configured model and session setup (all of it: Gemini ignores the setup fields the client sends).
The client then opens the Live WebSocket itself, straight to Gemini:

    {websocket_url}?access_token={token}

and sends a setup naming the model. The API key never leaves the server: the answer carries the
token and the hints above, nothing else.

Only first-party clients get tokens: the request must carry `Authorization: Bearer
<PHONE_AGENT_LIVE_TOKEN_CLIENT_SECRET>`, compared in constant time; without that setting there is
no endpoint at all. Requests are counted per source address before the secret is checked (so
guessing is rate-limited too), in the process or in Redis as `limits.py` counts webhooks.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import ssl
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

import aiohttp
from google import genai
from google.genai import errors as genai_errors
from google.genai import types
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from phone_agent.config import Settings
from phone_agent.gemini import client_ssl_context, connect_config
from phone_agent.limits import Counters, MemoryCounters

if TYPE_CHECKING:
    from phone_agent.app import GeminiTarget

log = logging.getLogger(__name__)

PATH = "/v1/live-token"
API_VERSION = "v1alpha"  # ephemeral tokens and the constrained Live method are v1alpha only
GOOGLE_BASE_URL = "https://generativelanguage.googleapis.com"
LIVE_METHOD = f"google.ai.generativelanguage.{API_VERSION}.GenerativeService"
NEW_SESSION_WINDOW_S = 60.0
MINT_TIMEOUT_S = 10.0


class LiveTokenError(Exception):
    """Gemini did not issue a token (refused, unreachable, too slow); the message says which,
    without secrets."""


@dataclass(frozen=True)
class LiveToken:
    token: str
    """The token's name, `auth_tokens/…`: the credential the client connects with."""
    expires_at: datetime
    new_session_expires_at: datetime
    model: str
    websocket_url: str
    """The constrained Live method's URL, without the token (add `?access_token=`)."""

    def as_json(self) -> dict[str, str]:
        return {
            "token": self.token,
            "expires_at": _rfc3339(self.expires_at),
            "new_session_expires_at": _rfc3339(self.new_session_expires_at),
            "model": self.model,
            "api_version": API_VERSION,
            "websocket_url": self.websocket_url,
        }


def _utcnow() -> datetime:
    return datetime.now(UTC)


class LiveTokenIssuer:
    """Mints single-use Live tokens locked to the configured model and setup.

    Each mint uses a fresh SDK client (cheap with a ready SSL context) that is closed at once, so
    the issuer holds no connections and needs no shutdown. `declarations` are tools to lock into
    the setup: none by default, since the client (not this server) would have to answer them.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        api_key: str,
        base_url: str | None = None,
        ssl_context: ssl.SSLContext | None = None,
        declarations: list[types.FunctionDeclaration] | None = None,
        clock: Callable[[], datetime] = _utcnow,
        timeout_s: float = MINT_TIMEOUT_S,
    ) -> None:
        model = settings.model
        self.model = model if model.startswith("models/") else f"models/{model}"
        self.ttl_s = settings.live_token_ttl_s
        self.timeout_s = timeout_s
        self.websocket_url = _websocket_url(base_url or GOOGLE_BASE_URL)
        self._api_key = api_key
        self._clock = clock
        self._config = connect_config(settings, declarations)
        context = ssl_context or client_ssl_context()
        self._http_options = types.HttpOptions(
            api_version=API_VERSION,
            base_url=base_url,
            async_client_args={"ssl": context},
            client_args={"verify": context},
        )

    @classmethod
    def from_settings(
        cls, settings: Settings, target: GeminiTarget | None = None
    ) -> LiveTokenIssuer | None:
        """The issuer for `target` (tests, a local emulator) or for the configured Gemini; None
        without an API key (offline mode: there is no Gemini to mint from)."""
        if target is not None:
            return cls(
                settings,
                api_key=target.api_key,
                base_url=target.base_url,
                ssl_context=target.ssl_context,
            )
        if settings.gemini_api_key is None:
            return None
        return cls(
            settings,
            api_key=settings.gemini_api_key.get_secret_value(),
            base_url=settings.gemini_base_url,
        )

    async def mint(self) -> LiveToken:
        """A new token; raises `LiveTokenError`."""
        now = self._clock()
        expires_at = now + timedelta(seconds=self.ttl_s)
        new_session_by = now + timedelta(seconds=min(NEW_SESSION_WINDOW_S, self.ttl_s))
        config = types.CreateAuthTokenConfig(
            uses=1,
            expire_time=expires_at,
            new_session_expire_time=new_session_by,
            live_connect_constraints=types.LiveConnectConstraints(
                model=self.model, config=self._config
            ),
            # No lock_additional_fields: the whole setup is locked, not only the fields set.
        )
        client = genai.Client(api_key=self._api_key, http_options=self._http_options)
        try:
            with warnings.catch_warnings():
                # "experimental": said once per process, and an error under pytest's -W error.
                warnings.simplefilter("ignore", genai_errors.ExperimentalWarning)
                pending = client.aio.auth_tokens.create(config=config)
            async with asyncio.timeout(self.timeout_s):
                token = await pending
        except genai_errors.APIError as exc:
            raise LiveTokenError(f"Gemini refused: {exc.code} {exc.status or ''}".strip()) from None
        except TimeoutError:
            raise LiveTokenError(f"no answer from Gemini within {self.timeout_s:g} s") from None
        except (OSError, aiohttp.ClientError) as exc:
            raise LiveTokenError(f"cannot reach Gemini: {type(exc).__name__}") from None
        finally:
            await client.aio.aclose()
            client.close()
        if not token.name or not token.name.startswith("auth_tokens/"):
            raise LiveTokenError("Gemini answered without a token")
        return LiveToken(
            token=token.name,
            expires_at=expires_at,
            new_session_expires_at=new_session_by,
            model=self.model,
            websocket_url=self.websocket_url,
        )


def live_token_routes(
    settings: Settings, issuer: LiveTokenIssuer | None, *, counters: Counters | None = None
) -> list[Route]:
    """`POST /v1/live-token`, or no route at all when `PHONE_AGENT_LIVE_TOKEN_CLIENT_SECRET` is
    unset. `issuer` None (offline mode) answers 503. `counters` share the per-address rate across
    replicas (default: this process)."""
    secret = settings.live_token_client_secret
    if secret is None:
        return []
    expected = b"Bearer " + secret.get_secret_value().encode()
    limit = settings.live_token_rate_limit_per_address
    counts: Counters = counters if counters is not None else MemoryCounters()

    async def live_token(request: Request) -> Response:
        address = request.client.host if request.client else "unknown"
        try:
            if limit and await counts.hit(f"live-token:{address}", 60.0) > limit:
                _log_refusal("rate limited", address)
                return _error(429, "too many token requests: try again in a minute", retry=True)
            given = request.headers.get("authorization", "").encode("latin-1", "replace")
            if not hmac.compare_digest(given, expected):
                _log_refusal("bad or missing client secret", address)
                return _error(401, "unauthorized", challenge=True)
            if issuer is None:
                return _error(503, "live tokens need GEMINI_API_KEY (offline mode)")
            token = await issuer.mint()
        except LiveTokenError as exc:
            log.warning(
                "live token not issued: %s",
                exc,
                extra={"event": "live_token.failed", "address": address},
            )
            return _error(502, "Gemini did not issue a token; try again")
        except Exception:
            log.exception("live token request failed", extra={"event": "live_token.failed"})
            return _error(500, "internal error")
        log.info(
            "live token issued",
            extra={
                "event": "live_token.issued",
                "address": address,
                "expires_at": _rfc3339(token.expires_at),
            },
        )
        return JSONResponse(token.as_json(), headers={"Cache-Control": "no-store"})

    return [Route(PATH, live_token, methods=["POST"])]


def _error(status: int, message: str, *, retry: bool = False, challenge: bool = False) -> Response:
    headers = {"Cache-Control": "no-store"}
    if retry:
        headers["Retry-After"] = "60"
    if challenge:
        headers["WWW-Authenticate"] = 'Bearer realm="live-token"'
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def _log_refusal(reason: str, address: str) -> None:
    log.warning(
        "live token refused: %s",
        reason,
        extra={"event": "live_token.refused", "reason": reason, "address": address},
    )


def _websocket_url(base_url: str) -> str:
    """The constrained Live method under `base_url`, as the SDK builds it (always TLS)."""
    parts = urlsplit(base_url.rstrip("/"))
    path = f"{parts.path}/ws/{LIVE_METHOD}.BidiGenerateContentConstrained"
    return urlunsplit(("wss", parts.netloc, path, "", ""))


def _rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
