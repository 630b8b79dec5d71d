"""KEM-mode key agreements: X25519/X448 + ML-KEM hybrids as bzrtp (Linphone) offers them.

KEM mode ("PostQuantum algorithms in ZRTP", the draft behind bzrtp >= 5.2) keeps
the DH-mode message flow: the initiator's KEM public key travels in the Commit
after hvi, the responder's ciphertext in DHPart1 (the draft's KEMPart1) and a
16-octet random nonce in DHPart2 (KEMPart2), which the hvi commits to. bzrtp
sends the DHPart1/DHPart2 type blocks, so we do too. The KEM's shared secret is
the DHResult of s0.

Each hybrid combines an ECDH-based KEM (RFC 9180 §4.1 style, labels as in
BelledonneCommunications/postquantumcryptoengine) with ML-KEM (FIPS 203):

* ECDH-KEM: ``ct`` is an ephemeral public key; ``ss = HKDF(salt="",
  ikm="ZRTPKEM" || I2OSP(id, 2) || "eae_prk" || dh, info=I2OSP(L, 2) ||
  "ZRTP-v1.1KEM" || I2OSP(id, 2) || "shared_secret" || ct || pk, L)`` with the
  negotiated ZRTP hash, id 0x20 (X25519, L=32) or 0x21 (X448, L=56).
* Combiner (nested dual PRF): ``T = ""; for x in (ss_1, ss_2, ct_1 || ct_2):
  T = HMAC(key=T, x)``; the hybrid's secret is ``T`` (the hash's length).
  Public keys and ciphertexts are the components' concatenations.

ML-KEM-1024 and X25519/X448 come from ``cryptography`` (OpenSSL). ``cryptography``
has no ML-KEM-512, so it comes from ``pqcrypto`` (Rust implementation, abi3
wheel, Apache-2.0; cross-checked against OpenSSL's ML-KEM-768 in the tests).
Key pairs for X25519/X448 and ML-KEM-1024 are drawn from the injected random
source; ML-KEM encapsulation and ML-KEM-512 key generation draw from the
operating system's CSPRNG inside those libraries (they take no random source).
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import ClassVar, Protocol

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import x448, x25519
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from pbx_zrtp.zrtp.crypto import HashAlgorithm
from pbx_zrtp.zrtp.errors import ErrorCode, ZrtpProtocolError
from pbx_zrtp.zrtp.packets import KEM_KEY_AGREEMENTS

RandomSource = Callable[[int], bytes]

#: Length of the initiator's nonce in DHPart2 (KEMPart2) in KEM mode.
KEM_NONCE_LENGTH = 16

_BAD = ErrorCode.BAD_DH_VALUE


def _pad(data: bytes) -> bytes:
    """Messages are whole words: bzrtp pads keys and ciphertexts with zeros."""
    return data + bytes(-len(data) % 4)


def _padded(length: int) -> int:
    return length + (-length % 4)


class _PqKem(Protocol):
    """One post-quantum KEM: sizes, key generation, encapsulation."""

    public_key_length: int
    ciphertext_length: int

    def generate(self, random: RandomSource) -> tuple[bytes, object]: ...
    def encapsulate(self, public_key: bytes) -> tuple[bytes, bytes]: ...
    def decapsulate(self, secret: object, ciphertext: bytes) -> bytes: ...


class _MlKem1024:
    """ML-KEM-1024 from cryptography (OpenSSL); key pair from a 64-octet seed."""

    public_key_length = 1568
    ciphertext_length = 1568

    def __init__(self) -> None:
        from cryptography.hazmat.primitives.asymmetric import mlkem

        self._mlkem = mlkem

    def generate(self, random: RandomSource) -> tuple[bytes, object]:
        private = self._mlkem.MLKEM1024PrivateKey.from_seed_bytes(random(64))
        return private.public_key().public_bytes_raw(), private

    def encapsulate(self, public_key: bytes) -> tuple[bytes, bytes]:
        try:
            peer = self._mlkem.MLKEM1024PublicKey.from_public_bytes(public_key)
        except ValueError as exc:
            raise ZrtpProtocolError("invalid ML-KEM-1024 public key", _BAD) from exc
        secret, ciphertext = peer.encapsulate()
        return ciphertext, secret

    def decapsulate(self, secret: object, ciphertext: bytes) -> bytes:
        private = secret
        assert isinstance(private, self._mlkem.MLKEM1024PrivateKey)
        try:
            return private.decapsulate(ciphertext)
        except ValueError as exc:
            raise ZrtpProtocolError("invalid ML-KEM-1024 ciphertext", _BAD) from exc


class _MlKem512:
    """ML-KEM-512 from pqcrypto (cryptography has no ML-KEM-512)."""

    public_key_length = 800
    ciphertext_length = 768

    def __init__(self) -> None:
        self._impl = importlib.import_module("pqcrypto.kem.ml_kem_512")

    def generate(self, random: RandomSource) -> tuple[bytes, object]:
        public, secret = self._impl.keygen()
        return bytes(public), _Secret(bytes(secret))

    def encapsulate(self, public_key: bytes) -> tuple[bytes, bytes]:
        try:
            ciphertext, secret = self._impl.encaps(public_key)
        except Exception as exc:  # pqcrypto raises its own types on bad input
            raise ZrtpProtocolError("invalid ML-KEM-512 public key", _BAD) from exc
        return bytes(ciphertext), bytes(secret)

    def decapsulate(self, secret: object, ciphertext: bytes) -> bytes:
        assert isinstance(secret, _Secret)
        try:
            return bytes(self._impl.decaps(secret.value, ciphertext))
        except Exception as exc:
            raise ZrtpProtocolError("invalid ML-KEM-512 ciphertext", _BAD) from exc


class _Secret:
    """Secret key bytes that never show in a repr."""

    __slots__ = ("value",)

    def __init__(self, value: bytes) -> None:
        self.value = value

    def __repr__(self) -> str:
        return "<secret>"


class _EcdhKem:
    """X25519 or X448 used as a KEM (the draft's ECDH-based KEM, bzrtp's K255/K448)."""

    def __init__(self, curve: str) -> None:
        self._private: type[x25519.X25519PrivateKey] | type[x448.X448PrivateKey]
        self._public_type: type[x25519.X25519PublicKey] | type[x448.X448PublicKey]
        if curve == "x25519":
            self.kem_id, self.length = 0x20, 32
            self._private, self._public_type = x25519.X25519PrivateKey, x25519.X25519PublicKey
        else:
            self.kem_id, self.length = 0x21, 56
            self._private, self._public_type = x448.X448PrivateKey, x448.X448PublicKey

    def generate(self, random: RandomSource) -> tuple[bytes, object]:
        private = self._private.from_private_bytes(random(self.length))
        return private.public_key().public_bytes_raw(), private

    def _dh(self, private: object, peer: bytes) -> bytes:
        try:
            key = self._public_type.from_public_bytes(peer)
            return private.exchange(key)  # type: ignore[attr-defined, no-any-return]
        except ValueError as exc:  # wrong length or a low-order point (all-zero result)
            raise ZrtpProtocolError("invalid ECDH-KEM value", _BAD) from exc

    def _derive(self, hash_name: str, dh: bytes, ciphertext: bytes, public_key: bytes) -> bytes:
        suite = b"KEM" + self.kem_id.to_bytes(2, "big")
        ikm = b"ZRTP" + suite + b"eae_prk" + dh
        info = (
            self.length.to_bytes(2, "big")
            + b"ZRTP-v1.1"
            + suite
            + b"shared_secret"
            + ciphertext
            + public_key
        )
        return _hkdf(hash_name, ikm, info, self.length)

    def encapsulate(
        self, hash_name: str, public_key: bytes, random: RandomSource
    ) -> tuple[bytes, bytes]:
        ephemeral = self._private.from_private_bytes(random(self.length))
        ciphertext = ephemeral.public_key().public_bytes_raw()
        dh = self._dh(ephemeral, public_key)
        return ciphertext, self._derive(hash_name, dh, ciphertext, public_key)

    def decapsulate(self, hash_name: str, private: object, ciphertext: bytes) -> bytes:
        dh = self._dh(private, ciphertext)
        public = private.public_key().public_bytes_raw()  # type: ignore[attr-defined]
        return self._derive(hash_name, dh, ciphertext, public)


_HKDF_ALGORITHMS: dict[str, type[hashes.SHA256 | hashes.SHA384 | hashes.SHA512]] = {
    "sha256": hashes.SHA256,
    "sha384": hashes.SHA384,
    "sha512": hashes.SHA512,
}


def _hkdf(hash_name: str, ikm: bytes, info: bytes, length: int) -> bytes:
    algorithm = _HKDF_ALGORITHMS[hash_name]()
    return HKDF(algorithm=algorithm, length=length, salt=None, info=info).derive(ikm)


class Kem(ABC):
    """One KEM-mode key agreement of a call: the initiator's key pair or the
    responder's encapsulation, and the shared secret that becomes the DHResult."""

    name: ClassVar[bytes]
    #: Octets of the initiator's public key in the Commit (padded to whole words).
    public_key_length: ClassVar[int]
    #: Octets of the responder's ciphertext in DHPart1 (padded to whole words).
    ciphertext_length: ClassVar[int]

    @abstractmethod
    def __init__(self, hash_algorithm: HashAlgorithm, random: RandomSource) -> None:
        """Bind the negotiated hash (it keys the combiner) and the random source."""

    @abstractmethod
    def generate(self) -> bytes:
        """Initiator: make a key pair, return the public key for the Commit."""

    @abstractmethod
    def encapsulate(self, public_key: bytes) -> tuple[bytes, bytes]:
        """Responder: (ciphertext for DHPart1, shared secret) for the Commit's key."""

    @abstractmethod
    def decapsulate(self, ciphertext: bytes) -> bytes:
        """Initiator: the shared secret from DHPart1's ciphertext."""


class _Hybrid(Kem):
    """ECDH-KEM + ML-KEM, combined as bzrtp's postquantumcryptoengine does."""

    curve: ClassVar[str]
    pq_factory: ClassVar[Callable[[], _PqKem]]

    def __init__(self, hash_algorithm: HashAlgorithm, random: RandomSource) -> None:
        if hash_algorithm.hashlib_name not in _HKDF_ALGORITHMS:
            raise ValueError(f"no KEM combiner for hash {hash_algorithm.name!r}")
        self._hash = hash_algorithm
        self._random = random
        self._ecdh = _EcdhKem(self.curve)
        self._pq = type(self).pq_factory()
        self._secrets: tuple[object, object] | None = None
        self._public_key = b""

    @property
    def _raw_public_length(self) -> int:
        return self._ecdh.length + self._pq.public_key_length

    @property
    def _raw_ciphertext_length(self) -> int:
        return self._ecdh.length + self._pq.ciphertext_length

    def generate(self) -> bytes:
        ecdh_public, ecdh_secret = self._ecdh.generate(self._random)
        pq_public, pq_secret = self._pq.generate(self._random)
        self._secrets = (ecdh_secret, pq_secret)
        self._public_key = ecdh_public + pq_public
        return _pad(self._public_key)

    def _unpad(self, value: bytes, raw_length: int, what: str) -> bytes:
        if len(value) != _padded(raw_length) or any(value[raw_length:]):
            raise ZrtpProtocolError(
                f"{self.name.decode()} {what} has {len(value)} octets, expected "
                f"{_padded(raw_length)}",
                ErrorCode.MALFORMED_PACKET,
            )
        return value[:raw_length]

    def _combine(self, ecdh_secret: bytes, pq_secret: bytes, ciphertext: bytes) -> bytes:
        combined = b""
        for part in (ecdh_secret, pq_secret, ciphertext):
            combined = self._hash.hmac(combined, part)
        return combined

    def encapsulate(self, public_key: bytes) -> tuple[bytes, bytes]:
        raw = self._unpad(public_key, self._raw_public_length, "public key")
        split = self._ecdh.length
        ecdh_ct, ecdh_ss = self._ecdh.encapsulate(
            self._hash.hashlib_name, raw[:split], self._random
        )
        pq_ct, pq_ss = self._pq.encapsulate(raw[split:])
        ciphertext = ecdh_ct + pq_ct
        return _pad(ciphertext), self._combine(ecdh_ss, pq_ss, ciphertext)

    def decapsulate(self, ciphertext: bytes) -> bytes:
        if self._secrets is None:
            raise ValueError("decapsulate() before generate()")
        raw = self._unpad(ciphertext, self._raw_ciphertext_length, "ciphertext")
        split = self._ecdh.length
        ecdh_secret, pq_secret = self._secrets
        ecdh_ss = self._ecdh.decapsulate(self._hash.hashlib_name, ecdh_secret, raw[:split])
        pq_ss = self._pq.decapsulate(pq_secret, raw[split:])
        self._secrets = None  # one decapsulation per key pair
        return self._combine(ecdh_ss, pq_ss, raw)


class K255MLK512(_Hybrid):
    """X25519 + ML-KEM-512: bzrtp's ZRTP_KEYAGREEMENT_K255_MLK512, wire name X1M1."""

    name = b"X1M1"
    curve = "x25519"
    pq_factory = _MlKem512
    public_key_length = _padded(32 + 800)
    ciphertext_length = _padded(32 + 768)


class K448MLK1024(_Hybrid):
    """X448 + ML-KEM-1024: bzrtp's ZRTP_KEYAGREEMENT_K448_MLK1024, wire name X3M3."""

    name = b"X3M3"
    curve = "x448"
    pq_factory = _MlKem1024
    public_key_length = _padded(56 + 1568)
    ciphertext_length = _padded(56 + 1568)


def _available(cls: type[_Hybrid]) -> bool:
    try:
        cls.pq_factory()
    except ImportError:
        return False
    except AttributeError:  # a cryptography without ML-KEM
        return False
    return True


#: KEM-mode key agreements this installation can run, by wire name.
KEMS: dict[bytes, type[Kem]] = {
    cls.name: cls for cls in (K255MLK512, K448MLK1024) if _available(cls)
}
#: Every KEM-mode name we know (for messages naming one we cannot run here).
KNOWN_KEMS: tuple[bytes, ...] = KEM_KEY_AGREEMENTS
assert set(KNOWN_KEMS) == {K255MLK512.name, K448MLK1024.name}
#: Human names, for the variables the PBX adapters set.
KEM_DESCRIPTIONS: dict[bytes, str] = {
    K255MLK512.name: "X25519+ML-KEM-512",
    K448MLK1024.name: "X448+ML-KEM-1024",
}


def is_kem(name: bytes) -> bool:
    """Whether ``name`` is a KEM-mode key agreement (Commit carries a public key)."""
    return name in KNOWN_KEMS


def create_kem(name: bytes, hash_algorithm: HashAlgorithm, random: RandomSource) -> Kem:
    try:
        cls = KEMS[name]
    except KeyError:
        raise ZrtpProtocolError(
            f"unsupported key agreement {name!r}", ErrorCode.UNSUPPORTED_KEY_AGREEMENT
        ) from None
    return cls(hash_algorithm, random)
