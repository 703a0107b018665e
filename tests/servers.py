"""Real server processes for tests: `phone-agent serve` as its own OS process, as in production.

    with start_server({"TWILIO_AUTH_TOKEN": "...", ...}) as server:
        httpx.get(server.url + "/readyz")
        server.send_signal(signal.SIGTERM)
        await server.wait_exit(10)
        assert "..." in server.stderr_text()

`spawn_server` starts a process without waiting (start several, then `wait_ready` each, so they
boot in parallel); `start_server` also waits until `/readyz` answers 200. A `ServerProcess` is a
context manager, sync or async, that stops the process when the block ends: SIGTERM, then SIGKILL
after a bound (`stop_servers` stops several at once). Processes left running at interpreter exit
are killed.

The child gets the test process's environment without any `PHONE_AGENT_*`, `GEMINI_*`, `GOOGLE_*`
or `TWILIO_*` variable (a developer's shell must not point a test server at a real API or
database), then `env`; it runs in its own working directory (no `.env`, no `./phone-agent.db` from
the checkout). Its output (JSON log lines by default) goes to a file: `stderr_text`,
`log_records`.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import anyio
import httpx
import orjson

READY_TIMEOUT_S = 30.0
STOP_GRACE_S = 10.0
_CLEARED_PREFIXES = ("PHONE_AGENT_", "GEMINI_", "GOOGLE_", "TWILIO_")
_PORT_RETRIES = 3

_running: set[ServerProcess] = set()


class ServerStartError(AssertionError):
    """The server did not become ready; the message carries its output."""


def free_port() -> int:
    """A TCP port free right now on 127.0.0.1 (another process may take it before we bind it:
    `ServerProcess.wait_ready` retries on another port when that happens)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def child_environment(env: Mapping[str, str]) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(_CLEARED_PREFIXES)}
    base.setdefault("PHONE_AGENT_LOG_FORMAT", "json")
    base["NO_PROXY"] = "127.0.0.1,localhost," + base.get("NO_PROXY", "")
    return {**base, **env}


class ServerProcess:
    """One `phone-agent serve` process on 127.0.0.1 (`url`, `port`)."""

    def __init__(
        self, env: Mapping[str, str], *, workdir: Path | None = None, port: int | None = None
    ) -> None:
        self.env = child_environment(env)
        self._own_workdir = workdir is None
        self.workdir = (
            Path(tempfile.mkdtemp(prefix="phone-agent-server-")) if workdir is None else workdir
        )
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._fixed_port = port is not None
        self.port = port if port is not None else free_port()
        self.output_path = self.workdir / f"server-{id(self):x}.log"
        self._output_cache: str | None = None
        self.process: subprocess.Popen[bytes] | None = None
        self._spawn()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    @property
    def returncode(self) -> int | None:
        return self.process.poll() if self.process is not None else None

    def _spawn(self) -> None:
        command = [sys.executable, "-m", "phone_agent", "serve"]
        command += ["--host", "127.0.0.1", "--port", str(self.port)]
        # Appended to: a respawn on another port keeps the first attempt's output.
        with self.output_path.open("ab") as output:
            self.process = subprocess.Popen(
                command,
                cwd=self.workdir,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
            )
        _running.add(self)

    # -- output ----------------------------------------------------------------------------

    def stderr_text(self) -> str:
        """Everything the process wrote (stdout and stderr, interleaved) so far."""
        if self._output_cache is not None:
            return self._output_cache
        try:
            return self.output_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    def log_records(self, **match: Any) -> list[dict[str, Any]]:
        """The JSON log lines, those whose fields equal every `match` (e.g. `event="call.start"`,
        `call_sid=...`); other lines (a traceback printed raw) are skipped."""
        records = []
        for line in self.stderr_text().splitlines():
            if not line.startswith("{"):
                continue
            try:
                record = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue
            if isinstance(record, dict) and all(record.get(k) == v for k, v in match.items()):
                records.append(record)
        return records

    def describe(self, tail_lines: int = 60) -> str:
        """The process's state and the end of its output, for failure messages."""
        lines = self.stderr_text().splitlines()[-tail_lines:]
        state = "running" if self.returncode is None else f"exited with {self.returncode}"
        return f"server on port {self.port} ({state}); last output:\n" + "\n".join(lines)

    # -- readiness -------------------------------------------------------------------------

    def wait_ready(self, timeout_s: float = READY_TIMEOUT_S) -> None:
        """Poll `/readyz` until it answers 200; raise `ServerStartError` (with the output) if the
        process exits or `timeout_s` passes. Blocks: from async code use `await_ready`."""
        deadline = time.monotonic() + timeout_s
        retries = 0
        with httpx.Client(timeout=1.0, trust_env=False) as http:
            while True:
                code = self.returncode
                if code is not None:
                    if (
                        not self._fixed_port
                        and retries < _PORT_RETRIES
                        and "address already in use" in self.stderr_text().lower()
                    ):
                        retries += 1
                        self.port = free_port()
                        self._spawn()
                        continue
                    raise ServerStartError(f"the server exited during start-up\n{self.describe()}")
                try:
                    if http.get(self.url + "/readyz").status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    raise ServerStartError(
                        f"/readyz did not answer 200 within {timeout_s:g} s\n{self.describe()}"
                    )
                time.sleep(0.05)  # polling interval, bounded by the deadline above

    async def await_ready(self, timeout_s: float = READY_TIMEOUT_S) -> None:
        await anyio.to_thread.run_sync(self.wait_ready, timeout_s)

    # -- stopping --------------------------------------------------------------------------

    def send_signal(self, sig: int) -> None:
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(sig)

    def wait(self, timeout_s: float) -> int:
        """Wait (blocking) for the process to exit; raise `subprocess.TimeoutExpired` after
        `timeout_s`."""
        assert self.process is not None
        return self.process.wait(timeout_s)

    async def wait_exit(self, timeout_s: float) -> int:
        """Wait for the process to exit without blocking the event loop; TimeoutError after
        `timeout_s`."""
        with anyio.fail_after(timeout_s):
            # A process exit sets no event to wait on: poll it.
            while (code := self.returncode) is None:  # noqa: ASYNC110
                await anyio.sleep(0.02)
        return code

    def terminate(self, grace_s: float = STOP_GRACE_S) -> int:
        """SIGTERM, then SIGKILL if the process has not exited within `grace_s`; its exit code."""
        self.send_signal(signal.SIGTERM)
        return self._reap(time.monotonic() + grace_s)

    def kill(self) -> int:
        self.send_signal(signal.SIGKILL)
        return self._reap(time.monotonic())

    def _reap(self, deadline: float) -> int:
        """Wait for the exit until `deadline` (monotonic), SIGKILL after it; always reaped (no
        zombie, no ResourceWarning)."""
        assert self.process is not None
        try:
            self.process.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            self.process.kill()
        code = self.process.wait()
        _running.discard(self)
        return code

    def close(self, grace_s: float = STOP_GRACE_S) -> None:
        """Stop the process (`terminate`) and remove its working directory if this object made
        it (the output stays readable through `stderr_text`)."""
        try:
            self.terminate(grace_s)
        finally:
            self._finish()

    def _finish(self) -> None:
        self._output_cache = self.stderr_text()
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await anyio.to_thread.run_sync(self.close)


def spawn_server(
    env: Mapping[str, str], *, workdir: Path | None = None, port: int | None = None
) -> ServerProcess:
    """Start `phone-agent serve` without waiting for it (see `ServerProcess.wait_ready`)."""
    return ServerProcess(env, workdir=workdir, port=port)


def start_server(
    env: Mapping[str, str],
    *,
    workdir: Path | None = None,
    port: int | None = None,
    ready_timeout_s: float = READY_TIMEOUT_S,
) -> ServerProcess:
    """Start `phone-agent serve` and wait until it is ready; stopped again if it never is."""
    server = spawn_server(env, workdir=workdir, port=port)
    try:
        server.wait_ready(ready_timeout_s)
    except BaseException:
        server.close()
        raise
    return server


def stop_servers(servers: Iterable[ServerProcess], grace_s: float = STOP_GRACE_S) -> None:
    """Stop several servers at once: SIGTERM to each, then one shared `grace_s` before SIGKILL."""
    servers = list(servers)
    deadline = time.monotonic() + grace_s
    for server in servers:
        server.send_signal(signal.SIGTERM)
    for server in servers:
        try:
            server._reap(deadline)
        finally:
            server._finish()


@atexit.register
def _kill_leftovers() -> None:
    for server in list(_running):
        with contextlib.suppress(Exception):
            server.kill()
