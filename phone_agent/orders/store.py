"""Read-only queries on the order database, returning frozen records (never ORM objects, so
nothing lazy-loads after the session closes and tests compare with ``==``)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal

from sqlalchemy import Select, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import joinedload, selectinload

from phone_agent.orders.models import Customer, Order, OrderStatus, ShipmentStatus
from phone_agent.orders.spoken import normalize_order_number, normalize_phone


@dataclass(frozen=True)
class ItemRecord:
    sku: str
    name: str
    quantity: int


@dataclass(frozen=True)
class ShipmentRecord:
    carrier: str
    tracking_number: str
    status: ShipmentStatus
    shipped_at: datetime | None
    eta: date | None
    delivered_at: datetime | None


@dataclass(frozen=True)
class OrderRecord:
    number: str
    status: OrderStatus
    placed_at: datetime  # UTC
    total: Decimal
    currency: str
    customer_name: str
    customer_phone: str  # E.164
    customer_postcode: str
    items: tuple[ItemRecord, ...]
    shipment: ShipmentRecord | None


def _utc(value: datetime) -> datetime:
    """SQLite hands back naive datetimes; everything stored is UTC."""
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _record(order: Order) -> OrderRecord:
    s = order.shipment
    return OrderRecord(
        number=order.number,
        status=OrderStatus(order.status),
        placed_at=_utc(order.placed_at),
        total=Decimal(order.total),
        currency=order.currency,
        customer_name=order.customer.name,
        customer_phone=order.customer.phone,
        customer_postcode=order.customer.postcode,
        items=tuple(ItemRecord(i.sku, i.name, i.quantity) for i in order.items),
        shipment=None
        if s is None
        else ShipmentRecord(
            carrier=s.carrier,
            tracking_number=s.tracking_number,
            status=ShipmentStatus(s.status),
            shipped_at=None if s.shipped_at is None else _utc(s.shipped_at),
            eta=s.eta,
            delivered_at=None if s.delivered_at is None else _utc(s.delivered_at),
        ),
    )


def _orders() -> Select[Order]:
    return select(Order).options(
        joinedload(Order.customer), selectinload(Order.items), selectinload(Order.shipment)
    )


class OrderStore:
    """Order lookups on a database (see `phone_agent.db` for engines and sessions)."""

    def __init__(self, sessionmaker: async_sessionmaker[AsyncSession]) -> None:
        self._sessionmaker = sessionmaker

    async def find(self, order_number: str) -> OrderRecord | None:
        """The order with this number (any spelling `spoken.normalize_order_number` reads)."""
        number = normalize_order_number(order_number)
        if number is None:
            return None
        async with self._sessionmaker() as session:
            order = await session.scalar(_orders().where(Order.number == number))
            return None if order is None else _record(order)

    async def recent_for_phone(self, phone: str, limit: int = 3) -> list[OrderRecord]:
        """The newest orders of the customers with this phone number, newest first."""
        e164 = normalize_phone(phone)
        if e164 is None or limit <= 0:
            return []
        query = (
            _orders()
            .join(Order.customer)
            .where(Customer.phone == e164)
            .order_by(Order.placed_at.desc(), Order.id.desc())
            .limit(limit)
        )
        async with self._sessionmaker() as session:
            return [_record(order) for order in (await session.scalars(query)).all()]
