"""Envelope format and AES-256-GCM encryption of provider keys, bound to their row.

Each seed gives, through HKDF-SHA256 with distinct ``info`` labels, a 256-bit
AES-GCM key and a 64-bit key id (a fingerprint that reveals nothing of the key).
A stored ciphertext is ``version (1 byte) ‖ key id (8) ‖ nonce (12, random) ‖
ciphertext+tag``. The associated data binds it to its header and to its row's
(user id, provider), so a ciphertext altered in any byte, or copied into another
row, fails to decrypt. A ``Keyring`` holds the current seed (encrypts) and older
seeds (decrypt only), found by key id. Only the ``cryptography`` library is used.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from rmllm_common.secret import Secret

FORMAT_VERSION: Final = 1
_KEY_ID_BYTES: Final = 8
_NONCE_BYTES: Final = 12
_HEADER_BYTES: Final = 1 + _KEY_ID_BYTES + _NONCE_BYTES
_SALT: Final = b"realmultillm/vault/v1"
_INFO_KEY: Final = b"provider-key encryption: aes-256-gcm"
_INFO_KEY_ID: Final = b"provider-key encryption: key id"
_AAD_LABEL: Final = b"realmultillm/vault/provider-key"


class DecryptionError(Exception):
    """A ciphertext that cannot be opened; ``key_id`` names the seed it needs."""

    def __init__(self, key_id: str, why: str) -> None:
        super().__init__(f"cannot decrypt (key id {key_id}): {why}")
        self.key_id = key_id
        self.why = why


def _hkdf(seed: Secret, info: bytes, length: int) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=_SALT, info=info).derive(
        seed.reveal().encode()
    )


@dataclass(frozen=True, slots=True)
class SealKey:
    """One seed's derived key and its id."""

    key_id: str
    aead: AESGCM

    @classmethod
    def from_seed(cls, seed: Secret) -> SealKey:
        return cls(
            key_id=_hkdf(seed, _INFO_KEY_ID, _KEY_ID_BYTES).hex(), aead=AESGCM(_hkdf(seed, _INFO_KEY, 32))
        )

    def __repr__(self) -> str:
        return f"SealKey(key_id={self.key_id!r})"


def associated_data(header: bytes, user_id: str, provider: str) -> bytes:
    """What a ciphertext is bound to: its header and its row's (user, provider)."""
    return b"\x00".join((_AAD_LABEL, header, user_id.encode(), provider.encode()))


def key_id_of(blob: bytes) -> str:
    """The key id a stored ciphertext names ("" if it is too short to have one)."""
    return blob[1 : 1 + _KEY_ID_BYTES].hex() if len(blob) >= _HEADER_BYTES else ""


class Keyring:
    """The current seed's key, which encrypts, and older ones, which only decrypt."""

    def __init__(self, current: Secret, old: tuple[Secret, ...] = ()) -> None:
        self.current = SealKey.from_seed(current)
        self._by_id: dict[str, SealKey] = {self.current.key_id: self.current}
        for seed in old:
            key = SealKey.from_seed(seed)
            self._by_id.setdefault(key.key_id, key)

    @property
    def key_ids(self) -> tuple[str, ...]:
        """Every key id this keyring can decrypt, the current one first."""
        return tuple(self._by_id)

    def encrypt(self, plaintext: Secret, user_id: str, provider: str) -> bytes:
        """Seal ``plaintext`` for the row (user_id, provider) under the current key."""
        header = bytes([FORMAT_VERSION]) + bytes.fromhex(self.current.key_id) + os.urandom(_NONCE_BYTES)
        sealed = self.current.aead.encrypt(
            header[-_NONCE_BYTES:], plaintext.reveal().encode(), associated_data(header, user_id, provider)
        )
        return header + sealed

    def decrypt(self, blob: bytes, user_id: str, provider: str) -> Secret:
        """Open a ciphertext of the row (user_id, provider), or raise ``DecryptionError``."""
        if len(blob) < _HEADER_BYTES + 16:
            raise DecryptionError("unknown", "ciphertext is truncated")
        key_id = key_id_of(blob)
        if blob[0] != FORMAT_VERSION:
            raise DecryptionError(key_id, f"unknown ciphertext format version {blob[0]}")
        key = self._by_id.get(key_id)
        if key is None:
            raise DecryptionError(
                key_id,
                "no configured seed has this key id (set the seed, or list it in RMLLM_VAULT_OLD_SEEDS)",
            )
        header = blob[:_HEADER_BYTES]
        try:
            plaintext = key.aead.decrypt(
                header[-_NONCE_BYTES:], blob[_HEADER_BYTES:], associated_data(header, user_id, provider)
            )
        except InvalidTag as exc:
            raise DecryptionError(
                key_id, "authentication failed: the ciphertext was altered or belongs to another row"
            ) from exc
        return Secret(plaintext.decode())
