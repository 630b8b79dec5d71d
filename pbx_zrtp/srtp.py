"""SRTP/SRTCP for the keys ZRTP negotiates, over libsrtp (pylibsrtp).

pylibsrtp is wrapped here and nowhere else. It raises ``ValueError`` for
oversize packets and ``pylibsrtp.Error`` for authentication or replay failures;
both mean "drop and count", so ``unprotect`` returns None and the datagram
path never sees an exception.

Two private parts of pylibsrtp are used, each behind one function below
(``_c_policy``, ``libsrtp_path``); pyproject.toml pins the versions they were
checked with and tests/test_dependencies.py fails loudly when they move.
"""

from __future__ import annotations

import importlib
from collections import Counter
from typing import Any

import pylibsrtp

from pbx_zrtp.zrtp.events import SrtpKeys

_PROFILES = {
    ("AES1", "HS80"): pylibsrtp.Policy.SRTP_PROFILE_AES128_CM_SHA1_80,
    ("AES1", "HS32"): pylibsrtp.Policy.SRTP_PROFILE_AES128_CM_SHA1_32,
}

#: Ciphers this SRTP layer can use; AES3 needs an AES-256-CM profile pylibsrtp lacks.
SUPPORTED_CIPHERS = ("AES1",)


def _c_policy(policy: pylibsrtp.Policy) -> Any:
    """The C ``srtp_policy_t`` behind a pylibsrtp Policy (its private ``_policy``)."""
    return getattr(policy, "_policy")  # noqa: B009 - private: see the module docstring


def libsrtp_path() -> str:
    """The shared object holding pylibsrtp's libsrtp (its private ``_binding``
    extension), whose functions the native fast path calls; "" if unknown."""
    binding = importlib.import_module("pylibsrtp._binding")
    return str(getattr(binding, "__file__", "") or "")


def is_rtcp(packet: bytes) -> bool:
    """RFC 5761 demultiplexing: RTCP packet types 192-223 sit where RTP has M+PT."""
    return len(packet) >= 2 and 192 <= packet[1] <= 223


class SrtpContext:
    """Both directions of one stream: protect ours, unprotect the peer's."""

    def __init__(self, keys: SrtpKeys, *, replay_window: int = 1024) -> None:
        profile = _PROFILES.get((keys.cipher, keys.auth_tag))
        if profile is None:
            raise ValueError(f"no SRTP profile for {keys.cipher}/{keys.auth_tag}")
        self.stats: Counter[str] = Counter()
        self._tx = pylibsrtp.Session(
            self._policy(
                keys.local_key + keys.local_salt,
                profile,
                pylibsrtp.Policy.SSRC_ANY_OUTBOUND,
                replay_window,
            )
        )
        self._rx = pylibsrtp.Session(
            self._policy(
                keys.remote_key + keys.remote_salt,
                profile,
                pylibsrtp.Policy.SSRC_ANY_INBOUND,
                replay_window,
            )
        )

    @staticmethod
    def _policy(key: bytes, profile: int, ssrc_type: int, window: int) -> pylibsrtp.Policy:
        policy = pylibsrtp.Policy(key=key, ssrc_type=ssrc_type, srtp_profile=profile)
        policy.window_size = window
        policy.allow_repeat_tx = True  # our relay may resend a PBX packet verbatim
        if profile == pylibsrtp.Policy.SRTP_PROFILE_AES128_CM_SHA1_32:
            # libsrtp's _32 profile keeps an 80-bit tag on SRTCP (RFC 3711's default),
            # but ZRTP phones apply the negotiated HS32 to SRTCP too: measured with
            # linphone 5.1 through the relay (every SRTCP packet failed with 80 bits).
            # pylibsrtp has no option for it, so set the RTCP half of its policy here.
            ffi, lib = getattr(pylibsrtp, "ffi"), getattr(pylibsrtp, "lib")  # noqa: B009
            rtcp = ffi.addressof(_c_policy(policy).rtcp)
            status = lib.srtp_crypto_policy_set_from_profile_for_rtp(rtcp, profile)
            if status != 0:
                raise ValueError(f"libsrtp refused a 32-bit SRTCP tag (status {status})")
        return policy

    def protect(self, packet: bytes) -> bytes | None:
        """Encrypt an outgoing RTP or RTCP packet; None (counted) if libsrtp refuses it."""
        try:
            if is_rtcp(packet):
                return bytes(self._tx.protect_rtcp(packet))
            return bytes(self._tx.protect(packet))
        except (pylibsrtp.Error, ValueError):
            self.stats["protect_failed"] += 1
            return None

    def unprotect(self, packet: bytes) -> bytes | None:
        """Authenticate and decrypt an incoming packet; None (counted) when it fails."""
        try:
            if is_rtcp(packet):
                return bytes(self._rx.unprotect_rtcp(packet))
            return bytes(self._rx.unprotect(packet))
        except (pylibsrtp.Error, ValueError):
            self.stats["unprotect_failed"] += 1
            return None
