"""The `phone-agent` command line."""

from __future__ import annotations

import contextlib

import typer

from phone_agent.config import ConfigError, Settings, load_settings
from phone_agent.logs import configure_logging

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

    settings = _settings()
    configure_logging(settings.log_level, settings.log_format)
    uvicorn.run(
        create_app(settings),
        host=host,
        port=port,
        log_config=None,
        ws_max_size=settings.max_message_bytes,
        proxy_headers=False,
    )


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


def main() -> None:
    app(prog_name="phone-agent")


if __name__ == "__main__":  # pragma: no cover
    main()
