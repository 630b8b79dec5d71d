"""The one exception the ZRTP wire layer raises, and the RFC 6189 §5.9 error codes."""

from __future__ import annotations

import enum


class ErrorCode(enum.IntEnum):
    """Error codes carried in the Error message (RFC 6189 §5.9)."""

    MALFORMED_PACKET = 0x10
    CRITICAL_SOFTWARE_ERROR = 0x20
    UNSUPPORTED_VERSION = 0x30
    HELLO_COMPONENTS_MISMATCH = 0x40
    UNSUPPORTED_HASH = 0x51
    UNSUPPORTED_CIPHER = 0x52
    UNSUPPORTED_KEY_AGREEMENT = 0x53
    UNSUPPORTED_AUTH_TAG = 0x54
    UNSUPPORTED_SAS = 0x55
    NO_SHARED_SECRET = 0x56
    BAD_DH_VALUE = 0x61
    HVI_MISMATCH = 0x62
    UNTRUSTED_MITM = 0x63
    BAD_CONFIRM_MAC = 0x70
    NONCE_REUSE = 0x80
    EQUAL_ZID = 0x90
    SSRC_COLLISION = 0x91
    SERVICE_UNAVAILABLE = 0xA0
    PROTOCOL_TIMEOUT = 0xB0
    GOCLEAR_NOT_ALLOWED = 0x100


class ZrtpProtocolError(ValueError):
    """A ZRTP packet or message that violates RFC 6189.

    ``code`` is the §5.9 error code to answer with where the RFC asks for one; a
    packet that fails its CRC or is not ZRTP at all carries ``None`` and is dropped
    silently.
    """

    def __init__(self, message: str, code: ErrorCode | None = ErrorCode.MALFORMED_PACKET) -> None:
        super().__init__(message)
        self.code = code
