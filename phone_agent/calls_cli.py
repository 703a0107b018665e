"""`phone-agent calls ...`: call records (`call_store`): recent calls, one call's timeline."""

from __future__ import annotations

from typing import Annotated

import anyio
import typer
from rich.console import Console
from rich.table import Table

from phone_agent import db
from phone_agent.call_report import CallReport
from phone_agent.call_store import CallStore, StoredCall
from phone_agent.config import ConfigError, Settings, load_settings

calls_app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__)


def _settings() -> Settings:
    try:
        return load_settings()
    except ConfigError as exc:
        typer.echo(f"configuration error: {exc}", err=True)
        raise typer.Exit(2) from None


async def _with_store(settings: Settings, call_sid: str | None, limit: int) -> list[StoredCall]:
    engine = db.create_engine(db.database_url(settings.database_url))
    try:
        await db.upgrade(engine)
        store = CallStore(db.sessionmaker(engine), settings.data_cipher())
        if call_sid is None:
            return await store.recent(limit)
        found = await store.get(call_sid)
        return [found] if found is not None else []
    finally:
        await engine.dispose()


def _ms(value: float | None) -> str:
    return "—" if value is None else f"{value:,.0f}"


@calls_app.command("list")
def list_calls(
    limit: Annotated[int, typer.Option(min=1, help="How many calls, newest first.")] = 20,
) -> None:
    """Recent calls: when, how long, how they ended, turns, latency heard, cost."""
    stored = anyio.run(_with_store, _settings(), None, limit)
    table = Table(title="Recent calls")
    for column in ("Started (UTC)", "CallSid", "Caller", "Length", "Ended", "Turns"):
        table.add_column(column)
    table.add_column("Heard p50", justify="right")
    table.add_column("Barge-ins", justify="right")
    table.add_column("Cost", justify="right")
    for item in stored:
        r = item.report
        heard = sorted(t.heard_latency_ms for t in r.turns if t.heard_latency_ms is not None)
        p50 = f"{heard[len(heard) // 2]:,.0f} ms" if heard else "—"
        table.add_row(
            r.started_at.strftime("%Y-%m-%d %H:%M:%S"),
            r.call_sid,
            r.caller_masked or "—",
            f"{r.duration_s:,.1f} s",
            r.end_reason or "—",
            str(len(r.turns)),
            p50,
            str(r.barge_ins),
            f"${r.cost.total_usd:.4f}" if r.cost else "—",
        )
    Console().print(table)
    if not stored:
        typer.echo("no calls recorded yet")


@calls_app.command("show")
def show_call(call_sid: Annotated[str, typer.Argument(help="The call's CallSid.")]) -> None:
    """One call's timeline: each turn's latency as the caller lived it, tools, cost, levels."""
    stored = anyio.run(_with_store, _settings(), call_sid, 1)
    if not stored:
        typer.echo(f"no call {call_sid!r}", err=True)
        raise typer.Exit(1)
    print_call(stored[0], Console())


def print_call(stored: StoredCall, console: Console) -> None:
    r: CallReport = stored.report
    console.print(f"[bold]{r.call_sid}[/bold]  {r.started_at:%Y-%m-%d %H:%M:%S} UTC  {r.model}")
    console.print(
        f"caller {r.caller_masked or '—'}, {r.duration_s:,.1f} s, ended: {r.end_reason or '—'}"
        + (f" ({r.detail})" if r.detail else "")
        + f"; pre-warmed: {'yes' if r.prewarmed else 'no'}, reconnects {r.reconnects}, "
        f"handovers {r.handovers}, barge-ins {r.barge_ins}"
    )
    table = Table(title="Turns (ms since the stream started)")
    for column in ("#", "Caller stopped", "First sent", "First heard", "Stop→sent", "Stop→heard"):
        table.add_column(column, justify="right")
    table.add_column("Heard / sent", justify="right")
    table.add_column("Barge-in")
    table.add_column("Tools")
    for t in r.turns:
        cut = ""
        if t.interrupted:
            cut = "yes" + (
                f" (clear +{t.interrupt_to_clear_ms:.1f} ms)"
                if t.interrupt_to_clear_ms is not None
                else ""
            )
        tools = ", ".join(f"{u.name} {u.status} {u.latency_ms:.0f} ms" for u in t.tools)
        table.add_row(
            str(t.index),
            _ms(t.caller_stopped_ms),
            _ms(t.first_sent_ms),
            _ms(t.first_heard_ms),
            _ms(t.sent_latency_ms),
            _ms(t.heard_latency_ms),
            f"{t.heard_ms:,.0f} / {t.sent_ms:,.0f}",
            cut,
            tools,
        )
    console.print(table)
    if r.cost is not None:
        console.print("cost: " + r.cost.describe())
    for side, levels in r.levels.items():
        console.print(
            f"{side} audio: mean {levels.get('mean_rms_dbfs')} dBFS, peak "
            f"{levels.get('peak_rms_dbfs')} dBFS, clipped {levels.get('clipped_ratio')}, "
            f"silent {levels.get('silent_ratio')}"
        )
    if r.transcript:
        console.print("[bold]Transcript[/bold] (agent turns: what the caller heard)")
        for role, text in r.transcript:
            console.print(f"  {role}: {text}")
    elif stored.transcript_sealed:
        console.print("transcript: sealed under a key not configured (PHONE_AGENT_DATA_KEY)")
