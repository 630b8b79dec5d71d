"""The ZRTP wire format (RFC 6189 §5): packet header, CRC-32C and the 16 messages.

Every message is a frozen dataclass whose ``__post_init__`` validates each field,
so an object that exists can always be serialized. ``serialize()`` returns the
full message (preamble, length, type block, body); ``parse()`` takes the same and
checks every length exactly. Parsing raises nothing but :class:`ZrtpProtocolError`
whatever the input: ``code=None`` for what is to be dropped silently (not ZRTP,
bad CRC, oversized), ``ErrorCode.MALFORMED_PACKET`` for a packet whose CRC is
good but whose structure is wrong.

Deliberately not checked here (the engine's job): version strings, whether
algorithm blocks are known, the pv length against the agreed key agreement,
MACs, and anything inside the encrypted part of Confirm and SASrelay (see
:class:`ConfirmPlaintext` and :class:`SasRelayPlaintext` for that part once
decrypted).

Sizes in comments are in octets unless "words" (32 bits) is said.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar, Self, TypeAlias

import crc32c as _crc32c

from .errors import ZrtpProtocolError

__all__ = [
    "CRC_SIZE",
    "HEADER_SIZE",
    "MAX_PACKET_SIZE",
    "PREAMBLE",
    "ZRTP_COOKIE",
    "ClearAck",
    "Commit",
    "Conf2Ack",
    "Confirm1",
    "Confirm2",
    "ConfirmPlaintext",
    "DHPart1",
    "DHPart2",
    "Error",
    "ErrorAck",
    "Fragment",
    "GoClear",
    "Hello",
    "HelloAck",
    "Message",
    "Ping",
    "PingAck",
    "RelayAck",
    "SasRelay",
    "SasRelayPlaintext",
    "ZrtpPacket",
    "crc32c_of",
    "fragment_message",
    "is_zrtp_fragment",
    "is_zrtp_packet",
    "message_bytes",
    "parse_message",
]

#: Magic cookie in bytes 4..8 of every ZRTP packet (0x5A525450).
ZRTP_COOKIE = b"ZRTP"
#: First 16 bits of every ZRTP message.
PREAMBLE = 0x505A
#: Packet header: 0x10, 0x00, sequence number, cookie, SSRC.
HEADER_SIZE = 12
#: CRC-32C trailer of every packet.
CRC_SIZE = 4
#: Larger packets are rejected (dropped), whether received or to be sent.
MAX_PACKET_SIZE = 2048

_FIRST_BYTE = 0x10
_MESSAGE_HEADER_SIZE = 12  # preamble (2), length in words (2), type block (8)
_MIN_PACKET_SIZE = HEADER_SIZE + _MESSAGE_HEADER_SIZE + CRC_SIZE  # 28: an ACK
_BLOCK = 4  # algorithm / version / signature type blocks
_MAC = 8  # every truncated MAC on the wire
_HASH = 32  # H0..H3, hvi, sashash
_ZID = 12
_CLIENT_ID = 16
_IV = 16
_NONCE = 16
_KEY_ID = 8
_SECRET_ID = 8  # rs1ID, rs2ID, auxsecretID, pbxsecretID
_ENDPOINT_HASH = 8
_MAX_ALGORITHMS = 7  # RFC 6189 figure 3: "0 to 7 values" for each list
_MAX_SIG_WORDS = 0x1FF  # 9-bit signature length, in words
_CONFIRM_PLAIN_MIN = _HASH + 4 + 4  # H0, sig len/flags word, cache expiration
_SASRELAY_PLAIN_MIN = 4 + _BLOCK + _HASH  # sig len/flags word, scheme, sashash

_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")
_MESSAGE_HEADER = struct.Struct("!HH8s")
_PACKET_HEADER = struct.Struct("!BBH4sI")


# ---------------------------------------------------------------------------
# Packet level helpers
# ---------------------------------------------------------------------------


def is_zrtp_packet(data: bytes) -> bool:
    """Whether ``data`` looks like a ZRTP packet (for demultiplexing from RTP/STUN).

    First byte 0x10 (RTP version 0), magic cookie in bytes 4..8, at least 16
    octets. Never raises. bzrtp's non-standard fragments (first byte 0x11) are
    not ZRTP packets by this test.
    """
    try:
        return (
            len(data) >= HEADER_SIZE + CRC_SIZE
            and data[0] == _FIRST_BYTE
            and bytes(data[4:8]) == ZRTP_COOKIE
        )
    except Exception:  # a caller passing something that is not bytes-like
        return False


def crc32c_of(data: bytes) -> int:
    """CRC-32C (Castagnoli, RFC 4960 appendix B) of ``data``, as an integer."""
    return int(_crc32c.crc32c(data)) & 0xFFFFFFFF


def message_bytes(data: bytes) -> bytes:
    """The raw ZRTP message of a packet as received: ``data[12:-4]``.

    Hashes and MACs are computed over these raw bytes, never over a re-serialization.
    """
    if len(data) < HEADER_SIZE + CRC_SIZE:
        raise ZrtpProtocolError("too short to be a ZRTP packet", code=None)
    return bytes(data[HEADER_SIZE:-CRC_SIZE])


# ---------------------------------------------------------------------------
# Field validation (ZrtpProtocolError is a ValueError)
# ---------------------------------------------------------------------------


def _check_bytes(name: str, value: object, size: int) -> None:
    if not isinstance(value, bytes):
        raise ZrtpProtocolError(f"{name} must be bytes, not {type(value).__name__}")
    if len(value) != size:
        raise ZrtpProtocolError(f"{name} must be {size} octets, got {len(value)}")


def _check_bool(name: str, value: object) -> None:
    if not isinstance(value, bool):
        raise ZrtpProtocolError(f"{name} must be a bool, not {type(value).__name__}")


def _check_uint(name: str, value: object, bits: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ZrtpProtocolError(f"{name} must be an int, not {type(value).__name__}")
    if not 0 <= value < (1 << bits):
        raise ZrtpProtocolError(f"{name} out of range for {bits} bits: {value}")


def _check_blocks(name: str, value: object) -> None:
    if not isinstance(value, tuple):
        raise ZrtpProtocolError(f"{name} must be a tuple of 4-octet blocks")
    if len(value) > _MAX_ALGORITHMS:
        raise ZrtpProtocolError(f"{name}: {len(value)} types, at most {_MAX_ALGORITHMS}")
    for block in value:
        _check_bytes(f"{name} entry", block, _BLOCK)


def _check_signature(name: str, value: object) -> None:
    if not isinstance(value, bytes):
        raise ZrtpProtocolError(f"{name} must be bytes, not {type(value).__name__}")
    if len(value) % 4:
        raise ZrtpProtocolError(f"{name} must be padded to whole words, got {len(value)}")
    if len(value) > _MAX_SIG_WORDS * 4:
        raise ZrtpProtocolError(f"{name} longer than {_MAX_SIG_WORDS} words")


def _check_encrypted(name: str, value: object, minimum: int) -> None:
    if not isinstance(value, bytes):
        raise ZrtpProtocolError(f"{name} must be bytes, not {type(value).__name__}")
    if len(value) < minimum or len(value) % 4:
        raise ZrtpProtocolError(
            f"{name} must be at least {minimum} octets in whole words, got {len(value)}"
        )
    if len(value) > minimum + _MAX_SIG_WORDS * 4:
        raise ZrtpProtocolError(f"{name} too long for a 9-bit signature length")


# ---------------------------------------------------------------------------
# Message framing
# ---------------------------------------------------------------------------


def _frame(message_type: bytes, body: bytes) -> bytes:
    """Prepend preamble, length in words and type block to ``body``."""
    total = _MESSAGE_HEADER_SIZE + len(body)
    if total % 4:
        raise ZrtpProtocolError(f"{message_type!r}: message is not whole words ({total})")
    words = total // 4
    if words > 0xFFFF:
        raise ZrtpProtocolError(f"{message_type!r}: message too long ({total} octets)")
    return _MESSAGE_HEADER.pack(PREAMBLE, words, message_type) + body


def _check_message_header(data: bytes) -> bytes:
    """Check preamble and length field of a full message; return its type block."""
    if len(data) < _MESSAGE_HEADER_SIZE:
        raise ZrtpProtocolError(f"message too short ({len(data)} octets)")
    preamble, words, message_type = _MESSAGE_HEADER.unpack_from(data)
    if preamble != PREAMBLE:
        raise ZrtpProtocolError(f"bad message preamble 0x{preamble:04x}")
    if words * 4 != len(data):
        raise ZrtpProtocolError(f"length field says {words} words, message has {len(data)} octets")
    return bytes(message_type)


def _body(data: bytes, message_type: bytes) -> bytes:
    """Check a full message's header against ``message_type``; return its body."""
    data = bytes(data)
    found = _check_message_header(data)
    if found != message_type:
        raise ZrtpProtocolError(f"expected a {message_type!r} message, got {found!r}")
    return data[_MESSAGE_HEADER_SIZE:]


def _need(body: bytes, size: int, what: str) -> None:
    if len(body) != size:
        raise ZrtpProtocolError(f"{what}: body must be {size} octets, got {len(body)}")


# ---------------------------------------------------------------------------
# Hello (figure 3)
# ---------------------------------------------------------------------------

_HELLO_S = 0x40
_HELLO_M = 0x20
_HELLO_P = 0x10
# version, client id, H3, ZID, flags/counts word
_HELLO_FIXED = _BLOCK + _CLIENT_ID + _HASH + _ZID + 4


@dataclass(frozen=True)
class Hello:
    """Hello (§5.2). Algorithm lists are tuples of 4-octet blocks, at most 7 each."""

    MESSAGE_TYPE: ClassVar[bytes] = b"Hello   "

    version: bytes
    client_id: bytes
    h3: bytes
    zid: bytes
    signature_capable: bool
    mitm: bool
    passive: bool
    hash_types: tuple[bytes, ...]
    cipher_types: tuple[bytes, ...]
    auth_tag_types: tuple[bytes, ...]
    key_agreement_types: tuple[bytes, ...]
    sas_types: tuple[bytes, ...]
    mac: bytes = bytes(_MAC)

    def __post_init__(self) -> None:
        _check_bytes("version", self.version, _BLOCK)
        _check_bytes("client_id", self.client_id, _CLIENT_ID)
        _check_bytes("h3", self.h3, _HASH)
        _check_bytes("zid", self.zid, _ZID)
        _check_bool("signature_capable", self.signature_capable)
        _check_bool("mitm", self.mitm)
        _check_bool("passive", self.passive)
        _check_blocks("hash_types", self.hash_types)
        _check_blocks("cipher_types", self.cipher_types)
        _check_blocks("auth_tag_types", self.auth_tag_types)
        _check_blocks("key_agreement_types", self.key_agreement_types)
        _check_blocks("sas_types", self.sas_types)
        _check_bytes("mac", self.mac, _MAC)

    def _lists(self) -> tuple[tuple[bytes, ...], ...]:
        return (
            self.hash_types,
            self.cipher_types,
            self.auth_tag_types,
            self.key_agreement_types,
            self.sas_types,
        )

    def serialize(self) -> bytes:
        # |0|S|M|P| 8 unused bits |hc|cc|ac|kc|sc|  (4 bits each)
        word = (
            (_HELLO_S if self.signature_capable else 0)
            | (_HELLO_M if self.mitm else 0)
            | (_HELLO_P if self.passive else 0)
        ) << 24
        for shift, types in zip((16, 12, 8, 4, 0), self._lists(), strict=True):
            word |= len(types) << shift
        body = b"".join(
            (
                self.version,
                self.client_id,
                self.h3,
                self.zid,
                _U32.pack(word),
                *(block for types in self._lists() for block in types),
                self.mac,
            )
        )
        return _frame(self.MESSAGE_TYPE, body)

    @classmethod
    def parse(cls, data: bytes) -> Self:
        body = _body(data, cls.MESSAGE_TYPE)
        if len(body) < _HELLO_FIXED + _MAC:
            raise ZrtpProtocolError(f"Hello too short ({len(body)} octet body)")
        (word,) = _U32.unpack_from(body, _HELLO_FIXED - 4)
        counts = [(word >> shift) & 0xF for shift in (16, 12, 8, 4, 0)]
        if any(count > _MAX_ALGORITHMS for count in counts):
            raise ZrtpProtocolError(f"Hello lists more than {_MAX_ALGORITHMS} types: {counts}")
        _need(body, _HELLO_FIXED + _BLOCK * sum(counts) + _MAC, "Hello")
        lists: list[tuple[bytes, ...]] = []
        offset = _HELLO_FIXED
        for count in counts:
            lists.append(tuple(body[offset + i * 4 : offset + i * 4 + 4] for i in range(count)))
            offset += count * _BLOCK
        flags = word >> 24
        return cls(
            version=body[0:4],
            client_id=body[4:20],
            h3=body[20:52],
            zid=body[52:64],
            signature_capable=bool(flags & _HELLO_S),
            mitm=bool(flags & _HELLO_M),
            passive=bool(flags & _HELLO_P),
            hash_types=lists[0],
            cipher_types=lists[1],
            auth_tag_types=lists[2],
            key_agreement_types=lists[3],
            sas_types=lists[4],
            mac=body[offset:],
        )


# ---------------------------------------------------------------------------
# Messages without a body (figures 4, 11, 13, 15, 17)
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _EmptyMessage:
    MESSAGE_TYPE: ClassVar[bytes]

    def serialize(self) -> bytes:
        return _frame(self.MESSAGE_TYPE, b"")

    @classmethod
    def parse(cls, data: bytes) -> Self:
        _need(_body(data, cls.MESSAGE_TYPE), 0, cls.__name__)
        return cls()


@dataclass(frozen=True)
class HelloAck(_EmptyMessage):
    """HelloACK (§5.3)."""

    MESSAGE_TYPE: ClassVar[bytes] = b"HelloACK"


@dataclass(frozen=True)
class Conf2Ack(_EmptyMessage):
    """Conf2ACK (§5.8)."""

    MESSAGE_TYPE: ClassVar[bytes] = b"Conf2ACK"


@dataclass(frozen=True)
class ErrorAck(_EmptyMessage):
    """ErrorACK (§5.10)."""

    MESSAGE_TYPE: ClassVar[bytes] = b"ErrorACK"


@dataclass(frozen=True)
class ClearAck(_EmptyMessage):
    """ClearACK (§5.12)."""

    MESSAGE_TYPE: ClassVar[bytes] = b"ClearACK"


@dataclass(frozen=True)
class RelayAck(_EmptyMessage):
    """RelayACK (§5.14)."""

    MESSAGE_TYPE: ClassVar[bytes] = b"RelayACK"


# ---------------------------------------------------------------------------
# Commit (figures 5, 6, 7)
# ---------------------------------------------------------------------------

_MULT = b"Mult"
_PRSH = b"Prsh"
_COMMIT_FIXED = _HASH + _ZID + 5 * _BLOCK  # H2, ZID, five algorithm blocks
#: Key agreement types in KEM mode, whose Commit carries a public key after hvi
#: (post-quantum draft; bzrtp's K255_MLK512 and K448_MLK1024).
KEM_KEY_AGREEMENTS: tuple[bytes, ...] = (b"X1M1", b"X3M3")


@dataclass(frozen=True)
class Commit:
    """Commit (§5.4). The form follows ``key_agreement_type``.

    ``b"Mult"``: ``nonce`` only; ``b"Prsh"``: ``nonce`` and ``key_id``; any other
    key agreement is DH mode: ``hvi``, followed for the KEM-mode types
    (``KEM_KEY_AGREEMENTS``, post-quantum draft, bzrtp) by the initiator's KEM
    public key ``kem_public_key``; the engine checks its length for the type.
    """

    MESSAGE_TYPE: ClassVar[bytes] = b"Commit  "

    h2: bytes
    zid: bytes
    hash_type: bytes
    cipher_type: bytes
    auth_tag_type: bytes
    key_agreement_type: bytes
    sas_type: bytes
    hvi: bytes | None = None
    nonce: bytes | None = None
    key_id: bytes | None = None
    mac: bytes = bytes(_MAC)
    kem_public_key: bytes | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        _check_bytes("h2", self.h2, _HASH)
        _check_bytes("zid", self.zid, _ZID)
        _check_bytes("hash_type", self.hash_type, _BLOCK)
        _check_bytes("cipher_type", self.cipher_type, _BLOCK)
        _check_bytes("auth_tag_type", self.auth_tag_type, _BLOCK)
        _check_bytes("key_agreement_type", self.key_agreement_type, _BLOCK)
        _check_bytes("sas_type", self.sas_type, _BLOCK)
        _check_bytes("mac", self.mac, _MAC)
        if self.is_dh_mode:
            _check_bytes("hvi", self.hvi, _HASH)
            if self.nonce is not None or self.key_id is not None:
                raise ZrtpProtocolError("a DH Commit carries hvi, not nonce or key_id")
            key = self.kem_public_key
            if key is not None and (not isinstance(key, bytes) or not key or len(key) % 4):
                raise ZrtpProtocolError("a KEM public key is non-empty whole words")
        else:
            if self.kem_public_key is not None:
                raise ZrtpProtocolError("a Multistream or Preshared Commit carries no KEM key")
            _check_bytes("nonce", self.nonce, _NONCE)
            if self.hvi is not None:
                raise ZrtpProtocolError("a Multistream or Preshared Commit carries no hvi")
            if self.is_preshared:
                _check_bytes("key_id", self.key_id, _KEY_ID)
            elif self.key_id is not None:
                raise ZrtpProtocolError("a Multistream Commit carries no key_id")

    @property
    def is_multistream(self) -> bool:
        return self.key_agreement_type == _MULT

    @property
    def is_preshared(self) -> bool:
        return self.key_agreement_type == _PRSH

    @property
    def is_dh_mode(self) -> bool:
        return not (self.is_multistream or self.is_preshared)

    def serialize(self) -> bytes:
        tail: tuple[bytes | None, ...]
        if self.is_dh_mode:
            tail = (self.hvi, self.kem_public_key)
        elif self.is_preshared:
            tail = (self.nonce, self.key_id)
        else:
            tail = (self.nonce,)
        parts = (
            self.h2,
            self.zid,
            self.hash_type,
            self.cipher_type,
            self.auth_tag_type,
            self.key_agreement_type,
            self.sas_type,
            *tail,
            self.mac,
        )
        return _frame(self.MESSAGE_TYPE, b"".join(p for p in parts if p is not None))

    @classmethod
    def parse(cls, data: bytes) -> Self:
        body = _body(data, cls.MESSAGE_TYPE)
        if len(body) < _COMMIT_FIXED:
            raise ZrtpProtocolError(f"Commit too short ({len(body)} octet body)")
        key_agreement = body[56:60]
        offset = _COMMIT_FIXED
        hvi = nonce = key_id = kem_public_key = None
        if key_agreement == _MULT:
            _need(body, _COMMIT_FIXED + _NONCE + _MAC, "Multistream Commit")
            nonce = body[offset : offset + _NONCE]
            offset += _NONCE
        elif key_agreement == _PRSH:
            _need(body, _COMMIT_FIXED + _NONCE + _KEY_ID + _MAC, "Preshared Commit")
            nonce = body[offset : offset + _NONCE]
            key_id = body[offset + _NONCE : offset + _NONCE + _KEY_ID]
            offset += _NONCE + _KEY_ID
        else:
            if len(body) < _COMMIT_FIXED + _HASH + _MAC:
                raise ZrtpProtocolError(f"DH Commit too short ({len(body)} octet body)")
            hvi = body[offset : offset + _HASH]
            offset += _HASH
            if key_agreement in KEM_KEY_AGREEMENTS:  # KEM mode: the public key follows hvi
                if len(body) <= offset + _MAC:
                    raise ZrtpProtocolError("KEM-mode Commit without a public key")
                kem_public_key = body[offset:-_MAC]
                offset = len(body) - _MAC
            else:
                _need(body, _COMMIT_FIXED + _HASH + _MAC, "DH Commit")
        return cls(
            h2=body[0:32],
            zid=body[32:44],
            hash_type=body[44:48],
            cipher_type=body[48:52],
            auth_tag_type=body[52:56],
            key_agreement_type=key_agreement,
            sas_type=body[60:64],
            hvi=hvi,
            nonce=nonce,
            key_id=key_id,
            mac=body[offset:],
            kem_public_key=kem_public_key,
        )


# ---------------------------------------------------------------------------
# DHPart1 / DHPart2 (figures 8, 9)
# ---------------------------------------------------------------------------

_DHPART_FIXED = _HASH + 4 * _SECRET_ID


@dataclass(frozen=True)
class _DHPart:
    MESSAGE_TYPE: ClassVar[bytes]

    h1: bytes
    rs1_id: bytes
    rs2_id: bytes
    aux_secret_id: bytes
    pbx_secret_id: bytes
    pv: bytes
    mac: bytes = bytes(_MAC)

    def __post_init__(self) -> None:
        _check_bytes("h1", self.h1, _HASH)
        _check_bytes("rs1_id", self.rs1_id, _SECRET_ID)
        _check_bytes("rs2_id", self.rs2_id, _SECRET_ID)
        _check_bytes("aux_secret_id", self.aux_secret_id, _SECRET_ID)
        _check_bytes("pbx_secret_id", self.pbx_secret_id, _SECRET_ID)
        if not isinstance(self.pv, bytes):
            raise ZrtpProtocolError(f"pv must be bytes, not {type(self.pv).__name__}")
        if not self.pv or len(self.pv) % 4:
            raise ZrtpProtocolError(f"pv must be non-empty whole words, got {len(self.pv)}")
        _check_bytes("mac", self.mac, _MAC)

    def serialize(self) -> bytes:
        body = b"".join(
            (
                self.h1,
                self.rs1_id,
                self.rs2_id,
                self.aux_secret_id,
                self.pbx_secret_id,
                self.pv,
                self.mac,
            )
        )
        return _frame(self.MESSAGE_TYPE, body)

    @classmethod
    def parse(cls, data: bytes) -> Self:
        body = _body(data, cls.MESSAGE_TYPE)
        if len(body) < _DHPART_FIXED + 4 + _MAC:
            raise ZrtpProtocolError(f"{cls.__name__} too short ({len(body)} octet body)")
        return cls(
            h1=body[0:32],
            rs1_id=body[32:40],
            rs2_id=body[40:48],
            aux_secret_id=body[48:56],
            pbx_secret_id=body[56:64],
            pv=body[_DHPART_FIXED:-_MAC],
            mac=body[-_MAC:],
        )


@dataclass(frozen=True)
class DHPart1(_DHPart):
    """DHPart1 (§5.5), sent by the responder; the secret IDs are rs1IDr etc."""

    MESSAGE_TYPE: ClassVar[bytes] = b"DHPart1 "


@dataclass(frozen=True)
class DHPart2(_DHPart):
    """DHPart2 (§5.6), sent by the initiator; the secret IDs are rs1IDi etc."""

    MESSAGE_TYPE: ClassVar[bytes] = b"DHPart2 "


# ---------------------------------------------------------------------------
# Confirm1 / Confirm2 (figure 10)
# ---------------------------------------------------------------------------

_FLAG_E = 0x08
_FLAG_V = 0x04
_FLAG_A = 0x02
_FLAG_D = 0x01


@dataclass(frozen=True)
class _Confirm:
    MESSAGE_TYPE: ClassVar[bytes]

    confirm_mac: bytes
    cfb_iv: bytes
    encrypted: bytes

    def __post_init__(self) -> None:
        _check_bytes("confirm_mac", self.confirm_mac, _MAC)
        _check_bytes("cfb_iv", self.cfb_iv, _IV)
        _check_encrypted("encrypted", self.encrypted, _CONFIRM_PLAIN_MIN)

    def serialize(self) -> bytes:
        return _frame(self.MESSAGE_TYPE, self.confirm_mac + self.cfb_iv + self.encrypted)

    @classmethod
    def parse(cls, data: bytes) -> Self:
        body = _body(data, cls.MESSAGE_TYPE)
        if len(body) < _MAC + _IV + _CONFIRM_PLAIN_MIN:
            raise ZrtpProtocolError(f"{cls.__name__} too short ({len(body)} octet body)")
        return cls(confirm_mac=body[0:8], cfb_iv=body[8:24], encrypted=body[24:])


@dataclass(frozen=True)
class Confirm1(_Confirm):
    """Confirm1 (§5.7), sent by the responder; ``encrypted`` is a ConfirmPlaintext."""

    MESSAGE_TYPE: ClassVar[bytes] = b"Confirm1"


@dataclass(frozen=True)
class Confirm2(_Confirm):
    """Confirm2 (§5.7), sent by the initiator; ``encrypted`` is a ConfirmPlaintext."""

    MESSAGE_TYPE: ClassVar[bytes] = b"Confirm2"


def _sig_flags_word(signature: bytes, flags: int) -> bytes:
    # | 15 unused bits | 9-bit sig len (words) | 8 flag bits |
    return _U32.pack(((len(signature) // 4) << 8) | flags)


@dataclass(frozen=True, repr=False)
class ConfirmPlaintext:
    """The encrypted part of Confirm1/Confirm2, once decrypted (figure 10).

    ``signature`` is the whole signature region (signature type block and
    signature block, padded to words), empty when there is none.
    """

    h0: bytes
    enrollment: bool
    sas_verified: bool
    allow_clear: bool
    disclosure: bool
    cache_expiration: int
    signature: bytes = b""

    def __post_init__(self) -> None:
        _check_bytes("h0", self.h0, _HASH)
        _check_bool("enrollment", self.enrollment)
        _check_bool("sas_verified", self.sas_verified)
        _check_bool("allow_clear", self.allow_clear)
        _check_bool("disclosure", self.disclosure)
        _check_uint("cache_expiration", self.cache_expiration, 32)
        _check_signature("signature", self.signature)

    def __repr__(self) -> str:
        return (
            f"ConfirmPlaintext(h0=<redacted>, enrollment={self.enrollment}, "
            f"sas_verified={self.sas_verified}, allow_clear={self.allow_clear}, "
            f"disclosure={self.disclosure}, cache_expiration={self.cache_expiration}, "
            f"signature=<{len(self.signature)} octets>)"
        )

    def serialize(self) -> bytes:
        flags = (
            (_FLAG_E if self.enrollment else 0)
            | (_FLAG_V if self.sas_verified else 0)
            | (_FLAG_A if self.allow_clear else 0)
            | (_FLAG_D if self.disclosure else 0)
        )
        return b"".join(
            (
                self.h0,
                _sig_flags_word(self.signature, flags),
                _U32.pack(self.cache_expiration),
                self.signature,
            )
        )

    @classmethod
    def parse(cls, data: bytes) -> Self:
        data = bytes(data)
        if len(data) < _CONFIRM_PLAIN_MIN:
            raise ZrtpProtocolError(f"Confirm plaintext too short ({len(data)} octets)")
        (word,) = _U32.unpack_from(data, _HASH)
        sig_words = (word >> 8) & _MAX_SIG_WORDS
        if len(data) != _CONFIRM_PLAIN_MIN + sig_words * 4:
            raise ZrtpProtocolError(
                f"Confirm sig len is {sig_words} words but {len(data) - _CONFIRM_PLAIN_MIN}"
                " octets follow"
            )
        (cache_expiration,) = _U32.unpack_from(data, _HASH + 4)
        return cls(
            h0=data[0:32],
            enrollment=bool(word & _FLAG_E),
            sas_verified=bool(word & _FLAG_V),
            allow_clear=bool(word & _FLAG_A),
            disclosure=bool(word & _FLAG_D),
            cache_expiration=cache_expiration,
            signature=data[_CONFIRM_PLAIN_MIN:],
        )


# ---------------------------------------------------------------------------
# Error, GoClear (figures 12, 14)
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Error:
    """Error (§5.9). ``code`` is any u32; see :class:`ErrorCode` for the defined ones."""

    MESSAGE_TYPE: ClassVar[bytes] = b"Error   "

    code: int

    def __post_init__(self) -> None:
        _check_uint("code", self.code, 32)

    def serialize(self) -> bytes:
        return _frame(self.MESSAGE_TYPE, _U32.pack(self.code))

    @classmethod
    def parse(cls, data: bytes) -> Self:
        body = _body(data, cls.MESSAGE_TYPE)
        _need(body, 4, "Error")
        (code,) = _U32.unpack(body)
        return cls(code=code)


@dataclass(frozen=True)
class GoClear:
    """GoClear (§5.11)."""

    MESSAGE_TYPE: ClassVar[bytes] = b"GoClear "

    clear_mac: bytes

    def __post_init__(self) -> None:
        _check_bytes("clear_mac", self.clear_mac, _MAC)

    def serialize(self) -> bytes:
        return _frame(self.MESSAGE_TYPE, self.clear_mac)

    @classmethod
    def parse(cls, data: bytes) -> Self:
        body = _body(data, cls.MESSAGE_TYPE)
        _need(body, _MAC, "GoClear")
        return cls(clear_mac=body)


# ---------------------------------------------------------------------------
# SASrelay (figure 16)
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class SasRelay:
    """SASrelay (§5.13); ``encrypted`` is a SasRelayPlaintext once decrypted."""

    MESSAGE_TYPE: ClassVar[bytes] = b"SASrelay"

    mac: bytes
    cfb_iv: bytes
    encrypted: bytes

    def __post_init__(self) -> None:
        _check_bytes("mac", self.mac, _MAC)
        _check_bytes("cfb_iv", self.cfb_iv, _IV)
        _check_encrypted("encrypted", self.encrypted, _SASRELAY_PLAIN_MIN)

    def serialize(self) -> bytes:
        return _frame(self.MESSAGE_TYPE, self.mac + self.cfb_iv + self.encrypted)

    @classmethod
    def parse(cls, data: bytes) -> Self:
        body = _body(data, cls.MESSAGE_TYPE)
        if len(body) < _MAC + _IV + _SASRELAY_PLAIN_MIN:
            raise ZrtpProtocolError(f"SASrelay too short ({len(body)} octet body)")
        return cls(mac=body[0:8], cfb_iv=body[8:24], encrypted=body[24:])


@dataclass(frozen=True, repr=False)
class SasRelayPlaintext:
    """The encrypted part of SASrelay, once decrypted (figure 16)."""

    sas_verified: bool
    allow_clear: bool
    disclosure: bool
    rendering_scheme: bytes
    trusted_sas_hash: bytes
    signature: bytes = b""

    def __post_init__(self) -> None:
        _check_bool("sas_verified", self.sas_verified)
        _check_bool("allow_clear", self.allow_clear)
        _check_bool("disclosure", self.disclosure)
        _check_bytes("rendering_scheme", self.rendering_scheme, _BLOCK)
        _check_bytes("trusted_sas_hash", self.trusted_sas_hash, _HASH)
        _check_signature("signature", self.signature)

    def __repr__(self) -> str:
        return (
            f"SasRelayPlaintext(sas_verified={self.sas_verified}, "
            f"allow_clear={self.allow_clear}, disclosure={self.disclosure}, "
            f"rendering_scheme={self.rendering_scheme!r}, trusted_sas_hash=<redacted>, "
            f"signature=<{len(self.signature)} octets>)"
        )

    def serialize(self) -> bytes:
        flags = (
            (_FLAG_V if self.sas_verified else 0)
            | (_FLAG_A if self.allow_clear else 0)
            | (_FLAG_D if self.disclosure else 0)
        )
        return b"".join(
            (
                _sig_flags_word(self.signature, flags),
                self.rendering_scheme,
                self.trusted_sas_hash,
                self.signature,
            )
        )

    @classmethod
    def parse(cls, data: bytes) -> Self:
        data = bytes(data)
        if len(data) < _SASRELAY_PLAIN_MIN:
            raise ZrtpProtocolError(f"SASrelay plaintext too short ({len(data)} octets)")
        (word,) = _U32.unpack_from(data, 0)
        sig_words = (word >> 8) & _MAX_SIG_WORDS
        if len(data) != _SASRELAY_PLAIN_MIN + sig_words * 4:
            raise ZrtpProtocolError(
                f"SASrelay sig len is {sig_words} words but "
                f"{len(data) - _SASRELAY_PLAIN_MIN} octets follow"
            )
        return cls(
            sas_verified=bool(word & _FLAG_V),
            allow_clear=bool(word & _FLAG_A),
            disclosure=bool(word & _FLAG_D),
            rendering_scheme=data[4:8],
            trusted_sas_hash=data[8:40],
            signature=data[_SASRELAY_PLAIN_MIN:],
        )


# ---------------------------------------------------------------------------
# Ping, PingACK (figures 18, 19)
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Ping:
    """Ping (§5.15)."""

    MESSAGE_TYPE: ClassVar[bytes] = b"Ping    "

    version: bytes
    endpoint_hash: bytes

    def __post_init__(self) -> None:
        _check_bytes("version", self.version, _BLOCK)
        _check_bytes("endpoint_hash", self.endpoint_hash, _ENDPOINT_HASH)

    def serialize(self) -> bytes:
        return _frame(self.MESSAGE_TYPE, self.version + self.endpoint_hash)

    @classmethod
    def parse(cls, data: bytes) -> Self:
        body = _body(data, cls.MESSAGE_TYPE)
        _need(body, _BLOCK + _ENDPOINT_HASH, "Ping")
        return cls(version=body[0:4], endpoint_hash=body[4:12])


@dataclass(frozen=True)
class PingAck:
    """PingACK (§5.16). ``ssrc`` is the SSRC from the header of the received Ping."""

    MESSAGE_TYPE: ClassVar[bytes] = b"PingACK "

    version: bytes
    sender_endpoint_hash: bytes
    received_endpoint_hash: bytes
    ssrc: int

    def __post_init__(self) -> None:
        _check_bytes("version", self.version, _BLOCK)
        _check_bytes("sender_endpoint_hash", self.sender_endpoint_hash, _ENDPOINT_HASH)
        _check_bytes("received_endpoint_hash", self.received_endpoint_hash, _ENDPOINT_HASH)
        _check_uint("ssrc", self.ssrc, 32)

    def serialize(self) -> bytes:
        body = (
            self.version
            + self.sender_endpoint_hash
            + self.received_endpoint_hash
            + _U32.pack(self.ssrc)
        )
        return _frame(self.MESSAGE_TYPE, body)

    @classmethod
    def parse(cls, data: bytes) -> Self:
        body = _body(data, cls.MESSAGE_TYPE)
        _need(body, _BLOCK + 2 * _ENDPOINT_HASH + 4, "PingACK")
        (ssrc,) = _U32.unpack_from(body, 20)
        return cls(
            version=body[0:4],
            sender_endpoint_hash=body[4:12],
            received_endpoint_hash=body[12:20],
            ssrc=ssrc,
        )


# ---------------------------------------------------------------------------
# Dispatch and packet
# ---------------------------------------------------------------------------

Message: TypeAlias = (
    Hello
    | HelloAck
    | Commit
    | DHPart1
    | DHPart2
    | Confirm1
    | Confirm2
    | Conf2Ack
    | Error
    | ErrorAck
    | GoClear
    | ClearAck
    | SasRelay
    | RelayAck
    | Ping
    | PingAck
)

_MESSAGE_CLASSES = (
    Hello,
    HelloAck,
    Commit,
    DHPart1,
    DHPart2,
    Confirm1,
    Confirm2,
    Conf2Ack,
    Error,
    ErrorAck,
    GoClear,
    ClearAck,
    SasRelay,
    RelayAck,
    Ping,
    PingAck,
)

_PARSERS: dict[bytes, Callable[[bytes], Message]] = {
    Hello.MESSAGE_TYPE: Hello.parse,
    HelloAck.MESSAGE_TYPE: HelloAck.parse,
    Commit.MESSAGE_TYPE: Commit.parse,
    DHPart1.MESSAGE_TYPE: DHPart1.parse,
    DHPart2.MESSAGE_TYPE: DHPart2.parse,
    Confirm1.MESSAGE_TYPE: Confirm1.parse,
    Confirm2.MESSAGE_TYPE: Confirm2.parse,
    Conf2Ack.MESSAGE_TYPE: Conf2Ack.parse,
    Error.MESSAGE_TYPE: Error.parse,
    ErrorAck.MESSAGE_TYPE: ErrorAck.parse,
    GoClear.MESSAGE_TYPE: GoClear.parse,
    ClearAck.MESSAGE_TYPE: ClearAck.parse,
    SasRelay.MESSAGE_TYPE: SasRelay.parse,
    RelayAck.MESSAGE_TYPE: RelayAck.parse,
    Ping.MESSAGE_TYPE: Ping.parse,
    PingAck.MESSAGE_TYPE: PingAck.parse,
}


def parse_message(data: bytes) -> Message:
    """Parse a full ZRTP message (starting at the 0x505A preamble)."""
    data = bytes(data)
    message_type = _check_message_header(data)
    parser = _PARSERS.get(message_type)
    if parser is None:
        raise ZrtpProtocolError(f"unknown message type {message_type!r}")
    return parser(data)


@dataclass(frozen=True)
class ZrtpPacket:
    """A ZRTP packet (figure 2): header, one message, CRC-32C (little-endian)."""

    sequence: int
    ssrc: int
    message: Message
    #: The serialised message, computed once in __post_init__ (size check) and reused.
    _message_bytes: bytes = field(default=b"", init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        _check_uint("sequence", self.sequence, 16)
        _check_uint("ssrc", self.ssrc, 32)
        if not isinstance(self.message, _MESSAGE_CLASSES):
            raise ZrtpProtocolError(f"not a ZRTP message: {type(self.message).__name__}")
        body = self.message.serialize()
        size = HEADER_SIZE + len(body) + CRC_SIZE
        if size > MAX_PACKET_SIZE:
            raise ZrtpProtocolError(f"packet of {size} octets exceeds {MAX_PACKET_SIZE}")
        object.__setattr__(self, "_message_bytes", body)

    def serialize(self) -> bytes:
        head = _PACKET_HEADER.pack(_FIRST_BYTE, 0, self.sequence, ZRTP_COOKIE, self.ssrc)
        data = head + self._message_bytes
        return data + crc32c_of(data).to_bytes(CRC_SIZE, "little")

    @classmethod
    def parse(cls, data: bytes) -> ZrtpPacket:
        """Parse a packet; ``code=None`` errors mean "drop silently"."""
        data = bytes(data)
        if not is_zrtp_packet(data):
            raise ZrtpProtocolError("not a ZRTP packet", code=None)
        if len(data) > MAX_PACKET_SIZE:
            raise ZrtpProtocolError(f"ZRTP packet of {len(data)} octets is too big", code=None)
        crc = int.from_bytes(data[-CRC_SIZE:], "little")
        if crc != crc32c_of(data[:-CRC_SIZE]):
            raise ZrtpProtocolError("ZRTP packet fails its CRC", code=None)
        if len(data) < _MIN_PACKET_SIZE:
            raise ZrtpProtocolError(f"ZRTP packet too short ({len(data)} octets)")
        _, _, sequence, _, ssrc = _PACKET_HEADER.unpack_from(data)
        message = parse_message(data[HEADER_SIZE:-CRC_SIZE])
        return cls(sequence=sequence, ssrc=ssrc, message=message)


# ---------------------------------------------------------------------------
# Fragments (post-quantum draft §"ZRTP packet formats", bzrtp >= 5.2)
# ---------------------------------------------------------------------------

#: First byte of a packet that carries one fragment of a message.
FRAGMENT_FIRST_BYTE = 0x11
#: Packet header plus message id, total length, offset, fragment length.
FRAGMENT_HEADER_SIZE = HEADER_SIZE + 8
_FRAGMENT_FIELDS = struct.Struct("!HHHH")


def is_zrtp_fragment(data: bytes) -> bool:
    """Whether ``data`` looks like a ZRTP fragment packet (first byte 0x11). Never raises."""
    try:
        return (
            len(data) >= FRAGMENT_HEADER_SIZE + 4 + CRC_SIZE
            and data[0] == FRAGMENT_FIRST_BYTE
            and bytes(data[4:8]) == ZRTP_COOKIE
        )
    except Exception:
        return False


@dataclass(frozen=True)
class Fragment:
    """One packet carrying part of a message too big for the path MTU.

    ``message_id`` is the same for every fragment of a message and for its
    retransmissions; ``total_words`` and ``offset_words`` count 32-bit words.
    """

    sequence: int
    ssrc: int
    message_id: int
    total_words: int
    offset_words: int
    data: bytes = field(repr=False)

    def __post_init__(self) -> None:
        _check_uint("sequence", self.sequence, 16)
        _check_uint("ssrc", self.ssrc, 32)
        _check_uint("message_id", self.message_id, 16)
        _check_uint("total_words", self.total_words, 16)
        _check_uint("offset_words", self.offset_words, 16)
        if not isinstance(self.data, bytes) or not self.data or len(self.data) % 4:
            raise ZrtpProtocolError("a fragment is non-empty whole words")
        if self.offset_words + len(self.data) // 4 > self.total_words:
            raise ZrtpProtocolError("fragment ends beyond its message")
        if FRAGMENT_HEADER_SIZE + len(self.data) + CRC_SIZE > MAX_PACKET_SIZE:
            raise ZrtpProtocolError("fragment packet too big")

    def serialize(self) -> bytes:
        head = _PACKET_HEADER.pack(FRAGMENT_FIRST_BYTE, 0, self.sequence, ZRTP_COOKIE, self.ssrc)
        fields = _FRAGMENT_FIELDS.pack(
            self.message_id, self.total_words, self.offset_words, len(self.data) // 4
        )
        data = head + fields + self.data
        return data + crc32c_of(data).to_bytes(CRC_SIZE, "little")

    @classmethod
    def parse(cls, data: bytes) -> Fragment:
        """Parse a fragment packet; every error has ``code=None`` (drop silently)."""
        data = bytes(data)
        if not is_zrtp_fragment(data):
            raise ZrtpProtocolError("not a ZRTP fragment", code=None)
        if len(data) > MAX_PACKET_SIZE:
            raise ZrtpProtocolError("ZRTP fragment too big", code=None)
        crc = int.from_bytes(data[-CRC_SIZE:], "little")
        if crc != crc32c_of(data[:-CRC_SIZE]):
            raise ZrtpProtocolError("ZRTP fragment fails its CRC", code=None)
        _, _, sequence, _, ssrc = _PACKET_HEADER.unpack_from(data)
        message_id, total, offset, length = _FRAGMENT_FIELDS.unpack_from(data, HEADER_SIZE)
        payload = data[FRAGMENT_HEADER_SIZE:-CRC_SIZE]
        if length * 4 != len(payload):
            raise ZrtpProtocolError("fragment length field disagrees with its size", code=None)
        try:
            return cls(sequence, ssrc, message_id, total, offset, payload)
        except ZrtpProtocolError as exc:
            raise ZrtpProtocolError(str(exc), code=None) from None


def fragment_message(
    message: bytes, *, ssrc: int, message_id: int, sequences: Callable[[], int], mtu: int
) -> list[Fragment]:
    """Cut a serialized message into fragments whose packets fit ``mtu`` octets.

    ``sequences`` gives each fragment its packet sequence number, in order.
    """
    room = (mtu - FRAGMENT_HEADER_SIZE - CRC_SIZE) // 4 * 4
    if room < 4 or len(message) % 4:
        raise ValueError("MTU too small or message not whole words")
    total = len(message) // 4
    return [
        Fragment(sequences(), ssrc, message_id, total, start // 4, message[start : start + room])
        for start in range(0, len(message), room)
    ]
