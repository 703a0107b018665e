"""Caller memory: short notes about a calling number, with expiry and provenance.

Matches `phone_agent.memory.CallerNote`. Plain columns and named indexes only, so SQLite and
PostgreSQL share one schema; `scope` defaults to "general" in the application, not the database.

Revision ID: 0002
Revises: 0001
Create Date: 2025-11-26
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "caller_notes",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("phone", sa.String(length=16), nullable=False),
        sa.Column("scope", sa.String(length=32), nullable=False),
        sa.Column("note", sa.String(length=300), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("call_sid", sa.String(length=64), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_caller_notes")),
    )
    op.create_index(op.f("ix_caller_notes_phone"), "caller_notes", ["phone"])
    op.create_index(op.f("ix_caller_notes_expires_at"), "caller_notes", ["expires_at"])


def downgrade() -> None:
    op.drop_index(op.f("ix_caller_notes_expires_at"), table_name="caller_notes")
    op.drop_index(op.f("ix_caller_notes_phone"), table_name="caller_notes")
    op.drop_table("caller_notes")
