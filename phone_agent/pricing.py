"""What a call costs: Gemini tokens by modality and direction, plus Twilio minutes, in USD.

A `PriceTable` is versioned: the default is the seed article's paid-tier table (Google's Gemini
Live API pricing as of 2025-08-21) with Twilio's US local inbound rate; `load_price_table` reads
an override from JSON (see `PriceTable.as_dict` for the shape). `CallCost` is a call's ledger,
built from the `usageMetadata` reports the Live API sends (one per turn, summed: each turn's prompt
already includes the context the model re-read) and the call's duration. `Budget` says when a call
has spent its allowance. `simulated_usages` produces the reports a call of a given shape would get,
for what-if arithmetic (`phone-agent cost`). Nothing here does I/O except `load_price_table`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

from phone_agent.gemini import Usage

AUDIO_TOKENS_PER_SECOND = 25
"""Live API audio tokens per second of audio, in and out (Google's general audio docs say 32 for
audio files: pass that to `simulated_usages` to see the difference)."""


class PricingError(ValueError):
    """A price table is missing, unreadable or malformed; the message names the file and key."""


@dataclass(frozen=True)
class Rates:
    """USD per 1M tokens. Image and video input bill at the audio input rate."""

    text_in: float
    text_out: float
    audio_in: float
    audio_out: float

    def usd(self, tokens: Tokens) -> float:
        return (
            tokens.text_in * self.text_in
            + tokens.text_out * self.text_out
            + tokens.audio_in * self.audio_in
            + tokens.audio_out * self.audio_out
        ) / 1_000_000


@dataclass(frozen=True)
class ModelRates:
    """The rates of the models whose name matches `match`, a glob (`*`, `?`), case-insensitive."""

    match: str
    rates: Rates
    label: str = ""


@dataclass(frozen=True)
class PriceTable:
    """Versioned prices. For a model name the first matching entry of `models` wins."""

    version: str
    models: tuple[ModelRates, ...]
    twilio_usd_per_minute: float
    """Twilio bills inbound voice per started minute."""
    source: str = ""

    def entry_for(self, model: str) -> ModelRates:
        for entry in self.models:
            if fnmatchcase(model.lower(), entry.match.lower()):
                return entry
        raise PricingError(
            f"pricing table {self.version}: no entry matches model {model!r} "
            f"(patterns: {', '.join(e.match for e in self.models)}; add a '*' entry as a fallback)"
        )

    def rates_for(self, model: str) -> Rates:
        return self.entry_for(model).rates

    def as_dict(self) -> dict[str, Any]:
        """The JSON shape `load_price_table` reads."""
        return {
            "version": self.version,
            "source": self.source,
            "twilio_usd_per_minute": self.twilio_usd_per_minute,
            "models": [
                {
                    "match": e.match,
                    "label": e.label,
                    "text_in": e.rates.text_in,
                    "text_out": e.rates.text_out,
                    "audio_in": e.rates.audio_in,
                    "audio_out": e.rates.audio_out,
                }
                for e in self.models
            ],
        }


GEMINI_2_5_FLASH = Rates(text_in=0.50, text_out=2.00, audio_in=3.00, audio_out=12.00)
GEMINI_2_0_FLASH = Rates(text_in=0.35, text_out=1.50, audio_in=2.10, audio_out=8.50)
TWILIO_US_LOCAL_INBOUND_USD_PER_MINUTE = 0.0085

DEFAULT_TABLE = PriceTable(
    version="2025-08-21",
    source=(
        "Gemini: Google's paid-tier Live API prices of 2025-08-21, as quoted by the seed article "
        "(section 5). Twilio: US local number, inbound voice, pay-as-you-go, per started minute; "
        "confirm both against your own price sheets."
    ),
    models=(
        ModelRates("*2.0-flash*", GEMINI_2_0_FLASH, "Gemini 2.0 Flash, Live API"),
        ModelRates("*", GEMINI_2_5_FLASH, "Gemini 2.5 Flash, Live API (also the fallback)"),
    ),
    twilio_usd_per_minute=TWILIO_US_LOCAL_INBOUND_USD_PER_MINUTE,
)
PRICING_VERSION = DEFAULT_TABLE.version


def rates_for(model: str) -> Rates:
    """The default table's rates for a model name."""
    return DEFAULT_TABLE.rates_for(model)


# -- loading --------------------------------------------------------------------------------------

_TOP_KEYS = {"version", "source", "twilio_usd_per_minute", "models"}
_RATE_KEYS = ("text_in", "text_out", "audio_in", "audio_out")
_MODEL_KEYS = {"match", "label", *_RATE_KEYS}


def load_price_table(path: Path | None) -> PriceTable:
    """The table in a JSON file (`PriceTable.as_dict` shape), or the default for None."""
    if path is None:
        return DEFAULT_TABLE
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise PricingError(f"{path}: cannot read the pricing file ({exc.strerror})") from None
    except UnicodeDecodeError:
        raise PricingError(f"{path}: the pricing file is not UTF-8 text") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise PricingError(
            f"{path}: not JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})"
        ) from None
    return parse_price_table(data, str(path))


def parse_price_table(data: object, origin: str = "pricing table") -> PriceTable:
    """A table from decoded JSON; errors name `origin` and the offending key."""
    if not isinstance(data, dict):
        raise PricingError(f"{origin}: expected a JSON object at the top level")
    _no_unknown_keys(data, _TOP_KEYS, origin, "")
    version = data.get("version")
    if not isinstance(version, str) or not version.strip():
        raise PricingError(f"{origin}: version: required, a non-empty string (e.g. a date)")
    source = data.get("source", "")
    if not isinstance(source, str):
        raise PricingError(f"{origin}: source: must be a string")
    twilio = _price(data, "twilio_usd_per_minute", origin, "twilio_usd_per_minute")
    models = data.get("models")
    if not isinstance(models, list) or not models:
        raise PricingError(f"{origin}: models: required, a non-empty list of rate entries")
    entries = []
    for i, item in enumerate(models):
        where = f"models[{i}]"
        if not isinstance(item, dict):
            raise PricingError(f"{origin}: {where}: expected an object")
        _no_unknown_keys(item, _MODEL_KEYS, origin, where + ".")
        match = item.get("match")
        if not isinstance(match, str) or not match:
            raise PricingError(f"{origin}: {where}.match: required, a model-name glob such as '*'")
        label = item.get("label", "")
        if not isinstance(label, str):
            raise PricingError(f"{origin}: {where}.label: must be a string")
        rates = Rates(*(_price(item, key, origin, f"{where}.{key}") for key in _RATE_KEYS))
        entries.append(ModelRates(match, rates, label))
    return PriceTable(version.strip(), tuple(entries), twilio, source)


def _no_unknown_keys(data: Mapping[str, object], known: set[str], origin: str, where: str) -> None:
    for key in data:
        if key not in known:
            raise PricingError(
                f"{origin}: {where}{key}: unknown key (known: {', '.join(sorted(known))})"
            )


def _price(data: Mapping[str, object], key: str, origin: str, where: str) -> float:
    if key not in data:
        raise PricingError(f"{origin}: {where}: required, USD (a number >= 0)")
    value = data[key]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise PricingError(f"{origin}: {where}: must be a number, got {value!r}")
    if not math.isfinite(value) or value < 0:
        raise PricingError(f"{origin}: {where}: must be a finite number >= 0, got {value!r}")
    return float(value)


# -- the ledger -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Tokens:
    """Token counts by modality and direction; `audio_in` includes image and video input."""

    text_in: int = 0
    text_out: int = 0
    audio_in: int = 0
    audio_out: int = 0

    def __add__(self, other: Tokens) -> Tokens:
        return Tokens(
            self.text_in + other.text_in,
            self.text_out + other.text_out,
            self.audio_in + other.audio_in,
            self.audio_out + other.audio_out,
        )

    @classmethod
    def of(cls, usage: Usage) -> Tokens:
        """One report's tokens. A count the modality breakdown does not cover (no breakdown at
        all, or a breakdown summing to less than the total) counts as audio: this is a phone call.
        """
        text_in = usage.prompt_by_modality.get("TEXT", 0)
        other_in = sum(n for m, n in usage.prompt_by_modality.items() if m != "TEXT")
        text_out = usage.response_by_modality.get("TEXT", 0)
        other_out = sum(n for m, n in usage.response_by_modality.items() if m != "TEXT")
        other_in += max(0, usage.prompt_tokens - text_in - other_in)
        other_out += max(0, usage.response_tokens - text_out - other_out)
        return cls(text_in, text_out, other_in, other_out)

    @classmethod
    def total(cls, usages: Iterable[Usage]) -> Tokens:
        return sum((cls.of(u) for u in usages), cls())


def twilio_minutes(duration_s: float) -> int:
    """Billed Twilio minutes: every started minute counts; a call that never connected, none."""
    return math.ceil(duration_s / 60 - 1e-9) if duration_s > 0 else 0


@dataclass(frozen=True)
class CallCost:
    """One call's bill: model tokens priced by modality and direction, plus Twilio minutes."""

    model: str
    pricing_version: str
    tokens: Tokens
    duration_s: float
    twilio_minutes: int
    model_usd: float
    twilio_usd: float

    @property
    def total_usd(self) -> float:
        return self.model_usd + self.twilio_usd

    @classmethod
    def of(
        cls,
        usages: Iterable[Usage],
        duration_s: float,
        model: str,
        table: PriceTable = DEFAULT_TABLE,
    ) -> CallCost:
        """The ledger of a call (or of a call so far) from its usage reports and duration."""
        tokens = Tokens.total(usages)
        minutes = twilio_minutes(duration_s)
        return cls(
            model=model,
            pricing_version=table.version,
            tokens=tokens,
            duration_s=duration_s,
            twilio_minutes=minutes,
            model_usd=table.rates_for(model).usd(tokens),
            twilio_usd=minutes * table.twilio_usd_per_minute,
        )

    def as_dict(self) -> dict[str, Any]:
        """Flat, for a log line or a database row; USD to the micro-dollar."""
        return {
            "model": self.model,
            "pricing_version": self.pricing_version,
            "duration_s": round(self.duration_s, 3),
            "twilio_minutes": self.twilio_minutes,
            "text_in_tokens": self.tokens.text_in,
            "text_out_tokens": self.tokens.text_out,
            "audio_in_tokens": self.tokens.audio_in,
            "audio_out_tokens": self.tokens.audio_out,
            "model_usd": round(self.model_usd, 6),
            "twilio_usd": round(self.twilio_usd, 6),
            "total_usd": round(self.total_usd, 6),
        }

    def describe(self) -> str:
        t = self.tokens
        return (
            f"${self.total_usd:.4f} = model ${self.model_usd:.4f} (audio in {t.audio_in} tok, "
            f"audio out {t.audio_out} tok, text in {t.text_in} tok, text out {t.text_out} tok) "
            f"+ Twilio ${self.twilio_usd:.4f} ({self.twilio_minutes} min); "
            f"pricing {self.pricing_version}"
        )


@dataclass(frozen=True)
class Budget:
    """A per-call spending limit in USD; None or 0 means no limit (as the other limits' 0)."""

    limit_usd: float | None = None

    def __post_init__(self) -> None:
        limit = self.limit_usd
        if limit is not None and not (math.isfinite(limit) and limit >= 0):
            raise ValueError(f"a call budget is USD >= 0, got {limit!r}")

    @property
    def enabled(self) -> bool:
        return bool(self.limit_usd)

    def over_budget(self, cost: CallCost) -> bool:
        """The call has spent its allowance: time to say goodbye."""
        limit = self.limit_usd
        return limit is not None and limit > 0 and cost.total_usd >= limit

    def remaining_usd(self, cost: CallCost) -> float | None:
        limit = self.limit_usd
        return limit - cost.total_usd if limit is not None and limit > 0 else None

    def will_exceed(self, cost: CallCost, ahead_s: float) -> bool:
        """Over budget now, or within `ahead_s` seconds (`projected_usd`). A bridge can ask with
        the length of its goodbye, to end the call before the limit rather than after it."""
        limit = self.limit_usd
        return limit is not None and limit > 0 and projected_usd(cost, ahead_s) >= limit


def projected_usd(cost: CallCost, ahead_s: float) -> float:
    """What the call will have cost `ahead_s` seconds on, if the model keeps spending at its
    average rate so far and Twilio bills the minutes started meanwhile. Context re-reads make
    later turns dearer than earlier ones, so this errs low over long horizons."""
    ahead_s = max(0.0, ahead_s)
    model_rate = cost.model_usd / cost.duration_s if cost.duration_s > 0 else 0.0
    per_minute = cost.twilio_usd / cost.twilio_minutes if cost.twilio_minutes else 0.0
    minutes = twilio_minutes(cost.duration_s + ahead_s)
    return cost.model_usd + model_rate * ahead_s + minutes * per_minute


# -- what-if: the reports a call of a given shape would get ---------------------------------------


@dataclass(frozen=True)
class Compression:
    """Context window compression: past `trigger_tokens`, the oldest turns slide out until
    `target_tokens` remain (the system instruction stays)."""

    trigger_tokens: int
    target_tokens: int


BRIDGE_COMPRESSION = Compression(trigger_tokens=25_600, target_tokens=12_800)
"""What `gemini.connect_config` asks for on models that support it."""


@dataclass(frozen=True)
class CallProfile:
    """The shape of a call, for arithmetic: how long, how much the agent talks, how many turns."""

    name: str
    minutes: float
    agent_share: float
    """Fraction of the call the agent is speaking."""
    turns: int
    """Agent replies; each is one billed model turn."""
    caller_share: float = 0.0
    """Fraction of the call the caller is speaking. Informational: the bridge streams the line the
    whole call (barge-in needs it) and streamed silence bills like speech."""
    prompt_tokens: int = 500
    """Text in every prompt: system instruction, tool declarations, the service's own framing."""

    def __post_init__(self) -> None:
        if self.minutes <= 0 or self.turns < 1:
            raise ValueError(f"{self.name}: a call needs minutes > 0 and at least one turn")
        if not 0 <= self.agent_share <= 1 or not 0 <= self.caller_share <= 1:
            raise ValueError(f"{self.name}: talk shares are fractions of the call, 0 to 1")
        if self.prompt_tokens < 0:
            raise ValueError(f"{self.name}: prompt tokens cannot be negative")


def simulated_usages(
    profile: CallProfile,
    *,
    context: bool,
    compression: Compression | None = BRIDGE_COMPRESSION,
    audio_tokens_per_s: float = AUDIO_TOKENS_PER_SECOND,
) -> list[Usage]:
    """One report per turn for a call of this shape, turns evenly spaced.

    Each turn takes in the caller line since the previous turn (the whole call, streamed) and
    speaks its share. Without `context` (the seed article's method) a prompt is only that new
    audio. With `context` (how the Live API bills) a prompt is the text prompt, every earlier
    turn's audio in both directions, and the new audio, until `compression` trims the history.
    """
    seconds = profile.minutes * 60
    in_total = seconds * audio_tokens_per_s
    out_total = seconds * profile.agent_share * audio_tokens_per_s
    history = 0
    usages = []
    for turn in range(profile.turns):
        new_in = _share(in_total, turn, profile.turns)
        out = _share(out_total, turn, profile.turns)
        if not context:
            prompt = {"AUDIO": new_in}
        else:
            fixed = profile.prompt_tokens + new_in
            if compression is not None and fixed + history > compression.trigger_tokens:
                history = max(0, compression.target_tokens - fixed)
            prompt = {"TEXT": profile.prompt_tokens, "AUDIO": history + new_in}
            history += new_in + out
        prompt = {m: n for m, n in prompt.items() if n}
        response = {"AUDIO": out} if out else {}
        p, r = sum(prompt.values()), sum(response.values())
        usages.append(Usage(p, r, p + r, prompt, response))
    return usages


def _share(total: float, i: int, n: int) -> int:
    """Turn i's whole tokens of `total` split over n turns; the parts sum to round(total)."""
    return round(total * (i + 1) / n) - round(total * i / n)


@dataclass(frozen=True)
class Projection:
    """A call profile priced both ways."""

    profile: CallProfile
    audio_only: CallCost
    with_context: CallCost

    @property
    def total_usd(self) -> float:
        """What the call costs: the context re-read model bill plus Twilio."""
        return self.with_context.total_usd


def project(
    profile: CallProfile,
    model: str,
    table: PriceTable = DEFAULT_TABLE,
    *,
    compression: Compression | None = BRIDGE_COMPRESSION,
    audio_tokens_per_s: float = AUDIO_TOKENS_PER_SECOND,
) -> Projection:
    """Price a call profile through the same ledger as a real call."""
    seconds = profile.minutes * 60

    def cost(context: bool) -> CallCost:
        usages = simulated_usages(
            profile,
            context=context,
            compression=compression,
            audio_tokens_per_s=audio_tokens_per_s,
        )
        return CallCost.of(usages, seconds, model, table)

    return Projection(profile, cost(False), cost(True))
