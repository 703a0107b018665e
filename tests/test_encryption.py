from __future__ import annotations

import pytest

from phone_agent.encryption import (
    WITHHELD_REF,
    DataCipher,
    EncryptionError,
    generate_key,
    parse_keys,
)


def test_sealed_data_opens_only_under_a_configured_key() -> None:
    cipher = DataCipher([generate_key()])
    token = cipher.encrypt(b"the caller's words")
    assert b"caller" not in token
    assert cipher.decrypt(token) == b"the caller's words"
    assert cipher.decrypt_text(cipher.encrypt_text("né")) == "né"
    with pytest.raises(EncryptionError, match="none of the configured keys"):
        DataCipher([generate_key()]).decrypt(token)
    with pytest.raises(EncryptionError):
        cipher.decrypt(token[:-2] + b"AA")  # tampered


def test_rotation_new_key_seals_old_keys_still_open() -> None:
    old, new = generate_key(), generate_key()
    sealed_before = DataCipher([old]).encrypt(b"x")
    rotated = DataCipher([new, old])
    assert rotated.decrypt(sealed_before) == b"x"
    assert DataCipher([new]).decrypt(rotated.encrypt(b"y")) == b"y"


def test_parse_keys_names_the_malformed_key_without_echoing_it() -> None:
    good = generate_key()
    assert parse_keys(f" {good} , {good}") == [good, good]
    with pytest.raises(EncryptionError, match="key 2 is not a Fernet key") as info:
        parse_keys(f"{good},not-a-key-secret")
    assert "not-a-key-secret" not in str(info.value)
    with pytest.raises(EncryptionError, match="no key"):
        parse_keys(" , ")


def test_caller_reference_is_stable_per_number_and_key_and_hides_the_number() -> None:
    cipher = DataCipher([generate_key()])
    ref = cipher.caller_ref("+15550100001")
    assert ref == cipher.caller_ref("(555) 010-0001") == cipher.caller_ref("+1 555 010 0001")
    assert "0100001" not in ref and len(ref) == 32
    assert ref != cipher.caller_ref("+15550100002")
    assert ref != DataCipher([generate_key()]).caller_ref("+15550100001")
    assert cipher.caller_ref(None) == cipher.caller_ref("anonymous") == WITHHELD_REF


def test_caller_references_cover_every_configured_key() -> None:
    old, new = generate_key(), generate_key()
    rotated = DataCipher([new, old])
    assert rotated.caller_refs("+15550100001") == [
        DataCipher([new]).caller_ref("+15550100001"),
        DataCipher([old]).caller_ref("+15550100001"),
    ]
