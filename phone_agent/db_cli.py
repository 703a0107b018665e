"""`phone-agent db ...`: migrate the order database and load the demo data."""

from __future__ import annotations

from typing import Annotated

import anyio
import typer

from phone_agent import db

db_app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__)

UrlOption = Annotated[
    str | None,
    typer.Option(
        "--url",
        envvar=db.ENV_VAR,
        show_envvar=True,
        help=f"Database URL; default {db.DEFAULT_DATABASE_URL} (embedded SQLite).",
    ),
]


def _url(value: str | None) -> str:
    try:
        return db.database_url(value)
    except ValueError as exc:
        typer.echo(f"configuration error: {exc}", err=True)
        raise typer.Exit(2) from None


@db_app.command()
def upgrade(url: UrlOption = None) -> None:
    """Apply pending migrations (safe to repeat)."""
    target = _url(url)
    anyio.run(db.upgrade, target)
    revision = anyio.run(db.current_revision, target)
    typer.echo(f"{db.redacted(target)} is at revision {revision}")


@db_app.command()
def seed(url: UrlOption = None) -> None:
    """Apply pending migrations, then add the demo customers and orders that are missing."""
    target = _url(url)

    async def run() -> int:
        await db.upgrade(target)
        return await db.seed(target)

    added = anyio.run(run)
    typer.echo(f"{db.redacted(target)}: {added} demo order(s) added")
