"""Benchmark: media stream start → first greeting audio sent, pre-warmed vs not, in one run.

Each call goes through the whole stack on loopback (uvicorn, the real google-genai SDK, the Gemini
Live emulator over TLS, the Twilio caller simulator). The emulator answers `setup` after
`--setup-delay` seconds, standing in for the real service's connection set-up (TLS, auth,
session creation: field reports put it at hundreds of ms to seconds). Modes:

- cold: no webhook, so the stream opens the model session itself;
- pre-warmed: the signed webhook comes first, `--ring` seconds before the stream (the phone
  ringing), and the stream adopts the session opened meanwhile.

Measured on the phone's clock: from sending `start` to receiving the first agent audio. Printed as
p50/max per mode and the ratio pre-warmed/cold, both measured in this run.

    python tools/bench_first_words.py [--calls 5] [--setup-delay 0.5] [--ring 1.0]
"""

from __future__ import annotations

import argparse
import secrets
import statistics

import anyio
from pydantic import SecretStr
from starlette.applications import Starlette

from phone_agent.app import GeminiTarget, create_app
from phone_agent.config import Settings
from phone_agent.embedded import embedded_server
from phone_agent.emulator import EmulatorScript, GeminiEmulator, Reply, Tone, Trigger
from phone_agent.replay import webhook_stream_parameters
from phone_agent.simulator import (
    CallerStep,
    HangUp,
    TwilioCallerSimulator,
    WaitForAgentAudio,
    WaitForAgentSilence,
)

PUBLIC = "https://agent.example.com"
TOKEN = "bench-token"


async def one_call(base: str, app: Starlette, *, prewarm: bool, ring_s: float) -> float:
    call_sid = "CA" + secrets.token_hex(16)
    media_url = base.replace("http://", "ws://") + "/twilio/media"
    if prewarm:
        # The signed webhook, as Twilio sends it when the call comes in: it starts pre-warming and
        # answers with the stream's parameters (its token among them).
        parameters = await webhook_stream_parameters(media_url, PUBLIC, TOKEN, call_sid)
        await anyio.sleep(ring_s)  # the phone rings
    else:
        parameters = app.state.phone_agent.stream_parameters(call_sid)
    steps: list[CallerStep] = [
        WaitForAgentAudio(min_ms=300),
        WaitForAgentSilence(ms=200),
        HangUp(),
    ]
    simulator = TwilioCallerSimulator(
        media_url, steps, call_sid=call_sid, custom_parameters=parameters
    )
    with anyio.fail_after(30):
        record = await simulator.run()
    first = record.events("media_received")
    if not first:
        raise RuntimeError("no greeting audio arrived")
    return first[0].t_ms


async def bench(calls: int, setup_delay_s: float, ring_s: float) -> None:
    script = EmulatorScript(
        replies=[],
        default_reply=Reply.of(
            "Hello, how can I help?", Tone(700.0, 500, 0.3), trigger=Trigger.ANY
        ),
    )
    settings = Settings(
        greeting="Greet the caller.",
        twilio_auth_token=SecretStr(TOKEN),
        public_url=PUBLIC,
        silence_reprompt_s=0,
        silence_hang_up_s=0,
    )
    results: dict[str, list[float]] = {"cold": [], "pre-warmed": []}
    async with GeminiEmulator(script, setup_delay_s=setup_delay_s) as emulator:
        target = GeminiTarget(emulator.base_url, "bench", emulator.client_ssl_context())
        app = create_app(settings, gemini=target)
        async with embedded_server(app) as base:
            for _ in range(calls):  # interleaved, so both modes see the same machine
                results["cold"].append(await one_call(base, app, prewarm=False, ring_s=ring_s))
                results["pre-warmed"].append(await one_call(base, app, prewarm=True, ring_s=ring_s))
    print(
        f"stream start → first greeting audio, {calls} calls per mode, "
        f"emulated set-up {setup_delay_s * 1000:.0f} ms, ring {ring_s * 1000:.0f} ms"
    )
    print("| mode       | p50 ms | max ms |")
    print("|------------|-------:|-------:|")
    for mode, values in results.items():
        print(f"| {mode:<10} | {statistics.median(values):6.0f} | {max(values):6.0f} |")
    ratio = statistics.median(results["pre-warmed"]) / statistics.median(results["cold"])
    print(f"ratio pre-warmed/cold (p50): {ratio:.2f}×")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=5)
    parser.add_argument("--setup-delay", type=float, default=0.5)
    parser.add_argument("--ring", type=float, default=1.0)
    args = parser.parse_args()
    anyio.run(bench, args.calls, args.setup_delay, args.ring)


if __name__ == "__main__":
    main()
