"""`phone-agent demo`: a complete call, offline, that you can listen to afterwards.

The bundled recording (`phone_agent/data/demo-call.json.gz`) is replayed at real-time speed: the
Twilio caller simulator dials the server, the server bridges it to the built-in Gemini Live
emulator through the real google-genai SDK, and the emulator answers with the recorded model
turns. At the end: the per-turn timeline, the transcript, the cost estimate, and a stereo WAV
(caller left, what the caller heard right).
"""

from __future__ import annotations

import time
from importlib import resources
from pathlib import Path

import anyio
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from phone_agent.fixture import CallFixture
from phone_agent.pricing import CallCost
from phone_agent.replay import ReplayResult, replay


def bundled_fixture() -> Path:
    return Path(str(resources.files("phone_agent") / "data" / "demo-call.json.gz"))


def _timeline_table(result: ReplayResult) -> Table:
    table = Table(title="Per-turn timeline (ms since the call started)")
    for column in ("turn", "caller stopped", "first audio sent", "first heard", "heard / sent"):
        table.add_column(column, justify="right")
    table.add_column("barge-in")
    for row in result.timeline:
        stopped = f"{row.caller_stopped_ms:.0f}" if row.caller_stopped_ms is not None else "—"
        sent = f"{row.first_sent_ms:.0f}"
        if row.caller_stopped_ms is not None:
            sent += f" (+{row.first_sent_ms - row.caller_stopped_ms:.0f})"
        heard = "—"
        if row.first_heard_ms is not None:
            heard = f"{row.first_heard_ms:.0f} (+{row.first_heard_ms - row.first_sent_ms:.0f})"
        barge = f"clear at {row.clear_ms:.0f}" if row.interrupted and row.clear_ms else ""
        table.add_row(
            str(row.generation),
            stopped,
            sent,
            heard,
            f"{row.heard_ms:.0f} / {row.sent_ms:.0f}",
            barge,
        )
    return table


async def run_demo(fixture_path: Path, wav_path: Path, console: Console) -> int:
    fixture = CallFixture.load(fixture_path)
    duration_s = max((m.t_ms for m in fixture.caller), default=0.0) / 1000.0
    console.print(f"[bold]phone-agent demo[/bold]: {fixture.description or fixture.name}")
    console.print(
        "Offline: the built-in Gemini Live emulator answers over TLS, a simulated Twilio caller "
        "dials in.\n"
    )
    results: list[ReplayResult] = []
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    ) as progress:
        task = progress.add_task("call in progress", total=duration_s)
        async with anyio.create_task_group() as group:

            async def call() -> None:
                results.append(await replay(fixture, speed="realtime"))
                group.cancel_scope.cancel()

            group.start_soon(call)
            began = time.monotonic()
            while True:  # a display refresh, not synchronisation
                progress.update(task, completed=min(duration_s, time.monotonic() - began))
                await anyio.sleep(0.1)
    result = results[0]
    console.print(_timeline_table(result))
    summary = result.summary
    console.print("\n[bold]Transcript[/bold]")
    console.print("  caller: " + (" ".join(summary.caller_transcript) or "—"))
    console.print("  agent:  " + (" ".join("".join(summary.agent_transcript).split()) or "—"))
    model = str(fixture.metadata.get("model", "gemini-live-2.5-flash-preview"))
    call_s = summary.ended_at - summary.started_at if summary.started_at else 0.0
    cost = CallCost.of(summary.usage, call_s, model)
    console.print(f"\n[bold]Cost estimate[/bold] ({model}): {cost.describe()}")
    result.record.write_wav(wav_path)
    console.print(f"\nWrote {wav_path} (left: caller, right: what the caller heard).")
    if result.failures:
        for failure in result.failures:
            console.print(f"[red]FAIL[/red] {failure}")
        return 1
    console.print("[green]The call went as recorded.[/green]")
    return 0
