"""Data at rest: what we keep about callers is encrypted with keys from configuration.

Recordings of calls (`recorder.py`), caller-memory notes (`memory.py`) and call transcripts are
sealed with Fernet (AES-128-CBC + HMAC-SHA256, from the `cryptography` package) under
`PHONE_AGENT_DATA_KEY`. The variable holds one key or several, comma-separated: the first
encrypts, every one decrypts, so a key is rotated by putting the new one first and dropping the
old one once nothing sealed under it is left (recordings age out; `phone-agent forget` and the
memory TTL delete the rest).

Files about a caller must be found again to honour `phone-agent forget NUMBER`, without writing the
number on disk: they live under a *caller reference*, an HMAC-SHA256 of the E.164 number under a
key derived from each data key (`caller_refs` tries every configured key, so rotation does not hide
old files). Withheld numbers get the reference ``withheld``.

Generate a key with ``phone-agent keygen``.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from phone_agent.orders.spoken import normalize_phone

WITHHELD_REF = "withheld"
ENCRYPTED_SUFFIX = ".enc"
_REF_LABEL = b"phone-agent caller reference v1"


class EncryptionError(Exception):
    """Data could not be sealed or opened: a bad key, or data sealed under no configured key."""


def generate_key() -> str:
    """A new random data key, as `PHONE_AGENT_DATA_KEY` expects it."""
    return Fernet.generate_key().decode("ascii")


def parse_keys(value: str) -> list[str]:
    """The comma-separated keys in `value`; raises `EncryptionError` naming a malformed one."""
    keys = [part.strip() for part in value.split(",") if part.strip()]
    if not keys:
        raise EncryptionError("no key given")
    for index, key in enumerate(keys, start=1):
        try:
            Fernet(key.encode("ascii"))
        except (ValueError, UnicodeEncodeError):
            raise EncryptionError(
                f"key {index} is not a Fernet key (32 url-safe base64-encoded bytes; "
                "generate one with `phone-agent keygen`)"
            ) from None
    return keys


class DataCipher:
    """Seals and opens caller data under the configured keys (see the module docstring)."""

    def __init__(self, keys: Sequence[str]) -> None:
        if not keys:
            raise EncryptionError("no key given")
        self._raw = [key.encode("ascii") for key in keys]
        self._fernet = MultiFernet([Fernet(key) for key in self._raw])
        self._ref_keys = [hmac.new(key, _REF_LABEL, hashlib.sha256).digest() for key in self._raw]

    @classmethod
    def from_setting(cls, value: str | None) -> DataCipher | None:
        return None if not value else cls(parse_keys(value))

    def encrypt(self, data: bytes) -> bytes:
        return self._fernet.encrypt(data)

    def decrypt(self, token: bytes) -> bytes:
        try:
            return self._fernet.decrypt(token)
        except InvalidToken:
            raise EncryptionError(
                "cannot decrypt: sealed under none of the configured keys, or corrupted"
            ) from None

    def encrypt_text(self, text: str) -> str:
        return self.encrypt(text.encode("utf-8")).decode("ascii")

    def decrypt_text(self, token: str) -> str:
        return self.decrypt(token.encode("ascii")).decode("utf-8")

    def caller_ref(self, number: str | None) -> str:
        """The reference files about `number` are kept under (current key)."""
        return self._refs(number)[0]

    def caller_refs(self, number: str | None) -> list[str]:
        """The references `number` may have been kept under, one per configured key."""
        return self._refs(number)

    def _refs(self, number: str | None) -> list[str]:
        phone = normalize_phone(number)
        if phone is None:
            return [WITHHELD_REF]
        return [
            hmac.new(key, phone.encode("ascii"), hashlib.sha256).hexdigest()[:32]
            for key in self._ref_keys
        ]
