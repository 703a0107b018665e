"""The bare relay: the baseline `tools/loadtest.py` measures phone-agent against.

A minimal Starlette app that accepts Twilio's media WebSocket on `/twilio/media`, opens one
WebSocket to `--upstream` per call, and forwards every message untouched both ways: no SDK, no
parsing, no transcoding, no playback tracking. Whatever it costs is the floor any Twilio bridge
in Python pays for moving the same messages through uvicorn, Starlette and `websockets`.

The upstream connection uses TLS as a real model connection does; `SSL_CERT_FILE` names the CA
to trust (the load test's model side makes its own).

    python tools/relay_baseline.py --port 8090 --upstream wss://127.0.0.1:8766/
"""

from __future__ import annotations

import argparse
import contextlib
import os
import ssl

import anyio
import uvicorn
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

MAX_MESSAGE_BYTES = 64 * 1024


def create_relay(upstream: str, ssl_context: ssl.SSLContext | None = None) -> Starlette:
    """The relay app: each media socket gets its own upstream connection."""

    async def media(websocket: WebSocket) -> None:
        await websocket.accept()
        try:
            async with (
                connect(
                    upstream, ssl=ssl_context, compression=None, max_size=MAX_MESSAGE_BYTES
                ) as model,
                anyio.create_task_group() as group,
            ):
                group.start_soon(_caller_to_model, websocket, model, group.cancel_scope)
                group.start_soon(_model_to_caller, model, websocket, group.cancel_scope)
        except (OSError, ConnectionClosed):
            pass
        finally:
            if websocket.application_state is WebSocketState.CONNECTED:
                with contextlib.suppress(WebSocketDisconnect, RuntimeError, OSError):
                    await websocket.close()  # the caller may be gone already

    return Starlette(routes=[WebSocketRoute("/twilio/media", media)])


async def _caller_to_model(
    websocket: WebSocket, model: ClientConnection, scope: anyio.CancelScope
) -> None:
    try:
        while True:
            await model.send(await websocket.receive_text())
    except (WebSocketDisconnect, ConnectionClosed, RuntimeError):
        pass
    finally:
        scope.cancel()


async def _model_to_caller(
    model: ClientConnection, websocket: WebSocket, scope: anyio.CancelScope
) -> None:
    try:
        async for message in model:
            text = message if isinstance(message, str) else message.decode()
            await websocket.send_text(text)
    except (WebSocketDisconnect, ConnectionClosed, RuntimeError, OSError):
        pass
    finally:
        scope.cancel()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8090)
    parser.add_argument("--upstream", required=True, help="the model side, wss://host:port/")
    args = parser.parse_args()
    context = ssl.create_default_context(cafile=os.environ.get("SSL_CERT_FILE") or None)
    app = create_relay(args.upstream, context)
    # As `phone-agent serve` runs uvicorn, so that both pay the same for the server.
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        log_config=None,
        access_log=False,
        ws_max_size=MAX_MESSAGE_BYTES,
        proxy_headers=False,
    )


if __name__ == "__main__":
    main()
