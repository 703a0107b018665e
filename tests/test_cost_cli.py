from __future__ import annotations

import json
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner, Result

from phone_agent.cost_cli import (
    SCENARIOS,
    SEED_EXAMPLE,
    cost,
    scenarios,
    usd,
    usd_thousand,
    with_prompt_tokens,
)
from phone_agent.pricing import (
    BRIDGE_COMPRESSION,
    DEFAULT_TABLE,
    CallProfile,
    Compression,
    PriceTable,
    Projection,
    Tokens,
    load_price_table,
    project,
)

app = typer.Typer()
app.command()(cost)

# Hermetic: no model or price table from the environment; wide enough that nothing wraps.
ENV: dict[str, str | None] = {
    "PHONE_AGENT_MODEL": None,
    "PHONE_AGENT_PRICING_FILE": None,
    "COLUMNS": "200",
}


def run(*args: str) -> Result:
    return CliRunner().invoke(app, list(args), env=ENV)


def text(result: Result) -> str:
    """The output with line breaks and runs of spaces as single spaces (prose wraps)."""
    return " ".join(result.output.split())


def expected(
    model: str,
    table: PriceTable = DEFAULT_TABLE,
    *,
    prompt_tokens: int = 500,
    compression: Compression | None = BRIDGE_COMPRESSION,
    audio_tokens_per_s: float = 25,
) -> tuple[list[Projection], Projection]:
    """What the command should print, from the pure functions."""

    def priced(profile: CallProfile) -> Projection:
        return project(
            profile, model, table, compression=compression, audio_tokens_per_s=audio_tokens_per_s
        )

    rows = [priced(p) for p in scenarios(prompt_tokens)]
    return rows, priced(with_prompt_tokens(SEED_EXAMPLE, prompt_tokens))


def row_line(output: str, name: str, *, money: bool) -> str:
    """A call's line in the costs table (money) or in the assumptions table."""
    for line in output.splitlines():
        words = line.split()
        if words and words[0] == name and ("$" in line) == money:
            return line
    raise AssertionError(f"no {name!r} row in:\n{output}")


def assert_rows(output: str, rows: list[Projection]) -> None:
    for row in rows:
        money = row_line(output, row.profile.name, money=True).split()[1:]
        assert money == [
            usd(row.audio_only.model_usd),
            usd(row.with_context.model_usd),
            usd(row.with_context.twilio_usd),
            usd(row.total_usd),
            usd_thousand(row.total_usd),
        ]
        tokens = row.with_context.tokens
        assumptions = row_line(output, row.profile.name, money=False).split()[1:]
        assert assumptions == [
            f"{row.profile.minutes:g}",
            str(row.profile.turns),
            f"{row.profile.caller_share:.0%}",
            f"{row.profile.agent_share:.0%}",
            f"{row.audio_only.tokens.audio_in:,}",
            f"{row.audio_only.tokens.audio_out:,}",
            f"{tokens.text_in + tokens.audio_in:,}",
        ]


def test_default_model_prints_the_three_calls_consistent_with_the_ledger() -> None:
    result = run()
    assert result.exit_code == 0, result.output
    rows, seed = expected("gemini-live-2.5-flash-preview")
    assert [r.profile.name for r in rows] == ["short", "typical", "chatty"]
    assert_rows(result.output, rows)
    assert "gemini-live-2.5-flash-preview" in text(result)
    assert "pricing 2025-08-21" in text(result)
    assert "confirm against your Twilio price sheet" in text(result)
    # A 4-minute call: 6,000 audio tokens in x $3/M + 2,700 out x $12/M.
    assert rows[1].audio_only.model_usd == pytest.approx(0.0504)
    # The seed's worked example, honestly: 7,500 x $3/M + 3,750 x $12/M = $0.0675 audio only.
    assert seed.audio_only.model_usd == pytest.approx(0.0675)
    assert "low single-digit dollars" in text(result)
    for figure in (seed.audio_only.model_usd, seed.with_context.model_usd, seed.total_usd):
        assert usd(figure) in text(result)
    assert "too high" in text(result)


def test_re_reading_context_costs_more_and_grows_with_the_call() -> None:
    rows, _ = expected("gemini-live-2.5-flash-preview")
    # The typical call by hand: 12 turns of 500 text + 500 new audio tokens, and turn i re-reads
    # i x (500 in + 225 out) earlier audio: 725 x (0 + 1 + ... + 11) = 47,850.
    typical = rows[1].with_context
    assert typical.tokens == Tokens(text_in=6000, audio_in=6000 + 47_850, audio_out=2700)
    assert typical.model_usd == pytest.approx((6000 * 0.5 + 53_850 * 3 + 2700 * 12) / 1e6)
    for row in rows:
        assert row.with_context.model_usd > row.audio_only.model_usd
    ratios = [r.with_context.model_usd / r.audio_only.model_usd for r in rows]
    assert ratios == sorted(ratios)


def test_another_model_uses_its_rates() -> None:
    result = run("--model", "gemini-2.0-flash-live-001")
    assert result.exit_code == 0, result.output
    assert "Gemini 2.0 Flash" in text(result)
    rows, _ = expected("gemini-2.0-flash-live-001")
    assert_rows(result.output, rows)


def test_options_change_the_arithmetic_the_same_way() -> None:
    result = run("--no-compression", "--prompt-tokens", "2000", "--audio-tokens-per-second", "32")
    assert result.exit_code == 0, result.output
    rows, _ = expected(
        "gemini-live-2.5-flash-preview", prompt_tokens=2000, compression=None, audio_tokens_per_s=32
    )
    assert_rows(result.output, rows)
    assert "no compression" in text(result)
    # The chatty call passes the compression trigger: without it, it costs more.
    capped, _ = expected("gemini-live-2.5-flash-preview", prompt_tokens=2000, audio_tokens_per_s=32)
    assert rows[2].with_context.model_usd > capped[2].with_context.model_usd


def test_a_pricing_file_overrides_the_table(tmp_path: Path) -> None:
    data = {
        "version": "2026-01-01",
        "twilio_usd_per_minute": 0.01,
        "models": [
            {"match": "gemini-*", "text_in": 1, "text_out": 4, "audio_in": 6, "audio_out": 24}
        ],
    }
    path = tmp_path / "prices.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    result = run("--pricing-file", str(path))
    assert result.exit_code == 0, result.output
    assert "pricing 2026-01-01" in text(result) and "$0.0100 per started minute" in text(result)
    rows, _ = expected("gemini-live-2.5-flash-preview", load_price_table(path))
    assert_rows(result.output, rows)
    # Same call shape as the default table's, at twice the rates.
    default_rows, _ = expected("gemini-live-2.5-flash-preview")
    assert rows[0].audio_only.model_usd == pytest.approx(2 * default_rows[0].audio_only.model_usd)

    unmatched = run("--pricing-file", str(path), "--model", "other-model")
    assert unmatched.exit_code == 2
    assert "no entry matches model 'other-model'" in text(unmatched)


def test_a_bad_pricing_file_is_named_with_its_key(tmp_path: Path) -> None:
    path = tmp_path / "prices.json"
    path.write_text(json.dumps({**DEFAULT_TABLE.as_dict(), "twilio_usd_per_minute": -1}))
    result = run("--pricing-file", str(path))
    assert result.exit_code == 2
    assert f"pricing error: {path}: twilio_usd_per_minute" in text(result)


def test_scenarios_are_the_documented_ones() -> None:
    assert [(p.name, p.minutes, p.turns) for p in SCENARIOS] == [
        ("short", 1, 3),
        ("typical", 4, 12),
        ("chatty", 15, 45),
    ]
    assert (SEED_EXAMPLE.minutes, SEED_EXAMPLE.agent_share) == (5, 0.5)
