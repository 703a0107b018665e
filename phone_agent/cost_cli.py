"""`phone-agent cost`: what short, typical and chatty calls cost on a model (the seed article's
sensitivity analysis, section 5), priced through the same ledger as real calls."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Annotated

import typer
from rich import box
from rich.console import Console
from rich.table import Table

from phone_agent.config import Settings
from phone_agent.pricing import (
    AUDIO_TOKENS_PER_SECOND,
    BRIDGE_COMPRESSION,
    CallProfile,
    PricingError,
    Projection,
    load_price_table,
    project,
)

DEFAULT_MODEL = str(Settings.model_fields["model"].default)
DEFAULT_PROMPT_TOKENS = 500
"""The built-in instruction is ~70 tokens; tool declarations and the service's own framing add
more (a one-word first turn is reported at a few hundred prompt tokens)."""

SCENARIOS = (
    CallProfile("short", minutes=1, caller_share=0.35, agent_share=0.40, turns=3),
    CallProfile("typical", minutes=4, caller_share=0.35, agent_share=0.45, turns=12),
    CallProfile("chatty", minutes=15, caller_share=0.45, agent_share=0.40, turns=45),
)
"""Short: a question and its answer, greeting and goodbye. Typical: an order enquiry with a
follow-up or two. Chatty: a caller who talks; long enough for compression to matter."""

SEED_EXAMPLE = CallProfile("seed 5.1", minutes=5, caller_share=1.0, agent_share=0.5, turns=15)
"""The seed's worked example: a five-minute session, 300 s of audio in, 150 s out. It gives no
turn count: one agent reply every 20 s."""
SEED_CLAIM = "in the low single-digit dollars per session"


def scenarios(prompt_tokens: int) -> list[CallProfile]:
    return [with_prompt_tokens(p, prompt_tokens) for p in SCENARIOS]


def with_prompt_tokens(profile: CallProfile, prompt_tokens: int) -> CallProfile:
    return replace(profile, prompt_tokens=prompt_tokens)


def usd(value: float) -> str:
    return f"${value:,.4f}"


def usd_thousand(value: float) -> str:
    return f"${value * 1000:,.2f}"


def cost(
    model: Annotated[
        str,
        typer.Option(envvar="PHONE_AGENT_MODEL", help="Live model whose rates apply."),
    ] = DEFAULT_MODEL,
    pricing_file: Annotated[
        Path | None,
        typer.Option(
            envvar="PHONE_AGENT_PRICING_FILE",
            help="Price table (JSON) instead of the built-in one (2025-08-21).",
        ),
    ] = None,
    prompt_tokens: Annotated[
        int,
        typer.Option(min=0, help="Text tokens in every prompt: instruction, tool declarations."),
    ] = DEFAULT_PROMPT_TOKENS,
    audio_tokens_per_second: Annotated[
        float,
        typer.Option(
            min=0.1,
            help="Audio tokens per second, in and out (25 for the Live API; Google's docs for "
            "audio files say 32).",
        ),
    ] = AUDIO_TOKENS_PER_SECOND,
    compression: Annotated[
        bool,
        typer.Option(help="Context window compression caps the re-read (the bridge turns it on)."),
    ] = True,
) -> None:
    """What short, typical and chatty calls cost: the seed article's sensitivity analysis."""
    try:
        table = load_price_table(pricing_file)
        entry = table.entry_for(model)
    except PricingError as exc:
        typer.echo(f"pricing error: {exc}", err=True)
        raise typer.Exit(2) from None
    squeeze = BRIDGE_COMPRESSION if compression else None

    def priced(profile: CallProfile) -> Projection:
        return project(
            profile,
            model,
            table,
            compression=squeeze,
            audio_tokens_per_s=audio_tokens_per_second,
        )

    rows = [priced(p) for p in scenarios(prompt_tokens)]
    seed = priced(with_prompt_tokens(SEED_EXAMPLE, prompt_tokens))

    console = Console(highlight=False)
    r = entry.rates
    console.print(f"[bold]What a call costs on {model}[/bold]")
    console.print(
        f"Rates: {entry.label or entry.match}, pricing {table.version}, USD per 1M tokens: "
        f"text in {r.text_in:.2f}, text out {r.text_out:.2f}, audio in {r.audio_in:.2f}, "
        f"audio out {r.audio_out:.2f}. Twilio: ${table.twilio_usd_per_minute:.4f} per started "
        "minute (confirm against your Twilio price sheet).",
        markup=False,
    )
    console.print(_assumptions(rows))
    console.print(_costs(rows))
    rate = f"{audio_tokens_per_second:g}"
    if squeeze is not None:
        cap = (
            f"compression caps it: past {squeeze.trigger_tokens:,} tokens the oldest turns slide "
            f"out down to {squeeze.target_tokens:,}, as the bridge asks"
        )
    else:
        cap = "no compression: the context grows for the whole call"
    notes = [
        f"Audio is {rate} tokens per second, in and out. The caller's line is streamed for the "
        "whole call (barge-in needs it; streamed silence bills like speech), so audio in is the "
        "call's length whatever the caller's share of the talking; audio out is the agent's share.",
        "Audio only: every second of audio billed once, the seed article's method.",
        "With context re-read: how the Live API bills. Each turn's prompt holds the session so "
        f"far, {prompt_tokens:,} text tokens of instructions plus all earlier audio in both "
        f"directions, billed again at input rates; {cap}.",
        "Total = with context re-read + Twilio. Per 1,000 calls = total x 1,000.",
        "Seed article, section 5.1: a five-minute session (300 s in, 150 s out) lands "
        f'"{SEED_CLAIM}". Our arithmetic: {usd(seed.audio_only.model_usd)} by its own method '
        f"(audio only), {usd(seed.with_context.model_usd)} with context re-read over "
        f"{seed.profile.turns} turns, {usd(seed.total_usd)} with Twilio. {_verdict(seed)}",
        "Ground truth is the usageMetadata of real calls: the call ledger prices exactly that.",
    ]
    console.print()
    for note in notes:
        console.print("- " + note, markup=False)


def _verdict(seed: Projection) -> str:
    audio_only, total = seed.audio_only.model_usd, seed.total_usd
    if total >= 1:
        return "That agrees with the seed only once context re-reads are counted."
    return (
        f"Even $1 is {1 / audio_only:,.0f}x what the seed's own method gives and "
        f"{1 / total:,.1f}x the full bill: at these rates the seed's figure is too high."
    )


def _assumptions(rows: list[Projection]) -> Table:
    table = Table(title="Assumptions (tokens per call)", title_justify="left", box=box.SIMPLE)
    table.add_column("Call", no_wrap=True)
    for name in ("Minutes", "Turns", "Caller\ntalks", "Agent\ntalks"):
        table.add_column(name, justify="right")
    for name in ("Audio in", "Audio out", "Prompts,\nre-read"):
        table.add_column(name, justify="right", no_wrap=True)
    for row in rows:
        p, tokens, reread = row.profile, row.audio_only.tokens, row.with_context.tokens
        table.add_row(
            p.name,
            f"{p.minutes:g}",
            str(p.turns),
            f"{p.caller_share:.0%}",
            f"{p.agent_share:.0%}",
            f"{tokens.audio_in:,}",
            f"{tokens.audio_out:,}",
            f"{reread.text_in + reread.audio_in:,}",
        )
    return table


def _costs(rows: list[Projection]) -> Table:
    table = Table(title="Cost per call, USD", title_justify="left", box=box.SIMPLE)
    table.add_column("Call", no_wrap=True)
    for name in ("Audio only", "With context\nre-read", "Twilio", "Total", "Per 1,000\ncalls"):
        table.add_column(name, justify="right", no_wrap=True)
    for row in rows:
        table.add_row(
            row.profile.name,
            usd(row.audio_only.model_usd),
            usd(row.with_context.model_usd),
            usd(row.with_context.twilio_usd),
            usd(row.total_usd),
            usd_thousand(row.total_usd),
        )
    return table
