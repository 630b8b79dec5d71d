"""Key agreement types behind one interface (RFC 6189 §5.1.5).

A key agreement produces our public value ``pv`` and, given the peer's, the
DHResult that enters s0. New types (e.g. a hybrid ML-KEM + X25519 as bzrtp
5.2 offers) plug in here without touching the state machine: register a class
in ``KEY_AGREEMENTS`` and a rank in ``SPEED_RANK``.

Randomness is always injected; cryptography (OpenSSL) does the arithmetic.
"""

from __future__ import annotations

import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import ClassVar

from cryptography.hazmat.primitives.asymmetric import ec, x448, x25519

from pbx_zrtp.zrtp.errors import ErrorCode, ZrtpProtocolError

with warnings.catch_warnings():
    # FFDH is deprecated in cryptography >= 46 but is still what RFC 6189 mandates (DH3k).
    warnings.simplefilter("ignore")
    from cryptography.hazmat.primitives.asymmetric import dh

RandomSource = Callable[[int], bytes]

# RFC 3526 MODP groups, generator 2.
_MODP_2048 = int(
    "FFFFFFFFFFFFFFFFC90FDAA22168C234C4C6628B80DC1CD129024E088A67CC74020BBEA63B139B22514A0879"
    "8E3404DDEF9519B3CD3A431B302B0A6DF25F14374FE1356D6D51C245E485B576625E7EC6F44C42E9A637ED6B"
    "0BFF5CB6F406B7EDEE386BFB5A899FA5AE9F24117C4B1FE649286651ECE45B3DC2007CB8A163BF0598DA4836"
    "1C55D39A69163FA8FD24CF5F83655D23DCA3AD961C62F356208552BB9ED529077096966D670C354E4ABC9804"
    "F1746C08CA18217C32905E462E36CE3BE39E772C180E86039B2783A2EC07A28FB5C55DF06F4C52C9DE2BCBF6"
    "955817183995497CEA956AE515D2261898FA051015728E5A8AACAA68FFFFFFFFFFFFFFFF",
    16,
)
_MODP_3072 = int(
    "FFFFFFFFFFFFFFFFC90FDAA22168C234C4C6628B80DC1CD129024E088A67CC74020BBEA63B139B22514A0879"
    "8E3404DDEF9519B3CD3A431B302B0A6DF25F14374FE1356D6D51C245E485B576625E7EC6F44C42E9A637ED6B"
    "0BFF5CB6F406B7EDEE386BFB5A899FA5AE9F24117C4B1FE649286651ECE45B3DC2007CB8A163BF0598DA4836"
    "1C55D39A69163FA8FD24CF5F83655D23DCA3AD961C62F356208552BB9ED529077096966D670C354E4ABC9804"
    "F1746C08CA18217C32905E462E36CE3BE39E772C180E86039B2783A2EC07A28FB5C55DF06F4C52C9DE2BCBF6"
    "955817183995497CEA956AE515D2261898FA051015728E5A8AAAC42DAD33170D04507A33A85521ABDF1CBA64"
    "ECFB850458DBEF0A8AEA71575D060C7DB3970F85A6E1E4C7ABF5AE8CDB0933D71E8C94E04A25619DCEE3D226"
    "1AD2EE6BF12FFA06D98A0864D87602733EC86A64521F2B18177B200CBBE117577A615D6C770988C0BAD946E2"
    "08E24FA074E5AB3143DB5BFCE0FD108E4B82D120A93AD2CAFFFFFFFFFFFFFFFF",
    16,
)


class KeyAgreement(ABC):
    """One ephemeral key pair of a given key agreement type."""

    name: ClassVar[bytes]
    pv_length: ClassVar[int]  # bytes on the wire

    @abstractmethod
    def __init__(self, random: RandomSource, secret_bits: int = 256) -> None:
        """Make a fresh key pair from ``random`` (``secret_bits`` for finite-field DH)."""

    @property
    @abstractmethod
    def public_value(self) -> bytes:
        """Our pv, formatted for DHPart1/DHPart2."""

    @abstractmethod
    def compute(self, peer_pv: bytes) -> bytes:
        """DHResult for the peer's pv; raises ZrtpProtocolError(BAD_DH_VALUE) if invalid."""

    def _check_length(self, peer_pv: bytes) -> None:
        if len(peer_pv) != self.pv_length:
            raise ZrtpProtocolError(
                f"{self.name.decode()} public value has {len(peer_pv)} bytes, "
                f"expected {self.pv_length}",
                ErrorCode.MALFORMED_PACKET,
            )


class _FiniteFieldDH(KeyAgreement):
    prime: ClassVar[int]

    def __init__(self, random: RandomSource, secret_bits: int = 256) -> None:
        if secret_bits % 8 or not 256 <= secret_bits <= 512:
            raise ValueError("DH secret must be 256..512 bits")
        secret = 0
        while secret < 2:
            secret = int.from_bytes(random(secret_bits // 8), "big")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            numbers = dh.DHParameterNumbers(self.prime, 2)
            # OpenSSL needs a public number to load the key but never uses it for
            # exchange(); exchanging with g itself yields our public value g^x mod p,
            # about 8x faster than Python's pow().
            generator = dh.DHPublicNumbers(2, numbers)
            self._private = dh.DHPrivateNumbers(secret, generator).private_key()
            self._public = self._private.exchange(generator.public_key())
        self._numbers = numbers

    @property
    def public_value(self) -> bytes:
        return self._public.rjust(self.pv_length, b"\x00")

    def compute(self, peer_pv: bytes) -> bytes:
        self._check_length(peer_pv)
        value = int.from_bytes(peer_pv, "big")
        if value <= 1 or value >= self.prime - 1:  # §4.4.1.2: 0, 1 and p-1 are attacks
            raise ZrtpProtocolError("DH public value is 0, 1 or p-1", ErrorCode.BAD_DH_VALUE)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                peer = dh.DHPublicNumbers(value, self._numbers).public_key()
                result = self._private.exchange(peer)
            except ValueError as exc:
                raise ZrtpProtocolError("invalid DH public value", ErrorCode.BAD_DH_VALUE) from exc
        return result.rjust(self.pv_length, b"\x00")


class DH2k(_FiniteFieldDH):
    name = b"DH2k"
    pv_length = 256
    prime = _MODP_2048


class DH3k(_FiniteFieldDH):
    name = b"DH3k"
    pv_length = 384
    prime = _MODP_3072


class _EllipticCurveDH(KeyAgreement):
    curve: ClassVar[ec.EllipticCurve]
    order: ClassVar[int]

    def __init__(self, random: RandomSource, secret_bits: int = 256) -> None:
        size = self.pv_length // 2
        scalar = 0
        while not 0 < scalar < self.order:
            scalar = int.from_bytes(random(size), "big")
        self._private = ec.derive_private_key(scalar, self.curve)
        numbers = self._private.public_key().public_numbers()
        self._public = numbers.x.to_bytes(size, "big") + numbers.y.to_bytes(size, "big")

    @property
    def public_value(self) -> bytes:
        return self._public

    def compute(self, peer_pv: bytes) -> bytes:
        self._check_length(peer_pv)
        size = self.pv_length // 2
        x = int.from_bytes(peer_pv[:size], "big")
        y = int.from_bytes(peer_pv[size:], "big")
        try:  # cryptography checks the point is on the curve (partial validation)
            peer = ec.EllipticCurvePublicNumbers(x, y, self.curve).public_key()
            return self._private.exchange(ec.ECDH(), peer)
        except ValueError as exc:
            raise ZrtpProtocolError("invalid ECDH public value", ErrorCode.BAD_DH_VALUE) from exc


class EC25(_EllipticCurveDH):
    name = b"EC25"
    pv_length = 64
    curve = ec.SECP256R1()
    order = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551


class EC38(_EllipticCurveDH):
    name = b"EC38"
    pv_length = 96
    curve = ec.SECP384R1()
    order = int(
        "FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFC7634D81F4372DDF581A0DB248B0A77AECEC196ACCC52973",
        16,
    )


class _Montgomery(KeyAgreement):
    """X25519 / X448 (RFC 7748): raw keys; cryptography rejects low-order points."""

    private_type: ClassVar[type[x25519.X25519PrivateKey] | type[x448.X448PrivateKey]]
    public_type: ClassVar[type[x25519.X25519PublicKey] | type[x448.X448PublicKey]]

    def __init__(self, random: RandomSource, secret_bits: int = 256) -> None:
        self._private = self.private_type.from_private_bytes(random(self.pv_length))
        self._public = self._private.public_key().public_bytes_raw()

    @property
    def public_value(self) -> bytes:
        return self._public

    def compute(self, peer_pv: bytes) -> bytes:
        self._check_length(peer_pv)
        try:  # an all-zero result (low-order point) raises ValueError
            peer = self.public_type.from_public_bytes(peer_pv)
            return self._private.exchange(peer)  # type: ignore[arg-type]
        except ValueError as exc:
            raise ZrtpProtocolError(
                f"invalid {self.name.decode()} public value", ErrorCode.BAD_DH_VALUE
            ) from exc


class X255(_Montgomery):
    name = b"X255"
    pv_length = 32
    private_type = x25519.X25519PrivateKey
    public_type = x25519.X25519PublicKey


class E255(X255):
    """Curve25519 under GNU ZRTP's name: the same X25519 computation as ``X255``.

    RFC 6189 names no Curve25519 type; bzrtp says ``X255``, GNU ZRTP ``E255``.
    Offering both lets every Curve25519-capable phone use it instead of DH3k.
    """

    name = b"E255"


class X448(_Montgomery):
    name = b"X448"
    pv_length = 56
    private_type = x448.X448PrivateKey
    public_type = x448.X448PublicKey


KEY_AGREEMENTS: dict[bytes, type[KeyAgreement]] = {
    cls.name: cls for cls in (DH2k, DH3k, EC25, EC38, X255, E255, X448)
}

#: Names of one computation (Curve25519): a list naming one also offers the other.
ALIASES: dict[bytes, bytes] = {b"X255": b"E255", b"E255": b"X255"}

#: Non-DH key agreement types (§4.4.2, §4.4.3).
MULTISTREAM = b"Mult"
PRESHARED = b"Prsh"

#: Fastest first (§4.1.2), extended with the Curve types the way bzrtp ranks them:
#: DH2k < X255 < EC25 < X448 < DH3k < EC38. GNU ZRTP ranks its E255 where bzrtp
#: ranks X255 (DH2k < E255 < EC25 < DH3k < ...): one rank for both names.
#: KEM-mode hybrids come after every DH type, in bzrtp's order (its numeric type
#: values): X25519+ML-KEM-512 (X1M1) < X448+ML-KEM-1024 (X3M3).
SPEED_ORDER: tuple[bytes, ...] = (
    b"DH2k",
    b"X255",
    b"EC25",
    b"X448",
    b"DH3k",
    b"EC38",
    b"X1M1",
    b"X3M3",
)
SPEED_RANK: dict[bytes, int] = {
    **{name: rank for rank, name in enumerate(SPEED_ORDER)},
    b"E255": SPEED_ORDER.index(b"X255"),
}


def create_key_agreement(name: bytes, random: RandomSource, secret_bits: int = 256) -> KeyAgreement:
    try:
        cls = KEY_AGREEMENTS[name]
    except KeyError:
        raise ZrtpProtocolError(
            f"unsupported key agreement {name!r}", ErrorCode.UNSUPPORTED_KEY_AGREEMENT
        ) from None
    return cls(random, secret_bits)
