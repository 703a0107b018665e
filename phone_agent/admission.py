"""Stream admission: only the call Twilio is connecting may open a media stream.

The media WebSocket is reachable by anyone who can reach the server, and a stream opens a paid
model session and makes claims (the caller's number) that tools trust. So the signed voice webhook
mints a **stream token** — bound to the CallSid, expiring within a minute, single use — and sends it
as a TwiML `<Parameter>` (never in the URL: Twilio drops query strings). The media socket checks it
against `start.callSid` before any model session is opened or paid for.

Token: `base64url(payload).base64url(HMAC-SHA256(key, payload))`, payload
`{"c": call_sid, "e": expiry (unix s), "n": nonce}`. The key is `PHONE_AGENT_STREAM_SECRET`, or
derived from `TWILIO_AUTH_TOKEN` (every replica already shares it), or, with neither, random per
process (one process only). Single use is enforced by claiming the nonce in a `NonceStore`:
in-process by default, Redis (`SET NX EX`) when `PHONE_AGENT_REDIS_URL` is set, so a token used on
one replica is refused on every other.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import time
from collections.abc import Callable
from typing import Protocol

import orjson

TOKEN_PARAMETER = "token"
_KEY_CONTEXT = b"phone-agent stream token v1"


class AdmissionError(Exception):
    """The stream is refused; `reason` is one word for logs and metrics (never the token)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


class NonceStore(Protocol):
    async def claim(self, nonce: str, ttl_s: float) -> bool:
        """True the first time `nonce` is claimed (within `ttl_s`), False afterwards."""
        ...


class MemoryNonceStore:
    """Single use within one process."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._seen: dict[str, float] = {}

    async def claim(self, nonce: str, ttl_s: float) -> bool:
        now = self._clock()
        if len(self._seen) > 10_000:
            self._seen = {n: t for n, t in self._seen.items() if t > now}
        if self._seen.get(nonce, 0.0) > now:
            return False
        self._seen[nonce] = now + ttl_s
        return True


class RedisNonceStore:
    """Single use across every process sharing one Redis."""

    def __init__(self, url: str, *, prefix: str = "phone-agent:stream-token:") -> None:
        from redis import asyncio as redis_asyncio

        self._redis = redis_asyncio.Redis.from_url(url)
        self._prefix = prefix

    async def claim(self, nonce: str, ttl_s: float) -> bool:
        stored = await self._redis.set(self._prefix + nonce, b"1", nx=True, px=int(ttl_s * 1000))
        return bool(stored)

    async def aclose(self) -> None:
        await self._redis.aclose()


def derive_key(stream_secret: str | None, twilio_auth_token: str | None) -> bytes:
    if stream_secret:
        return hashlib.sha256(_KEY_CONTEXT + b"|secret|" + stream_secret.encode()).digest()
    if twilio_auth_token:
        return hmac.new(twilio_auth_token.encode(), _KEY_CONTEXT, hashlib.sha256).digest()
    return secrets.token_bytes(32)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class StreamTokens:
    """Mints and checks stream tokens."""

    def __init__(
        self,
        key: bytes,
        store: NonceStore,
        *,
        ttl_s: float = 60.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._key = key
        self._store = store
        self.ttl_s = ttl_s
        self._clock = clock

    def mint(self, call_sid: str) -> str:
        payload = orjson.dumps(
            {"c": call_sid, "e": int(self._clock() + self.ttl_s), "n": secrets.token_urlsafe(16)}
        )
        return f"{_b64(payload)}.{_b64(self._sign(payload))}"

    def _sign(self, payload: bytes) -> bytes:
        return hmac.new(self._key, payload, hashlib.sha256).digest()

    async def admit(self, token: str | None, call_sid: str) -> None:
        """Raise `AdmissionError` unless `token` is a fresh, unused token minted for `call_sid`."""
        if not token:
            raise AdmissionError("missing", "no stream token in start.customParameters")
        try:
            encoded_payload, encoded_mac = token.split(".", 1)
            payload, mac = _unb64(encoded_payload), _unb64(encoded_mac)
        except (ValueError, binascii.Error):
            raise AdmissionError("malformed", "the stream token is malformed") from None
        if not hmac.compare_digest(mac, self._sign(payload)):
            raise AdmissionError("forged", "the stream token's signature is wrong")
        try:
            claims = orjson.loads(payload)
            bound_sid, expires, nonce = str(claims["c"]), float(claims["e"]), str(claims["n"])
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            raise AdmissionError("malformed", "the stream token's payload is malformed") from None
        if not hmac.compare_digest(bound_sid.encode(), call_sid.encode()):
            raise AdmissionError("wrong_call", "the stream token was minted for another call")
        remaining = expires - self._clock()
        if remaining <= 0:
            raise AdmissionError("expired", "the stream token has expired")
        if not await self._store.claim(nonce, remaining + 5.0):
            raise AdmissionError("replayed", "the stream token was already used")
