"""Hang up or transfer a live call through Twilio's REST API (Calls resource, async client).

The bridge depends on the `CallControl` protocol; `TwilioCallControl` implements it with the
`twilio` library's async client, so no request blocks the event loop. A call that has already
ended (HTTP 404, Twilio error 20404) counts as done; every other failure, timeouts included,
raises `CallControlError`, whose message never carries credentials.
"""

from __future__ import annotations

import base64
import logging
import re
from types import TracebackType
from typing import Any, Protocol, Self
from urllib.parse import urlsplit, urlunsplit

import aiohttp  # the transport of twilio's async client (a dependency of `twilio`)
import anyio
from twilio.base.exceptions import TwilioException, TwilioRestException, TwilioServiceException
from twilio.http.async_http_client import AsyncTwilioHttpClient
from twilio.rest import Client
from twilio.twiml.voice_response import VoiceResponse

from phone_agent.logs import mask_number

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 5.0
CALL_ALREADY_ENDED = 20404  # Twilio error code: the resource (here, a live call) was not found.

_E164 = re.compile(r"\+[1-9][0-9]{1,14}")
_CALL_SID = re.compile(r"CA[0-9a-fA-F]{32}")


class CallControlError(Exception):
    """A hang-up or transfer did not happen. The message is safe to log and show."""


class CallControl(Protocol):
    """What the call bridge needs to end or hand over the call it is serving."""

    async def hang_up(self, call_sid: str) -> None:
        """End the call. A call that has already ended is not an error."""
        ...

    async def transfer(self, call_sid: str, to_number: str, *, announce: str | None = None) -> None:
        """Replace the call's TwiML: optionally say `announce`, then dial `to_number` (E.164)."""
        ...


def transfer_twiml(to_number: str, announce: str | None = None) -> str:
    """`<Response>[<Say>announce</Say>]<Dial>to_number</Dial></Response>`, escaped by twilio."""
    response = VoiceResponse()
    if announce:
        response.say(announce)
    response.dial(to_number)
    return str(response.to_xml(xml_declaration=False))


class _HttpClient(AsyncTwilioHttpClient):  # type: ignore[misc]  # twilio is untyped
    """Twilio's async HTTP client with two adjustments made where the library allows them.

    * Credentials travel as a ready `Authorization` header: twilio 9.13 passes `aiohttp.BasicAuth`,
      deprecated since aiohttp 3.14 (twilio/twilio-python#931), and warnings are errors in tests.
    * `base_url`, if given, replaces the origin of every request (scheme, host, port, plus an
      optional path prefix). Twilio's answer to "point the library at another server" is a custom
      HTTP client: `https://api.twilio.com` is fixed in generated code (setting a domain's
      `base_url` would patch an undocumented attribute), and `edge`/`region` only produce other
      `*.twilio.com` hosts.
    """

    def __init__(self, base_url: str | None = None) -> None:
        super().__init__()
        self._base = urlsplit(base_url) if base_url else None

    async def request(
        self,
        method: str,
        url: str,
        *,
        headers: dict[str, str] | None = None,
        auth: tuple[str, str] | None = None,
        **kwargs: Any,
    ) -> Any:
        headers = dict(headers or {})
        if auth is not None:
            token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode("latin-1")).decode("ascii")
            headers["Authorization"] = f"Basic {token}"
        if self._base is not None:
            parts = urlsplit(url)
            url = urlunsplit(
                parts._replace(
                    scheme=self._base.scheme,
                    netloc=self._base.netloc,
                    path=self._base.path.rstrip("/") + parts.path,
                )
            )
        return await super().request(method, url, headers=headers, auth=None, **kwargs)


class TwilioCallControl:
    """`CallControl` over Twilio's REST API.

    Build one per process from TWILIO_ACCOUNT_SID / TWILIO_AUTH_TOKEN and close it on shutdown
    (`aclose()` or `async with`): it holds an aiohttp session, opened on first use inside the
    running event loop. `api_base_url` (e.g. a `TwilioRestStandIn`'s) replaces
    https://api.twilio.com; `timeout_s` bounds each request.
    """

    def __init__(
        self,
        account_sid: str,
        auth_token: str,
        *,
        api_base_url: str | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
    ) -> None:
        if not account_sid or not auth_token:
            raise ValueError("a Twilio account SID and auth token are required")
        self._account_sid = account_sid
        self._auth_token = auth_token
        self._api_base_url = api_base_url
        self._timeout_s = timeout_s
        self._client: Any = None

    def __repr__(self) -> str:
        return f"TwilioCallControl(account_sid={self._account_sid!r})"

    async def hang_up(self, call_sid: str) -> None:
        """Set the call's status to `completed`."""
        event = "call_control.hang_up"
        self._check_call_sid(call_sid, event)
        ended = await self._update(event, call_sid, status="completed")
        log.info(
            "call had already ended" if ended else "call hung up",
            extra={
                "event": event,
                "call_sid": call_sid,
                "outcome": "already_ended" if ended else "ok",
            },
        )

    async def transfer(self, call_sid: str, to_number: str, *, announce: str | None = None) -> None:
        """Redirect the call to TwiML that says `announce` (if given) and dials `to_number`."""
        event = "call_control.transfer"
        self._check_call_sid(call_sid, event)
        masked = mask_number(to_number)
        if not _E164.fullmatch(to_number):
            log.warning(
                "transfer refused: number is not E.164",
                extra={"event": event, "call_sid": call_sid, "outcome": "invalid", "to": masked},
            )
            raise CallControlError(f"transfer target {masked!r} is not an E.164 number")
        ended = await self._update(event, call_sid, twiml=transfer_twiml(to_number, announce))
        if ended:
            log.warning(
                "transfer skipped: the call had already ended",
                extra={"event": event, "call_sid": call_sid, "outcome": "already_ended"},
            )
        else:
            log.info(
                "call transferred",
                extra={"event": event, "call_sid": call_sid, "outcome": "ok", "to": masked},
            )

    async def aclose(self) -> None:
        """Close the HTTP session (if one was opened). A later request opens a new one."""
        client, self._client = self._client, None
        if client is not None:
            await client.http_client.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def _rest_client(self) -> Any:
        if self._client is None:
            http_client = _HttpClient(self._api_base_url)
            self._client = Client(self._account_sid, self._auth_token, http_client=http_client)
        return self._client

    @staticmethod
    def _check_call_sid(call_sid: str, event: str) -> None:
        # The SID becomes part of the request path; refuse anything that is not a call SID.
        if not _CALL_SID.fullmatch(call_sid):
            log.warning(
                "call control refused: malformed call SID",
                extra={"event": event, "call_sid": call_sid[:40], "outcome": "invalid"},
            )
            raise CallControlError("not a Twilio call SID (CA + 32 hex digits)")

    async def _update(self, event: str, call_sid: str, **params: str) -> bool:
        """POST the update; True if the call had already ended, raise on any other failure."""
        action = "hang-up" if event.endswith("hang_up") else "transfer"
        try:
            with anyio.fail_after(self._timeout_s):
                await self._rest_client().calls(call_sid).update_async(**params)
        except (TwilioRestException, TwilioServiceException) as exc:
            status, code = exc.status, exc.code
            if status == 404 or code == CALL_ALREADY_ENDED:
                return True
            self._log_failure(event, call_sid, "rejected", f"HTTP {status}, code {code}")
            raise CallControlError(
                f"Twilio rejected the {action}: HTTP {status}, Twilio error {code}"
            ) from exc
        except TimeoutError as exc:
            self._log_failure(event, call_sid, "timeout", f"after {self._timeout_s} s")
            raise CallControlError(
                f"Twilio did not answer the {action} within {self._timeout_s} s"
            ) from exc
        except (TwilioException, aiohttp.ClientError, OSError, ValueError) as exc:
            # Transport failures and unparseable answers; only the type name is reported.
            reason = type(exc).__name__
            self._log_failure(event, call_sid, "error", reason)
            raise CallControlError(f"the {action} request to Twilio failed ({reason})") from exc
        return False

    @staticmethod
    def _log_failure(event: str, call_sid: str, outcome: str, reason: str) -> None:
        log.warning(
            "call control failed: %s",
            reason,
            extra={"event": event, "call_sid": call_sid, "outcome": outcome},
        )
