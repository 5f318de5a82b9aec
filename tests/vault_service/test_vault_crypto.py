"""AES-256-GCM envelopes: round trip, binding to the row, tampering, key ids and rotation."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from testkit.vault import OLD_SEED, SEED

from rmllm_common.secret import Secret
from vault_service.crypto import FORMAT_VERSION, DecryptionError, Keyring, SealKey, key_id_of

KEYRING = Keyring(Secret(SEED))


@given(st.text(max_size=300), st.sampled_from(["openai", "anthropic", "llama"]))
def test_round_trip(plaintext: str, provider: str) -> None:
    blob = KEYRING.encrypt(Secret(plaintext), "usr_a", provider)
    assert KEYRING.decrypt(blob, "usr_a", provider).reveal() == plaintext
    assert plaintext.encode() not in blob or len(plaintext.encode()) < 4


def test_envelope_layout_and_fresh_nonces() -> None:
    blobs = [KEYRING.encrypt(Secret("sk-same-key"), "usr_a", "openai") for _ in range(100)]
    assert all(b[0] == FORMAT_VERSION for b in blobs)
    assert {key_id_of(b) for b in blobs} == {KEYRING.current.key_id}
    assert len({b[9:21] for b in blobs}) == 100  # 96-bit random nonces never repeat here
    assert len(blobs[0]) == 1 + 8 + 12 + len("sk-same-key") + 16


def test_key_id_is_a_stable_fingerprint_that_hides_the_key() -> None:
    assert SealKey.from_seed(Secret(SEED)).key_id == KEYRING.current.key_id
    assert SealKey.from_seed(Secret(OLD_SEED)).key_id != KEYRING.current.key_id
    assert len(KEYRING.current.key_id) == 16
    assert SEED not in repr(KEYRING.current)


@given(st.data())
def test_any_changed_byte_fails(data: st.DataObject) -> None:
    blob = bytearray(KEYRING.encrypt(Secret("sk-tamper-me-0001"), "usr_a", "openai"))
    position = data.draw(st.integers(0, len(blob) - 1))
    blob[position] ^= data.draw(st.integers(1, 255))
    with pytest.raises(DecryptionError):
        KEYRING.decrypt(bytes(blob), "usr_a", "openai")


def test_ciphertext_is_bound_to_its_row() -> None:
    blob = KEYRING.encrypt(Secret("sk-bound-0001"), "usr_a", "openai")
    for user_id, provider in (("usr_b", "openai"), ("usr_a", "openrouter"), ("usr_", "aopenai")):
        with pytest.raises(DecryptionError, match="another row") as caught:
            KEYRING.decrypt(blob, user_id, provider)
        assert caught.value.key_id == KEYRING.current.key_id


def test_truncated_and_unknown_format_fail() -> None:
    blob = KEYRING.encrypt(Secret("sk-x"), "usr_a", "openai")
    with pytest.raises(DecryptionError, match="truncated"):
        KEYRING.decrypt(blob[:30], "usr_a", "openai")
    with pytest.raises(DecryptionError, match="format version 2"):
        KEYRING.decrypt(b"\x02" + blob[1:], "usr_a", "openai")


def test_old_seeds_decrypt_and_unknown_key_ids_are_named() -> None:
    old = Keyring(Secret(OLD_SEED))
    blob = old.encrypt(Secret("sk-from-before"), "usr_a", "openai")
    with pytest.raises(DecryptionError, match="no configured seed") as caught:
        KEYRING.decrypt(blob, "usr_a", "openai")
    assert caught.value.key_id == old.current.key_id
    rotated = Keyring(Secret(SEED), (Secret(OLD_SEED),))
    assert rotated.key_ids == (KEYRING.current.key_id, old.current.key_id)
    assert rotated.decrypt(blob, "usr_a", "openai").reveal() == "sk-from-before"
    assert key_id_of(rotated.encrypt(Secret("sk-new"), "usr_a", "openai")) == KEYRING.current.key_id
