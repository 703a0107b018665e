"""Caller notes are sealed with the data key: the note column becomes unbounded text.

A Fernet token is about 4/3 of the note's UTF-8 bytes plus 76 characters, beyond the 300 a
plain note needed. Notes written before this revision were plain text; they cannot be opened
with the data key and are deleted here rather than kept unsealed.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute("DELETE FROM caller_notes")
    with op.batch_alter_table("caller_notes") as batch:
        batch.alter_column(
            "note", existing_type=sa.String(length=300), type_=sa.Text(), existing_nullable=False
        )


def downgrade() -> None:
    op.execute("DELETE FROM caller_notes")
    with op.batch_alter_table("caller_notes") as batch:
        batch.alter_column(
            "note", existing_type=sa.Text(), type_=sa.String(length=300), existing_nullable=False
        )
