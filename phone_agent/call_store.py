"""Call records in the database: one row per call (`calls`), one per model turn (`call_turns`).

Written when a call ends (`CallStore.save`), read by `phone-agent calls list` / `calls show`.
What a row holds about the caller: the masked number, and a keyed hash of the number
(`encryption.DataCipher.caller_ref`) so `phone-agent forget` can delete the caller's calls. The
transcript is kept only with a data key, sealed; without one it is not stored at all.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
from sqlalchemy import (
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
    delete,
    select,
)
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import Mapped, mapped_column, relationship

from phone_agent.call_report import CallReport, ToolUse, TurnReport
from phone_agent.encryption import DataCipher, EncryptionError
from phone_agent.orders.models import Base
from phone_agent.pricing import CallCost, Tokens, twilio_minutes

log = logging.getLogger(__name__)


class CallRow(Base):
    __tablename__ = "calls"

    call_sid: Mapped[str] = mapped_column(String(64), primary_key=True)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)  # UTC
    duration_s: Mapped[float] = mapped_column(Float)
    model: Mapped[str] = mapped_column(String(100))
    end_reason: Mapped[str | None] = mapped_column(String(32))
    detail: Mapped[str] = mapped_column(String(300), default="")
    caller_masked: Mapped[str] = mapped_column(String(32), default="")
    caller_ref: Mapped[str | None] = mapped_column(String(64), index=True)
    prewarmed: Mapped[bool] = mapped_column(Boolean, default=False)
    reconnects: Mapped[int] = mapped_column(Integer, default=0)
    handovers: Mapped[int] = mapped_column(Integer, default=0)
    barge_ins: Mapped[int] = mapped_column(Integer, default=0)
    text_in_tokens: Mapped[int] = mapped_column(Integer, default=0)
    text_out_tokens: Mapped[int] = mapped_column(Integer, default=0)
    audio_in_tokens: Mapped[int] = mapped_column(Integer, default=0)
    audio_out_tokens: Mapped[int] = mapped_column(Integer, default=0)
    model_usd: Mapped[float] = mapped_column(Float, default=0.0)
    twilio_usd: Mapped[float] = mapped_column(Float, default=0.0)
    pricing_version: Mapped[str] = mapped_column(String(32), default="")
    levels: Mapped[str] = mapped_column(Text, default="{}")  # JSON
    transcript: Mapped[str | None] = mapped_column(Text)  # sealed JSON, or None without a key
    turns: Mapped[list[TurnRow]] = relationship(
        back_populates="call",
        cascade="all, delete-orphan",
        order_by="TurnRow.turn_index",
        lazy="selectin",
    )


class TurnRow(Base):
    __tablename__ = "call_turns"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    call_sid: Mapped[str] = mapped_column(
        ForeignKey("calls.call_sid", ondelete="CASCADE"), index=True
    )
    turn_index: Mapped[int] = mapped_column(Integer)
    generation: Mapped[int] = mapped_column(Integer)
    caller_stopped_ms: Mapped[float | None] = mapped_column(Float)
    first_sent_ms: Mapped[float] = mapped_column(Float)
    first_heard_ms: Mapped[float | None] = mapped_column(Float)
    sent_ms: Mapped[float] = mapped_column(Float)
    heard_ms: Mapped[float] = mapped_column(Float)
    interrupted: Mapped[bool] = mapped_column(Boolean, default=False)
    interrupt_to_clear_ms: Mapped[float | None] = mapped_column(Float)
    tools: Mapped[str] = mapped_column(Text, default="[]")  # JSON: name, status, latency_ms, at_ms
    call: Mapped[CallRow] = relationship(back_populates="turns")


@dataclass(frozen=True)
class StoredCall:
    """A call as read back: its report, plus whether the transcript could be opened."""

    report: CallReport
    transcript_sealed: bool = False
    """The row holds a transcript no configured key opens."""


class CallStore:
    """Saves and reads call records (see the module docstring)."""

    def __init__(
        self, sessionmaker: async_sessionmaker[AsyncSession], cipher: DataCipher | None = None
    ) -> None:
        self._sessionmaker = sessionmaker
        self._cipher = cipher

    async def save(self, report: CallReport) -> None:
        cost = report.cost
        transcript = None
        if self._cipher is not None and report.transcript:
            transcript = self._cipher.encrypt_text(
                orjson.dumps([list(pair) for pair in report.transcript]).decode()
            )
        row = CallRow(
            call_sid=report.call_sid,
            started_at=report.started_at,
            duration_s=report.duration_s,
            model=report.model,
            end_reason=report.end_reason,
            detail=report.detail[:300],
            caller_masked=report.caller_masked[:32],
            caller_ref=report.caller_ref,
            prewarmed=report.prewarmed,
            reconnects=report.reconnects,
            handovers=report.handovers,
            barge_ins=report.barge_ins,
            text_in_tokens=cost.tokens.text_in if cost else 0,
            text_out_tokens=cost.tokens.text_out if cost else 0,
            audio_in_tokens=cost.tokens.audio_in if cost else 0,
            audio_out_tokens=cost.tokens.audio_out if cost else 0,
            model_usd=cost.model_usd if cost else 0.0,
            twilio_usd=cost.twilio_usd if cost else 0.0,
            pricing_version=cost.pricing_version if cost else "",
            levels=orjson.dumps(report.levels).decode(),
            transcript=transcript,
            turns=[_turn_row(turn) for turn in report.turns],
        )
        async with self._sessionmaker() as session, session.begin():
            await session.merge(row)

    async def recent(self, limit: int = 20) -> list[StoredCall]:
        query = select(CallRow).order_by(CallRow.started_at.desc()).limit(limit)
        async with self._sessionmaker() as session:
            rows = list(await session.scalars(query))
        return [self._stored(row) for row in rows]

    async def get(self, call_sid: str) -> StoredCall | None:
        async with self._sessionmaker() as session:
            row = await session.get(CallRow, call_sid)
        return self._stored(row) if row is not None else None

    async def forget(self, caller_refs: Sequence[str]) -> int:
        """Delete every call of the caller behind `caller_refs`; returns how many."""
        if not caller_refs:
            return 0
        async with self._sessionmaker() as session, session.begin():
            sids = list(
                await session.scalars(
                    select(CallRow.call_sid).where(CallRow.caller_ref.in_(caller_refs))
                )
            )
            if sids:
                await session.execute(delete(TurnRow).where(TurnRow.call_sid.in_(sids)))
                await session.execute(delete(CallRow).where(CallRow.call_sid.in_(sids)))
        return len(sids)

    def _stored(self, row: CallRow) -> StoredCall:
        transcript: tuple[tuple[str, str], ...] = ()
        sealed = False
        if row.transcript is not None:
            if self._cipher is None:
                sealed = True
            else:
                try:
                    pairs = orjson.loads(self._cipher.decrypt_text(row.transcript))
                    transcript = tuple((str(a), str(b)) for a, b in pairs)
                except EncryptionError:
                    sealed = True
        tokens = Tokens(
            row.text_in_tokens, row.text_out_tokens, row.audio_in_tokens, row.audio_out_tokens
        )
        cost = CallCost(
            model=row.model,
            pricing_version=row.pricing_version,
            tokens=tokens,
            duration_s=row.duration_s,
            twilio_minutes=twilio_minutes(row.duration_s),
            model_usd=row.model_usd,
            twilio_usd=row.twilio_usd,
        )
        report = CallReport(
            call_sid=row.call_sid,
            started_at=_utc(row.started_at),
            duration_s=row.duration_s,
            model=row.model,
            end_reason=row.end_reason,
            detail=row.detail,
            caller_masked=row.caller_masked,
            caller_ref=row.caller_ref,
            prewarmed=row.prewarmed,
            reconnects=row.reconnects,
            handovers=row.handovers,
            barge_ins=row.barge_ins,
            cost=cost,
            levels=orjson.loads(row.levels),
            turns=tuple(_turn_report(t) for t in row.turns),
            transcript=transcript,
        )
        return StoredCall(report, transcript_sealed=sealed)


def _turn_row(turn: TurnReport) -> TurnRow:
    tools: list[dict[str, Any]] = [
        {"name": t.name, "status": t.status, "latency_ms": t.latency_ms, "at_ms": t.at_ms}
        for t in turn.tools
    ]
    return TurnRow(
        turn_index=turn.index,
        generation=turn.generation,
        caller_stopped_ms=turn.caller_stopped_ms,
        first_sent_ms=turn.first_sent_ms,
        first_heard_ms=turn.first_heard_ms,
        sent_ms=turn.sent_ms,
        heard_ms=turn.heard_ms,
        interrupted=turn.interrupted,
        interrupt_to_clear_ms=turn.interrupt_to_clear_ms,
        tools=orjson.dumps(tools).decode(),
    )


def _turn_report(row: TurnRow) -> TurnReport:
    tools = tuple(
        ToolUse(str(t["name"]), str(t["status"]), float(t["latency_ms"]), float(t["at_ms"]))
        for t in orjson.loads(row.tools)
    )
    return TurnReport(
        index=row.turn_index,
        generation=row.generation,
        caller_stopped_ms=row.caller_stopped_ms,
        first_sent_ms=row.first_sent_ms,
        first_heard_ms=row.first_heard_ms,
        sent_ms=row.sent_ms,
        heard_ms=row.heard_ms,
        interrupted=row.interrupted,
        interrupt_to_clear_ms=row.interrupt_to_clear_ms,
        tools=tools,
    )


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
