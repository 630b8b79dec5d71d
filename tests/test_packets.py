"""Tests for the ZRTP wire format (pbx_zrtp.zrtp.packets)."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import hmac
import struct
from typing import Any

import pytest
from cryptography.hazmat.decrepit.ciphers.modes import CFB
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pbx_zrtp.zrtp.errors import ErrorCode, ZrtpProtocolError
from pbx_zrtp.zrtp.packets import (
    CRC_SIZE,
    HEADER_SIZE,
    MAX_PACKET_SIZE,
    PREAMBLE,
    ZRTP_COOKIE,
    ClearAck,
    Commit,
    Conf2Ack,
    Confirm1,
    Confirm2,
    ConfirmPlaintext,
    DHPart1,
    DHPart2,
    Error,
    ErrorAck,
    GoClear,
    Hello,
    HelloAck,
    Message,
    Ping,
    PingAck,
    RelayAck,
    SasRelay,
    SasRelayPlaintext,
    ZrtpPacket,
    crc32c_of,
    is_zrtp_packet,
    message_bytes,
    parse_message,
)

MALFORMED = ErrorCode.MALFORMED_PACKET

# ---------------------------------------------------------------------------
# Captured packets of a real DH3k exchange between two bzrtp (Linphone)
# endpoints, SSRC 0x12345678 (A, responder) and 0x87654321 (B, initiator), with
# both sides' hash chains and ZRTP keys, and a libzrtpcpp (PJSIP) Hello: test
# data from BelledonneCommunications/bzrtp, test/bzrtpParserTest.c.
# ---------------------------------------------------------------------------

HELLO_A = bytes.fromhex(
    "100009f15a52545012345678505a001e48656c6c6f202020312e31304c494e50484f4e452d5a5254"
    "50435050e8d526c13a0c4c6ace18aac7c4a4070e657a4dca78f2cccd20503873e97e08297eb00497"
    "c0feb2c92431497f00011231533235364145533148533332485338304448336b4448326b4d756c74"
    "42333220a0fd0fadebe08656e3658102"
)
HELLO_B = bytes.fromhex(
    "100002ce5a52545087654321505a001e48656c6c6f202020312e31304c494e50484f4e452d5a5254"
    "504350508d0f5a2079974201994545f70e3106e105c0b924e9c978c738f59748ef426a3e9242c2cf"
    "44ee9c65ca5878f100011231533235364145533148533332485338304448336b4448326b4d756c74"
    "42333220b3909195e467a321e35f9c92"
)
HELLOACK_A = bytes.fromhex("100009f25a52545012345678505a000348656c6c6f41434b770e4407")
COMMIT_B = bytes.fromhex(
    "100002d05a52545087654321505a001d436f6d6d69742020d9ff148b34aa69e933c162e66be8cd9d"
    "e30fb76ae86a622bcbe46b9105c7c87e9242c2cf44ee9c65ca5878f1533235364145533148533332"
    "4448336b423332201ec0fe2e72064dfbfc92028c030fb8f891b4e796ac25fdf968c6e967a942b15b"
    "bb6d9cd24b13a9ae255ca9c1"
)
DHPART1_A = bytes.fromhex(
    "100009f55a52545012345678505a00754448506172743120287c28e4d73d1439b56d1c479d590af2"
    "1033de6bd52bfb26a5874de9206b9fddabbcc68dbd5de667006944b1842c27108c4e588aed7e8b44"
    "2c3a1302df58b6da8055ecb020c77650c41ba826115cf5717eb4862217de1408465cac888c416b95"
    "22baf83e672094a084a393419a1a7c2f04f4143f115402baeec220fa38f7baa4bf4a700268dcb2e9"
    "1a8a87a5e49c42078226b4dae31bdc78c7d8a8005c0014e400fe6c2dce62c9715ded4e669ff530c0"
    "0453f6152fe1853bd9409b5007437c3601a1da66c4202f45c0ccb264639c079d232780a17fc2e0a0"
    "fdc39883a3aa6bdc9f6ac33294f080a0d9f1834148a9b5ed625088ec3332d25fdcccaec974ca0aab"
    "820601463530cd68ec09ab8cb039e5d85ca2e482fe4601bde77f601b5062fb6fee6cf1f79bb71c76"
    "48b5bea5837307a2e273c76834c8ef12c432df373ddc070ea69282bdba20c4b48d1f191c150f5f01"
    "df671f59d15e9960f6b867e246621130fb819d0bec36e98d43fe55d961983f2e396a2643b06d08ec"
    "2e427e23826fd9bbfd0acd48e7d58ba58034ca964f5825ba435e3d1cee72b8358c5dd96924583621"
    "b045a4ad40da94980fb1ed6cad26030482ff150041870693d486a97eb8d970346d8e6a16e24652b0"
    "785453af"
)
DHPART2_B = bytes.fromhex(
    "100002d15a52545087654321505a007544485061727432209eb2a58be89637f55a4134b2ecda8495"
    "f0f89bab614f7c9e56b73bd346babe9aae9797da5f9f89bafe61665f9ea45bcbd569cffbfddcac79"
    "ac1d0be51575392ee5a92a60d7e348d01fd86165fd2e5cef43f56399b34525e3bcf0e1adf784cd82"
    "20e36f2c7751f1112e4a2cfd2f5e74a93799fff74c2da8cf51fd5be751146dbc2f5bb97785adb472"
    "99ad7b6c6adf4dca2fef8b5e4bf3d9fdbd471a72e241d8faa12500a3fe12daf616b3b30802fd0a6a"
    "ab8517d70ff46bdf8fe205f45b1326a9e257b6da76173c52138d83c02be72ebdb0de984f7a95a175"
    "196eda19ff7fdd7001123c9ed7fec32239ce4f86d8854075d4fe9357bc9b01a47135709d6291474e"
    "32a2761606afc7e3e5dc25ace76825690f978d91328123b108f3a32b3dfbcf99120a59b9bb761671"
    "a20b0a5a6c37999de63a0589f7c6fcf3fe36977786e47c48930b268e31e922ccd3e05629c826e61f"
    "a8b89398ecd97c4a45d371359f14c199d5210bfa0ffb317aa07035b39b1be765fde37d0bcc344bf1"
    "5a9f19a48fc830f18799c275552a34d7819c541282695f8b01c14595f5b12d270da9c393542f5704"
    "7b20b7ac3368b3ef9a3395829dfa2ab988060488512c46db83d72fea1f0f24ab03efb061c790dc78"
    "17f29aab"
)
CONFIRM1_A = bytes.fromhex(
    "100009f65a52545012345678505a0013436f6e6669726d31b121eee267a4fda694249a60f02e5ed9"
    "33e1d84154a37ceae961aef9190db368689ef81a189187c56e5e2d5e32a2b26631b8e559c910bba0"
    "006cee0c6dfbeb3285b66e93"
)
CONFIRM2_B = bytes.fromhex(
    "100002d25a52545087654321505a0013436f6e6669726d320fecfa4b45179db3927d1c53860112d9"
    "2548ca18b9109504b7c8ee872bec593992961173a6692b11cd1da173b2c9296f82326a0a564057fb"
    "acab20b8e2a92c616a05e8b5"
)
CONF2ACK_A = bytes.fromhex("100009f75a52545012345678505a0003436f6e663241434b23c11b45")
HELLO_PJS = bytes.fromhex(
    "100000015a52545076dca7bd505a002648656c6c6f202020312e3130504a53205a52545020332e30"
    "2e302020e4ba78baa02ad4361ab8d2dd578a6816bbe405b869b7af064d1c09531cebc6292012a2f0"
    "6cfd0ffb88d8e65200024451533338345332353632465333414553333246533141455331534b3332"
    "534b36344853333248533830454332354448336b454333384448326b4d756c744233322005c9f187"
    "2b41a99a0a1dcd3c"
)
H0_A = bytes.fromhex("bbbf7eb114d5d40c6bb0795819c1d083c9e1f42e11cd7ec3aad8b917e6b59e86")
H1_A = bytes.fromhex("287c28e4d73d1439b56d1c479d590af21033de6bd52bfb26a5874de9206b9fdd")
H2_A = bytes.fromhex("7012ef2e852ffc84b88dcc03d78f530163fbd3b02dbb9e98220de3e36425040f")
H3_A = bytes.fromhex("e8d526c13a0c4c6ace18aac7c4a4070e657a4dca78f2cccd20503873e97e0829")
H0_B = bytes.fromhex("0902cc13c48403316891054de06df4c96ab5be82e83733b7a9cebeb542aa54ba")
H1_B = bytes.fromhex("9eb2a58be89637f55a4134b2ecda8495f0f89bab614f7c9e56b73bd346babe9a")
H2_B = bytes.fromhex("d9ff148b34aa69e933c162e66be8cd9de30fb76ae86a622bcbe46b9105c7c87e")
H3_B = bytes.fromhex("8d0f5a2079974201994545f70e3106e105c0b924e9c978c738f59748ef426a3e")
ZRTPKEY_I = bytes.fromhex("22f6eaaaa4ad53307197cc686bb0cb55")
ZRTPKEY_R = bytes.fromhex("0950cd9ec2785431932e99311558d02a")

BZRTP_PACKETS = [
    HELLO_A,
    HELLO_B,
    HELLOACK_A,
    COMMIT_B,
    DHPART1_A,
    DHPART2_B,
    CONFIRM1_A,
    CONFIRM2_B,
    CONF2ACK_A,
    HELLO_PJS,
]


def repack(message: bytes, sequence: int = 1, ssrc: int = 0x01020304) -> bytes:
    """Wrap raw message bytes in a packet header and a correct CRC (LSB first)."""
    data = struct.pack("!BBH4sI", 0x10, 0, sequence, b"ZRTP", ssrc) + message
    return data + crc32c_of(data).to_bytes(4, "little")


def frame(message_type: bytes, body: bytes, words: int | None = None) -> bytes:
    """Build a message by hand: preamble, length (default: correct), type, body."""
    if words is None:
        words = (12 + len(body)) // 4
    return struct.pack("!HH", 0x505A, words) + message_type + body


def round_trip(packet: ZrtpPacket) -> None:
    data = packet.serialize()
    assert len(data) % 4 == 0
    assert is_zrtp_packet(data)
    parsed = ZrtpPacket.parse(data)
    assert parsed == packet
    assert type(parsed.message) is type(packet.message)
    assert parsed.serialize() == data
    raw = message_bytes(data)
    assert raw == packet.message.serialize()
    assert parse_message(raw) == packet.message
    assert type(packet.message).parse(raw) == packet.message


# ---------------------------------------------------------------------------
# CRC
# ---------------------------------------------------------------------------


def test_crc32c_known_answer() -> None:
    # The CRC-32C check value (Castagnoli); zlib's CRC-32 would give 0xCBF43926.
    assert crc32c_of(b"123456789") == 0xE3069283
    assert crc32c_of(b"") == 0


def test_constants() -> None:
    assert ZRTP_COOKIE == b"ZRTP" == (0x5A525450).to_bytes(4, "big")
    assert PREAMBLE == 0x505A
    assert (HEADER_SIZE, CRC_SIZE, MAX_PACKET_SIZE) == (12, 4, 2048)


@pytest.mark.parametrize("data", BZRTP_PACKETS, ids=lambda d: d[16:24].decode().strip())
def test_crc_is_little_endian_on_the_wire(data: bytes) -> None:
    crc = crc32c_of(data[:-4])
    assert data[-4:] == crc.to_bytes(4, "little")
    assert data[-4:] != crc.to_bytes(4, "big")


# ---------------------------------------------------------------------------
# A Hello written byte by byte from RFC 6189 figures 2 and 3
# ---------------------------------------------------------------------------

KNOWN_HELLO = ZrtpPacket(
    sequence=0x1234,
    ssrc=0xDEADBEEF,
    message=Hello(
        version=b"1.10",
        client_id=b"pbx_zrtp test   ",
        h3=bytes(range(32)),
        zid=bytes(range(0xA0, 0xAC)),
        signature_capable=False,
        mitm=True,
        passive=False,
        hash_types=(b"S256",),
        cipher_types=(b"AES1", b"AES3"),
        auth_tag_types=(b"HS32", b"HS80", b"SK32"),
        key_agreement_types=(b"X255", b"DH3k", b"DH2k", b"Mult"),
        sas_types=(),
        mac=bytes(range(0xF0, 0xF8)),
    ),
)

KNOWN_HELLO_BYTES = bytes.fromhex(
    # packet header: 0001 0000, unused byte, sequence number, cookie, SSRC
    "10 00 1234"
    "5a525450"
    "deadbeef"
    # message: preamble 0x505a, length 32 words, type block "Hello   "
    "505a 0020"
    "48656c6c 6f202020"
    # version "1.10"
    "312e3130"
    # client identifier "pbx_zrtp test   " (4 words)
    "7062785f 7a727470 20746573 74202020"
    # H3 (8 words)
    "00010203 04050607 08090a0b 0c0d0e0f 10111213 14151617 18191a1b 1c1d1e1f"
    # ZID (3 words)
    "a0a1a2a3 a4a5a6a7 a8a9aaab"
    # |0|S|M|P| 8 unused bits | hc=1 | cc=2 | ac=3 | kc=4 | sc=0 |  with M set
    "20 01 23 40"
    # hash "S256"; ciphers "AES1" "AES3"; auth tags "HS32" "HS80" "SK32"
    "53323536"
    "41455331 41455333"
    "48533332 48533830 534b3332"
    # key agreements "X255" "DH3k" "DH2k" "Mult"; no SAS types
    "58323535 4448336b 4448326b 4d756c74"
    # MAC (2 words)
    "f0f1f2f3 f4f5f6f7"
    # CRC-32C of all the above, least significant byte first
    "4070bd1d"
)


def test_known_hello_bytes() -> None:
    assert len(KNOWN_HELLO_BYTES) == 12 + 32 * 4 + 4
    assert KNOWN_HELLO.serialize() == KNOWN_HELLO_BYTES
    assert ZrtpPacket.parse(KNOWN_HELLO_BYTES) == KNOWN_HELLO
    crc = crc32c_of(KNOWN_HELLO_BYTES[:-4])
    assert KNOWN_HELLO_BYTES[-4:] == crc.to_bytes(4, "little")
    assert message_bytes(KNOWN_HELLO_BYTES) == KNOWN_HELLO_BYTES[12:-4]


@pytest.mark.parametrize(
    ("flags", "first_octet"),
    [
        ({"signature_capable": True}, 0x40),
        ({"mitm": True}, 0x20),
        ({"passive": True}, 0x10),
        ({"signature_capable": True, "mitm": True, "passive": True}, 0x70),
        ({}, 0x00),
    ],
)
def test_hello_flag_bits(flags: dict[str, bool], first_octet: int) -> None:
    assert isinstance(KNOWN_HELLO.message, Hello)
    values: dict[str, Any] = {"signature_capable": False, "mitm": False, "passive": False}
    values.update(flags)
    hello = dataclasses.replace(KNOWN_HELLO.message, **values)
    data = hello.serialize()
    assert data[76:80] == bytes([first_octet, 0x01, 0x23, 0x40])
    assert Hello.parse(data) == hello


def test_hello_ignores_reserved_bits_and_writes_zero() -> None:
    message = bytearray(KNOWN_HELLO_BYTES[12:-4])
    message[76] |= 0x80 | 0x0F  # the leading 0 bit and the first 4 unused bits
    message[77] |= 0xF0  # the last 4 unused bits
    parsed = ZrtpPacket.parse(repack(bytes(message), 0x1234, 0xDEADBEEF))
    assert parsed == KNOWN_HELLO
    assert parsed.serialize() == KNOWN_HELLO_BYTES


def test_packet_header_unused_byte_is_ignored() -> None:
    data = bytearray(KNOWN_HELLO_BYTES[:-4])
    data[1] = 0xFF
    data += crc32c_of(bytes(data)).to_bytes(4, "little")
    assert ZrtpPacket.parse(bytes(data)) == KNOWN_HELLO


# ---------------------------------------------------------------------------
# Real packets from bzrtp
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("data", BZRTP_PACKETS, ids=lambda d: d[16:24].decode().strip())
def test_bzrtp_packets_round_trip_byte_exactly(data: bytes) -> None:
    packet = ZrtpPacket.parse(data)
    assert packet.serialize() == data
    assert packet.sequence == int.from_bytes(data[2:4], "big")
    assert packet.ssrc == int.from_bytes(data[8:12], "big")
    assert data[16:24] == packet.message.MESSAGE_TYPE


def test_bzrtp_hello_fields() -> None:
    packet = ZrtpPacket.parse(HELLO_A)
    hello = packet.message
    assert isinstance(hello, Hello)
    assert (packet.sequence, packet.ssrc) == (0x09F1, 0x12345678)
    assert hello.version == b"1.10"
    assert hello.client_id == b"LINPHONE-ZRTPCPP"
    assert hello.h3 == H3_A
    assert hello.zid == bytes.fromhex("7eb00497c0feb2c92431497f")
    assert not (hello.signature_capable or hello.mitm or hello.passive)
    assert hello.hash_types == (b"S256",)
    assert hello.cipher_types == (b"AES1",)
    assert hello.auth_tag_types == (b"HS32", b"HS80")
    assert hello.key_agreement_types == (b"DH3k", b"DH2k", b"Mult")
    assert hello.sas_types == (b"B32 ",)
    # The Hello MAC is HMAC-SHA-256 keyed by H2 over the raw message minus the MAC.
    raw = message_bytes(HELLO_A)
    assert hmac.new(H2_A, raw[:-8], hashlib.sha256).digest()[:8] == hello.mac
    assert hashlib.sha256(H2_A).digest() == H3_A


def test_libzrtpcpp_hello_fields() -> None:
    hello = ZrtpPacket.parse(HELLO_PJS).message
    assert isinstance(hello, Hello)
    assert hello.client_id == b"PJS ZRTP 3.0.0  "
    assert hello.hash_types == (b"S384", b"S256")
    assert hello.cipher_types == (b"2FS3", b"AES3", b"2FS1", b"AES1")
    assert hello.auth_tag_types == (b"SK32", b"SK64", b"HS32", b"HS80")
    assert hello.key_agreement_types == (b"EC25", b"DH3k", b"EC38", b"DH2k", b"Mult")
    assert hello.sas_types == (b"B32 ",)


def test_bzrtp_commit_and_dhparts() -> None:
    commit = ZrtpPacket.parse(COMMIT_B).message
    assert isinstance(commit, Commit)
    assert commit.h2 == H2_B
    assert commit.zid == ZrtpPacket.parse(HELLO_B).message.zid  # type: ignore[union-attr]
    assert (commit.hash_type, commit.cipher_type, commit.auth_tag_type) == (
        b"S256",
        b"AES1",
        b"HS32",
    )
    assert (commit.key_agreement_type, commit.sas_type) == (b"DH3k", b"B32 ")
    assert commit.is_dh_mode and not commit.is_multistream and not commit.is_preshared
    assert commit.hvi is not None and commit.nonce is None and commit.key_id is None
    assert len(message_bytes(COMMIT_B)) == 29 * 4

    dh1 = ZrtpPacket.parse(DHPART1_A).message
    dh2 = ZrtpPacket.parse(DHPART2_B).message
    assert type(dh1) is DHPart1 and type(dh2) is DHPart2
    assert dh1.h1 == H1_A and dh2.h1 == H1_B
    assert len(dh1.pv) == len(dh2.pv) == 96 * 4  # DH3k: 96-word pv, 117-word message
    assert len(message_bytes(DHPART1_A)) == 117 * 4
    # DHPart MACs are keyed by H0.
    raw = message_bytes(DHPART1_A)
    assert hmac.new(H0_A, raw[:-8], hashlib.sha256).digest()[:8] == dh1.mac


@pytest.mark.parametrize(
    ("data", "key", "h0"),
    [(CONFIRM1_A, ZRTPKEY_R, H0_A), (CONFIRM2_B, ZRTPKEY_I, H0_B)],
    ids=["Confirm1", "Confirm2"],
)
def test_bzrtp_confirm_decrypts_to_plaintext(data: bytes, key: bytes, h0: bytes) -> None:
    confirm = ZrtpPacket.parse(data).message
    assert isinstance(confirm, Confirm1 | Confirm2)
    assert len(message_bytes(data)) == 19 * 4
    decryptor = Cipher(algorithms.AES(key), CFB(confirm.cfb_iv)).decryptor()
    plain = decryptor.update(confirm.encrypted) + decryptor.finalize()
    parsed = ConfirmPlaintext.parse(plain)
    assert parsed == ConfirmPlaintext(
        h0=h0,
        enrollment=False,
        sas_verified=False,
        allow_clear=False,
        disclosure=False,
        cache_expiration=0xFFFFFFFF,
    )
    assert parsed.serialize() == plain


# ---------------------------------------------------------------------------
# Hand-made examples of every message type
# ---------------------------------------------------------------------------


def _b(n: int, start: int = 1) -> bytes:
    return bytes((start + i) & 0xFF for i in range(n))


EXAMPLES: list[tuple[Message, int]] = [
    (KNOWN_HELLO.message, 32),
    (
        Hello(
            version=b"1.10",
            client_id=_b(16),
            h3=_b(32),
            zid=_b(12),
            signature_capable=True,
            mitm=False,
            passive=True,
            hash_types=(b"S256",) * 7,
            cipher_types=(b"AES1",) * 7,
            auth_tag_types=(b"HS32",) * 7,
            key_agreement_types=(b"DH3k",) * 7,
            sas_types=(b"B256",) * 7,
            mac=_b(8),
        ),
        22 + 35,
    ),
    (HelloAck(), 3),
    (
        Commit(
            h2=_b(32),
            zid=_b(12),
            hash_type=b"S384",
            cipher_type=b"AES3",
            auth_tag_type=b"HS80",
            key_agreement_type=b"EC38",
            sas_type=b"B256",
            hvi=_b(32, 100),
            mac=_b(8, 200),
        ),
        29,
    ),
    (
        Commit(
            h2=_b(32),
            zid=_b(12),
            hash_type=b"S256",
            cipher_type=b"AES1",
            auth_tag_type=b"HS32",
            key_agreement_type=b"Mult",
            sas_type=b"B32 ",
            nonce=_b(16, 50),
            mac=_b(8, 200),
        ),
        25,
    ),
    (
        Commit(
            h2=_b(32),
            zid=_b(12),
            hash_type=b"S256",
            cipher_type=b"AES1",
            auth_tag_type=b"HS32",
            key_agreement_type=b"Prsh",
            sas_type=b"B32 ",
            nonce=_b(16, 50),
            key_id=_b(8, 70),
            mac=_b(8, 200),
        ),
        27,
    ),
    (DHPart1(_b(32), _b(8, 40), _b(8, 50), _b(8, 60), _b(8, 70), _b(64, 80), _b(8, 9)), 37),
    (DHPart2(_b(32), _b(8, 40), _b(8, 50), _b(8, 60), _b(8, 70), _b(384, 80), _b(8, 9)), 117),
    (Confirm1(confirm_mac=_b(8), cfb_iv=_b(16, 20), encrypted=_b(40, 40)), 19),
    (Confirm2(confirm_mac=_b(8), cfb_iv=_b(16, 20), encrypted=_b(48, 40)), 21),
    (Conf2Ack(), 3),
    (Error(code=ErrorCode.GOCLEAR_NOT_ALLOWED), 4),
    (ErrorAck(), 3),
    (GoClear(clear_mac=_b(8)), 5),
    (ClearAck(), 3),
    (SasRelay(mac=_b(8), cfb_iv=_b(16, 20), encrypted=_b(40, 40)), 19),
    (RelayAck(), 3),
    (Ping(version=b"1.10", endpoint_hash=_b(8)), 6),
    (
        PingAck(
            version=b"1.10",
            sender_endpoint_hash=_b(8),
            received_endpoint_hash=_b(8, 30),
            ssrc=0xCAFEBABE,
        ),
        9,
    ),
]

EXAMPLE_IDS = [f"{type(m).__name__}-{n}" for m, n in EXAMPLES]


def test_examples_cover_every_message_type() -> None:
    types = {type(m) for m, _ in EXAMPLES}
    assert len(types) == 16
    assert len({cls.MESSAGE_TYPE for cls in types}) == 16
    assert all(len(cls.MESSAGE_TYPE) == 8 for cls in types)


@pytest.mark.parametrize(("message", "words"), EXAMPLES, ids=EXAMPLE_IDS)
def test_example_round_trip(message: Message, words: int) -> None:
    data = message.serialize()
    assert len(data) == words * 4
    assert data[:4] == struct.pack("!HH", 0x505A, words)
    assert data[4:12] == message.MESSAGE_TYPE
    round_trip(ZrtpPacket(sequence=0xFFFF, ssrc=0, message=message))
    round_trip(ZrtpPacket(sequence=0, ssrc=0xFFFFFFFF, message=message))


def test_simple_message_layouts() -> None:
    assert Error(code=0x10).serialize() == frame(b"Error   ", b"\x00\x00\x00\x10")
    assert GoClear(clear_mac=_b(8)).serialize() == frame(b"GoClear ", _b(8))
    assert Ping(b"1.10", _b(8)).serialize() == frame(b"Ping    ", b"1.10" + _b(8))
    assert PingAck(b"1.10", _b(8), _b(8, 9), 0x01020304).serialize() == frame(
        b"PingACK ", b"1.10" + _b(8) + _b(8, 9) + b"\x01\x02\x03\x04"
    )
    assert Confirm1(_b(8), _b(16), _b(40)).serialize() == frame(
        b"Confirm1", _b(8) + _b(16) + _b(40)
    )
    assert DHPart2(_b(32), _b(8), _b(8), _b(8), _b(8), _b(4), _b(8)).serialize() == frame(
        b"DHPart2 ", _b(32) + _b(8) * 4 + _b(4) + _b(8)
    )
    for cls in (HelloAck, Conf2Ack, ErrorAck, ClearAck, RelayAck):
        assert cls().serialize() == b"\x50\x5a\x00\x03" + cls.MESSAGE_TYPE


def test_commit_layouts() -> None:
    fixed = _b(32) + _b(12) + b"S256AES1HS32"
    dh = Commit(_b(32), _b(12), b"S256", b"AES1", b"HS32", b"DH3k", b"B32 ", hvi=_b(32, 9))
    assert dh.serialize() == frame(b"Commit  ", fixed + b"DH3kB32 " + _b(32, 9) + bytes(8))
    mult = Commit(_b(32), _b(12), b"S256", b"AES1", b"HS32", b"Mult", b"B32 ", nonce=_b(16))
    assert mult.serialize() == frame(b"Commit  ", fixed + b"MultB32 " + _b(16) + bytes(8))
    assert mult.is_multistream and not mult.is_dh_mode
    prsh = Commit(
        _b(32), _b(12), b"S256", b"AES1", b"HS32", b"Prsh", b"B32 ", nonce=_b(16), key_id=_b(8)
    )
    assert prsh.serialize() == frame(b"Commit  ", fixed + b"PrshB32 " + _b(16) + _b(8) + bytes(8))
    assert prsh.is_preshared and not prsh.is_dh_mode


def test_dhpart1_and_dhpart2_are_distinct() -> None:
    one = DHPart1(_b(32), _b(8), _b(8), _b(8), _b(8), _b(32), _b(8))
    two = DHPart2(_b(32), _b(8), _b(8), _b(8), _b(8), _b(32), _b(8))
    assert one.serialize()[4:12] != two.serialize()[4:12]
    assert one.serialize()[12:] == two.serialize()[12:]
    assert type(parse_message(one.serialize())) is DHPart1
    assert type(parse_message(two.serialize())) is DHPart2
    with pytest.raises(ZrtpProtocolError):
        DHPart1.parse(two.serialize())
    with pytest.raises(ZrtpProtocolError):
        Confirm2.parse(Confirm1(_b(8), _b(16), _b(40)).serialize())


def test_messages_are_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        KNOWN_HELLO.message.mac = bytes(8)  # type: ignore[misc,union-attr]
    with pytest.raises(dataclasses.FrozenInstanceError):
        KNOWN_HELLO.sequence = 1  # type: ignore[misc]


# ---------------------------------------------------------------------------
# Confirm and SASrelay plaintexts
# ---------------------------------------------------------------------------


def test_confirm_plaintext_layout() -> None:
    plain = ConfirmPlaintext(
        h0=_b(32),
        enrollment=True,
        sas_verified=False,
        allow_clear=True,
        disclosure=False,
        cache_expiration=0x01020304,
        signature=b"PGP " + _b(8),
    )
    # 15 unused bits, sig len 3 words (9 bits), flags 0000EVAD
    assert plain.serialize() == _b(32) + bytes([0, 0, 3, 0x0A]) + b"\x01\x02\x03\x04PGP " + _b(8)
    assert ConfirmPlaintext.parse(plain.serialize()) == plain
    for flag, bit in (
        ("enrollment", 8),
        ("sas_verified", 4),
        ("allow_clear", 2),
        ("disclosure", 1),
    ):
        values: dict[str, Any] = dict.fromkeys(
            ("enrollment", "sas_verified", "allow_clear", "disclosure"), False
        )
        values[flag] = True
        one = ConfirmPlaintext(h0=_b(32), cache_expiration=0, **values)
        assert one.serialize()[32:36] == bytes([0, 0, 0, bit])
        assert ConfirmPlaintext.parse(one.serialize()) == one


def test_confirm_plaintext_max_sig_len_and_ignored_bits() -> None:
    big = ConfirmPlaintext(_b(32), False, True, False, True, 7, signature=_b(511 * 4))
    data = big.serialize()
    assert data[32:36] == bytes([0, 0x01, 0xFF, 0x05])
    assert ConfirmPlaintext.parse(data) == big
    noisy = bytearray(ConfirmPlaintext(_b(32), False, True, False, False, 7).serialize())
    noisy[32] = 0xFF  # unused bits
    noisy[33] |= 0xFE
    noisy[35] |= 0xF0  # undefined flags
    parsed = ConfirmPlaintext.parse(bytes(noisy))
    assert parsed == ConfirmPlaintext(_b(32), False, True, False, False, 7)
    assert parsed.serialize()[32:36] == bytes([0, 0, 0, 4])


@pytest.mark.parametrize(
    "data",
    [
        _b(32) + bytes([0, 0, 1, 0]) + bytes(4),  # sig len 1, nothing follows
        _b(32) + bytes([0, 0, 0, 0]) + bytes(4) + b"PGP ",  # sig len 0, a word follows
        _b(32) + bytes([0, 0, 2, 0]) + bytes(4) + b"PGP ",  # sig len 2, one word
        _b(32) + bytes([0, 0, 1, 0]) + bytes(4) + b"PGP \x00",  # not whole words
        _b(32) + bytes([0, 0, 0, 0]) + bytes(3),  # too short
        b"",
    ],
)
def test_confirm_plaintext_bad_sig_len(data: bytes) -> None:
    with pytest.raises(ZrtpProtocolError) as info:
        ConfirmPlaintext.parse(data)
    assert info.value.code == MALFORMED


def test_sasrelay_plaintext_layout() -> None:
    plain = SasRelayPlaintext(
        sas_verified=True,
        allow_clear=False,
        disclosure=True,
        rendering_scheme=b"B256",
        trusted_sas_hash=_b(32),
        signature=b"X509" + _b(4),
    )
    assert plain.serialize() == bytes([0, 0, 2, 0x05]) + b"B256" + _b(32) + b"X509" + _b(4)
    assert SasRelayPlaintext.parse(plain.serialize()) == plain
    assert len(SasRelayPlaintext(False, True, False, b"B32 ", bytes(32)).serialize()) == 40
    for data in (
        bytes([0, 0, 1, 0]) + b"B32 " + bytes(32),
        bytes([0, 0, 0, 0]) + b"B32 " + bytes(36),
        bytes([0, 0, 0, 0]) + b"B32 " + bytes(31),
    ):
        with pytest.raises(ZrtpProtocolError):
            SasRelayPlaintext.parse(data)


def test_plaintext_reprs_hide_secrets() -> None:
    h0 = bytes.fromhex("5ec2e7" * 10 + "ab12")
    text = repr(ConfirmPlaintext(h0, False, False, False, False, 0))
    assert "redacted" in text
    assert h0.hex() not in text and repr(h0) not in text and "5ec2e7" not in text
    sashash = bytes.fromhex("c0ffee" * 10 + "ab12")
    text = repr(SasRelayPlaintext(True, True, True, b"B32 ", sashash))
    assert "redacted" in text and "B32" in text
    assert repr(sashash) not in text and "c0ffee" not in text


# ---------------------------------------------------------------------------
# Validation when building objects
# ---------------------------------------------------------------------------

HELLO_FIELDS = dataclasses.asdict(KNOWN_HELLO.message)


@pytest.mark.parametrize(
    "changes",
    [
        {"version": b"1.1"},
        {"client_id": bytes(15)},
        {"h3": bytes(31)},
        {"zid": bytes(13)},
        {"mac": bytes(7)},
        {"hash_types": (b"S256",) * 8},
        {"sas_types": (b"B32 ",) * 8},
        {"cipher_types": (b"AES",)},
        {"auth_tag_types": [b"HS32"]},
        {"mitm": 1},
        {"zid": bytearray(12)},
        {"key_agreement_types": ("DH3k",)},
    ],
)
def test_hello_rejects_bad_fields(changes: dict[str, object]) -> None:
    with pytest.raises(ZrtpProtocolError):
        Hello(**{**HELLO_FIELDS, **changes})
    with pytest.raises(ValueError):
        Hello(**{**HELLO_FIELDS, **changes})


COMMIT_BASE: dict[str, object] = {
    "h2": _b(32),
    "zid": _b(12),
    "hash_type": b"S256",
    "cipher_type": b"AES1",
    "auth_tag_type": b"HS32",
    "sas_type": b"B32 ",
}


@pytest.mark.parametrize(
    "form",
    [
        {"key_agreement_type": b"DH3k"},
        {"key_agreement_type": b"DH3k", "nonce": _b(16)},
        {"key_agreement_type": b"DH3k", "hvi": _b(32), "nonce": _b(16)},
        {"key_agreement_type": b"DH3k", "hvi": _b(32), "key_id": _b(8)},
        {"key_agreement_type": b"DH3k", "hvi": _b(31)},
        {"key_agreement_type": b"Mult"},
        {"key_agreement_type": b"Mult", "hvi": _b(32)},
        {"key_agreement_type": b"Mult", "nonce": _b(16), "hvi": _b(32)},
        {"key_agreement_type": b"Mult", "nonce": _b(16), "key_id": _b(8)},
        {"key_agreement_type": b"Mult", "nonce": _b(15)},
        {"key_agreement_type": b"Prsh", "nonce": _b(16)},
        {"key_agreement_type": b"Prsh", "key_id": _b(8)},
        {"key_agreement_type": b"Prsh", "nonce": _b(16), "key_id": _b(8), "hvi": _b(32)},
        {"key_agreement_type": b"Prsh", "nonce": _b(16), "key_id": _b(7)},
        {"key_agreement_type": b"DH3", "hvi": _b(32)},
        {"key_agreement_type": b"DH3k", "hvi": _b(32), "mac": _b(9)},
    ],
)
def test_commit_rejects_wrong_form(form: dict[str, object]) -> None:
    with pytest.raises(ZrtpProtocolError):
        Commit(**{**COMMIT_BASE, **form})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "build",
    [
        lambda: DHPart1(_b(32), _b(8), _b(8), _b(8), _b(8), b"", _b(8)),
        lambda: DHPart2(_b(32), _b(8), _b(8), _b(8), _b(8), _b(6), _b(8)),
        lambda: DHPart2(_b(32), _b(8), _b(8), _b(8), _b(7), _b(4), _b(8)),
        lambda: DHPart2(_b(31), _b(8), _b(8), _b(8), _b(8), _b(4), _b(8)),
        lambda: Confirm1(_b(8), _b(16), _b(36)),
        lambda: Confirm2(_b(8), _b(16), _b(42)),
        lambda: Confirm2(_b(8), _b(15), _b(40)),
        lambda: Confirm1(_b(8), _b(16), bytes(40 + 512 * 4)),
        lambda: SasRelay(_b(8), _b(16), _b(36)),
        lambda: SasRelay(_b(9), _b(16), _b(40)),
        lambda: Error(code=-1),
        lambda: Error(code=1 << 32),
        lambda: Error(code=True),
        lambda: GoClear(clear_mac=_b(4)),
        lambda: Ping(version=b"1.10", endpoint_hash=_b(12)),
        lambda: PingAck(b"1.10", _b(8), _b(8), ssrc=1 << 32),
        lambda: PingAck(b"1.1", _b(8), _b(8), ssrc=0),
        lambda: ConfirmPlaintext(_b(32), False, False, False, False, 1 << 32),
        lambda: ConfirmPlaintext(_b(32), False, False, False, False, 0, signature=_b(6)),
        lambda: ConfirmPlaintext(_b(32), False, False, False, False, 0, signature=_b(2048)),
        lambda: ConfirmPlaintext(_b(16), False, False, False, False, 0),
        lambda: SasRelayPlaintext(False, False, False, b"B32", _b(32)),
        lambda: SasRelayPlaintext(False, False, False, b"B32 ", _b(32), signature=_b(3)),
        lambda: ZrtpPacket(sequence=1 << 16, ssrc=0, message=HelloAck()),
        lambda: ZrtpPacket(sequence=-1, ssrc=0, message=HelloAck()),
        lambda: ZrtpPacket(sequence=0, ssrc=1 << 32, message=HelloAck()),
        lambda: ZrtpPacket(sequence=0, ssrc=0, message=b"HelloACK"),  # type: ignore[arg-type]
        lambda: ZrtpPacket(0, 0, DHPart1(_b(32), _b(8), _b(8), _b(8), _b(8), bytes(1952), _b(8))),
    ],
)
def test_invalid_objects_cannot_be_built(build: object) -> None:
    with pytest.raises(ZrtpProtocolError):
        build()  # type: ignore[operator]


def test_largest_packet_is_accepted() -> None:
    # 12 + 12 + 64 + pv + 8 + 4 == 2048
    dh = DHPart1(_b(32), _b(8), _b(8), _b(8), _b(8), bytes(1948), _b(8))
    data = ZrtpPacket(0, 0, dh).serialize()
    assert len(data) == MAX_PACKET_SIZE
    assert ZrtpPacket.parse(data).message == dh
    bigger = repack(frame(b"DHPart1 ", bytes(64 + 1952 + 8)))
    assert len(bigger) == MAX_PACKET_SIZE + 4
    with pytest.raises(ZrtpProtocolError) as info:
        ZrtpPacket.parse(bigger)
    assert info.value.code is None


# ---------------------------------------------------------------------------
# Malformed input
# ---------------------------------------------------------------------------

EXAMPLE_PACKETS = [
    ZrtpPacket(sequence=i, ssrc=0x5555AAAA, message=m).serialize()
    for i, (m, _) in enumerate(EXAMPLES)
]
ALL_PACKETS = EXAMPLE_PACKETS + BZRTP_PACKETS
PACKET_IDS = [*EXAMPLE_IDS, *(f"bzrtp-{d[16:24].decode().strip()}" for d in BZRTP_PACKETS)]


@pytest.mark.parametrize("data", ALL_PACKETS, ids=PACKET_IDS)
def test_every_strict_prefix_is_rejected(data: bytes) -> None:
    message = message_bytes(data)
    for n in range(len(data)):
        with pytest.raises(ZrtpProtocolError):
            ZrtpPacket.parse(data[:n])
    for n in range(len(message)):
        with pytest.raises(ZrtpProtocolError) as info:
            parse_message(message[:n])
        assert info.value.code == MALFORMED
        with pytest.raises(ZrtpProtocolError) as info:
            type(ZrtpPacket.parse(data).message).parse(message[:n])
        assert info.value.code == MALFORMED
        # Even with a correct CRC, a truncated message is malformed.
        with pytest.raises(ZrtpProtocolError) as info:
            ZrtpPacket.parse(repack(message[:n]))
        assert info.value.code == MALFORMED


VARIABLE_LENGTH = (DHPart1, DHPart2, Confirm1, Confirm2, SasRelay)


@pytest.mark.parametrize("data", ALL_PACKETS, ids=PACKET_IDS)
def test_truncated_message_with_fixed_length_field(data: bytes) -> None:
    message = message_bytes(data)
    cls = type(ZrtpPacket.parse(data).message)
    for words in range(3, len(message) // 4):
        shorter = struct.pack("!HH", 0x505A, words) + message[4 : words * 4]
        try:
            parsed = ZrtpPacket.parse(repack(shorter)).message
        except ZrtpProtocolError as exc:
            assert exc.code == MALFORMED
        else:
            # Only a shorter pv or encrypted part can still be a valid message.
            assert cls in VARIABLE_LENGTH and type(parsed) is cls
            assert words >= 19


@pytest.mark.parametrize(
    "data",
    [EXAMPLE_PACKETS[0], EXAMPLE_PACKETS[3], CONFIRM1_A, HELLOACK_A],
    ids=["Hello", "Commit", "Confirm1", "HelloACK"],
)
def test_any_flipped_bit_fails_the_crc(data: bytes) -> None:
    for bit in range(len(data) * 8):
        flipped = bytearray(data)
        flipped[bit // 8] ^= 1 << (bit % 8)
        with pytest.raises(ZrtpProtocolError) as info:
            ZrtpPacket.parse(bytes(flipped))
        assert info.value.code is None


def test_not_zrtp_is_dropped_silently() -> None:
    rtp = bytes.fromhex("80000001000000a0deadbeef") + bytes(160)
    stun = bytes.fromhex("000100002112a442") + bytes(12)
    fragment = b"\x11" + HELLOACK_A[1:]
    for data in (b"", rtp, stun, fragment, HELLOACK_A[:15], b"\x10\x00\x00\x01ZRTP" + bytes(8)):
        with pytest.raises(ZrtpProtocolError) as info:
            ZrtpPacket.parse(data)
        assert info.value.code is None
    with pytest.raises(ZrtpProtocolError) as info:
        message_bytes(b"\x10")
    assert info.value.code is None


def test_is_zrtp_packet() -> None:
    assert is_zrtp_packet(HELLOACK_A)
    assert is_zrtp_packet(bytearray(HELLOACK_A))  # type: ignore[arg-type]
    assert is_zrtp_packet(memoryview(HELLOACK_A))  # type: ignore[arg-type]
    assert is_zrtp_packet(b"\x10\x00\x00\x00ZRTP\x00\x00\x00\x00\x00\x00\x00\x00")
    assert not is_zrtp_packet(b"\x10\x00\x00\x00ZRTP\x00\x00\x00\x00\x00\x00\x00")
    assert not is_zrtp_packet(b"\x80" + HELLOACK_A[1:])
    assert not is_zrtp_packet(b"\x11" + HELLOACK_A[1:])
    assert not is_zrtp_packet(HELLOACK_A[:4] + b"ZRTQ" + HELLOACK_A[8:])
    assert not is_zrtp_packet(b"")
    assert not is_zrtp_packet(None)  # type: ignore[arg-type]


def test_short_zrtp_packet_with_good_crc_is_malformed() -> None:
    # Header + an 8-octet "message" + a good CRC: not even an ACK fits.
    data = repack(b"\x50\x5a\x00\x02" + bytes(4))
    with pytest.raises(ZrtpProtocolError) as info:
        ZrtpPacket.parse(data)
    assert info.value.code == MALFORMED


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        (frame(b"HelloACK", b"", words=4), "length field too big"),
        (frame(b"HelloACK", b"", words=2), "length field too small"),
        (frame(b"HelloACK", bytes(4), words=3), "length field too small"),
        (frame(b"HelloACK", bytes(4)), "ACK with a body"),
        (frame(b"Error   ", b""), "Error without code"),
        (frame(b"Error   ", bytes(8)), "Error too long"),
        (frame(b"GoClear ", bytes(4)), "GoClear short"),
        (frame(b"Ping    ", bytes(16)), "Ping long"),
        (frame(b"PingACK ", bytes(20)), "PingACK short"),
        (frame(b"Confirm1", bytes(24 + 36)), "Confirm too short"),
        (frame(b"SASrelay", bytes(24 + 36)), "SASrelay too short"),
        (frame(b"DHPart1 ", bytes(64 + 8)), "DHPart without pv"),
        (b"\x50\x5b\x00\x03HelloACK", "bad preamble"),
        (b"\x50\x5a\x00\x03HelloACK\x00", "not whole words"),
        (frame(b"Hello!!!", b""), "unknown type"),
        (frame(b"hello   ", b""), "type blocks are case sensitive"),
        (frame(b"SASRelay", bytes(64)), "unknown type"),
        (frame(b"Hello   ", bytes(76)), "all-zero Hello is 22 words but preamble-only"),
    ],
)
def test_malformed_messages(message: bytes, reason: str) -> None:
    if reason.startswith("all-zero"):
        # All-zero counts make a valid minimal Hello: check it parses, then break it.
        assert isinstance(parse_message(message), Hello)
        message = message[:-4]
        message = struct.pack("!HH", 0x505A, len(message) // 4) + message[4:]
    with pytest.raises(ZrtpProtocolError) as info:
        parse_message(message)
    assert info.value.code == MALFORMED, reason
    with pytest.raises(ZrtpProtocolError) as info:
        ZrtpPacket.parse(repack(message))
    assert info.value.code == MALFORMED, reason


def _hello_with_counts(counts: tuple[int, int, int, int, int]) -> bytes:
    word = 0
    for shift, count in zip((16, 12, 8, 4, 0), counts, strict=True):
        word |= count << shift
    body = b"1.10" + bytes(16 + 32 + 12) + struct.pack("!I", word) + b"S256" * sum(counts)
    return frame(b"Hello   ", body + bytes(8))


@pytest.mark.parametrize("position", range(5))
def test_hello_with_too_many_algorithm_types(position: int) -> None:
    counts = [7, 7, 7, 7, 7]
    assert isinstance(parse_message(_hello_with_counts((7, 7, 7, 7, 7))), Hello)
    for too_many in (8, 15):
        counts[position] = too_many
        with pytest.raises(ZrtpProtocolError) as info:
            ZrtpPacket.parse(repack(_hello_with_counts(tuple(counts))))  # type: ignore[arg-type]
        assert info.value.code == MALFORMED


def test_hello_counts_disagree_with_length() -> None:
    data = bytearray(KNOWN_HELLO.message.serialize())
    data[79] = 0x41  # kc=4, sc=1: one block more than the message holds
    with pytest.raises(ZrtpProtocolError):
        parse_message(bytes(data))
    data[79] = 0x30  # kc=3: one block fewer
    with pytest.raises(ZrtpProtocolError):
        parse_message(bytes(data))


@pytest.mark.parametrize(
    ("key_agreement", "tail"),
    [
        (b"Mult", 32),  # Multistream Commit carrying an hvi-sized tail
        (b"Prsh", 32),
        (b"Prsh", 16),
        (b"DH3k", 16),
        (b"DH3k", 24),
        (b"EC25", 40),
        (b"Mult", 24),
    ],
)
def test_commit_with_wrong_form_on_the_wire(key_agreement: bytes, tail: int) -> None:
    body = _b(32) + _b(12) + b"S256AES1HS32" + key_agreement + b"B32 " + bytes(tail) + _b(8)
    with pytest.raises(ZrtpProtocolError) as info:
        ZrtpPacket.parse(repack(frame(b"Commit  ", body)))
    assert info.value.code == MALFORMED


def test_dhpart_pv_is_whatever_is_left() -> None:
    body = _b(32) + _b(8) * 4 + _b(4, 99) + _b(8, 7)
    dh = parse_message(frame(b"DHPart2 ", body))
    assert isinstance(dh, DHPart2)
    assert (dh.pv, dh.mac) == (_b(4, 99), _b(8, 7))


# ---------------------------------------------------------------------------
# Hypothesis: valid messages round-trip, garbage only ever raises ZrtpProtocolError
# ---------------------------------------------------------------------------


def fixed(n: int) -> st.SearchStrategy[bytes]:
    return st.binary(min_size=n, max_size=n)


def words(low: int, high: int) -> st.SearchStrategy[bytes]:
    return st.integers(low, high).flatmap(lambda n: fixed(4 * n))


blocks = fixed(4)
block_lists = st.lists(blocks, max_size=7).map(tuple)
dh_key_agreements = blocks.filter(lambda b: b not in (b"Mult", b"Prsh"))

hellos = st.builds(
    Hello,
    version=blocks,
    client_id=fixed(16),
    h3=fixed(32),
    zid=fixed(12),
    signature_capable=st.booleans(),
    mitm=st.booleans(),
    passive=st.booleans(),
    hash_types=block_lists,
    cipher_types=block_lists,
    auth_tag_types=block_lists,
    key_agreement_types=block_lists,
    sas_types=block_lists,
    mac=fixed(8),
)
commit_common = {
    "h2": fixed(32),
    "zid": fixed(12),
    "hash_type": blocks,
    "cipher_type": blocks,
    "auth_tag_type": blocks,
    "sas_type": blocks,
    "mac": fixed(8),
}
commits = st.one_of(
    st.builds(Commit, key_agreement_type=dh_key_agreements, hvi=fixed(32), **commit_common),
    st.builds(Commit, key_agreement_type=st.just(b"Mult"), nonce=fixed(16), **commit_common),
    st.builds(
        Commit,
        key_agreement_type=st.just(b"Prsh"),
        nonce=fixed(16),
        key_id=fixed(8),
        **commit_common,
    ),
)


def dhparts(cls: type[DHPart1] | type[DHPart2]) -> st.SearchStrategy[Message]:
    ids = fixed(8)
    return st.builds(cls, fixed(32), ids, ids, ids, ids, words(1, 160), fixed(8))


def confirms(cls: type[Confirm1] | type[Confirm2]) -> st.SearchStrategy[Message]:
    return st.builds(cls, fixed(8), fixed(16), words(10, 60))


messages: st.SearchStrategy[Message] = st.one_of(
    hellos,
    commits,
    dhparts(DHPart1),
    dhparts(DHPart2),
    confirms(Confirm1),
    confirms(Confirm2),
    st.builds(SasRelay, fixed(8), fixed(16), words(10, 60)),
    st.builds(Error, st.integers(0, 2**32 - 1)),
    st.builds(GoClear, fixed(8)),
    st.builds(Ping, blocks, fixed(8)),
    st.builds(PingAck, blocks, fixed(8), fixed(8), st.integers(0, 2**32 - 1)),
    st.sampled_from([HelloAck(), Conf2Ack(), ErrorAck(), ClearAck(), RelayAck()]),
)
packets = st.builds(ZrtpPacket, st.integers(0, 0xFFFF), st.integers(0, 2**32 - 1), messages)
signatures = words(0, 20)


@given(packets)
@settings(max_examples=400)
def test_hypothesis_packets_round_trip(packet: ZrtpPacket) -> None:
    round_trip(packet)


@given(
    fixed(32),
    st.booleans(),
    st.booleans(),
    st.booleans(),
    st.booleans(),
    st.integers(0, 2**32 - 1),
    signatures,
)
def test_hypothesis_confirm_plaintext_round_trips(
    h0: bytes, e: bool, v: bool, a: bool, d: bool, expiration: int, signature: bytes
) -> None:
    plain = ConfirmPlaintext(h0, e, v, a, d, expiration, signature)
    data = plain.serialize()
    assert len(data) == 40 + len(signature)
    assert ConfirmPlaintext.parse(data) == plain
    # Fits a Confirm message as its encrypted part (same length after CFB).
    assert Confirm1(bytes(8), bytes(16), data).serialize()[36:] == data


@given(st.booleans(), st.booleans(), st.booleans(), blocks, fixed(32), signatures)
def test_hypothesis_sasrelay_plaintext_round_trips(
    v: bool, a: bool, d: bool, scheme: bytes, sashash: bytes, signature: bytes
) -> None:
    plain = SasRelayPlaintext(v, a, d, scheme, sashash, signature)
    data = plain.serialize()
    assert SasRelayPlaintext.parse(data) == plain
    assert SasRelay(bytes(8), bytes(16), data).serialize()[36:] == data


def _parse_or_protocol_error(data: bytes) -> None:
    try:
        packet = ZrtpPacket.parse(data)
    except ZrtpProtocolError as exc:
        assert exc.code in (None, MALFORMED)
        return
    # Whatever parses re-serializes to something that parses to the same packet.
    assert ZrtpPacket.parse(packet.serialize()) == packet


@given(st.binary(max_size=300))
@settings(max_examples=500)
def test_hypothesis_random_bytes(data: bytes) -> None:
    assert isinstance(is_zrtp_packet(data), bool)
    _parse_or_protocol_error(data)
    for parse in (parse_message, ConfirmPlaintext.parse, SasRelayPlaintext.parse):
        with contextlib.suppress(ZrtpProtocolError):
            parse(data)


@given(st.binary(max_size=300), st.integers(0, 0xFFFF), st.integers(0, 2**32 - 1))
@settings(max_examples=500)
def test_hypothesis_random_message_with_valid_header_and_crc(
    message: bytes, sequence: int, ssrc: int
) -> None:
    _parse_or_protocol_error(repack(message, sequence, ssrc))


TYPE_BLOCKS = [type(m).MESSAGE_TYPE for m, _ in EXAMPLES]


@given(st.sampled_from(TYPE_BLOCKS), words(0, 80), st.integers(-1, 1))
@settings(max_examples=1000, suppress_health_check=[HealthCheck.too_slow])
def test_hypothesis_random_body_with_valid_framing(
    message_type: bytes, body: bytes, length_error: int
) -> None:
    message = frame(message_type, body, words=(12 + len(body)) // 4 + length_error)
    _parse_or_protocol_error(repack(message))
    try:
        parsed = parse_message(message)
    except ZrtpProtocolError:
        return
    assert message_type == parsed.MESSAGE_TYPE


@given(
    st.sampled_from(ALL_PACKETS),
    st.lists(st.tuples(st.integers(0, 2047), st.integers(0, 255)), min_size=1, max_size=4),
)
@settings(max_examples=500)
def test_hypothesis_mutated_packets_with_recomputed_crc(
    data: bytes, edits: list[tuple[int, int]]
) -> None:
    message = bytearray(message_bytes(data))
    for position, value in edits:
        message[position % len(message)] = value
    _parse_or_protocol_error(repack(bytes(message)))


@given(st.one_of(st.binary(max_size=64), st.builds(bytearray, st.binary(max_size=64))))
def test_hypothesis_is_zrtp_packet_never_raises(data: bytes) -> None:
    assert is_zrtp_packet(data) == (
        len(data) >= 16 and data[0] == 0x10 and bytes(data[4:8]) == b"ZRTP"
    )
