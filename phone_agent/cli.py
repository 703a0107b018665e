"""The `phone-agent` command line."""

from __future__ import annotations

import contextlib
from functools import partial
from pathlib import Path
from typing import Annotated

import typer

from phone_agent.config import ConfigError, Settings, load_settings
from phone_agent.logs import configure_logging, secret_values

DEMO_WAV = Path("demo-call.wav")

app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__)


def _settings() -> Settings:
    try:
        return load_settings()
    except ConfigError as exc:
        typer.echo(f"configuration error: {exc}", err=True)
        raise typer.Exit(2) from None


@app.command()
def serve(
    host: str = typer.Option("127.0.0.1", help="Interface to listen on."),
    port: int = typer.Option(8080, help="TCP port."),
) -> None:
    """Run the server: Twilio webhook, media streams, health checks."""
    import uvicorn

    from phone_agent.app import create_app
    from phone_agent.drain import DrainingServer

    settings = _settings()
    configure_logging(settings.log_level, settings.log_format, secrets=secret_values(settings))
    try:
        application = create_app(settings)
    except ConfigError as exc:
        typer.echo(f"configuration error: {exc}", err=True)
        raise typer.Exit(2) from None
    state = application.state.phone_agent
    config = uvicorn.Config(
        application,
        host=host,
        port=port,
        log_config=None,
        ws_max_size=settings.max_message_bytes,
        proxy_headers=False,
    )
    server = DrainingServer(
        config,
        state.drain,
        timeout_s=settings.drain_timeout_s,
        active_calls=lambda: state.active_calls,
        calls=lambda: list(state.bridges),
    )
    server.run()


@app.command()
def emulator(
    host: str = typer.Option("127.0.0.1", help="Interface to listen on."),
    port: int = typer.Option(8765, help="TCP port (0 picks a free one)."),
) -> None:
    """Run the Gemini Live emulator alone (TLS; prints its CA file for SSL_CERT_FILE)."""
    import anyio

    from phone_agent.emulator import GeminiEmulator

    configure_logging("INFO", "text")

    async def run() -> None:
        async with GeminiEmulator(host=host, port=port) as emu:
            typer.echo(f"Gemini Live emulator at {emu.base_url}")
            typer.echo(f"  PHONE_AGENT_GEMINI_BASE_URL={emu.base_url} SSL_CERT_FILE={emu.ca_file}")
            await anyio.sleep_forever()

    with contextlib.suppress(KeyboardInterrupt):
        anyio.run(run)


@app.command()
def replay(
    fixtures: Annotated[
        list[Path],
        typer.Argument(help="Fixture files (.json, .json.gz, or recordings .json.gz.enc)."),
    ],
    speed: Annotated[str, typer.Option(help="realtime, max, or a factor such as 4.")] = "max",
    url: Annotated[
        str | None,
        typer.Option(
            help="Replay into a running server (ws://host:port/twilio/media) instead of "
            "in-process. Start it offline with PHONE_AGENT_EMULATOR_FIXTURE=FIXTURE so its model "
            "plays the recording, and give this command the server's TWILIO_AUTH_TOKEN and "
            "PHONE_AGENT_PUBLIC_URL so the stream is admitted through its webhook; only what the "
            "phone can observe is checked.",
        ),
    ] = None,
) -> None:
    """Replay recorded calls through the bridge; print each timeline; exit 1 on any failure."""
    import anyio

    from phone_agent import replay as replaying
    from phone_agent.fixture import CallFixture, FixtureError

    configure_logging("WARNING", "text")
    factor: replaying.Speed | float = speed if speed in ("realtime", "max") else float(speed)  # type: ignore[assignment]
    failed = 0
    cipher = None
    if any(path.suffix == ".enc" for path in fixtures):
        cipher = _settings().data_cipher()  # recordings of real calls are sealed
    for path in fixtures:
        try:
            fixture = CallFixture.load(path, cipher=cipher)
        except FixtureError as exc:
            typer.echo(str(exc), err=True)
            raise typer.Exit(2) from None
        if url is None:
            result = anyio.run(partial(replaying.replay, fixture, speed=factor))
            typer.echo(result.report())
            failed += not result.ok
        else:
            settings = _settings()
            token = settings.twilio_auth_token
            remote = anyio.run(
                partial(
                    replaying.replay_remote,
                    fixture,
                    url,
                    speed=factor,
                    public_url=settings.public_url,
                    auth_token=token.get_secret_value() if token else None,
                )
            )
            typer.echo(remote.report())
            failed += not remote.ok
    if failed:
        raise typer.Exit(1)


@app.command()
def demo(
    wav: Annotated[Path, typer.Option(help="Where to write the call's audio.")] = DEMO_WAV,
    fixture: Annotated[Path | None, typer.Option(help="Another recorded call to play.")] = None,
) -> None:
    """A complete call, offline: emulator + simulated caller; timeline, cost and a WAV."""
    import anyio
    from rich.console import Console

    from phone_agent.demo import bundled_fixture, run_demo

    configure_logging("WARNING", "text")
    code = anyio.run(run_demo, fixture or bundled_fixture(), wav, Console())
    raise typer.Exit(code)


@app.command()
def forget(number: Annotated[str, typer.Argument(help="The caller's phone number.")]) -> None:
    """Delete everything held about a caller: notes and recordings (not the business's orders)."""
    import anyio

    from phone_agent.erasure import forget_caller
    from phone_agent.orders.spoken import normalize_phone

    settings = _settings()
    if normalize_phone(number) is None:
        typer.echo(f"not a phone number: {number!r}", err=True)
        raise typer.Exit(2)
    if settings.data_cipher() is None:
        typer.echo(
            "note: PHONE_AGENT_DATA_KEY is not set, so no notes or recordings can be held "
            "(both require it); nothing to remove",
            err=True,
        )
    report = anyio.run(forget_caller, settings, number)
    for line in report.lines():
        typer.echo(line)


@app.command()
def keygen() -> None:
    """Print a new data key for PHONE_AGENT_DATA_KEY (encrypts recordings, notes, transcripts)."""
    from phone_agent.encryption import generate_key

    typer.echo(generate_key())


def _mount_db() -> None:
    from phone_agent.calls_cli import calls_app
    from phone_agent.cost_cli import cost
    from phone_agent.db_cli import db_app

    app.add_typer(db_app, name="db", help="The order database: migrations and demo data.")
    app.add_typer(calls_app, name="calls", help="Call records: recent calls, one call's timeline.")
    app.command()(cost)


_mount_db()


def main() -> None:
    app(prog_name="phone-agent")


if __name__ == "__main__":  # pragma: no cover
    main()
