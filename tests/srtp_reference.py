"""SRTP and SRTCP written out from the RFCs with ``cryptography``: the reference the
libsrtp suites in ``pbx_zrtp.srtp`` are checked against, byte for byte.

AES-CM with HMAC-SHA1 (RFC 3711 §4.1.1, §4.2, §4.3.1 key derivation with a key
derivation rate of 0, §3.4 SRTCP) for 128-bit master keys, and the same with
256-bit keys and AES-256 as the key derivation PRF (RFC 6188 §3, §7). ZRTP applies
the negotiated tag length (HS32 or HS80) to SRTCP as well. Test code only: no
replay window, one SSRC, the rollover counter is given.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from dataclasses import dataclass

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

LABEL_RTP_KEY, LABEL_RTP_AUTH, LABEL_RTP_SALT = 0, 1, 2
LABEL_RTCP_KEY, LABEL_RTCP_AUTH, LABEL_RTCP_SALT = 3, 4, 5


def _aes_cm(key: bytes, iv: bytes, data: bytes) -> bytes:
    """AES in counter mode from a 128-bit initial counter block (RFC 3711 §4.1.1)."""
    encryptor = Cipher(algorithms.AES(key), modes.CTR(iv)).encryptor()
    return encryptor.update(data) + encryptor.finalize()


def derive(master_key: bytes, master_salt: bytes, label: int, length: int) -> bytes:
    """RFC 3711 §4.3.1 (kdr 0: r = 0): x = label || 0^48 XOR the master salt, the
    key stream of AES-CM under the master key from x * 2^16 (AES-256 for a 256-bit
    master key, RFC 6188 §7)."""
    assert len(master_salt) == 14
    x = bytearray(master_salt)
    x[7] ^= label
    return _aes_cm(master_key, bytes(x) + b"\x00\x00", bytes(length))


@dataclass(frozen=True)
class SessionKeys:
    cipher_key: bytes
    auth_key: bytes
    salt: bytes


def session_keys(master_key: bytes, master_salt: bytes, *, rtcp: bool) -> SessionKeys:
    base = LABEL_RTCP_KEY if rtcp else LABEL_RTP_KEY
    return SessionKeys(
        derive(master_key, master_salt, base, len(master_key)),
        derive(master_key, master_salt, base + 1, 20),
        derive(master_key, master_salt, base + 2, 14),
    )


def _iv(salt: bytes, ssrc: int, index: int) -> bytes:
    """IV = (k_s * 2^16) XOR (SSRC * 2^64) XOR (i * 2^16), 128 bits."""
    value = (int.from_bytes(salt, "big") << 16) ^ (ssrc << 64) ^ (index << 16)
    return value.to_bytes(16, "big")


def _header_length(packet: bytes) -> int:
    length = 12 + 4 * (packet[0] & 0x0F)
    if packet[0] & 0x10:  # header extension
        words = struct.unpack("!H", packet[length + 2 : length + 4])[0]
        length += 4 + 4 * words
    return length


def protect_rtp(
    master_key: bytes, master_salt: bytes, packet: bytes, *, tag: int, roc: int = 0
) -> bytes:
    """SRTP for one RTP packet whose index is ROC * 2^16 + its sequence number."""
    keys = session_keys(master_key, master_salt, rtcp=False)
    seq, ssrc = struct.unpack("!H", packet[2:4])[0], struct.unpack("!I", packet[8:12])[0]
    head = _header_length(packet)
    body = _aes_cm(keys.cipher_key, _iv(keys.salt, ssrc, (roc << 16) | seq), packet[head:])
    authenticated = packet[:head] + body
    mac = hmac.new(keys.auth_key, authenticated + struct.pack("!I", roc), hashlib.sha1)
    return authenticated + mac.digest()[:tag]


def unprotect_rtp(
    master_key: bytes, master_salt: bytes, packet: bytes, *, tag: int, roc: int = 0
) -> bytes | None:
    """The RTP packet, or None if the tag does not verify."""
    keys = session_keys(master_key, master_salt, rtcp=False)
    authenticated, received = packet[:-tag], packet[-tag:]
    mac = hmac.new(keys.auth_key, authenticated + struct.pack("!I", roc), hashlib.sha1)
    if not hmac.compare_digest(mac.digest()[:tag], received):
        return None
    seq, ssrc = struct.unpack("!H", packet[2:4])[0], struct.unpack("!I", packet[8:12])[0]
    head = _header_length(authenticated)
    iv = _iv(keys.salt, ssrc, (roc << 16) | seq)
    return authenticated[:head] + _aes_cm(keys.cipher_key, iv, authenticated[head:])


def protect_rtcp(
    master_key: bytes, master_salt: bytes, packet: bytes, *, tag: int, index: int
) -> bytes:
    """SRTCP (RFC 3711 §3.4): encrypted after the first 8 bytes, E flag and index
    appended, the tag over all of that."""
    keys = session_keys(master_key, master_salt, rtcp=True)
    ssrc = struct.unpack("!I", packet[4:8])[0]
    body = _aes_cm(keys.cipher_key, _iv(keys.salt, ssrc, index), packet[8:])
    authenticated = packet[:8] + body + struct.pack("!I", 0x80000000 | index)
    return authenticated + hmac.new(keys.auth_key, authenticated, hashlib.sha1).digest()[:tag]


def unprotect_rtcp(
    master_key: bytes, master_salt: bytes, packet: bytes, *, tag: int
) -> bytes | None:
    keys = session_keys(master_key, master_salt, rtcp=True)
    authenticated, received = packet[:-tag], packet[-tag:]
    mac = hmac.new(keys.auth_key, authenticated, hashlib.sha1).digest()[:tag]
    if not hmac.compare_digest(mac, received):
        return None
    word = struct.unpack("!I", authenticated[-4:])[0]
    assert word & 0x80000000, "E flag: encrypted"
    ssrc = struct.unpack("!I", packet[4:8])[0]
    iv = _iv(keys.salt, ssrc, word & 0x7FFFFFFF)
    return authenticated[:8] + _aes_cm(keys.cipher_key, iv, authenticated[8:-4])
