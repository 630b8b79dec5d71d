"""Known-answer tests: our crypto and wire format against published values.

Sources (each vector below names its own):

* RFC 4231 section 4 (HMAC-SHA-256 / HMAC-SHA-384 test cases 1 to 7);
* RFC 3720 appendix B.4 and the standard CRC-32C check value of "123456789";
* RFC 6189 section 5.1.6 (B32 alphabet and bit order) and the PGP word list (B256);
* bzrtp's test suite (``tests/vectors/bzrtp_exchange.py``): a captured DH3k
  exchange with both hash chains and the Confirm keys, KDF and CRC known answers;
* RFC 5114 appendix A.6 / A.7 (= RFC 5903 sections 8.1 / 8.2) for ECDH P-256 / P-384;
* RFC 7748 sections 5.2, 6.1 and 6.2 for X25519 / X448;
* RFC 3526 sections 3 and 4 for the 2048- and 3072-bit MODP groups.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Callable

import pytest

from pbx_zrtp.zrtp.crypto import SHA256, SHA384, aes_cfb, hash_chain, implicit_mac
from pbx_zrtp.zrtp.errors import ErrorCode, ZrtpProtocolError
from pbx_zrtp.zrtp.keyagreement import EC25, EC38, X255, X448, DH2k, DH3k, KeyAgreement
from pbx_zrtp.zrtp.packets import (
    Commit,
    Conf2Ack,
    Confirm1,
    Confirm2,
    ConfirmPlaintext,
    DHPart1,
    DHPart2,
    Hello,
    HelloAck,
    ZrtpPacket,
    crc32c_of,
    message_bytes,
)
from pbx_zrtp.zrtp.sas import render_sas
from tests.vectors import bzrtp_exchange as bz

# ---------------------------------------------------------------------------
# 1. RFC 4231: HMAC-SHA-256 and HMAC-SHA-384
# ---------------------------------------------------------------------------

_RFC4231_KEY_131 = b"\xaa" * 131

# (test case, key, data, HMAC-SHA-256, HMAC-SHA-384), RFC 4231 section 4.2 to 4.8.
RFC4231: list[tuple[int, bytes, bytes, str, str]] = [
    (
        1,
        b"\x0b" * 20,
        b"Hi There",
        "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7",
        "afd03944d84895626b0825f4ab46907f15f9dadbe4101ec6"
        "82aa034c7cebc59cfaea9ea9076ede7f4af152e8b2fa9cb6",
    ),
    (
        2,
        b"Jefe",
        b"what do ya want for nothing?",
        "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843",
        "af45d2e376484031617f78d2b58a6b1b9c7ef464f5a01b47"
        "e42ec3736322445e8e2240ca5e69e2c78b3239ecfab21649",
    ),
    (
        3,
        b"\xaa" * 20,
        b"\xdd" * 50,
        "773ea91e36800e46854db8ebd09181a72959098b3ef8c122d9635514ced565fe",
        "88062608d3e6ad8a0aa2ace014c8a86f0aa635d947ac9feb"
        "e83ef4e55966144b2a5ab39dc13814b94e3ab6e101a34f27",
    ),
    (
        4,
        bytes(range(1, 26)),
        b"\xcd" * 50,
        "82558a389a443c0ea4cc819899f2083a85f0faa3e578f8077a2e3ff46729665b",
        "3e8a69b7783c25851933ab6290af6ca77a9981480850009c"
        "c5577c6e1f573b4e6801dd23c4a7d679ccf8a386c674cffb",
    ),
    (
        6,
        _RFC4231_KEY_131,
        b"Test Using Larger Than Block-Size Key - Hash Key First",
        "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54",
        "4ece084485813e9088d2c63a041bc5b44f9ef1012a2b588f"
        "3cd11f05033ac4c60c2ef6ab4030fe8296248df163f44952",
    ),
    (
        7,
        _RFC4231_KEY_131,
        b"This is a test using a larger than block-size key and a larger than block-size"
        b" data. The key needs to be hashed before being used by the HMAC algorithm.",
        "9b09ffa71b942fcb27635fbcd5b0e944bfdc63644f0713938a7f51535c3a35e2",
        "6617178e941f020d351e2f254e8fd32c602420feb0b8fb9a"
        "dccebb82461e99c5a678cc31e799176d3860e6110c46523e",
    ),
]


@pytest.mark.parametrize(
    ("case", "key", "data", "sha256", "sha384"), RFC4231, ids=[f"case{v[0]}" for v in RFC4231]
)
def test_rfc4231_hmac(case: int, key: bytes, data: bytes, sha256: str, sha384: str) -> None:
    assert SHA256.hmac(key, data).hex() == sha256
    assert SHA384.hmac(key, data).hex() == sha384


def test_rfc4231_case5_truncated_to_128_bits() -> None:
    key, data = b"\x0c" * 20, b"Test With Truncation"
    assert SHA256.hmac(key, data)[:16].hex() == "a3b6167473100ee06e0c796c2955552b"
    assert SHA384.hmac(key, data)[:16].hex() == "3abf34c3503b2a23a46efc619baef897"


def test_mac_is_the_hmac_truncated_to_64_bits() -> None:
    # RFC 4231 case 2 again, through the 64-bit MAC carried in ZRTP messages.
    assert SHA256.mac(b"Jefe", b"what do ya want for nothing?").hex() == "5bdcc146bf60754e"
    assert SHA384.mac(b"Jefe", b"what do ya want for nothing?").hex() == "af45d2e376484031"


# ---------------------------------------------------------------------------
# 2. CRC-32C
# ---------------------------------------------------------------------------


def test_crc32c_check_value() -> None:
    assert crc32c_of(b"123456789") == 0xE3069283


# RFC 3720 appendix B.4: 32-octet inputs and their CRC as transmitted (LSB first).
@pytest.mark.parametrize(
    ("data", "wire"),
    [
        (bytes(32), "aa36918a"),
        (b"\xff" * 32, "43aba862"),
        (bytes(range(32)), "4e79dd46"),
        (bytes(range(31, -1, -1)), "5cdb3f11"),
    ],
    ids=["zeros", "ones", "incrementing", "decrementing"],
)
def test_crc32c_rfc3720(data: bytes, wire: str) -> None:
    assert crc32c_of(data).to_bytes(4, "little").hex() == wire


@pytest.mark.parametrize("data", bz.PACKETS, ids=lambda d: d[16:24].decode().strip())
def test_crc32c_of_captured_packets(data: bytes) -> None:
    # RFC 6189 section 5: the CRC trailer is sent least significant octet first.
    assert crc32c_of(data[:-4]) == int.from_bytes(data[-4:], "little")


@pytest.mark.parametrize("vector", bz.CRC_VECTORS, ids=["Hello", "HelloACK", "DHPart1"])
def test_crc32c_bzrtp_known_answers(vector: tuple[bytes, int]) -> None:
    data, bzrtp_value = vector
    # bzrtp_CRC32() returns the CRC-32C byte-swapped, and the wire trailer is that
    # value big-endian, i.e. our CRC little-endian.
    assert crc32c_of(data) == int.from_bytes(bzrtp_value.to_bytes(4, "big"), "little")
    packet = ZrtpPacket.parse(data + bzrtp_value.to_bytes(4, "big"))
    assert packet.serialize()[:-4] == data


# ---------------------------------------------------------------------------
# 3. SAS rendering (RFC 6189 section 5.1.6)
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sas_value", "rendered"),
    [
        (0x0000FFFF, "aardvark adroitness"),  # even word 0x00, odd word 0x00
        (0xFFFF0000, "Zulu Yucatan"),  # even word 0xFF, odd word 0xFF
    ],
)
def test_b256(sas_value: int, rendered: str) -> None:
    assert render_sas(b"B256", sas_value.to_bytes(4, "big")) == rendered


# Alphabet "ybndrfg8ejkmcpqxot1uwisza345h769" (index 0..31); B32 takes the leftmost
# 20 bits of sasvalue as four 5-bit groups, most significant first.
@pytest.mark.parametrize(
    ("sas_value", "rendered"),
    [
        (0x00000000, "yyyy"),  # 00000 00000 00000 00000 -> 0 0 0 0
        (0xFFFFFFFF, "9999"),  # 11111 11111 11111 11111 -> 31 31 31 31
        (0x00000FFF, "yyyy"),  # only the last 12 bits set: none of them are rendered
        (0x80000000, "oyyy"),  # 10000 00000 00000 00000 -> 16 ('o') 0 0 0
        # 0x12345678: leftmost 20 bits 0001 0010 0011 0100 0101
        #   = 00010 01000 11010 00101 = 2, 8, 26, 5 -> n, e, 4, f
        (0x12345678, "ne4f"),
        # 0xD269B071 (the first octets of bzrtp's "SAS" KDF output below):
        #   1101 0010 0110 1001 1011 = 11010 01001 10100 11011 = 26, 9, 20, 27 -> 4, j, w, 5
        (0xD269B071, "4jw5"),
        # 0xDEADBEEF: 1101 1110 1010 1101 1011 = 11011 11010 10110 11011
        #   = 27, 26, 22, 27 -> 5, 4, s, 5
        (0xDEADBEEF, "54s5"),
    ],
)
def test_b32(sas_value: int, rendered: str) -> None:
    assert render_sas(b"B32 ", sas_value.to_bytes(4, "big")) == rendered


# ---------------------------------------------------------------------------
# 4. The captured bzrtp DH3k exchange (tests/vectors/bzrtp_exchange.py)
# ---------------------------------------------------------------------------

PACKET_IDS = [d[16:24].decode().strip() + f"-{d[2:4].hex()}" for d in bz.PACKETS]


def _message(data: bytes) -> bytes:
    return message_bytes(data)


@pytest.mark.parametrize(
    ("data", "meta"), list(zip(bz.PACKETS, bz.PACKET_METADATA, strict=True)), ids=PACKET_IDS
)
def test_capture_parses_and_reserializes_byte_exactly(
    data: bytes, meta: tuple[int, int, int]
) -> None:
    length, sequence, ssrc = meta
    assert len(data) == length
    packet = ZrtpPacket.parse(data)
    assert packet.sequence == sequence
    assert packet.ssrc == ssrc
    assert packet.serialize() == data


def test_capture_message_types_and_roles() -> None:
    expected = [Hello, Hello, HelloAck, Commit, DHPart1, DHPart2, Confirm1, Confirm2, Conf2Ack]
    packets = [ZrtpPacket.parse(d) for d in bz.PACKETS]
    assert [type(p.message) for p in packets] == expected
    # The responder (A) sends DHPart1/Confirm1/Conf2ACK, the initiator (B) Commit etc.
    assert [p.ssrc for p in packets] == [m[2] for m in bz.PACKET_METADATA]
    for p in packets:
        if isinstance(p.message, Commit | DHPart2 | Confirm2):
            assert p.ssrc == bz.SSRC_B
        if isinstance(p.message, HelloAck | DHPart1 | Confirm1 | Conf2Ack):
            assert p.ssrc == bz.SSRC_A


def _hello(data: bytes) -> Hello:
    message = ZrtpPacket.parse(data).message
    assert isinstance(message, Hello)
    return message


def _commit() -> Commit:
    message = ZrtpPacket.parse(bz.COMMIT_B).message
    assert isinstance(message, Commit)
    return message


def _dhpart1() -> DHPart1:
    message = ZrtpPacket.parse(bz.DHPART1_A).message
    assert isinstance(message, DHPart1)
    return message


def _dhpart2() -> DHPart2:
    message = ZrtpPacket.parse(bz.DHPART2_B).message
    assert isinstance(message, DHPart2)
    return message


def test_capture_hello_fields() -> None:
    for data, h, ssrc in ((bz.HELLO_A, bz.H_A, bz.SSRC_A), (bz.HELLO_B, bz.H_B, bz.SSRC_B)):
        hello = _hello(data)
        assert ZrtpPacket.parse(data).ssrc == ssrc
        assert hello.version == b"1.10"
        assert hello.client_id == b"LINPHONE-ZRTPCPP"
        assert hello.h3 == h[3]
        assert hello.hash_types == (b"S256",)
        assert hello.cipher_types == (b"AES1",)
        assert hello.auth_tag_types == (b"HS32", b"HS80")
        assert hello.key_agreement_types == (b"DH3k", b"DH2k", b"Mult")
        assert hello.sas_types == (b"B32 ",)
    # Each Hello's ZID is the one the same side puts in Commit (B only sends one).
    assert _hello(bz.HELLO_B).zid == _commit().zid
    assert _hello(bz.HELLO_A).zid != _hello(bz.HELLO_B).zid


@pytest.mark.parametrize("chain", [bz.H_A, bz.H_B], ids=["A", "B"])
def test_capture_hash_chains(chain: tuple[bytes, bytes, bytes, bytes]) -> None:
    assert hash_chain(chain[0]) == chain
    for lower, upper in itertools.pairwise(chain):
        assert hashlib.sha256(lower).digest() == upper


def test_capture_hash_images_in_messages() -> None:
    assert _hello(bz.HELLO_A).h3 == bz.H_A[3]
    assert _hello(bz.HELLO_B).h3 == bz.H_B[3]
    assert _commit().h2 == bz.H_B[2]
    assert _dhpart1().h1 == bz.H_A[1]
    assert _dhpart2().h1 == bz.H_B[1]


def test_capture_deferred_macs() -> None:
    """RFC 6189 section 8.1.1: Hello MAC keyed by H2, Commit by H1, DHPart by H0."""
    assert implicit_mac(bz.H_A[2], _message(bz.HELLO_A)[:-8]) == _hello(bz.HELLO_A).mac
    assert implicit_mac(bz.H_B[2], _message(bz.HELLO_B)[:-8]) == _hello(bz.HELLO_B).mac
    assert implicit_mac(bz.H_B[1], _message(bz.COMMIT_B)[:-8]) == _commit().mac
    assert implicit_mac(bz.H_A[0], _message(bz.DHPART1_A)[:-8]) == _dhpart1().mac
    assert implicit_mac(bz.H_B[0], _message(bz.DHPART2_B)[:-8]) == _dhpart2().mac
    # The wrong side's key does not verify.
    assert implicit_mac(bz.H_A[2], _message(bz.HELLO_B)[:-8]) != _hello(bz.HELLO_B).mac


def test_capture_commit_and_dhparts() -> None:
    commit = _commit()
    assert (
        commit.hash_type,
        commit.cipher_type,
        commit.auth_tag_type,
        commit.key_agreement_type,
        commit.sas_type,
    ) == (b"S256", b"AES1", b"HS32", b"DH3k", b"B32 ")
    assert commit.is_dh_mode and commit.nonce is None and commit.key_id is None
    for part in (_dhpart1(), _dhpart2()):
        assert len(part.pv) == DH3k.pv_length  # 384 octets


def test_capture_hvi() -> None:
    """hvi = hash(initiator's DHPart2 || responder's Hello) (RFC 6189 section 4.4.1.1)."""
    expected = hashlib.sha256(_message(bz.DHPART2_B) + _message(bz.HELLO_A)).digest()
    assert _commit().hvi == expected
    assert SHA256.digest(_message(bz.DHPART2_B) + _message(bz.HELLO_A)) == expected


def test_capture_zrtp_hash_attributes() -> None:
    """The SDP a=zrtp-hash value is the version and the hash of the Hello message."""
    for data, attribute in ((bz.HELLO_A, bz.ZRTP_HASH_A), (bz.HELLO_B, bz.ZRTP_HASH_B)):
        assert f"1.10 {SHA256.digest(_message(data)).hex()}" == attribute


def test_libzrtpcpp_hello() -> None:
    packet = ZrtpPacket.parse(bz.LIBZRTPCPP_HELLO)
    assert packet.serialize() == bz.LIBZRTPCPP_HELLO
    hello = packet.message
    assert isinstance(hello, Hello)
    assert hello.client_id == b"PJS ZRTP 3.0.0  "
    assert hello.hash_types == (b"S384", b"S256")
    assert hello.key_agreement_types == (b"EC25", b"DH3k", b"EC38", b"DH2k", b"Mult")
    digest = SHA256.digest(_message(bz.LIBZRTPCPP_HELLO)).hex()
    assert f"{hello.version.decode()} {digest}" == bz.LIBZRTPCPP_ZRTP_HASH


CONFIRMS = [
    # (packet, mackey, zrtpkey, sender's H0): Confirm1 comes from the responder.
    (bz.CONFIRM1_A, bz.MACKEY_R, bz.ZRTPKEY_R, bz.H_A[0]),
    (bz.CONFIRM2_B, bz.MACKEY_I, bz.ZRTPKEY_I, bz.H_B[0]),
]


@pytest.mark.parametrize(
    ("data", "mackey", "zrtpkey", "h0"), CONFIRMS, ids=["Confirm1", "Confirm2"]
)
def test_capture_confirm(data: bytes, mackey: bytes, zrtpkey: bytes, h0: bytes) -> None:
    confirm = ZrtpPacket.parse(data).message
    assert isinstance(confirm, Confirm1 | Confirm2)
    # confirm_mac = MAC(mackey, encrypted part) (RFC 6189 section 5.7)
    assert SHA256.mac(mackey, confirm.encrypted) == confirm.confirm_mac
    plain = aes_cfb(zrtpkey, confirm.cfb_iv, confirm.encrypted, encrypt=False)
    parsed = ConfirmPlaintext.parse(plain)
    assert parsed.h0 == h0
    assert parsed.signature == b""
    assert parsed.cache_expiration == 0xFFFFFFFF  # bzrtp always sends "unlimited"
    assert parsed.serialize() == plain
    assert aes_cfb(zrtpkey, confirm.cfb_iv, plain, encrypt=True) == confirm.encrypted


def test_capture_confirm_h0_chains_to_the_dhpart_h1() -> None:
    """What the receiver of each Confirm checks: hash(H0) is the H1 seen in DHPart."""
    for data, _mackey, zrtpkey, _h0 in CONFIRMS:
        confirm = ZrtpPacket.parse(data).message
        assert isinstance(confirm, Confirm1 | Confirm2)
        h0 = ConfirmPlaintext.parse(
            aes_cfb(zrtpkey, confirm.cfb_iv, confirm.encrypted, encrypt=False)
        ).h0
        dhpart_h1 = _dhpart1().h1 if isinstance(confirm, Confirm1) else _dhpart2().h1
        assert SHA256.digest(h0) == dhpart_h1


@pytest.mark.parametrize(
    ("label", "output"), bz.KDF_VECTORS, ids=[v[0].decode() for v in bz.KDF_VECTORS]
)
def test_bzrtp_kdf_known_answers(label: bytes, output: bytes) -> None:
    assert SHA256.kdf(bz.KDF_KEY, label, bz.KDF_CONTEXT, len(output) * 8) == output


def test_bzrtp_kdf_lengths_follow_rfc6189() -> None:
    """The key lengths bzrtp's test uses are those of RFC 6189 section 4.5.3 for AES1."""
    lengths = {label: len(output) * 8 for label, output in bz.KDF_VECTORS}
    assert lengths == {
        b"Responder SRTP master key": 128,
        b"Responder SRTP master salt": 112,
        b"SAS": 256,
        b"ZRTP Session Key": 256,
        b"retained secret": 256,
        b"Responder ZRTP key": 128,
        b"Initiator ZRTP key": 128,
        b"Responder HMAC key": 256,
        b"Initiator HMAC key": 256,
    }
    # KDF_Context = ZIDi || ZIDr || total_hash: 12 + 12 + 32 octets.
    assert len(bz.KDF_CONTEXT) == 56


def test_kdf_is_truncated_hmac_with_length_in_the_input() -> None:
    # L enters the HMAC input, so a shorter output is not a prefix of a longer one.
    full = SHA256.kdf(bz.KDF_KEY, b"SAS", bz.KDF_CONTEXT, 256)
    assert SHA256.kdf(bz.KDF_KEY, b"SAS", bz.KDF_CONTEXT, 128) != full[:16]


# ---------------------------------------------------------------------------
# 5. Key agreements: RFC 5114 (ECDH), RFC 7748 (X25519 / X448), RFC 3526 (DH)
# ---------------------------------------------------------------------------


def fixed(secret: bytes) -> Callable[[int], bytes]:
    """A ``random(n)`` source that returns ``secret``, checking n is its length."""

    def random(n: int) -> bytes:
        assert n == len(secret), f"asked for {n} bytes, have {len(secret)}"
        return secret

    return random


# RFC 5114 appendix A.6 (256-bit Random ECP Group), identical to RFC 5903 section 8.1.
P256 = {
    "dA": "C88F01F510D9AC3F70A292DAA2316DE544E9AAB8AFE84049C62A9C57862D1433",
    "x_qA": "DAD0B65394221CF9B051E1FECA5787D098DFE637FC90B9EF945D0C3772581180",
    "y_qA": "5271A0461CDB8252D61F1C456FA3E59AB1F45B33ACCF5F58389E0577B8990BB3",
    "dB": "C6EF9C5D78AE012A011164ACB397CE2088685D8F06BF9BE0B283AB46476BEE53",
    "x_qB": "D12DFB5289C8D4F81208B70270398C342296970A0BCCB74C736FC7554494BF63",
    "y_qB": "56FBF3CA366CC23E8157854C13C58D6AAC23F046ADA30F8353E74F33039872AB",
    "x_Z": "D6840F6B42F6EDAFD13116E0E12565202FEF8E9ECE7DCE03812464D04B9442DE",
}

# RFC 5114 appendix A.7 (384-bit Random ECP Group), identical to RFC 5903 section 8.2.
P384 = {
    "dA": "099F3C7034D4A2C699884D73A375A67F7624EF7C6B3C0F16"
    "0647B67414DCE655E35B538041E649EE3FAEF896783AB194",
    "x_qA": "667842D7D180AC2CDE6F74F37551F55755C7645C20EF73E3"
    "1634FE72B4C55EE6DE3AC808ACB4BDB4C88732AEE95F41AA",
    "y_qA": "9482ED1FC0EEB9CAFC4984625CCFC23F65032149E0E144AD"
    "A024181535A0F38EEB9FCFF3C2C947DAE69B4C634573A81C",
    "dB": "41CB0779B4BDB85D47846725FBEC3C9430FAB46CC8DC5060"
    "855CC9BDA0AA2942E0308312916B8ED2960E4BD55A7448FC",
    "x_qB": "E558DBEF53EECDE3D3FCCFC1AEA08A89A987475D12FD950D"
    "83CFA41732BC509D0D1AC43A0336DEF96FDA41D0774A3571",
    "y_qB": "DCFBEC7AACF3196472169E838430367F66EEBE3C6E70C416"
    "DD5F0C68759DD1FFF83FA40142209DFF5EAAD96DB9E6386C",
    "x_Z": "11187331C279962D93D604243FD592CB9D0A926F422E4718"
    "7521287E7156C5C4D603135569B9E9D09CF5D4A270F59746",
}


@pytest.mark.parametrize(
    ("cls", "v"), [(EC25, P256), (EC38, P384)], ids=["EC25-RFC5114-A.6", "EC38-RFC5114-A.7"]
)
def test_ecdh_rfc5114(cls: type[EC25 | EC38], v: dict[str, str]) -> None:
    pv_a = bytes.fromhex(v["x_qA"] + v["y_qA"])
    pv_b = bytes.fromhex(v["x_qB"] + v["y_qB"])
    alice = cls(fixed(bytes.fromhex(v["dA"])))
    bob = cls(fixed(bytes.fromhex(v["dB"])))
    assert alice.public_value == pv_a  # x || y (RFC 6189 section 5.1.5)
    assert bob.public_value == pv_b
    assert len(pv_a) == cls.pv_length
    # The DHResult is the x-coordinate of the shared point.
    assert alice.compute(pv_b) == bytes.fromhex(v["x_Z"])
    assert bob.compute(pv_a) == bytes.fromhex(v["x_Z"])


# RFC 7748 section 6.1 (X25519) and 6.2 (X448): (a, X(a, base), b, X(b, base), K).
X25519_DH = (
    "77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a",
    "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a",
    "5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb",
    "de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f",
    "4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742",
)
X448_DH = (
    "9a8f4925d1519f5775cf46b04b5800d4ee9ee8bae8bc5565d498c28d"
    "d9c9baf574a9419744897391006382a6f127ab1d9ac2d8c0a598726b",
    "9b08f7cc31b7e3e67d22d5aea121074a273bd2b83de09c63faa73d2c"
    "22c5d9bbc836647241d953d40c5b12da88120d53177f80e532c41fa0",
    "1c306a7ac2a0e2e0990b294470cba339e6453772b075811d8fad0d1d"
    "6927c120bb5ee8972b0d3e21374c9c921b09d1b0366f10b65173992d",
    "3eb7a829b0cd20f5bcfc0b599b6feccf6da4627107bdb0d4f345b430"
    "27d8b972fc3e34fb4232a13ca706dcb57aec3dae07bdc1c67bf33609",
    "07fff4181ac6cc95ec1c16a94a0f74d12da232ce40a77552281d282b"
    "b60c0b56fd2464c335543936521c24403085d59a449a5037514a879d",
)


@pytest.mark.parametrize(
    ("cls", "v"), [(X255, X25519_DH), (X448, X448_DH)], ids=["X255-RFC7748-6.1", "X448-6.2"]
)
def test_xdh_rfc7748_alice_bob(cls: type[X255 | X448], v: tuple[str, ...]) -> None:
    a, pub_a, b, pub_b, shared = (bytes.fromhex(x) for x in v)
    alice, bob = cls(fixed(a)), cls(fixed(b))
    assert alice.public_value == pub_a
    assert bob.public_value == pub_b
    assert alice.compute(pub_b) == shared
    assert bob.compute(pub_a) == shared


# RFC 7748 section 5.2: (scalar, input u-coordinate, output u-coordinate).
XDH_FUNCTION = [
    (
        X255,
        "a546e36bf0527c9d3b16154b82465edd62144c0ac1fc5a18506a2244ba449ac4",
        "e6db6867583030db3594c1a424b15f7c726624ec26b3353b10a903a6d0ab1c4c",
        "c3da55379de9c6908e94ea4df28d084f32eccf03491c71f754b4075577a28552",
    ),
    (
        X255,  # the input u has its top bit set, which X25519 must ignore
        "4b66e9d4d1b4673c5ad22691957d6af5c11b6421e0ea01d42ca4169e7918ba0d",
        "e5210f12786811d3f4b7959d0538ae2c31dbe7106fc03c3efc4cd549c715a493",
        "95cbde9476e8907d7aade45cb4b873f88b595a68799fa152e6f8f7647aac7957",
    ),
    (
        X448,
        "3d262fddf9ec8e88495266fea19a34d28882acef045104d0d1aae121"
        "700a779c984c24f8cdd78fbff44943eba368f54b29259a4f1c600ad3",
        "06fce640fa3487bfda5f6cf2d5263f8aad88334cbd07437f020f08f9"
        "814dc031ddbdc38c19c6da2583fa5429db94ada18aa7a7fb4ef8a086",
        "ce3e4ff95a60dc6697da1db1d85e6afbdf79b50a2412d7546d5f239f"
        "e14fbaadeb445fc66a01b0779d98223961111e21766282f73dd96b6f",
    ),
    (
        X448,
        "203d494428b8399352665ddca42f9de8fef600908e0d461cb021f8c5"
        "38345dd77c3e4806e25f46d3315c44e0a5b4371282dd2c8d5be3095f",
        "0fbcc2f993cd56d3305b0b7d9e55d4c1a8fb5dbb52f8e9a1e9b6201b"
        "165d015894e56c4d3570bee52fe205e28a78b91cdfbde71ce8d157db",
        "884a02576239ff7a2f2f63b2db6a9ff37047ac13568e1e30fe63c4a7"
        "ad1b3ee3a5700df34321d62077e63633c575c1c954514e99da7c179d",
    ),
]


@pytest.mark.parametrize(
    ("cls", "scalar", "u", "out"),
    XDH_FUNCTION,
    ids=["X255-5.2-1", "X255-5.2-2", "X448-5.2-1", "X448-5.2-2"],
)
def test_xdh_rfc7748_function(cls: type[X255 | X448], scalar: str, u: str, out: str) -> None:
    agreement = cls(fixed(bytes.fromhex(scalar)))
    assert agreement.compute(bytes.fromhex(u)) == bytes.fromhex(out)


# RFC 3526 section 3 (2048-bit MODP group, id 14) and section 4 (3072-bit, id 15).
MODP_2048 = int(
    "FFFFFFFFFFFFFFFFC90FDAA22168C234C4C6628B80DC1CD1"
    "29024E088A67CC74020BBEA63B139B22514A08798E3404DD"
    "EF9519B3CD3A431B302B0A6DF25F14374FE1356D6D51C245"
    "E485B576625E7EC6F44C42E9A637ED6B0BFF5CB6F406B7ED"
    "EE386BFB5A899FA5AE9F24117C4B1FE649286651ECE45B3D"
    "C2007CB8A163BF0598DA48361C55D39A69163FA8FD24CF5F"
    "83655D23DCA3AD961C62F356208552BB9ED529077096966D"
    "670C354E4ABC9804F1746C08CA18217C32905E462E36CE3B"
    "E39E772C180E86039B2783A2EC07A28FB5C55DF06F4C52C9"
    "DE2BCBF6955817183995497CEA956AE515D2261898FA0510"
    "15728E5A8AACAA68FFFFFFFFFFFFFFFF",
    16,
)
MODP_3072 = int(
    "FFFFFFFFFFFFFFFFC90FDAA22168C234C4C6628B80DC1CD1"
    "29024E088A67CC74020BBEA63B139B22514A08798E3404DD"
    "EF9519B3CD3A431B302B0A6DF25F14374FE1356D6D51C245"
    "E485B576625E7EC6F44C42E9A637ED6B0BFF5CB6F406B7ED"
    "EE386BFB5A899FA5AE9F24117C4B1FE649286651ECE45B3D"
    "C2007CB8A163BF0598DA48361C55D39A69163FA8FD24CF5F"
    "83655D23DCA3AD961C62F356208552BB9ED529077096966D"
    "670C354E4ABC9804F1746C08CA18217C32905E462E36CE3B"
    "E39E772C180E86039B2783A2EC07A28FB5C55DF06F4C52C9"
    "DE2BCBF6955817183995497CEA956AE515D2261898FA0510"
    "15728E5A8AAAC42DAD33170D04507A33A85521ABDF1CBA64"
    "ECFB850458DBEF0A8AEA71575D060C7DB3970F85A6E1E4C7"
    "ABF5AE8CDB0933D71E8C94E04A25619DCEE3D2261AD2EE6B"
    "F12FFA06D98A0864D87602733EC86A64521F2B18177B200C"
    "BBE117577A615D6C770988C0BAD946E208E24FA074E5AB31"
    "43DB5BFCE0FD108E4B82D120A93AD2CAFFFFFFFFFFFFFFFF",
    16,
)


def _pi_times_2_to_the(bits: int) -> int:
    """floor(pi * 2**bits), by Machin's formula in fixed point with guard bits."""
    guard = 64
    one = 1 << (bits + 2 + guard)

    def arctan_inverse(x: int) -> int:
        total = term = one // x
        n, sign = 1, -1
        while term:
            term //= x * x
            n += 2
            total += sign * (term // n)
            sign = -sign
        return total

    return (16 * arctan_inverse(5) - 4 * arctan_inverse(239)) >> (2 + guard)


def test_modp_primes_match_their_rfc3526_definition() -> None:
    # p = 2^2048 - 2^1984 - 1 + 2^64 * { [2^1918 pi] + 124476 }
    definition = 2**2048 - 2**1984 - 1 + 2**64 * (_pi_times_2_to_the(1918) + 124476)
    assert definition == MODP_2048
    # p = 2^3072 - 2^3008 - 1 + 2^64 * { [2^2942 pi] + 1690314 }
    definition = 2**3072 - 2**3008 - 1 + 2**64 * (_pi_times_2_to_the(2942) + 1690314)
    assert definition == MODP_3072
    for p in (MODP_2048, MODP_3072):
        assert pow(2, p - 1, p) == 1  # a Fermat check; the RFC says p is prime


EXPONENT_X = bytes(range(0x11, 0x31))  # 32 octets: DH secrets are 256 bits by default
EXPONENT_Y = bytes(range(0xA0, 0xC0))


@pytest.mark.parametrize(("cls", "p"), [(DH3k, MODP_3072), (DH2k, MODP_2048)], ids=["DH3k", "DH2k"])
def test_finite_field_dh(cls: type[DH3k | DH2k], p: int) -> None:
    x = int.from_bytes(EXPONENT_X, "big")
    y = int.from_bytes(EXPONENT_Y, "big")
    ours = cls(fixed(EXPONENT_X))
    assert ours.public_value == pow(2, x, p).to_bytes(cls.pv_length, "big")
    peer = pow(2, y, p).to_bytes(cls.pv_length, "big")
    assert ours.compute(peer) == pow(2, x * y, p).to_bytes(cls.pv_length, "big")
    assert cls(fixed(EXPONENT_Y)).compute(ours.public_value) == ours.compute(peer)


# ---------------------------------------------------------------------------
# 6. Negative known answers
# ---------------------------------------------------------------------------


def _assert_bad_dh_value(agreement: KeyAgreement, pv: bytes) -> None:
    with pytest.raises(ZrtpProtocolError) as info:
        agreement.compute(pv)
    assert info.value.code is ErrorCode.BAD_DH_VALUE


@pytest.mark.parametrize(("cls", "p"), [(DH3k, MODP_3072), (DH2k, MODP_2048)], ids=["DH3k", "DH2k"])
@pytest.mark.parametrize("which", ["0", "1", "p-1", "p"])
def test_finite_field_dh_rejects_trivial_values(cls: type[DH3k | DH2k], p: int, which: str) -> None:
    """RFC 6189 section 4.4.1.2: pv of 1 or p-1 (and 0) must be rejected."""
    value = {"0": 0, "1": 1, "p-1": p - 1, "p": p}[which]
    pv = value.to_bytes(cls.pv_length, "big")
    assert len(pv) == {DH3k: 384, DH2k: 256}[cls]
    _assert_bad_dh_value(cls(fixed(EXPONENT_X)), pv)


def test_ec25_rejects_a_point_not_on_the_curve() -> None:
    alice = EC25(fixed(bytes.fromhex(P256["dA"])))
    y_off = (int(P256["y_qB"], 16) + 1).to_bytes(32, "big")
    _assert_bad_dh_value(alice, bytes.fromhex(P256["x_qB"]) + y_off)
    _assert_bad_dh_value(alice, bytes(64))  # (0, 0) is not on P-256 either


def test_ec38_rejects_a_point_not_on_the_curve() -> None:
    alice = EC38(fixed(bytes.fromhex(P384["dA"])))
    y_off = (int(P384["y_qB"], 16) ^ 1).to_bytes(48, "big")
    _assert_bad_dh_value(alice, bytes.fromhex(P384["x_qB"]) + y_off)


@pytest.mark.parametrize("u", [0, 1], ids=["u=0", "u=1"])
def test_x255_rejects_low_order_points(u: int) -> None:
    # The all-zero point (and u = 1) give an all-zero shared secret (RFC 7748 section 6.1).
    _assert_bad_dh_value(X255(fixed(bytes.fromhex(X25519_DH[0]))), u.to_bytes(32, "little"))


def test_x448_rejects_the_all_zero_point() -> None:
    _assert_bad_dh_value(X448(fixed(bytes.fromhex(X448_DH[0]))), bytes(56))


@pytest.mark.parametrize("cls", [DH3k, DH2k, EC25, EC38, X255, X448])
def test_public_value_of_the_wrong_length_is_malformed(
    cls: type[DH3k | DH2k | EC25 | EC38 | X255 | X448],
) -> None:
    size = {DH3k: 32, DH2k: 32, EC25: 32, EC38: 48, X255: 32, X448: 56}[cls]
    agreement = cls(fixed(bytes([0x42]) * size))
    with pytest.raises(ZrtpProtocolError) as info:
        agreement.compute(bytes(cls.pv_length - 4))
    assert info.value.code is ErrorCode.MALFORMED_PACKET


def test_tampered_capture_fails_the_known_macs() -> None:
    """Flip one pv bit in DHPart1: its MAC keyed by H0 no longer matches."""
    tampered = bytearray(_message(bz.DHPART1_A))
    tampered[100] ^= 1
    assert implicit_mac(bz.H_A[0], bytes(tampered[:-8])) != _dhpart1().mac
