from __future__ import annotations

import dataclasses
from datetime import UTC, date, datetime
from decimal import Decimal

import pytest

from phone_agent.orders.models import OrderStatus, ShipmentStatus
from phone_agent.orders.store import ItemRecord, OrderRecord, OrderStore, ShipmentRecord

pytestmark = pytest.mark.anyio

ORDER_1042 = OrderRecord(
    number="1042",
    status=OrderStatus.SHIPPED,
    placed_at=datetime(2025, 11, 21, 12, tzinfo=UTC),
    total=Decimal("89.97"),
    currency="USD",
    customer_name="Ada Lovelace",
    customer_phone="+15550100001",
    customer_postcode="SW1A 1AA",
    items=(
        ItemRecord("HP-200", "wireless headphones", 1),
        ItemRecord("CB-USB-C", "USB-C charging cable", 2),
        ItemRecord("CASE-HP", "headphone travel case", 1),
    ),
    shipment=ShipmentRecord(
        carrier="UPS",
        tracking_number="1Z999AA10123456784",
        status=ShipmentStatus.IN_TRANSIT,
        shipped_at=datetime(2025, 11, 24, 9, tzinfo=UTC),
        eta=date(2025, 11, 28),
        delivered_at=None,
    ),
)


async def test_find_returns_the_whole_order(store: OrderStore) -> None:
    found = await store.find("1042")
    assert found == ORDER_1042
    assert found.placed_at.utcoffset() is not None


@pytest.mark.parametrize("said", ["A-1042", "ten forty-two", "order number one oh four two"])
async def test_find_reads_spoken_numbers(store: OrderStore, said: str) -> None:
    assert await store.find(said) == ORDER_1042


@pytest.mark.parametrize("said", ["9999", "104", "banana", ""])
async def test_find_unknown(store: OrderStore, said: str) -> None:
    assert await store.find(said) is None


async def test_order_states(store: OrderStore) -> None:
    delivered, cancelled, processing = [await store.find(n) for n in ("1037", "1039", "1043")]
    assert delivered is not None and delivered.status is OrderStatus.DELIVERED
    assert delivered.shipment is not None
    assert delivered.shipment.delivered_at == datetime(2025, 11, 13, 15, tzinfo=UTC)
    assert cancelled is not None and cancelled.status is OrderStatus.CANCELLED
    assert cancelled.shipment is None
    assert processing is not None and processing.status is OrderStatus.PROCESSING
    several = await store.find("1045")
    assert several is not None and len(several.items) == 4


async def test_records_are_frozen(store: OrderStore) -> None:
    found = await store.find("1042")
    assert found is not None
    with pytest.raises(dataclasses.FrozenInstanceError):
        found.status = OrderStatus.CANCELLED  # type: ignore[misc]


@pytest.mark.parametrize("phone", ["+15550100001", "+1 555 010 0001", "(555) 010-0001"])
async def test_recent_for_phone_newest_first(store: OrderStore, phone: str) -> None:
    orders = await store.recent_for_phone(phone)
    assert [o.number for o in orders] == ["1043", "1042"]
    assert orders[1] == ORDER_1042


async def test_recent_for_phone_limit(store: OrderStore) -> None:
    assert [o.number for o in await store.recent_for_phone("+15550100004", limit=1)] == ["1041"]
    assert await store.recent_for_phone("+15550100004", limit=0) == []


@pytest.mark.parametrize("phone", ["+15559990000", "anonymous", "", "client:alice"])
async def test_recent_for_phone_unknown_or_withheld(store: OrderStore, phone: str) -> None:
    assert await store.recent_for_phone(phone) == []
