"""SRTP/SRTCP for the keys ZRTP negotiates, over libsrtp (pylibsrtp).

pylibsrtp is wrapped here and nowhere else. Every failure (authentication,
replay, a repeated index, an oversize packet) means "drop and count", so
``protect`` / ``unprotect`` return None and the datagram path never sees an
exception.

One call has one pair of libsrtp sessions for its whole life: the rollover
counter, the highest index and the replay window protect the call, so they are
never re-created from the master key mid-call. The relay's native worker
(``relay/fastpath.py``) borrows those same sessions while it forwards a call
(:meth:`SrtpContext.lend`): libsrtp sessions are not thread-safe, so until it
gives them back (:meth:`SrtpContext.take_back`) every use from Python goes
through the worker too, under its lock.
"""

from __future__ import annotations

import ctypes
import enum
import importlib
import os
from collections import Counter
from dataclasses import dataclass
from typing import Any, Protocol

import pylibsrtp

from pbx_zrtp.zrtp.events import SrtpKeys


@dataclass(frozen=True)
class _Suite:
    """One SRTP crypto suite: its master key length and the libsrtp setter that
    fills a crypto policy for it (the same for SRTP and SRTCP, see ``_policy``)."""

    key_length: int
    setter: str


#: ZRTP cipher and auth tag -> SRTP suite: AES1 is AES_CM_128 (RFC 3711), AES3 is
#: AES_CM_256 (RFC 6188, as RFC 6189 §5.1.3 says), both with HMAC-SHA1 80 or 32.
_SUITES = {
    # (libsrtp's aes_cm_128_hmac_sha1_80 setter is a macro for its RTP default)
    ("AES1", "HS80"): _Suite(16, "srtp_crypto_policy_set_rtp_default"),
    ("AES1", "HS32"): _Suite(16, "srtp_crypto_policy_set_aes_cm_128_hmac_sha1_32"),
    ("AES3", "HS80"): _Suite(32, "srtp_crypto_policy_set_aes_cm_256_hmac_sha1_80"),
    ("AES3", "HS32"): _Suite(32, "srtp_crypto_policy_set_aes_cm_256_hmac_sha1_32"),
}
SALT_LENGTH = 14

#: Ciphers this SRTP layer can use (every one the engine can negotiate).
SUPPORTED_CIPHERS = ("AES1", "AES3")

#: The pylibsrtp releases whose internals (``Session._srtp``, ``Policy._policy``,
#: ``ffi``/``lib``) this module was verified against; pyproject.toml pins the same.
PYLIBSRTP_VERIFIED = ("1.0.",)

#: Largest packet handed to libsrtp; the buffer leaves room for its trailer.
MAX_PACKET = 1500
_BUFFER = 2048

# libsrtp 2.x status codes (srtp_err_status_t) and our own for "too long".
STATUS_OK = 0
STATUS_REPLAY_FAIL = 9  # index already seen (protect: already used)
STATUS_REPLAY_OLD = 10  # index older than the window
STATUS_TOO_LONG = -2


class Op(enum.IntEnum):
    """One use of a call's sessions (the same codes in ``_fastpath.c``)."""

    PROTECT = 0
    UNPROTECT = 1
    PROTECT_RTCP = 2
    UNPROTECT_RTCP = 3


class Refusal(enum.Enum):
    """Why ``protect_checked`` refused a packet (the value is the drop counter)."""

    #: The (SSRC, index) was used already (RFC 3711 §9.1): never encrypted twice.
    REPEAT = "srtp_repeat"
    FAILED = "srtp_protect"


class SessionLender(Protocol):
    """Who holds a context's sessions while they are lent (the native worker)."""

    def run(self, op: Op, packet: bytes) -> tuple[int, bytes]:
        """Apply ``op`` to ``packet`` with the lent sessions: (status, result)."""
        ...


def is_rtcp(packet: bytes) -> bool:
    """RFC 5761 demultiplexing: RTCP packet types 192-223 sit where RTP has M+PT.
    The native worker applies the same rule (``_fastpath.c``: ``is_rtcp``)."""
    return len(packet) >= 2 and 192 <= packet[1] <= 223


def _binding() -> tuple[Any, Any]:
    """pylibsrtp's cffi ``ffi`` and ``lib`` (not in its ``__all__``)."""
    ffi, lib = getattr(pylibsrtp, "ffi", None), getattr(pylibsrtp, "lib", None)
    if ffi is None or lib is None:
        raise RuntimeError(f"pylibsrtp {pylibsrtp.__version__} no longer exposes ffi/lib")
    return ffi, lib


_ffi, _lib = _binding()


def _policy_setters() -> Any:
    """libsrtp's own crypto-policy setters, from the libsrtp inside pylibsrtp's wheel.

    pylibsrtp 1.0's cffi declarations stop at its four profiles (no AES_CM_256 with
    HMAC-SHA1), but its bundled libsrtp exports every ``srtp_crypto_policy_set_*``.
    They are taken from that same, already loaded library (RTLD_NOLOAD: never a
    second copy), so the policies they fill are that library's own layout."""
    path = str(getattr(importlib.import_module("pylibsrtp._binding"), "__file__", "") or "")
    try:
        library = ctypes.CDLL(path, mode=os.RTLD_NOLOAD | os.RTLD_NOW)
        for suite in _SUITES.values():
            setter = getattr(library, suite.setter)
            setter.argtypes = [ctypes.c_void_p]
            setter.restype = None
    except (OSError, AttributeError) as exc:
        raise RuntimeError(
            f"pylibsrtp {pylibsrtp.__version__}: its libsrtp lacks a crypto-policy setter "
            f"({exc}); pbx_zrtp was verified with {PYLIBSRTP_VERIFIED}"
        ) from exc
    return library


_setters = _policy_setters()
_FUNCTIONS = {
    Op.PROTECT: _lib.srtp_protect,
    Op.UNPROTECT: _lib.srtp_unprotect,
    Op.PROTECT_RTCP: _lib.srtp_protect_rtcp,
    Op.UNPROTECT_RTCP: _lib.srtp_unprotect_rtcp,
}


def session_pointer(session: pylibsrtp.Session) -> int:
    """The address of a pylibsrtp session's ``srtp_t``: the one place that reads
    pylibsrtp's internals. Raises RuntimeError, loudly, if they changed."""
    holder = getattr(session, "_srtp", None)
    try:
        if holder is None or _ffi.typeof(holder) != _ffi.typeof("srtp_t *"):
            raise TypeError(f"found {type(holder).__name__}")
        address = int(_ffi.cast("uintptr_t", holder[0]))
    except (TypeError, _ffi.error) as exc:
        raise RuntimeError(
            f"pylibsrtp {pylibsrtp.__version__}: Session._srtp is not an srtp_t * any more "
            f"({exc}); pbx_zrtp was verified with {PYLIBSRTP_VERIFIED}"
        ) from exc
    if address == 0:
        raise RuntimeError("pylibsrtp session without an srtp_t")
    return address


class _Session:
    """One libsrtp session, created by pylibsrtp (which deallocates it with the
    object) and called directly so that every libsrtp status reaches us."""

    __slots__ = ("_buf", "_len", "_owner", "_srtp", "address")

    def __init__(self, policy: pylibsrtp.Policy) -> None:
        self._owner = pylibsrtp.Session(policy)
        self.address = session_pointer(self._owner)
        self._srtp = _ffi.cast("srtp_t", self.address)
        self._buf = _ffi.new("unsigned char[]", _BUFFER)
        self._len = _ffi.new("int *")

    def run(self, op: Op, packet: bytes) -> tuple[int, bytes]:
        size = len(packet)
        if size > MAX_PACKET:
            return STATUS_TOO_LONG, b""
        _ffi.memmove(self._buf, packet, size)
        self._len[0] = size
        status = int(_FUNCTIONS[op](self._srtp, self._buf, self._len))
        if status != STATUS_OK:
            return status, b""
        return STATUS_OK, _ffi.buffer(self._buf, self._len[0])[:]


class SrtpContext:
    """Both directions of one stream: protect ours, unprotect the peer's."""

    def __init__(self, keys: SrtpKeys, *, replay_window: int = 1024) -> None:
        suite = _SUITES.get((keys.cipher, keys.auth_tag))
        if suite is None:
            raise ValueError(f"no SRTP profile for {keys.cipher}/{keys.auth_tag}")
        # libsrtp reads exactly the suite's key + salt length from the buffer given:
        # a shorter key would be read past its end, so the lengths are checked here.
        for key, salt in ((keys.local_key, keys.local_salt), (keys.remote_key, keys.remote_salt)):
            if len(key) != suite.key_length or len(salt) != SALT_LENGTH:
                raise ValueError(
                    f"{keys.cipher} SRTP needs a {suite.key_length}-byte key and a "
                    f"{SALT_LENGTH}-byte salt"
                )
        self.stats: Counter[str] = Counter()
        self.cipher = keys.cipher
        self.auth_tag = keys.auth_tag
        self._tx = _Session(
            self._policy(
                keys.local_key + keys.local_salt,
                suite,
                pylibsrtp.Policy.SSRC_ANY_OUTBOUND,
                replay_window,
            )
        )
        self._rx = _Session(
            self._policy(
                keys.remote_key + keys.remote_salt,
                suite,
                pylibsrtp.Policy.SSRC_ANY_INBOUND,
                replay_window,
            )
        )
        self._lender: SessionLender | None = None

    @staticmethod
    def _policy(key: bytes, suite: _Suite, ssrc_type: int, window: int) -> pylibsrtp.Policy:
        policy = pylibsrtp.Policy(ssrc_type=ssrc_type)
        # The suite goes on both halves of the policy. For SRTCP that is not libsrtp's
        # default with a 32-bit tag (it keeps 80 bits on SRTCP, as RFC 3711 does), but
        # ZRTP phones apply the negotiated HS32 to SRTCP too: measured with linphone
        # 5.1 through the relay (every SRTCP packet failed with 80 bits).
        setter = getattr(_setters, suite.setter)
        for half in (policy._policy.rtp, policy._policy.rtcp):
            setter(int(_ffi.cast("uintptr_t", _ffi.addressof(half))))
        # pylibsrtp checks the key against its own (AES-128) profile's 30 bytes, a
        # minimum; the exact length for the suite was checked by the caller.
        policy.key = key
        policy.window_size = window
        # A repeated (SSRC, index) is refused, never encrypted again (RFC 3711 §9.1:
        # with a different payload that would be keystream reuse; a byte-identical
        # duplicate would be dropped by the phone's replay window anyway).
        policy.allow_repeat_tx = False
        return policy

    # ------------------------------------------------------------------ ownership

    def lend(self, lender: SessionLender) -> tuple[int, int]:
        """Lend both sessions (the ``srtp_t`` addresses, tx and rx) to ``lender``,
        which runs every use until :meth:`take_back`. The sessions stay ours: the
        borrower must never deallocate them, and this object must outlive the loan."""
        if self._lender is not None:
            raise RuntimeError("these SRTP sessions are lent already")
        self._lender = lender
        return self._tx.address, self._rx.address

    def take_back(self) -> None:
        """The borrower no longer touches the sessions: Python runs them again."""
        self._lender = None

    @property
    def lent(self) -> bool:
        return self._lender is not None

    def _run(self, op: Op, packet: bytes) -> tuple[int, bytes]:
        lender = self._lender
        if lender is not None:
            return lender.run(op, packet)
        session = self._tx if op in (Op.PROTECT, Op.PROTECT_RTCP) else self._rx
        return session.run(op, packet)

    # ------------------------------------------------------------------ packets

    def protect_checked(self, packet: bytes) -> bytes | Refusal:
        """Encrypt an outgoing RTP or RTCP packet, or say why libsrtp refused it."""
        status, out = self._run(Op.PROTECT_RTCP if is_rtcp(packet) else Op.PROTECT, packet)
        if status == STATUS_OK:
            return out
        if status in (STATUS_REPLAY_FAIL, STATUS_REPLAY_OLD):
            self.stats["protect_repeat"] += 1
            return Refusal.REPEAT
        self.stats["protect_failed"] += 1
        return Refusal.FAILED

    def protect(self, packet: bytes) -> bytes | None:
        """Encrypt an outgoing RTP or RTCP packet; None (counted) if libsrtp refuses it."""
        out = self.protect_checked(packet)
        return None if isinstance(out, Refusal) else out

    def unprotect(self, packet: bytes) -> bytes | None:
        """Authenticate and decrypt an incoming packet; None (counted) when it fails
        (forged, replayed, too old, malformed)."""
        status, out = self._run(Op.UNPROTECT_RTCP if is_rtcp(packet) else Op.UNPROTECT, packet)
        if status != STATUS_OK:
            self.stats["unprotect_failed"] += 1
            return None
        return out
