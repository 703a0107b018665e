"""A local stand-in for the slice of Twilio's REST API the agent uses: updating a live call.

Serves `POST /2010-04-01/Accounts/{AccountSid}/Calls/{CallSid}.json` over real HTTP, so tests
drive the real `twilio` client instead of mocks:

    async with TwilioRestStandIn(ACCOUNT, TOKEN, calls=[CALL_SID]) as standin:
        control = TwilioCallControl(ACCOUNT, TOKEN, api_base_url=standin.base_url)
        ...
        assert standin.calls[CALL_SID].status == "completed"

Behaviour: HTTP basic auth must be the account SID and auth token (else 401, Twilio error 20003);
unknown or completed calls get 404 with Twilio error 20404; `Status=completed` ends a call,
`Twiml` / `Url` replace its instructions. Every request is recorded before it is answered.
"""

from __future__ import annotations

import base64
import binascii
import secrets
from collections.abc import Iterable, Mapping
from contextlib import AsyncExitStack
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import format_datetime
from types import TracebackType
from typing import Any, Self

import anyio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from phone_agent.embedded import embedded_server

API_VERSION = "2010-04-01"


@dataclass
class StandInCall:
    """One call's state: `in-progress` until hung up; a redirect stores its TwiML or URL."""

    sid: str
    status: str = "in-progress"
    twiml: str | None = None
    url: str | None = None


@dataclass(frozen=True)
class StandInRequest:
    """A request as received (before it was answered)."""

    account_sid: str
    call_sid: str
    params: Mapping[str, str]
    authorized: bool


class TwilioRestStandIn:
    """Serve the stand-in on 127.0.0.1 (ephemeral port) in the current event loop.

    Construct and enter it inside a running event loop (`async with`). `stall_responses()` makes
    every later request wait, after being recorded, until `release_responses()` or exit — for
    timeout tests without sleeps.
    """

    def __init__(self, account_sid: str, auth_token: str, *, calls: Iterable[str] = ()) -> None:
        self.account_sid = account_sid
        self._auth_token = auth_token
        self.calls: dict[str, StandInCall] = {}
        self.requests: list[StandInRequest] = []
        for sid in calls:
            self.add_call(sid)
        self.app = Starlette(
            routes=[
                Route(
                    f"/{API_VERSION}/Accounts/{{account_sid}}/Calls/{{call_sid}}.json",
                    self._update_call,
                    methods=["POST"],
                )
            ]
        )
        self._request_arrived = anyio.Event()
        self._stalled = False
        self._released = anyio.Event()
        self._stack: AsyncExitStack | None = None
        self._base_url: str | None = None

    @property
    def base_url(self) -> str:
        """`http://127.0.0.1:<port>`, the value for `TwilioCallControl(api_base_url=...)`."""
        if self._base_url is None:
            raise RuntimeError("the stand-in is not serving; use `async with`")
        return self._base_url

    def add_call(self, sid: str) -> StandInCall:
        """Register a live (`in-progress`) call."""
        call = self.calls[sid] = StandInCall(sid)
        return call

    async def wait_for_requests(self, count: int = 1) -> list[StandInRequest]:
        """Wait until at least `count` requests have arrived; return all of them."""
        while len(self.requests) < count:
            await self._request_arrived.wait()
        return list(self.requests)

    def stall_responses(self) -> None:
        """Hold every request from now on, unanswered, until `release_responses()`."""
        self._stalled = True
        self._released = anyio.Event()

    def release_responses(self) -> None:
        """Answer held requests and stop holding new ones."""
        self._stalled = False
        self._released.set()

    async def __aenter__(self) -> Self:
        stack = AsyncExitStack()
        self._base_url = await stack.enter_async_context(embedded_server(self.app))
        self._stack = stack
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # uvicorn waits for in-flight requests on shutdown, so held ones must be let go first.
        self.release_responses()
        stack, self._stack, self._base_url = self._stack, None, None
        if stack is not None:
            await stack.__aexit__(exc_type, exc, tb)

    async def _update_call(self, request: Request) -> JSONResponse:
        account_sid = request.path_params["account_sid"]
        call_sid = request.path_params["call_sid"]
        form = await request.form()
        params = {key: value for key, value in form.items() if isinstance(value, str)}
        authorized = self._authorized(request.headers.get("authorization", ""))
        self.requests.append(StandInRequest(account_sid, call_sid, params, authorized))
        self._request_arrived.set()
        self._request_arrived = anyio.Event()
        if self._stalled:
            await self._released.wait()

        if not authorized:
            return _error(401, 20003, "Authenticate")
        call = self.calls.get(call_sid)
        if account_sid != self.account_sid or call is None or call.status == "completed":
            return _error(404, 20404, f"The requested resource {request.url.path} was not found")
        status, twiml, url = params.get("Status"), params.get("Twiml"), params.get("Url")
        if status not in (None, "completed"):
            return _error(400, 20001, f"Status {status!r} is not supported by the stand-in")
        if status is None and twiml is None and url is None:
            return _error(400, 20001, "one of Status, Twiml or Url is required")
        if status == "completed":
            call.status = "completed"
        elif twiml is not None:
            call.twiml, call.url = twiml, None
        else:
            call.url, call.twiml = url, None
        return JSONResponse(self._call_resource(call))

    def _authorized(self, header: str) -> bool:
        scheme, _, encoded = header.partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            decoded = base64.b64decode(encoded, validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            return False
        expected = f"{self.account_sid}:{self._auth_token}"
        return secrets.compare_digest(decoded.encode(), expected.encode())

    def _call_resource(self, call: StandInCall) -> dict[str, Any]:
        """The fields of Twilio's Call resource that a client might read."""
        now = format_datetime(datetime.now(UTC), usegmt=True)
        return {
            "sid": call.sid,
            "account_sid": self.account_sid,
            "status": call.status,
            "direction": "inbound",
            "api_version": API_VERSION,
            "date_updated": now,
            "end_time": now if call.status == "completed" else None,
            "uri": f"/{API_VERSION}/Accounts/{self.account_sid}/Calls/{call.sid}.json",
        }


def _error(status: int, code: int, message: str) -> JSONResponse:
    """Twilio's error body: `code`, `message`, `more_info`, `status`."""
    body = {
        "code": code,
        "message": message,
        "more_info": f"https://www.twilio.com/docs/errors/{code}",
        "status": status,
    }
    return JSONResponse(body, status_code=status)
