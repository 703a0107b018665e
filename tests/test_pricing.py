from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import pytest

from phone_agent import gemini, replay
from phone_agent.config import Settings
from phone_agent.fixture import CallFixture
from phone_agent.gemini import Usage
from phone_agent.pricing import (
    BRIDGE_COMPRESSION,
    DEFAULT_TABLE,
    Budget,
    CallCost,
    CallProfile,
    Compression,
    ModelRates,
    PriceTable,
    PricingError,
    Rates,
    Tokens,
    load_price_table,
    parse_price_table,
    project,
    rates_for,
    simulated_usages,
    twilio_minutes,
)

FIXTURES = Path(__file__).parent / "fixtures"
FLASH_2_5 = "gemini-live-2.5-flash-preview"


def usage(prompt: dict[str, int], response: dict[str, int]) -> Usage:
    p, r = sum(prompt.values()), sum(response.values())
    return Usage(p, r, p + r, prompt, response)


# -- tokens ---------------------------------------------------------------------------------------


def test_tokens_split_by_modality_and_direction() -> None:
    report = usage({"AUDIO": 900, "TEXT": 100, "IMAGE": 5}, {"AUDIO": 500, "TEXT": 7})
    assert Tokens.of(report) == Tokens(text_in=100, text_out=7, audio_in=905, audio_out=500)
    assert Tokens.total([report, report]) == Tokens(200, 14, 1810, 1000)


def test_tokens_no_breakdown_count_as_audio() -> None:
    assert Tokens.of(Usage(100, 50, 150, {}, {})) == Tokens(audio_in=100, audio_out=50)
    # A breakdown covering less than the total: the rest is audio too.
    assert Tokens.of(Usage(120, 50, 170, {"TEXT": 20, "AUDIO": 90}, {"AUDIO": 50})) == Tokens(
        text_in=20, audio_in=100, audio_out=50
    )


def test_twilio_bills_every_started_minute() -> None:
    assert [twilio_minutes(s) for s in (0, -1, 0.2, 60, 60.5, 119.9, 120, 121)] == [
        0,
        0,
        1,
        1,
        2,
        2,
        2,
        3,
    ]


# -- the ledger -----------------------------------------------------------------------------------


def test_call_cost_hand_computed() -> None:
    """Two turns of a 61-second call on Gemini 2.5 Flash, worked by hand:
    text in 100 + 150 = 250 tok x $0.50/M = $0.000125
    text out        10 tok x $2.00/M  = $0.000020
    audio in 800 + 1200 = 2000 tok x $3.00/M = $0.006000
    audio out 400 + 600 = 1000 tok x $12.00/M = $0.012000   -> model $0.018145
    Twilio: 61 s is 2 started minutes x $0.0085 = $0.017      -> total $0.035145"""
    usages = [
        usage({"TEXT": 100, "AUDIO": 800}, {"AUDIO": 400}),
        usage({"TEXT": 150, "AUDIO": 1200}, {"AUDIO": 600, "TEXT": 10}),
    ]
    cost = CallCost.of(usages, 61.0, FLASH_2_5)
    assert cost.tokens == Tokens(text_in=250, text_out=10, audio_in=2000, audio_out=1000)
    assert cost.model_usd == pytest.approx(0.018145)
    assert cost.twilio_minutes == 2
    assert cost.twilio_usd == pytest.approx(0.017)
    assert cost.total_usd == pytest.approx(0.035145)
    assert cost.as_dict() == {
        "model": FLASH_2_5,
        "pricing_version": "2025-08-21",
        "duration_s": 61.0,
        "twilio_minutes": 2,
        "text_in_tokens": 250,
        "text_out_tokens": 10,
        "audio_in_tokens": 2000,
        "audio_out_tokens": 1000,
        "model_usd": 0.018145,
        "twilio_usd": 0.017,
        "total_usd": 0.035145,
    }
    assert cost.describe().startswith("$0.0351 = model $0.0181")


def test_call_cost_uses_the_table_it_is_given() -> None:
    table = PriceTable("test-1", (ModelRates("*", Rates(1, 1, 1, 1)),), 0.5)
    cost = CallCost.of([usage({"AUDIO": 1_000_000}, {"AUDIO": 1_000_000})], 30, FLASH_2_5, table)
    assert (cost.pricing_version, cost.model_usd, cost.twilio_usd) == ("test-1", 2.0, 0.5)


def test_a_call_with_no_usage_costs_its_twilio_minutes() -> None:
    cost = CallCost.of([], 5.0, FLASH_2_5)
    assert (cost.tokens, cost.model_usd, cost.total_usd) == (Tokens(), 0.0, 0.0085)


@pytest.mark.anyio
async def test_a_replayed_calls_cost_equals_its_hand_computed_cost() -> None:
    """order-status.json.gz records two turns (see its usageMetadata):
    prompt AUDIO 80, response AUDIO 94; prompt AUDIO 154, response AUDIO 86.
    Audio in 234 tok x $3/M = $0.000702; audio out 180 tok x $12/M = $0.002160;
    the call is under a minute: 1 x $0.0085. Total $0.011362."""
    result = await replay.replay(CallFixture.load(FIXTURES / "order-status.json.gz"))
    assert result.ok, result.report()
    summary = result.summary
    cost = CallCost.of(summary.usage, summary.ended_at - summary.started_at, FLASH_2_5)
    assert cost.tokens == Tokens(audio_in=80 + 154, audio_out=94 + 86)
    assert cost.model_usd == pytest.approx(0.002862)
    assert cost.twilio_minutes == 1
    assert cost.total_usd == pytest.approx(0.011362)


# -- the table ------------------------------------------------------------------------------------


def test_default_table_is_the_seeds() -> None:
    assert DEFAULT_TABLE.version == "2025-08-21"
    assert rates_for("gemini-2.0-flash-live-001") == Rates(0.35, 1.50, 2.10, 8.50)
    assert rates_for("Gemini-2.0-Flash-Exp") == Rates(0.35, 1.50, 2.10, 8.50)
    assert rates_for("gemini-2.5-flash-native-audio-latest") == Rates(0.50, 2.00, 3.00, 12.00)
    assert rates_for(FLASH_2_5) == Rates(0.50, 2.00, 3.00, 12.00)
    assert DEFAULT_TABLE.twilio_usd_per_minute == 0.0085


def test_first_matching_entry_wins_and_no_match_is_an_error() -> None:
    table = PriceTable(
        "t",
        (ModelRates("gemini-3*", Rates(1, 2, 3, 4)), ModelRates("gemini-*", Rates(5, 6, 7, 8))),
        0.0,
    )
    assert table.rates_for("gemini-3.1-flash-live-preview") == Rates(1, 2, 3, 4)
    assert table.rates_for("gemini-2.5-flash") == Rates(5, 6, 7, 8)
    with pytest.raises(PricingError, match="no entry matches model 'other-model'"):
        table.rates_for("other-model")


def test_load_price_table_default_and_round_trip(tmp_path: Path) -> None:
    assert load_price_table(None) is DEFAULT_TABLE
    path = tmp_path / "prices.json"
    path.write_text(json.dumps(DEFAULT_TABLE.as_dict()), encoding="utf-8")
    assert load_price_table(path) == DEFAULT_TABLE


def write(tmp_path: Path, data: object) -> Path:
    path = tmp_path / "prices.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def table_dict(**changes: object) -> dict[str, object]:
    return {**DEFAULT_TABLE.as_dict(), **changes}


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ([], "expected a JSON object"),
        (table_dict(version=""), "version: required"),
        (table_dict(models=[]), "models: required"),
        (table_dict(twilio_usd_per_minute=-1), "twilio_usd_per_minute: must be a finite"),
        (table_dict(twilio_usd_per_minute="0.01"), "twilio_usd_per_minute: must be a number"),
        (table_dict(currency="EUR"), "currency: unknown key"),
        (table_dict(models=[{"match": "*"}]), r"models\[0\].text_in: required"),
        (
            table_dict(models=[{"match": "*", **asdict(Rates(1, 1, 1, 1)), "audio_output": 3}]),
            r"models\[0\].audio_output: unknown key",
        ),
        (
            table_dict(models=[{"match": "*", **{**asdict(Rates(1, 1, 1, 1)), "text_in": True}}]),
            r"models\[0\].text_in: must be a number",
        ),
        (table_dict(models=[{"text_in": 1}]), r"models\[0\].match: required"),
        (table_dict(models=["*"]), r"models\[0\]: expected an object"),
    ],
)
def test_bad_tables_name_the_file_and_key(tmp_path: Path, data: object, message: str) -> None:
    path = write(tmp_path, data)
    with pytest.raises(PricingError, match=message) as caught:
        load_price_table(path)
    assert str(caught.value).startswith(f"{path}: ")


def test_unreadable_files_name_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "missing.json"
    with pytest.raises(PricingError, match=r"missing\.json: cannot read"):
        load_price_table(missing)
    broken = tmp_path / "broken.json"
    broken.write_text("{", encoding="utf-8")
    with pytest.raises(PricingError, match=r"broken\.json: not JSON"):
        load_price_table(broken)
    binary = tmp_path / "binary.json"
    binary.write_bytes(b"\xff\xfe")
    with pytest.raises(PricingError, match=r"binary\.json: the pricing file is not UTF-8"):
        load_price_table(binary)


def test_parse_price_table_accepts_integers_and_a_label() -> None:
    table = parse_price_table(
        {
            "version": " v2 ",
            "twilio_usd_per_minute": 0,
            "models": [{"match": "*", "label": "flat", **asdict(Rates(1, 2, 3, 4))}],
        }
    )
    assert table == PriceTable("v2", (ModelRates("*", Rates(1, 2, 3, 4), "flat"),), 0.0)


# -- the budget -----------------------------------------------------------------------------------


def spent(model_usd: float, duration_s: float, twilio_usd_per_minute: float = 0.0) -> CallCost:
    minutes = twilio_minutes(duration_s)
    return CallCost(
        FLASH_2_5, "t", Tokens(), duration_s, minutes, model_usd, minutes * twilio_usd_per_minute
    )


def test_budget_off() -> None:
    for budget in (Budget(), Budget(None), Budget(0)):
        assert not budget.enabled
        assert not budget.over_budget(spent(1e9, 60))
        assert not budget.will_exceed(spent(1e9, 60), 3600)
        assert budget.remaining_usd(spent(1.0, 60)) is None


def test_budget_over_at_the_limit() -> None:
    budget = Budget(0.50)
    assert budget.enabled
    assert not budget.over_budget(spent(0.49, 60))
    assert budget.over_budget(spent(0.50, 60))
    assert budget.remaining_usd(spent(0.20, 60)) == pytest.approx(0.30)


def test_budget_projection() -> None:
    # $0.30 of model spend in 60 s is $0.005/s; Twilio $0.01 per started minute (1 so far).
    cost = spent(0.30, 60, twilio_usd_per_minute=0.01)
    budget = Budget(0.40)
    # 10 s on: model 0.35, Twilio 2 minutes 0.02 -> 0.37 < 0.40.
    assert not budget.will_exceed(cost, 10)
    # 20 s on: model 0.40 + 0.02 -> over.
    assert budget.will_exceed(cost, 20)
    assert Budget(0.31).will_exceed(cost, 0)


def test_budget_rejects_nonsense() -> None:
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="USD >= 0"):
            Budget(bad)


# -- what-if --------------------------------------------------------------------------------------

ONE_MINUTE = CallProfile("t", minutes=1, agent_share=0.4, turns=3, prompt_tokens=100)


def test_audio_only_bills_each_second_once() -> None:
    usages = simulated_usages(ONE_MINUTE, context=False)
    # 60 s x 25 tok/s in, split over 3 turns; 24 s of agent speech out.
    assert [u.prompt_by_modality for u in usages] == [{"AUDIO": 500}] * 3
    assert [u.response_by_modality for u in usages] == [{"AUDIO": 200}] * 3
    assert Tokens.total(usages) == Tokens(audio_in=1500, audio_out=600)


def test_context_re_read_by_hand() -> None:
    """Each turn: 100 text + all earlier audio (500 in + 200 out per turn) + 500 new audio in."""
    usages = simulated_usages(ONE_MINUTE, context=True)
    assert [u.prompt_by_modality for u in usages] == [
        {"TEXT": 100, "AUDIO": 500},
        {"TEXT": 100, "AUDIO": 700 + 500},
        {"TEXT": 100, "AUDIO": 1400 + 500},
    ]
    assert [u.prompt_tokens for u in usages] == [600, 1300, 2000]
    assert Tokens.total(usages) == Tokens(text_in=300, audio_in=3600, audio_out=600)


def test_compression_trims_the_re_read() -> None:
    # Turn 3 would prompt 2000 tokens > 1500: history slides to 1000 - 600 fixed = 400.
    usages = simulated_usages(ONE_MINUTE, context=True, compression=Compression(1500, 1000))
    assert [u.prompt_tokens for u in usages] == [600, 1300, 1000]


def test_audio_token_rate_and_uneven_splits() -> None:
    profile = CallProfile("t", minutes=1, agent_share=0.5, turns=7)
    usages = simulated_usages(profile, context=False, audio_tokens_per_s=32)
    assert Tokens.total(usages) == Tokens(audio_in=1920, audio_out=960)


def test_the_seeds_worked_example_audio_only() -> None:
    """Seed 5.1: 300 s in, 150 s out at 25 tok/s on 2.5 Flash: 7,500 x $3/M + 3,750 x $12/M."""
    seed = CallProfile("seed", minutes=5, agent_share=0.5, turns=15)
    projection = project(seed, FLASH_2_5)
    assert projection.audio_only.model_usd == pytest.approx(0.0675)
    assert projection.audio_only.twilio_usd == pytest.approx(5 * 0.0085)
    assert projection.with_context.model_usd > projection.audio_only.model_usd
    assert projection.total_usd == projection.with_context.total_usd


def test_bridge_compression_is_what_the_bridge_asks_for() -> None:
    config = gemini.connect_config(Settings(model=FLASH_2_5))
    compression = config.context_window_compression
    assert compression is not None and compression.sliding_window is not None
    assert compression.trigger_tokens == BRIDGE_COMPRESSION.trigger_tokens
    assert compression.sliding_window.target_tokens == BRIDGE_COMPRESSION.target_tokens


def test_call_profile_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="at least one turn"):
        CallProfile("x", minutes=1, agent_share=0.5, turns=0)
    with pytest.raises(ValueError, match="fractions"):
        CallProfile("x", minutes=1, agent_share=1.5, turns=1)
