"""Demo customers and orders: what the embedded database starts with, and what tests and recorded
calls rely on. Dates are fixed so spoken answers stay reproducible ("Friday 28 November").

| Phone        | Customer          | Postcode | Orders                                          |
|--------------|-------------------|----------|-------------------------------------------------|
| +15550100001 | Ada Lovelace      | SW1A 1AA | 1042 shipped (UPS, ETA 28 Nov); 1043 processing |
| +15550100002 | Grace Hopper      | 94107    | 1037 delivered; 1039 cancelled                  |
| +15550100003 | Alan Turing       | M1 1AE   | 1040 shipped, out for delivery (Royal Mail)     |
| +15550100004 | Katherine Johnson | 10001    | 1041 processing; 1044 delivered                 |
| +15550100005 | Edsger Dijkstra   | EH1 1YZ  | 1045 shipped, label created (DHL), four items   |
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from phone_agent.orders.models import (
    Customer,
    Order,
    OrderItem,
    OrderStatus,
    Shipment,
    ShipmentStatus,
)


@dataclass(frozen=True)
class DemoShipment:
    carrier: str
    tracking_number: str
    status: ShipmentStatus
    shipped_at: datetime | None
    eta: date | None
    delivered_at: datetime | None = None


@dataclass(frozen=True)
class DemoOrder:
    number: str
    phone: str
    status: OrderStatus
    placed_at: datetime
    total: Decimal
    currency: str
    items: tuple[tuple[str, str, int], ...]  # (sku, name, quantity)
    shipment: DemoShipment | None = None


def _utc(year: int, month: int, day: int, hour: int = 12) -> datetime:
    return datetime(year, month, day, hour, tzinfo=UTC)


DEMO_CUSTOMERS: tuple[tuple[str, str, str], ...] = (  # (name, phone, postcode)
    ("Ada Lovelace", "+15550100001", "SW1A 1AA"),
    ("Grace Hopper", "+15550100002", "94107"),
    ("Alan Turing", "+15550100003", "M1 1AE"),
    ("Katherine Johnson", "+15550100004", "10001"),
    ("Edsger Dijkstra", "+15550100005", "EH1 1YZ"),
)

DEMO_ORDERS: tuple[DemoOrder, ...] = (
    DemoOrder(
        "1042",
        "+15550100001",
        OrderStatus.SHIPPED,
        _utc(2025, 11, 21),
        Decimal("89.97"),
        "USD",
        (
            ("HP-200", "wireless headphones", 1),
            ("CB-USB-C", "USB-C charging cable", 2),
            ("CASE-HP", "headphone travel case", 1),
        ),
        DemoShipment(
            "UPS",
            "1Z999AA10123456784",
            ShipmentStatus.IN_TRANSIT,
            _utc(2025, 11, 24, 9),
            date(2025, 11, 28),
        ),
    ),
    DemoOrder(
        "1043",
        "+15550100001",
        OrderStatus.PROCESSING,
        _utc(2025, 11, 24),
        Decimal("24.50"),
        "USD",
        (("MUG-01", "ceramic coffee mug", 2),),
    ),
    DemoOrder(
        "1037",
        "+15550100002",
        OrderStatus.DELIVERED,
        _utc(2025, 11, 10),
        Decimal("129.00"),
        "USD",
        (("KB-75", "mechanical keyboard", 1),),
        DemoShipment(
            "FedEx",
            "612999AA1234",
            ShipmentStatus.DELIVERED,
            _utc(2025, 11, 11, 8),
            date(2025, 11, 14),
            _utc(2025, 11, 13, 15),
        ),
    ),
    DemoOrder(
        "1039",
        "+15550100002",
        OrderStatus.CANCELLED,
        _utc(2025, 11, 15),
        Decimal("45.00"),
        "USD",
        (("LAMP-D", "desk lamp", 1),),
    ),
    DemoOrder(
        "1040",
        "+15550100003",
        OrderStatus.SHIPPED,
        _utc(2025, 11, 19),
        Decimal("62.40"),
        "GBP",
        (("TEA-EB", "English breakfast tea", 3), ("TIN-01", "tea caddy", 1)),
        DemoShipment(
            "Royal Mail",
            "RM123456785GB",
            ShipmentStatus.OUT_FOR_DELIVERY,
            _utc(2025, 11, 21, 10),
            date(2025, 11, 25),
        ),
    ),
    DemoOrder(
        "1041",
        "+15550100004",
        OrderStatus.PROCESSING,
        _utc(2025, 11, 23),
        Decimal("310.00"),
        "USD",
        (("CHAIR-E", "ergonomic office chair", 1),),
    ),
    DemoOrder(
        "1044",
        "+15550100004",
        OrderStatus.DELIVERED,
        _utc(2025, 11, 3),
        Decimal("18.99"),
        "USD",
        (("NB-A5", "A5 notebook", 3),),
        DemoShipment(
            "USPS",
            "9400100000000000000000",
            ShipmentStatus.DELIVERED,
            _utc(2025, 11, 4, 9),
            date(2025, 11, 7),
            _utc(2025, 11, 6, 14),
        ),
    ),
    DemoOrder(
        "1045",
        "+15550100005",
        OrderStatus.SHIPPED,
        _utc(2025, 11, 22),
        Decimal("74.85"),
        "EUR",
        (
            ("PEN-F", "fountain pen", 1),
            ("INK-BL", "blue ink bottle", 2),
            ("PAD-L", "lined writing pad", 3),
            ("BLOT-1", "blotting paper", 1),
        ),
        DemoShipment(
            "DHL", "JD014600006281234567", ShipmentStatus.LABEL_CREATED, None, date(2025, 12, 2)
        ),
    ),
)


def _order(demo: DemoOrder, customer: Customer) -> Order:
    order = Order(
        number=demo.number,
        customer=customer,
        status=demo.status,
        placed_at=demo.placed_at,
        total=demo.total,
        currency=demo.currency,
        items=[OrderItem(sku=sku, name=name, quantity=qty) for sku, name, qty in demo.items],
    )
    if demo.shipment is not None:
        s = demo.shipment
        order.shipment = Shipment(
            carrier=s.carrier,
            tracking_number=s.tracking_number,
            status=s.status,
            shipped_at=s.shipped_at,
            eta=s.eta,
            delivered_at=s.delivered_at,
        )
    return order


async def add_demo_data(session: AsyncSession) -> int:
    """Add the demo customers (by phone) and orders (by number) that are missing; flush, and
    return how many orders were added. Existing rows are left as they are."""
    numbers = [demo.number for demo in DEMO_ORDERS]
    phones = [phone for _, phone, _ in DEMO_CUSTOMERS]
    present = set(
        (await session.scalars(select(Order.number).where(Order.number.in_(numbers)))).all()
    )
    customers = {
        c.phone: c
        for c in (await session.scalars(select(Customer).where(Customer.phone.in_(phones)))).all()
    }
    for name, phone, postcode in DEMO_CUSTOMERS:
        if phone not in customers:
            customers[phone] = Customer(name=name, phone=phone, postcode=postcode)
            session.add(customers[phone])
    missing = [demo for demo in DEMO_ORDERS if demo.number not in present]
    session.add_all(_order(demo, customers[demo.phone]) for demo in missing)
    await session.flush()
    return len(missing)
