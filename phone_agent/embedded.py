"""Run the app with uvicorn inside the current event loop (tests, the demo, the replayer)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import uvicorn
from starlette.types import ASGIApp


class ServerStartError(Exception):
    """uvicorn did not start (port taken, lifespan failure)."""


@asynccontextmanager
async def embedded_server(
    app: ASGIApp, *, host: str = "127.0.0.1", port: int = 0, ws_max_size: int = 1024 * 1024
) -> AsyncIterator[str]:
    """Serve `app` until the block exits; yields its base URL, e.g. `http://127.0.0.1:54321`."""
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_config=None,
        access_log=False,
        lifespan="on",
        ws_max_size=ws_max_size,
    )
    server = uvicorn.Server(config)
    finished = anyio.Event()

    async def serve() -> None:
        try:
            await server.serve()
        finally:
            finished.set()

    async with anyio.create_task_group() as group:
        group.start_soon(serve)
        # uvicorn has no "started" event to await; it sets a flag once sockets are bound.
        while not server.started:
            if finished.is_set():
                raise ServerStartError("uvicorn failed to start (see the log)")
            await anyio.sleep(0.005)
        sockets = [s for srv in server.servers for s in (srv.sockets or [])]
        bound_port = sockets[0].getsockname()[1]
        try:
            yield f"http://{host}:{bound_port}"
        finally:
            server.should_exit = True
