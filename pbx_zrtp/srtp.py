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

import enum
from collections import Counter
from typing import Any, Protocol

import pylibsrtp

from pbx_zrtp.zrtp.events import SrtpKeys

_PROFILES = {
    ("AES1", "HS80"): pylibsrtp.Policy.SRTP_PROFILE_AES128_CM_SHA1_80,
    ("AES1", "HS32"): pylibsrtp.Policy.SRTP_PROFILE_AES128_CM_SHA1_32,
}

#: Ciphers this SRTP layer can use; AES3 needs an AES-256-CM profile pylibsrtp lacks.
SUPPORTED_CIPHERS = ("AES1",)

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
        profile = _PROFILES.get((keys.cipher, keys.auth_tag))
        if profile is None:
            raise ValueError(f"no SRTP profile for {keys.cipher}/{keys.auth_tag}")
        self.stats: Counter[str] = Counter()
        self.auth_tag = keys.auth_tag
        self._tx = _Session(
            self._policy(
                keys.local_key + keys.local_salt,
                profile,
                pylibsrtp.Policy.SSRC_ANY_OUTBOUND,
                replay_window,
            )
        )
        self._rx = _Session(
            self._policy(
                keys.remote_key + keys.remote_salt,
                profile,
                pylibsrtp.Policy.SSRC_ANY_INBOUND,
                replay_window,
            )
        )
        self._lender: SessionLender | None = None

    @staticmethod
    def _policy(key: bytes, profile: int, ssrc_type: int, window: int) -> pylibsrtp.Policy:
        policy = pylibsrtp.Policy(key=key, ssrc_type=ssrc_type, srtp_profile=profile)
        policy.window_size = window
        # A repeated (SSRC, index) is refused, never encrypted again (RFC 3711 §9.1:
        # with a different payload that would be keystream reuse; a byte-identical
        # duplicate would be dropped by the phone's replay window anyway).
        policy.allow_repeat_tx = False
        if profile == pylibsrtp.Policy.SRTP_PROFILE_AES128_CM_SHA1_32:
            # libsrtp's _32 profile keeps an 80-bit tag on SRTCP (RFC 3711's default),
            # but ZRTP phones apply the negotiated HS32 to SRTCP too: measured with
            # linphone 5.1 through the relay (every SRTCP packet failed with 80 bits).
            # pylibsrtp has no option for it, so set the RTCP half of its policy here.
            rtcp = _ffi.addressof(policy._policy.rtcp)
            status = _lib.srtp_crypto_policy_set_from_profile_for_rtp(rtcp, profile)
            if status != 0:
                raise ValueError(f"libsrtp refused a 32-bit SRTCP tag (status {status})")
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
