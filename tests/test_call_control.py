"""Call control against the REST stand-in: the real twilio async client over real HTTP."""

from __future__ import annotations

import logging
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator

import anyio
import pytest

from phone_agent.call_control import CallControl, CallControlError, TwilioCallControl
from phone_agent.twilio_rest_standin import TwilioRestStandIn

pytestmark = pytest.mark.anyio

ACCOUNT = "AC" + "a" * 32
TOKEN = "s3cret-auth-token"
CALL = "CA" + "1" * 32
OTHER_CALL = "CA" + "2" * 32


@pytest.fixture
async def standin() -> AsyncIterator[TwilioRestStandIn]:
    async with TwilioRestStandIn(ACCOUNT, TOKEN, calls=[CALL]) as server:
        yield server


@pytest.fixture
async def control(standin: TwilioRestStandIn) -> AsyncIterator[TwilioCallControl]:
    async with TwilioCallControl(ACCOUNT, TOKEN, api_base_url=standin.base_url) as ctl:
        yield ctl


def test_twilio_call_control_satisfies_the_protocol() -> None:
    control: CallControl = TwilioCallControl(ACCOUNT, TOKEN)
    assert TOKEN not in repr(control)


async def test_hang_up_completes_the_call(
    standin: TwilioRestStandIn, control: TwilioCallControl, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="phone_agent.call_control")
    await control.hang_up(CALL)

    [request] = standin.requests
    assert (request.account_sid, request.call_sid) == (ACCOUNT, CALL)
    assert request.authorized and dict(request.params) == {"Status": "completed"}
    assert standin.calls[CALL].status == "completed"
    [record] = caplog.records
    fields = record.__dict__
    assert (fields["event"], fields["call_sid"], fields["outcome"]) == (
        "call_control.hang_up",
        CALL,
        "ok",
    )


async def test_transfer_sends_dial_twiml_with_announcement(
    standin: TwilioRestStandIn, control: TwilioCallControl
) -> None:
    await control.transfer(CALL, "+15551234567", announce="Connecting you <now> & then")

    twiml = standin.calls[CALL].twiml
    assert twiml is not None and standin.requests[0].params["Twiml"] == twiml
    root = ET.fromstring(twiml)
    assert root.tag == "Response"
    assert [(child.tag, child.text) for child in root] == [
        ("Say", "Connecting you <now> & then"),
        ("Dial", "+15551234567"),
    ]
    assert standin.calls[CALL].status == "in-progress"


async def test_transfer_without_announcement_only_dials(
    standin: TwilioRestStandIn, control: TwilioCallControl
) -> None:
    await control.transfer(CALL, "+15551234567")

    root = ET.fromstring(standin.calls[CALL].twiml or "")
    assert [(child.tag, child.text) for child in root] == [("Dial", "+15551234567")]


async def test_hang_up_of_an_ended_call_is_not_an_error(
    standin: TwilioRestStandIn, control: TwilioCallControl, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="phone_agent.call_control")
    await control.hang_up(CALL)
    await control.hang_up(CALL)  # already completed: 404 / 20404
    await control.hang_up(OTHER_CALL)  # never known to the API

    assert len(standin.requests) == 3
    outcomes = [r.__dict__["outcome"] for r in caplog.records]
    assert outcomes == ["ok", "already_ended", "already_ended"]


async def test_bad_credentials_raise_without_leaking_the_token(
    standin: TwilioRestStandIn, caplog: pytest.LogCaptureFixture
) -> None:
    wrong_token = "wrong-token-value"
    caplog.set_level(logging.DEBUG)
    async with TwilioCallControl(ACCOUNT, wrong_token, api_base_url=standin.base_url) as ctl:
        with pytest.raises(CallControlError) as caught:
            await ctl.hang_up(CALL)

    message = str(caught.value)
    assert "401" in message and "20003" in message
    assert wrong_token not in message and "http" not in message
    assert wrong_token not in caplog.text
    assert not standin.requests[0].authorized
    assert standin.calls[CALL].status == "in-progress"


async def test_invalid_transfer_number_is_refused_before_any_request(
    standin: TwilioRestStandIn, control: TwilioCallControl
) -> None:
    bad = ["5551234567", "+0555123", "+1 555 123 4567", "+1555<x>", "+1" + "2" * 15, ""]
    for number in bad:
        with pytest.raises(CallControlError, match=r"E\.164"):
            await control.transfer(CALL, number)
    assert standin.requests == []


async def test_malformed_call_sid_is_refused_before_any_request(
    standin: TwilioRestStandIn, control: TwilioCallControl
) -> None:
    with pytest.raises(CallControlError, match="call SID"):
        await control.hang_up("../../Accounts")
    assert standin.requests == []


async def test_slow_api_times_out(standin: TwilioRestStandIn) -> None:
    standin.stall_responses()
    async with TwilioCallControl(
        ACCOUNT, TOKEN, api_base_url=standin.base_url, timeout_s=0.3
    ) as ctl:
        with pytest.raises(CallControlError, match=r"within 0\.3 s"):
            await ctl.transfer(CALL, "+15551234567")

    [request] = standin.requests  # it arrived; the stand-in held the answer back
    assert request.call_sid == CALL
    assert standin.calls[CALL].twiml is None  # never answered, never applied


async def test_unreachable_api_raises() -> None:
    async with TwilioRestStandIn(ACCOUNT, TOKEN) as gone:
        url = gone.base_url  # the port is closed once the stand-in has stopped
    async with TwilioCallControl(ACCOUNT, TOKEN, api_base_url=url) as ctl:
        with pytest.raises(CallControlError, match="failed"):
            await ctl.hang_up(CALL)


async def test_wait_for_requests_wakes_on_arrival(
    standin: TwilioRestStandIn, control: TwilioCallControl
) -> None:
    async with anyio.create_task_group() as group:
        group.start_soon(control.hang_up, CALL)
        [request] = await standin.wait_for_requests(1)
    assert request.params["Status"] == "completed"
