"""Hashes, MACs, the ZRTP KDF and Confirm/SASrelay encryption (RFC 6189 §4.5, §5.1).

Everything here is a pure function of its inputs; secret values never appear in
reprs or exception messages.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

try:  # cryptography >= 47 keeps CFB among the "decrepit" modes
    from cryptography.hazmat.decrepit.ciphers.modes import CFB
except ImportError:  # pragma: no cover - older cryptography
    from cryptography.hazmat.primitives.ciphers.modes import CFB

from pbx_zrtp.zrtp.errors import ErrorCode, ZrtpProtocolError

#: Length of the truncated MACs carried in ZRTP messages (64 bits).
MAC_LENGTH = 8


@dataclass(frozen=True)
class HashAlgorithm:
    """A negotiated ZRTP hash type (§5.1.2) and its HMAC."""

    name: bytes
    hashlib_name: str
    digest_size: int

    def digest(self, data: bytes) -> bytes:
        return hashlib.new(self.hashlib_name, data).digest()

    def hmac(self, key: bytes, data: bytes) -> bytes:
        return hmac.digest(key, data, self.hashlib_name)

    def mac(self, key: bytes, data: bytes) -> bytes:
        """The negotiated MAC truncated to 64 bits, as carried in messages."""
        return self.hmac(key, data)[:MAC_LENGTH]

    def kdf(self, key: bytes, label: bytes, context: bytes, length_bits: int) -> bytes:
        """KDF(KI, Label, Context, L) = HMAC(KI, i || Label || 0x00 || Context || L) (§4.5.1)."""
        if length_bits <= 0 or length_bits % 8 or length_bits > self.digest_size * 8:
            raise ValueError(f"KDF length {length_bits} bits is invalid for {self.name!r}")
        data = b"\x00\x00\x00\x01" + label + b"\x00" + context + length_bits.to_bytes(4, "big")
        return self.hmac(key, data)[: length_bits // 8]


SHA256 = HashAlgorithm(b"S256", "sha256", 32)
SHA384 = HashAlgorithm(b"S384", "sha384", 48)
#: S512 (draft 6189bis, bzrtp): what Linphone picks with its post-quantum hybrids and X448.
SHA512 = HashAlgorithm(b"S512", "sha512", 64)
HASHES: dict[bytes, HashAlgorithm] = {h.name: h for h in (SHA256, SHA384, SHA512)}

#: The implicit hash (§5.1.2.2): hash chain, the MACs it keys, and the Hello hash.
IMPLICIT_HASH = SHA256


def implicit_mac(key: bytes, data: bytes) -> bytes:
    """HMAC-SHA-256 truncated to 64 bits, keyed by a hash-chain element (§8.1.1)."""
    return IMPLICIT_HASH.mac(key, data)


def hash_chain(h0: bytes) -> tuple[bytes, bytes, bytes, bytes]:
    """(H0, H1, H2, H3) from the random H0 (§9)."""
    if len(h0) != 32:
        raise ValueError("H0 is 32 bytes")
    h1 = IMPLICIT_HASH.digest(h0)
    h2 = IMPLICIT_HASH.digest(h1)
    return h0, h1, h2, IMPLICIT_HASH.digest(h2)


@dataclass(frozen=True)
class CipherType:
    """A negotiated cipher (§5.1.3): the AES key length for SRTP and Confirm."""

    name: bytes
    key_length: int  # bytes


AES1 = CipherType(b"AES1", 16)
AES3 = CipherType(b"AES3", 32)
CIPHERS: dict[bytes, CipherType] = {AES1.name: AES1, AES3.name: AES3}

#: SRTP auth tag types (§5.1.4) and their tag lengths in bytes.
AUTH_TAGS: dict[bytes, int] = {b"HS32": 4, b"HS80": 10}

SAS_TYPES = (b"B32 ", b"B256")


def aes_cfb(key: bytes, iv: bytes, data: bytes, *, encrypt: bool) -> bytes:
    """Full-block (128-bit) AES-CFB, as used for Confirm and SASrelay (§4.6, §5.13)."""
    if len(iv) != 16:
        raise ValueError("CFB IV is 16 bytes")
    cipher = Cipher(algorithms.AES(key), CFB(iv))
    ctx = cipher.encryptor() if encrypt else cipher.decryptor()
    return ctx.update(data) + ctx.finalize()


def constant_time_equal(a: bytes, b: bytes) -> bool:
    return hmac.compare_digest(a, b)


def check_mac(expected: bytes, received: bytes, what: str, code: ErrorCode) -> None:
    """Raise the protocol error ``code`` when a MAC does not match (never logs values)."""
    if not constant_time_equal(expected, received):
        raise ZrtpProtocolError(f"bad MAC on {what}", code)
