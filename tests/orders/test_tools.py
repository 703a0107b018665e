from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import pytest

from phone_agent.orders import tools
from phone_agent.orders.models import OrderStatus, ShipmentStatus
from phone_agent.orders.store import ItemRecord, OrderRecord, OrderStore, ShipmentRecord
from phone_agent.tools import CallContext, ToolRegistry, ToolResult

pytestmark = pytest.mark.anyio

ADA = "+15550100001"  # owns 1042 (shipped) and 1043 (processing); postcode SW1A 1AA
GRACE = "+15550100002"  # owns 1037 (delivered) and 1039 (cancelled); postcode 94107
ALAN = "+15550100003"  # owns 1040; postcode M1 1AE
STRANGER = "+15559990000"
ENABLED = ("lookup_order", "list_recent_orders")

DETAILS_1042 = {
    "verified": True,
    "order": "1042",
    "status": "shipped",
    "summary": "Order 1042 has shipped with UPS and should arrive on Friday 28 November.",
    "customer": "Ada",
    "placed": "Friday 21 November",
    "items": [
        {"name": "wireless headphones", "qty": 1},
        {"name": "USB-C charging cable", "qty": 2},
        {"name": "headphone travel case", "qty": 1},
    ],
    "total": "$89.97",
    "shipment": {
        "carrier": "UPS",
        "status": "in transit",
        "tracking": "1Z999AA10123456784",
        "eta": "Friday 28 November",
    },
}
# Nothing about order 1042 or its customer may appear in an unverified answer.
SECRETS_1042 = ["shipped", "headphones", "cable", "Ada", "Lovelace", "UPS", "1Z999", "SW1A", "89"]


@pytest.fixture
async def registry(sqlite_store: OrderStore) -> AsyncIterator[ToolRegistry]:
    registry = ToolRegistry()
    tools.register_order_tools(registry, sqlite_store)
    yield registry


class Call:
    """One phone call: a context that lives as long as the call, and the tools it may use."""

    def __init__(self, registry: ToolRegistry, caller: str | None) -> None:
        self.registry = registry
        self.ctx = CallContext(call_sid="CA-test", caller_number=caller)
        self.calls = 0

    async def invoke(self, name: str, **args: Any) -> ToolResult:
        self.calls += 1
        return await self.registry.invoke(
            f"call-{self.calls}", name, args, self.ctx, enabled=ENABLED
        )

    async def lookup(self, order_number: Any, postcode: str | None = None) -> dict[str, Any]:
        args: dict[str, Any] = {"order_number": order_number}
        if postcode is not None:
            args["postcode"] = postcode
        result = await self.invoke("lookup_order", **args)
        assert result.status == "ok", result.response
        output: dict[str, Any] = result.response["output"]
        return output


def refusal(reason: str, **extra: Any) -> dict[str, Any]:
    return {"verified": False, "reason": reason, **extra}


def assert_nothing_leaked(output: dict[str, Any]) -> None:
    assert set(output) <= {"verified", "reason", "attempts_left"}
    text = json.dumps(output)
    for secret in SECRETS_1042:
        assert secret not in text


# --- Declarations ------------------------------------------------------------------------------


async def test_registered_tools_and_their_declarations(registry: ToolRegistry) -> None:
    assert registry.names() == ["lookup_order", "list_recent_orders"]
    lookup, recent = registry.declarations(ENABLED, "gemini-live-2.5-flash-preview")
    assert lookup.name == "lookup_order"
    assert lookup.description and "postcode" in lookup.description
    assert lookup.parameters is not None and lookup.parameters.properties is not None
    assert set(lookup.parameters.properties) == {"order_number", "postcode"}
    assert lookup.parameters.required == ["order_number"]
    assert lookup.parameters.properties["postcode"].nullable
    assert recent.name == "list_recent_orders"
    assert recent.parameters is None  # the caller's number is never a model argument


# --- Owner by caller ID ------------------------------------------------------------------------


async def test_owner_number_sees_the_details(registry: ToolRegistry) -> None:
    assert await Call(registry, ADA).lookup("1042") == DETAILS_1042


@pytest.mark.parametrize(
    "said", ["ten forty-two", "one oh four two", "A-1042", "order number 1042", "#1042", 1042]
)
async def test_spoken_order_numbers_end_to_end(registry: ToolRegistry, said: Any) -> None:
    assert await Call(registry, ADA).lookup(said) == DETAILS_1042


async def test_owner_summaries_for_each_state(registry: ToolRegistry) -> None:
    grace = Call(registry, GRACE)
    assert (await grace.lookup("1037"))["summary"] == (
        "Order 1037 was delivered on Thursday 13 November."
    )
    assert (await grace.lookup("1039"))["summary"] == "Order 1039 was cancelled."
    ada = Call(registry, ADA)
    assert (await ada.lookup("1043"))["summary"] == (
        "Order 1043 is being prepared and hasn't shipped yet."
    )
    alan = Call(registry, ALAN)
    assert (await alan.lookup("1040"))[
        "summary"
    ] == "Order 1040 is out for delivery with Royal Mail."
    assert (await alan.lookup("1040"))["total"] == "£62.40"


# --- Refusals ------------------------------------------------------------------------------------


@pytest.mark.parametrize("caller", [STRANGER, GRACE, None, "anonymous", "+266696687"])
async def test_other_callers_get_a_refusal_and_nothing_else(
    registry: ToolRegistry, caller: str | None
) -> None:
    output = await Call(registry, caller).lookup("1042")
    assert output == refusal(tools.NOT_VERIFIED)
    assert_nothing_leaked(output)


async def test_unknown_and_unverified_orders_look_the_same(registry: ToolRegistry) -> None:
    assert await Call(registry, STRANGER).lookup("9999") == await Call(registry, STRANGER).lookup(
        "1042"
    )
    # Even to a caller who owns other orders.
    assert await Call(registry, ADA).lookup("9999") == refusal(tools.NOT_VERIFIED)
    wrong = await Call(registry, STRANGER).lookup("1042", postcode="EC1A 1BB")
    unknown = await Call(registry, STRANGER).lookup("9999", postcode="EC1A 1BB")
    assert wrong == unknown == refusal(tools.POSTCODE_MISMATCH, attempts_left=2)


async def test_an_unreadable_number_is_an_error_for_the_model(registry: ToolRegistry) -> None:
    result = await Call(registry, ADA).invoke("lookup_order", order_number="the blue one")
    assert result.status == "error"
    assert result.response == {"error": tools.UNREADABLE}


# --- Postcode verification ---------------------------------------------------------------------


@pytest.mark.parametrize("postcode", ["SW1A 1AA", "sw1a 1aa", "SW1A1AA", "s w one a one a a"])
async def test_the_postcode_on_file_unlocks_the_order(
    registry: ToolRegistry, postcode: str
) -> None:
    assert await Call(registry, STRANGER).lookup("1042", postcode=postcode) == DETAILS_1042


async def test_a_verified_order_is_remembered_for_the_call_only(registry: ToolRegistry) -> None:
    call = Call(registry, None)
    assert await call.lookup("ten forty-two", postcode="sw1a 1aa") == DETAILS_1042
    assert await call.lookup("A-1042") == DETAILS_1042  # no postcode needed again
    # Only that order: the same customer's other order needs its own verification.
    assert await call.lookup("1043") == refusal(tools.NOT_VERIFIED)
    # And only this call.
    assert await Call(registry, None).lookup("1042") == refusal(tools.NOT_VERIFIED)


async def test_wrong_postcodes_are_rate_limited(registry: ToolRegistry) -> None:
    call = Call(registry, STRANGER)
    first = await call.lookup("1042", postcode="EC1A 1BB")
    assert first == refusal(tools.POSTCODE_MISMATCH, attempts_left=2)
    assert_nothing_leaked(first)
    second = await call.lookup("1042", postcode="W1A 0AX")
    assert second == refusal(tools.POSTCODE_MISMATCH, attempts_left=1)
    assert await call.lookup("1037", postcode="10001") == refusal(tools.LOCKED)
    # Locked: even the right postcode is no longer compared.
    locked = await call.lookup("1042", postcode="SW1A 1AA")
    assert locked == refusal(tools.LOCKED)
    assert_nothing_leaked(locked)
    assert await call.lookup("1042") == refusal(tools.LOCKED)


async def test_guesses_on_unknown_numbers_count_too(registry: ToolRegistry) -> None:
    call = Call(registry, STRANGER)
    for number in ("9997", "9998"):
        assert (await call.lookup(number, postcode="SW1A 1AA"))["verified"] is False
    assert await call.lookup("9999", postcode="SW1A 1AA") == refusal(tools.LOCKED)
    assert await call.lookup("1042", postcode="SW1A 1AA") == refusal(tools.LOCKED)


async def test_caller_id_still_works_after_the_lock(registry: ToolRegistry) -> None:
    call = Call(registry, ALAN)
    for _ in range(tools.MAX_POSTCODE_ATTEMPTS):
        await call.lookup("1042", postcode="M1 1AE")
    assert (await call.lookup("1040"))["verified"] is True


@pytest.mark.parametrize("postcode", ["", "   "])
async def test_a_blank_postcode_is_no_attempt(registry: ToolRegistry, postcode: str) -> None:
    call = Call(registry, STRANGER)
    for _ in range(tools.MAX_POSTCODE_ATTEMPTS + 1):
        assert await call.lookup("1042", postcode=postcode) == refusal(tools.NOT_VERIFIED)
    assert await call.lookup("1042", postcode="SW1A 1AA") == DETAILS_1042


async def test_the_postcode_is_ignored_for_the_owner(registry: ToolRegistry) -> None:
    call = Call(registry, ADA)
    for _ in range(tools.MAX_POSTCODE_ATTEMPTS + 1):
        assert await call.lookup("1042", postcode="EC1A 1BB") == DETAILS_1042


# --- Recent orders -----------------------------------------------------------------------------


async def test_recent_orders_of_the_calling_number(registry: ToolRegistry) -> None:
    result = await Call(registry, ADA).invoke("list_recent_orders")
    assert result.status == "ok"
    assert result.response["output"] == {
        "orders": [
            {
                "order": "1043",
                "status": "processing",
                "placed": "Monday 24 November",
                "items": "ceramic coffee mug",
                "summary": "Order 1043 is being prepared and hasn't shipped yet.",
            },
            {
                "order": "1042",
                "status": "shipped",
                "placed": "Friday 21 November",
                "items": "wireless headphones and 2 other items",
                "summary": DETAILS_1042["summary"],
            },
        ]
    }


@pytest.mark.parametrize(
    ("caller", "reason"),
    [
        (None, tools.WITHHELD),
        ("anonymous", tools.WITHHELD),
        (STRANGER, tools.NO_ORDERS),
    ],
)
async def test_no_recent_orders(registry: ToolRegistry, caller: str | None, reason: str) -> None:
    result = await Call(registry, caller).invoke("list_recent_orders")
    assert result.response["output"] == {"orders": [], "reason": reason}


async def test_the_model_cannot_pass_a_phone_number(registry: ToolRegistry) -> None:
    result = await Call(registry, None).invoke("list_recent_orders", phone=ADA)
    assert result.status == "invalid_arguments"
    assert ADA not in json.dumps(result.response)


# --- Answer shapes -----------------------------------------------------------------------------


def _record(**changes: Any) -> OrderRecord:
    base = OrderRecord(
        number="7",
        status=OrderStatus.SHIPPED,
        placed_at=datetime(2025, 11, 1, tzinfo=UTC),
        total=Decimal("10"),
        currency="CHF",
        customer_name="",
        customer_phone="+15550100009",
        customer_postcode="1000",
        items=tuple(ItemRecord(f"S{i}", f"thing {i}", 1) for i in range(7)),
        shipment=None,
    )
    return OrderRecord(**{**base.__dict__, **changes})


def _shipment(status: ShipmentStatus, eta: date | None = None) -> ShipmentRecord:
    return ShipmentRecord("DHL", "T1", status, None, eta, None)


@pytest.mark.parametrize(
    ("changes", "sentence"),
    [
        ({}, "Order 7 has shipped."),
        (
            {"shipment": _shipment(ShipmentStatus.IN_TRANSIT)},
            "Order 7 has shipped with DHL and should arrive soon.",
        ),
        (
            {"shipment": _shipment(ShipmentStatus.LABEL_CREATED, date(2025, 12, 2))},
            "Order 7 is packed and waiting for DHL to collect it; it should arrive on "
            "Tuesday 2 December.",
        ),
        (
            {"shipment": _shipment(ShipmentStatus.EXCEPTION)},
            "Order 7 has shipped with DHL, but the carrier has reported a delivery problem.",
        ),
        ({"status": OrderStatus.DELIVERED}, "Order 7 was delivered."),
    ],
)
def test_summaries(changes: dict[str, Any], sentence: str) -> None:
    assert tools.summary(_record(**changes)) == sentence


def test_long_orders_are_cut_for_the_phone() -> None:
    details = tools.order_details(_record())
    assert len(details["items"]) == tools.MAX_ITEMS
    assert details["more_items"] == 2
    assert details["total"] == "10.00 CHF"
    assert details["customer"] == ""
    assert "shipment" not in details
