"""What a call costs in model tokens, priced in USD.

Rates are the seed article's paid-tier table (Google's pricing as of 2025-08-21), USD per million
tokens, by modality and direction. They change: `PRICING_VERSION` says which table is in force.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from phone_agent.gemini import Usage

PRICING_VERSION = "2025-08-21"


@dataclass(frozen=True)
class Rates:
    """USD per 1M tokens."""

    text_in: float
    text_out: float
    audio_in: float
    audio_out: float


GEMINI_2_5_FLASH = Rates(text_in=0.50, text_out=2.00, audio_in=3.00, audio_out=12.00)
GEMINI_2_0_FLASH = Rates(text_in=0.35, text_out=1.50, audio_in=2.10, audio_out=8.50)


def rates_for(model: str) -> Rates:
    """The rate card for a model name; 2.5 Flash rates unless it is a 2.0 model."""
    return GEMINI_2_0_FLASH if "2.0" in model else GEMINI_2_5_FLASH


@dataclass(frozen=True)
class CostEstimate:
    text_in: int
    text_out: int
    audio_in: int
    audio_out: int
    usd: float

    def describe(self) -> str:
        return (
            f"${self.usd:.4f}  (audio in {self.audio_in} tok, audio out {self.audio_out} tok, "
            f"text in {self.text_in} tok, text out {self.text_out} tok; "
            f"pricing {PRICING_VERSION})"
        )


def estimate(usages: Iterable[Usage], model: str) -> CostEstimate:
    """Sum per-turn usage reports. Non-text input modalities (audio, image, video) bill as audio."""
    text_in = text_out = audio_in = audio_out = 0
    for usage in usages:
        text_in += usage.prompt_by_modality.get("TEXT", 0)
        audio_in += sum(n for m, n in usage.prompt_by_modality.items() if m != "TEXT")
        text_out += usage.response_by_modality.get("TEXT", 0)
        audio_out += sum(n for m, n in usage.response_by_modality.items() if m != "TEXT")
        # Reports without a breakdown: count input as audio and output as audio (a phone call).
        if not usage.prompt_by_modality:
            audio_in += usage.prompt_tokens
        if not usage.response_by_modality:
            audio_out += usage.response_tokens
    r = rates_for(model)
    usd = (
        text_in * r.text_in
        + text_out * r.text_out
        + audio_in * r.audio_in
        + audio_out * r.audio_out
    ) / 1_000_000
    return CostEstimate(text_in, text_out, audio_in, audio_out, usd)
