"""`python -m phone_agent.emulator`: serve the Gemini Live emulator until Ctrl-C."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys

from phone_agent.emulator.pacing import CLOCKS
from phone_agent.emulator.script import EmulatorScript, ScriptError
from phone_agent.emulator.server import GeminiEmulator


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m phone_agent.emulator", description="Serve a local Gemini Live API emulator."
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument(
        "--speed", type=float, default=2.0, help="audio pacing vs real time (inf: no pacing)"
    )
    parser.add_argument("--chunk-ms", type=int, default=40, help="audio per message, ms")
    parser.add_argument(
        "--clock",
        choices=CLOCKS,
        default="wall",
        help="what paces replies: wall time, or the caller audio received (deterministic replays)",
    )
    parser.add_argument("--vad-threshold-dbfs", type=float, default=-40.0)
    parser.add_argument("--script", help="a JSON script (see phone_agent.emulator.script)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log every connection")
    return parser


async def _serve(args: argparse.Namespace, script: EmulatorScript | None) -> None:
    # Stop cleanly on SIGTERM as on Ctrl-C, so the temporary CA file is removed either way.
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):  # not on Windows
            loop.add_signal_handler(sig, stop.set)
    emulator = GeminiEmulator(
        script,
        host=args.host,
        port=args.port,
        speed=args.speed,
        chunk_ms=args.chunk_ms,
        clock=args.clock,
        vad_threshold_dbfs=args.vad_threshold_dbfs,
        record_messages=False,  # long-running: keep session records small
    )
    async with emulator:
        print(f"Gemini Live emulator: {emulator.base_url}", flush=True)
        print(f"CA certificate:       {emulator.ca_file}", flush=True)
        print(
            "google-genai: genai.Client(api_key='any', http_options={'base_url': "
            f"'{emulator.base_url}', 'api_version': 'v1beta', 'async_client_args': "
            f"{{'ssl': ssl.create_default_context(cafile='{emulator.ca_file}')}}}})",
            flush=True,
        )
        print("Ctrl-C to stop.", flush=True)
        await stop.wait()


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING)
    try:
        script = EmulatorScript.load(args.script) if args.script else None
    except ScriptError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(args, script))
    return 0


if __name__ == "__main__":
    sys.exit(main())
