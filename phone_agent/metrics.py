"""Prometheus metrics, served at `/metrics` in the text exposition format.

One `Metrics` per app, on its own registry (so two apps in one process, as in tests, do not
share counters). Names follow Prometheus conventions: base units (seconds, USD), `_total` for
counters. Label values are bounded sets (end reasons, error kinds, tool names from the registry,
modalities), never caller data.

| Metric | Type | Labels |
| --- | --- | --- |
| `phone_agent_active_calls` | gauge | |
| `phone_agent_calls_total` | counter | `end_reason` |
| `phone_agent_call_duration_seconds` | histogram | |
| `phone_agent_turn_latency_seconds` | histogram | `stage`: `sent`, `heard` (see below) |
| `phone_agent_interrupt_to_clear_seconds` | histogram | |
| `phone_agent_barge_ins_total` | counter | |
| `phone_agent_tool_latency_seconds` | histogram | `tool` |
| `phone_agent_tool_calls_total` | counter | `tool`, `status` |
| `phone_agent_errors_total` | counter | `kind` |
| `phone_agent_reconnects_total` | counter | `kind`: `resume` (after a drop), `handover` (goAway) |
| `phone_agent_tokens_total` | counter | `modality` (`text`, `audio`), `direction` (`in`, `out`) |
| `phone_agent_cost_usd_total` | counter | `component` (`model`, `twilio`) |
| `phone_agent_webhooks_total` | counter | `outcome` |
| `phone_agent_model_sessions_total` | counter | `kind`: `new`, `resume` (pre-warmed included) |

Turn latency is measured from when the caller stopped speaking to the first agent audio sent to
Twilio (`sent`) and to the first agent audio the phone confirmed playing by a mark echo (`heard`).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

CONTENT_TYPE = CONTENT_TYPE_LATEST

# A phone turn is good under 0.8 s and bad over 2 s; the buckets resolve that range finely.
_LATENCY_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0, 1.25, 1.5, 2.0, 3.0, 5.0, 10.0)
_FAST_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0)
_TOOL_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_DURATION_BUCKETS = (5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0)


class Metrics:
    """The app's instruments (see the module docstring for the table)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry = registry if registry is not None else CollectorRegistry()
        p = "phone_agent_"
        self.active_calls = Gauge(p + "active_calls", "Calls in progress.", registry=registry)
        self.calls = Counter(
            p + "calls", "Calls ended, by end reason.", ["end_reason"], registry=registry
        )
        self.call_duration = Histogram(
            p + "call_duration_seconds",
            "Call length, stream start to end.",
            buckets=_DURATION_BUCKETS,
            registry=registry,
        )
        self.turn_latency = Histogram(
            p + "turn_latency_seconds",
            "Caller stopped speaking → first agent audio sent (stage=sent) or heard (stage=heard).",
            ["stage"],
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.interrupt_to_clear = Histogram(
            p + "interrupt_to_clear_seconds",
            "Barge-in detected → Twilio clear sent.",
            buckets=_FAST_BUCKETS,
            registry=registry,
        )
        self.barge_ins = Counter(
            p + "barge_ins", "Agent answers cut by the caller.", registry=registry
        )
        self.tool_latency = Histogram(
            p + "tool_latency_seconds",
            "Tool call latency.",
            ["tool"],
            buckets=_TOOL_BUCKETS,
            registry=registry,
        )
        self.tool_calls = Counter(
            p + "tool_calls", "Tool calls, by outcome.", ["tool", "status"], registry=registry
        )
        self.errors = Counter(p + "errors", "Errors, by kind.", ["kind"], registry=registry)
        self.reconnects = Counter(
            p + "reconnects", "Model session replacements, by kind.", ["kind"], registry=registry
        )
        self.tokens = Counter(
            p + "tokens",
            "Model tokens billed, by modality and direction.",
            ["modality", "direction"],
            registry=registry,
        )
        self.cost = Counter(
            p + "cost_usd",
            "Estimated spend in USD, by component.",
            ["component"],
            registry=registry,
        )
        self.webhooks = Counter(
            p + "webhooks", "Voice webhooks, by outcome.", ["outcome"], registry=registry
        )

        self.model_sessions = Counter(
            p + "model_sessions",
            "Model sessions opened (each is paid for), by kind.",
            ["kind"],
            registry=registry,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
