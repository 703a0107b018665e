"""Throwaway TLS for the emulator: the SDK only speaks `wss://` on the API-key path."""

from __future__ import annotations

import contextlib
import os
import ssl
import tempfile
import weakref
from pathlib import Path

import trustme

DEFAULT_HOSTS = ("127.0.0.1", "localhost", "::1")


class EmulatorTLS:
    """A CA made at run time, a server certificate it signed, and the CA's PEM in a temp file.

    `close()` removes the file (so does garbage collection, as a fallback).
    """

    def __init__(self, hosts: tuple[str, ...] = DEFAULT_HOSTS) -> None:
        self._ca = trustme.CA(organization_name="phone-agent Gemini Live emulator")
        self._cert = self._ca.issue_cert(*hosts)
        fd, name = tempfile.mkstemp(prefix="gemini-emulator-ca-", suffix=".pem")
        with os.fdopen(fd, "wb") as f:
            f.write(self._ca.cert_pem.bytes())
        self.ca_file = Path(name)
        self._cleanup = weakref.finalize(self, _unlink, name)

    def server_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self._cert.configure_cert(ctx)
        return ctx

    def client_context(self) -> ssl.SSLContext:
        """A client context that trusts only this CA."""
        return ssl.create_default_context(cafile=str(self.ca_file))

    def close(self) -> None:
        self._cleanup()


def _unlink(name: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(name)
