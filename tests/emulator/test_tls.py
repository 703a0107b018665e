from __future__ import annotations

import asyncio
import ssl

import pytest

from phone_agent.emulator.tls import EmulatorTLS

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(10)]


async def _handshake(tls: EmulatorTLS, port: int, name: str) -> None:
    _, writer = await asyncio.open_connection(
        "127.0.0.1", port, ssl=tls.client_context(), server_hostname=name
    )
    writer.close()
    await writer.wait_closed()


async def test_certificate_covers_every_local_name() -> None:
    tls = EmulatorTLS()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=tls.server_context())
    port = server.sockets[0].getsockname()[1]
    try:
        for name in ("127.0.0.1", "localhost", "::1"):
            await _handshake(tls, port, name)
        with pytest.raises(ssl.SSLCertVerificationError):
            await _handshake(tls, port, "example.com")
    finally:
        server.close()
        await server.wait_closed()
        tls.close()
    assert not tls.ca_file.exists()


def test_the_client_context_trusts_only_this_ca() -> None:
    tls, other = EmulatorTLS(), EmulatorTLS()
    try:
        assert tls.ca_file.read_bytes() != other.ca_file.read_bytes()
        assert len(tls.client_context().get_ca_certs()) == 1
    finally:
        tls.close()
        other.close()
