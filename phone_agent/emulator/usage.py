"""Token accounting for the emulator's `usageMetadata`.

The emulator's assumptions, not Google's published rates: audio costs 25 tokens per second in either
direction, and text one token per 4 characters. The prompt count covers only the input between the
previous trigger and the one the reply answers (the real service counts the whole context window).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from phone_agent.emulator.script import Usage

AUDIO_TOKENS_PER_SECOND = 25
CHARS_PER_TEXT_TOKEN = 4


def audio_tokens(ms: float) -> int:
    return math.ceil(ms * AUDIO_TOKENS_PER_SECOND / 1000 - 1e-9)


def text_tokens(chars: int) -> int:
    return math.ceil(chars / CHARS_PER_TEXT_TOKEN)


@dataclass
class TurnUsage:
    """What one turn consumed and produced; `usage_metadata()` turns it into the wire form."""

    audio_in_ms: float = 0.0
    text_in_chars: int = 0
    audio_out_ms: float = 0.0
    text_out_chars: int = 0

    def absorb(self, other: TurnUsage) -> None:
        """Add another turn's counts to this one's."""
        self.audio_in_ms += other.audio_in_ms
        self.text_in_chars += other.text_in_chars
        self.audio_out_ms += other.audio_out_ms
        self.text_out_chars += other.text_out_chars

    def usage_metadata(self, override: Usage | None = None) -> dict[str, Any]:
        prompt = {"AUDIO": audio_tokens(self.audio_in_ms), "TEXT": text_tokens(self.text_in_chars)}
        response = {
            "AUDIO": audio_tokens(self.audio_out_ms),
            "TEXT": text_tokens(self.text_out_chars),
        }
        prompt_total = sum(prompt.values())
        response_total = sum(response.values())
        if override is not None:
            prompt_total = (
                override.prompt_tokens if override.prompt_tokens is not None else prompt_total
            )
            if override.response_tokens is not None:
                response_total = override.response_tokens
        return {
            "promptTokenCount": prompt_total,
            "responseTokenCount": response_total,
            "totalTokenCount": prompt_total + response_total,
            "promptTokensDetails": _details(prompt),
            "responseTokensDetails": _details(response),
        }


def _details(counts: dict[str, int]) -> list[dict[str, Any]]:
    return [{"modality": m, "tokenCount": n} for m, n in counts.items() if n]
