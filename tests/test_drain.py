"""Graceful drain with a real SIGTERM to a real `phone-agent serve` process (offline mode)."""

from __future__ import annotations

import signal
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import httpx
import pytest
from twilio.request_validator import RequestValidator

from phone_agent.simulator import (
    CallRecord,
    HangUp,
    TwilioCallerSimulator,
    WaitForAgentAudio,
    WaitUntil,
)
from phone_agent.simulator import Say as CallerSay

from .servers import ServerProcess, free_port, spawn_server
from .test_call_e2e import caller_tone

pytestmark = pytest.mark.anyio

TOKEN = "drain-test-auth-token"
BUSY = "We are restarting, please call back."


class Server:
    def __init__(self, process: ServerProcess) -> None:
        self.process = process
        self.port = process.port
        self.base = process.url

    def log_text(self) -> str:
        return self.process.stderr_text()

    async def webhook(self, client: httpx.AsyncClient, call_sid: str) -> str:
        form = {"CallSid": call_sid, "From": "+15550100001", "To": "+15550009999"}
        signature = RequestValidator(TOKEN).compute_signature(self.base + "/twilio/voice", form)
        response = await client.post(
            self.base + "/twilio/voice", data=form, headers={"X-Twilio-Signature": signature}
        )
        assert response.status_code == 200, response.text
        return response.text


@asynccontextmanager
async def serve(tmp_path: Path, drain_timeout_s: float) -> AsyncIterator[Server]:
    port = free_port()
    env = {
        "TWILIO_AUTH_TOKEN": TOKEN,
        "PHONE_AGENT_PUBLIC_URL": f"http://127.0.0.1:{port}",
        "PHONE_AGENT_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'agent.db'}",
        "PHONE_AGENT_DRAIN_TIMEOUT_S": str(drain_timeout_s),
        "PHONE_AGENT_BUSY_MESSAGE": BUSY,
        "PHONE_AGENT_GREETING": "",
        "PHONE_AGENT_SILENCE_REPROMPT_S": "0",
        "PHONE_AGENT_SILENCE_HANG_UP_S": "0",
    }
    async with spawn_server(env, workdir=tmp_path, port=port) as process:
        await process.await_ready()
        yield Server(process)


def stream_token(twiml: str) -> str:
    [parameter] = [p for p in ET.fromstring(twiml).iter("Parameter") if p.get("name") == "token"]
    return str(parameter.get("value"))


async def wait_for(probe: object, what: str, timeout_s: float = 10.0) -> None:
    """Poll another process's HTTP state (there is no event to wait on across processes)."""
    assert callable(probe)
    try:
        with anyio.fail_after(timeout_s):
            while not await probe():  # noqa: ASYNC110
                await anyio.sleep(0.05)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None


async def exited(server: Server, timeout_s: float) -> int:
    return await server.process.wait_exit(timeout_s)


async def test_sigterm_drains_calls_in_progress_then_exits(tmp_path: Path) -> None:
    async with serve(tmp_path, drain_timeout_s=60) as server, httpx.AsyncClient() as client:
        sid = "CA" + "1" * 32
        token = stream_token(await server.webhook(client, sid))
        signalled = anyio.Event()
        record: list[CallRecord] = []

        async def call() -> None:
            simulator = TwilioCallerSimulator(
                f"ws://127.0.0.1:{server.port}/twilio/media",
                [
                    CallerSay(caller_tone(300.0, 600)),
                    WaitForAgentAudio(min_ms=300),
                    WaitUntil(signalled.is_set),
                    # After SIGTERM: the call goes on, the agent still answers.
                    CallerSay(caller_tone(300.0, 600)),
                    WaitForAgentAudio(min_ms=300),
                    HangUp(),
                ],
                call_sid=sid,
                custom_parameters={"token": token},
            )
            record.append(await simulator.run())

        async def readiness() -> int:
            return (await client.get(server.base + "/readyz")).status_code

        async with anyio.create_task_group() as group:
            group.start_soon(call)
            await wait_for(
                lambda: _active(client, server), "the call to be active"
            )  # the call is up
            server.process.send_signal(signal.SIGTERM)
            await wait_for(lambda: _equals(readiness, 503), "/readyz to turn 503")
            busy = await server.webhook(client, "CA" + "2" * 32)
            assert BUSY in busy and "<Connect" not in busy
            assert server.process.returncode is None  # still serving the call
            signalled.set()
        [heard] = record
        assert not heard.wait_timeouts and not heard.violations
        assert heard.close.by_caller  # the caller hung up: the server never cut the call
        code = await exited(server, 15)
    assert code in (0, -signal.SIGTERM)
    text = server.log_text()
    assert '"event":"server.drain"' in text and "drained: shutting down" in text
    assert "ending" not in text  # no call was cut at a deadline


async def test_at_the_deadline_calls_hear_a_goodbye_and_end(tmp_path: Path) -> None:
    async with serve(tmp_path, drain_timeout_s=0.5) as server, httpx.AsyncClient() as client:
        sid = "CA" + "3" * 32
        token = stream_token(await server.webhook(client, sid))
        record: list[CallRecord] = []

        async def call() -> None:
            simulator = TwilioCallerSimulator(
                f"ws://127.0.0.1:{server.port}/twilio/media",
                [CallerSay(caller_tone(300.0, 600)), WaitForAgentAudio(min_ms=300)],
                call_sid=sid,
                custom_parameters={"token": token},
            )  # then an open, silent line: only the server can end this call
            record.append(await simulator.run())

        async with anyio.create_task_group() as group:
            group.start_soon(call)
            await wait_for(lambda: _active(client, server), "the call to be active")
            server.process.send_signal(signal.SIGTERM)
        code = await exited(server, 30)
    [heard] = record
    assert code in (0, -signal.SIGTERM)
    text = server.log_text()
    assert "drain deadline reached: ending 1 call(s)" in text
    assert '"reason":"shutdown"' in text and '"detail":"goodbye heard"' in text
    assert heard.heard_ms > 600  # the answer, then the goodbye


async def _active(client: httpx.AsyncClient, server: Server) -> bool:
    body = (await client.get(server.base + "/readyz")).json()
    return int(body["active_calls"]) >= 1


async def _equals(probe: object, expected: int) -> bool:
    assert callable(probe)
    return bool(await probe() == expected)
