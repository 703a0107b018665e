"""The order tools the model may call: `lookup_order` and `list_recent_orders`.

Verification (who may hear an order's details)
----------------------------------------------
Details (status, items, total, shipment, the customer's first name) are shared only when one of
these holds, checked in this order:

1. **Caller ID**: the number the call comes from — `CallContext.caller_number`, set from Twilio,
   never from the model — is the order's customer phone (compared in E.164). A withheld number
   never matches.
2. **Remembered postcode**: earlier in the same call the caller stated the right postcode for this
   very order. Verification is remembered per order number in `ctx.state`, never for other orders
   (a household sharing a postcode does not unlock its neighbours' orders).
3. **Postcode**: the caller states the delivery postcode on file (`postcode` argument; compared
   case- and space-insensitively, see `spoken.postcodes_match`).

Otherwise the answer is ``{"verified": false, "reason": ...}`` with nothing else: no status, no
items, no name, and not even whether the order exists. **An unknown order number and someone
else's order get the same answer**, for every caller, including a postcode attempt on an unknown
number, which counts as a wrong postcode. Wrong postcodes are counted per call, across all order
numbers; after `MAX_POSTCODE_ATTEMPTS` (3) postcode verification is switched off for the rest of the
call (later postcodes are not even compared, so a lucky fourth guess learns nothing), and the model
is told to suggest calling back from the number on the order. Caller-ID verification keeps working.

An order number the normaliser cannot read (`spoken.normalize_order_number`) is a `ToolError` asking
the model to have the caller repeat it digit by digit; it reveals nothing about any order.

`list_recent_orders` uses caller ID only: the calling number's last few orders, or an empty list
with a reason when the number is withheld or has no orders.

Caller ID is as trustworthy as the network's: spoofed caller ID defeats rule 1. Deployments that
care can restrict rule 1 to calls Twilio reports as STIR/SHAKEN "A"-attested before filling
`caller_number`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from phone_agent.orders.models import OrderStatus, ShipmentStatus
from phone_agent.orders.spoken import (
    normalize_order_number,
    normalize_phone,
    postcodes_match,
    spoken_date,
)
from phone_agent.orders.store import OrderRecord, OrderStore
from phone_agent.tools import CallContext, ToolError, ToolRegistry

log = logging.getLogger(__name__)

MAX_POSTCODE_ATTEMPTS = 3
MAX_ITEMS = 5
RECENT_ORDERS = 3
STATE_KEY = "orders"

NOT_VERIFIED = (
    "I can't share details of that order without verification. Ask the caller for the delivery "
    "postcode on the order."
)
POSTCODE_MISMATCH = (
    "I couldn't verify that order number with that postcode. Ask the caller to check both the "
    "order number and the postcode."
)
LOCKED = (
    "Too many postcode attempts on this call, so orders can no longer be verified by postcode. "
    "Apologise, and suggest calling back from the phone number on the order."
)
UNREADABLE = (
    "That doesn't sound like an order number. Ask the caller to read it out digit by digit."
)
WITHHELD = (
    "The caller's number is withheld, so their orders can't be found by phone number. Ask for "
    "the order number instead."
)
NO_ORDERS = (
    "No orders are linked to the number the caller is calling from. Ask for the order number "
    "instead."
)

_SYMBOLS = {"USD": "$", "GBP": "£", "EUR": "€"}


@dataclass
class OrderCallState:
    """What the order tools remember during one call (kept in `CallContext.state`)."""

    verified: set[str] = field(default_factory=set)  # order numbers unlocked by postcode
    wrong_postcodes: int = 0

    @property
    def locked(self) -> bool:
        return self.wrong_postcodes >= MAX_POSTCODE_ATTEMPTS


def call_state(ctx: CallContext) -> OrderCallState:
    state = ctx.state.get(STATE_KEY)
    if not isinstance(state, OrderCallState):
        state = ctx.state[STATE_KEY] = OrderCallState()
    return state


# --- What the model reads aloud ------------------------------------------------------------------


def _spoken(value: str) -> str:
    return value.replace("_", " ")


def _money(amount: Decimal, currency: str) -> str:
    symbol = _SYMBOLS.get(currency)
    return f"{symbol}{amount:.2f}" if symbol else f"{amount:.2f} {currency}"


def _items_phrase(order: OrderRecord) -> str:
    if not order.items:
        return "no items"
    first = order.items[0].name
    others = len(order.items) - 1
    if others == 0:
        return first
    return f"{first} and {others} other item{'s' if others > 1 else ''}"


def summary(order: OrderRecord) -> str:
    """One sentence a voice can say about where the order is."""
    n = order.number
    ship = order.shipment
    if order.status is OrderStatus.CANCELLED:
        return f"Order {n} was cancelled."
    if order.status is OrderStatus.PROCESSING:
        return f"Order {n} is being prepared and hasn't shipped yet."
    delivered = order.status is OrderStatus.DELIVERED or (
        ship is not None and ship.status is ShipmentStatus.DELIVERED
    )
    if delivered:
        if ship is not None and ship.delivered_at is not None:
            return f"Order {n} was delivered on {spoken_date(ship.delivered_at.date())}."
        return f"Order {n} was delivered."
    if ship is None:
        return f"Order {n} has shipped."
    eta = f" on {spoken_date(ship.eta)}" if ship.eta is not None else ""
    if ship.status is ShipmentStatus.LABEL_CREATED:
        return (
            f"Order {n} is packed and waiting for {ship.carrier} to collect it; "
            f"it should arrive{eta or ' soon'}."
        )
    if ship.status is ShipmentStatus.OUT_FOR_DELIVERY:
        return f"Order {n} is out for delivery with {ship.carrier}."
    if ship.status is ShipmentStatus.EXCEPTION:
        return (
            f"Order {n} has shipped with {ship.carrier}, "
            "but the carrier has reported a delivery problem."
        )
    return f"Order {n} has shipped with {ship.carrier} and should arrive{eta or ' soon'}."


def order_details(order: OrderRecord) -> dict[str, Any]:
    """The verified answer: short keys, one `summary` sentence, dates as spoken."""
    details: dict[str, Any] = {
        "verified": True,
        "order": order.number,
        "status": order.status.value,
        "summary": summary(order),
        "customer": order.customer_name.split()[0] if order.customer_name else "",
        "placed": spoken_date(order.placed_at.date()),
        "items": [{"name": i.name, "qty": i.quantity} for i in order.items[:MAX_ITEMS]],
        "total": _money(order.total, order.currency),
    }
    if len(order.items) > MAX_ITEMS:
        details["more_items"] = len(order.items) - MAX_ITEMS
    ship = order.shipment
    if ship is not None:
        shipment: dict[str, Any] = {
            "carrier": ship.carrier,
            "status": _spoken(ship.status.value),
            "tracking": ship.tracking_number,
        }
        if ship.eta is not None and ship.status is not ShipmentStatus.DELIVERED:
            shipment["eta"] = spoken_date(ship.eta)
        if ship.delivered_at is not None:
            shipment["delivered"] = spoken_date(ship.delivered_at.date())
        details["shipment"] = shipment
    return details


def _refusal(reason: str, **extra: Any) -> dict[str, Any]:
    return {"verified": False, "reason": reason, **extra}


# --- The tools -----------------------------------------------------------------------------------


async def lookup_order(
    store: OrderStore, ctx: CallContext, order_number: str, postcode: str | None = None
) -> dict[str, Any]:
    """`lookup_order` without the registry (see the module docstring for the rules)."""
    number = normalize_order_number(order_number)
    if number is None:
        raise ToolError(UNREADABLE)
    order = await store.find(number)
    state = call_state(ctx)
    caller = normalize_phone(ctx.caller_number)
    if order is not None and caller is not None and caller == order.customer_phone:
        return order_details(order)
    if order is not None and order.number in state.verified:
        return order_details(order)
    if state.locked:
        return _refusal(LOCKED)
    if postcode is None or not postcode.strip():
        return _refusal(NOT_VERIFIED)
    if order is not None and postcodes_match(postcode, order.customer_postcode):
        state.verified.add(order.number)
        return order_details(order)
    state.wrong_postcodes += 1
    left = MAX_POSTCODE_ATTEMPTS - state.wrong_postcodes
    log.warning(
        "order verification failed (%d of %d)",
        state.wrong_postcodes,
        MAX_POSTCODE_ATTEMPTS,
        extra={
            "event": "orders.postcode_rejected",
            "call_sid": ctx.call_sid,
            "attempts_left": left,
        },
    )
    if state.locked:
        return _refusal(LOCKED)
    return _refusal(POSTCODE_MISMATCH, attempts_left=left)


async def list_recent_orders(store: OrderStore, ctx: CallContext) -> dict[str, Any]:
    """`list_recent_orders` without the registry."""
    caller = normalize_phone(ctx.caller_number)
    if caller is None:
        return {"orders": [], "reason": WITHHELD}
    orders = await store.recent_for_phone(caller, limit=RECENT_ORDERS)
    if not orders:
        return {"orders": [], "reason": NO_ORDERS}
    return {
        "orders": [
            {
                "order": o.number,
                "status": o.status.value,
                "placed": spoken_date(o.placed_at.date()),
                "items": _items_phrase(o),
                "summary": summary(o),
            }
            for o in orders
        ]
    }


def register_order_tools(registry: ToolRegistry, store: OrderStore) -> None:
    """Register `lookup_order` and `list_recent_orders` on `registry`, answering from `store`."""

    @registry.tool(name="lookup_order", timeout_s=3.0)
    async def _lookup_order(
        ctx: CallContext, order_number: str, postcode: str | None = None
    ) -> dict[str, Any]:
        """Look up an order's status, items and delivery date.

        Details are shared only with the order's owner: someone calling from the phone number on
        the order, or who states the order's delivery postcode. When the result has
        "verified": false, say its "reason" to the caller in your own words and never guess at
        details. When verified, tell the caller the "summary" first; give items, total or tracking
        only if asked.

        Args:
            order_number: The order number as the caller said it, e.g. "1042", "A-1042" or
                "ten forty-two".
            postcode: The delivery postcode exactly as the caller stated it; only if they gave one.
        """
        return await lookup_order(store, ctx, order_number, postcode)

    @registry.tool(name="list_recent_orders", timeout_s=3.0)
    async def _list_recent_orders(ctx: CallContext) -> dict[str, Any]:
        """List the caller's most recent orders, found by the phone number they are calling from.

        Use it when the caller does not know their order number. Each order has a one-sentence
        "summary"; read out at most three.
        """
        return await list_recent_orders(store, ctx)
