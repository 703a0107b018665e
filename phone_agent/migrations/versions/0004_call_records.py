"""Call records: one row per call, one per model turn (`phone_agent.call_store`).

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-25
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "calls",
        sa.Column("call_sid", sa.String(length=64), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("duration_s", sa.Float(), nullable=False),
        sa.Column("model", sa.String(length=100), nullable=False),
        sa.Column("end_reason", sa.String(length=32), nullable=True),
        sa.Column("detail", sa.String(length=300), nullable=False),
        sa.Column("caller_masked", sa.String(length=32), nullable=False),
        sa.Column("caller_ref", sa.String(length=64), nullable=True),
        sa.Column("prewarmed", sa.Boolean(), nullable=False),
        sa.Column("reconnects", sa.Integer(), nullable=False),
        sa.Column("handovers", sa.Integer(), nullable=False),
        sa.Column("barge_ins", sa.Integer(), nullable=False),
        sa.Column("text_in_tokens", sa.Integer(), nullable=False),
        sa.Column("text_out_tokens", sa.Integer(), nullable=False),
        sa.Column("audio_in_tokens", sa.Integer(), nullable=False),
        sa.Column("audio_out_tokens", sa.Integer(), nullable=False),
        sa.Column("model_usd", sa.Float(), nullable=False),
        sa.Column("twilio_usd", sa.Float(), nullable=False),
        sa.Column("pricing_version", sa.String(length=32), nullable=False),
        sa.Column("levels", sa.Text(), nullable=False),
        sa.Column("transcript", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("call_sid", name=op.f("pk_calls")),
    )
    op.create_index(op.f("ix_calls_started_at"), "calls", ["started_at"])
    op.create_index(op.f("ix_calls_caller_ref"), "calls", ["caller_ref"])
    op.create_table(
        "call_turns",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("call_sid", sa.String(length=64), nullable=False),
        sa.Column("turn_index", sa.Integer(), nullable=False),
        sa.Column("generation", sa.Integer(), nullable=False),
        sa.Column("caller_stopped_ms", sa.Float(), nullable=True),
        sa.Column("first_sent_ms", sa.Float(), nullable=False),
        sa.Column("first_heard_ms", sa.Float(), nullable=True),
        sa.Column("sent_ms", sa.Float(), nullable=False),
        sa.Column("heard_ms", sa.Float(), nullable=False),
        sa.Column("interrupted", sa.Boolean(), nullable=False),
        sa.Column("interrupt_to_clear_ms", sa.Float(), nullable=True),
        sa.Column("tools", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(
            ["call_sid"],
            ["calls.call_sid"],
            name=op.f("fk_call_turns_call_sid_calls"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_call_turns")),
    )
    op.create_index(op.f("ix_call_turns_call_sid"), "call_turns", ["call_sid"])


def downgrade() -> None:
    op.drop_index(op.f("ix_call_turns_call_sid"), table_name="call_turns")
    op.drop_table("call_turns")
    op.drop_index(op.f("ix_calls_caller_ref"), table_name="calls")
    op.drop_index(op.f("ix_calls_started_at"), table_name="calls")
    op.drop_table("calls")
