"""Known-answer data from bzrtp's own test suite (test data only, no code).

Source: the public repository BelledonneCommunications/bzrtp, snapshot at commit
a542e392ea588baa02cb76f2f60e77904d3fb4b3 (2024-09-27):

* ``test/bzrtpParserTest.c``: ``patternZRTPPackets`` / ``patternZRTPMetaData`` (a
  full DH3k exchange captured with Wireshark between two bzrtp endpoints,
  SSRC 0x12345678 and 0x87654321), ``H12345678`` / ``H87654321`` (both hash
  chains H0..H3), ``mackeyi`` / ``mackeyr`` / ``zrtpkeyi`` / ``zrtpkeyr``,
  ``patternZRTPHelloHash12345678`` / ``patternZRTPHelloHash87654321`` (the SDP
  a=zrtp-hash values of the two Hellos), ``HelloPacketZrtpHash`` and
  ``ZRTPHASHPATTERN`` (a Hello from libzrtpcpp / PJSIP and its zrtp-hash).
* ``test/bzrtpCryptoTest.cc``: ``keyKDF``, ``patternKDFLabel``,
  ``patternKDFContext``, ``patternKDFHmacLength``, ``patternKDFOutput`` (KDF
  known answers, generated with GNU ZRTP C++), and ``patterCRCinput`` /
  ``patternCRCoutput`` (CRC-32C known answers).

Roles in the exchange: 0x87654321 ("B") is the initiator (it sends Commit and
DHPart2), 0x12345678 ("A") the responder (DHPart1, Confirm1, Conf2ACK); the
test sets the initiator role this way ("87654321 is initiator in our exchange
pattern"). The byte arrays are copied unchanged, as hex.

Not in the source: the DH private values, DHResult, s0 and total_hash of this
exchange (so its SRTP keys and SAS cannot be re-derived), and any SHA-384 KDF
known answer.
"""

from __future__ import annotations

SSRC_A = 0x12345678  # responder
SSRC_B = 0x87654321  # initiator

# --- patternZRTPPackets, in capture order ---

# Hello, sequence 0x09f1, SSRC 0x12345678
HELLO_A = bytes.fromhex(
    "100009f15a52545012345678505a001e48656c6c6f202020312e31304c494e50"
    "484f4e452d5a525450435050e8d526c13a0c4c6ace18aac7c4a4070e657a4dca"
    "78f2cccd20503873e97e08297eb00497c0feb2c92431497f0001123153323536"
    "4145533148533332485338304448336b4448326b4d756c7442333220a0fd0fad"
    "ebe08656e3658102"
)

# Hello, sequence 0x02ce, SSRC 0x87654321
HELLO_B = bytes.fromhex(
    "100002ce5a52545087654321505a001e48656c6c6f202020312e31304c494e50"
    "484f4e452d5a5254504350508d0f5a2079974201994545f70e3106e105c0b924"
    "e9c978c738f59748ef426a3e9242c2cf44ee9c65ca5878f10001123153323536"
    "4145533148533332485338304448336b4448326b4d756c7442333220b3909195"
    "e467a321e35f9c92"
)

# HelloACK, sequence 0x09f2, SSRC 0x12345678
HELLOACK_A = bytes.fromhex("100009f25a52545012345678505a000348656c6c6f41434b770e4407")

# Commit, sequence 0x02d0, SSRC 0x87654321
COMMIT_B = bytes.fromhex(
    "100002d05a52545087654321505a001d436f6d6d69742020d9ff148b34aa69e9"
    "33c162e66be8cd9de30fb76ae86a622bcbe46b9105c7c87e9242c2cf44ee9c65"
    "ca5878f15332353641455331485333324448336b423332201ec0fe2e72064dfb"
    "fc92028c030fb8f891b4e796ac25fdf968c6e967a942b15bbb6d9cd24b13a9ae"
    "255ca9c1"
)

# DHPart1, sequence 0x09f5, SSRC 0x12345678
DHPART1_A = bytes.fromhex(
    "100009f55a52545012345678505a00754448506172743120287c28e4d73d1439"
    "b56d1c479d590af21033de6bd52bfb26a5874de9206b9fddabbcc68dbd5de667"
    "006944b1842c27108c4e588aed7e8b442c3a1302df58b6da8055ecb020c77650"
    "c41ba826115cf5717eb4862217de1408465cac888c416b9522baf83e672094a0"
    "84a393419a1a7c2f04f4143f115402baeec220fa38f7baa4bf4a700268dcb2e9"
    "1a8a87a5e49c42078226b4dae31bdc78c7d8a8005c0014e400fe6c2dce62c971"
    "5ded4e669ff530c00453f6152fe1853bd9409b5007437c3601a1da66c4202f45"
    "c0ccb264639c079d232780a17fc2e0a0fdc39883a3aa6bdc9f6ac33294f080a0"
    "d9f1834148a9b5ed625088ec3332d25fdcccaec974ca0aab820601463530cd68"
    "ec09ab8cb039e5d85ca2e482fe4601bde77f601b5062fb6fee6cf1f79bb71c76"
    "48b5bea5837307a2e273c76834c8ef12c432df373ddc070ea69282bdba20c4b4"
    "8d1f191c150f5f01df671f59d15e9960f6b867e246621130fb819d0bec36e98d"
    "43fe55d961983f2e396a2643b06d08ec2e427e23826fd9bbfd0acd48e7d58ba5"
    "8034ca964f5825ba435e3d1cee72b8358c5dd96924583621b045a4ad40da9498"
    "0fb1ed6cad26030482ff150041870693d486a97eb8d970346d8e6a16e24652b0"
    "785453af"
)

# DHPart2, sequence 0x02d1, SSRC 0x87654321
DHPART2_B = bytes.fromhex(
    "100002d15a52545087654321505a007544485061727432209eb2a58be89637f5"
    "5a4134b2ecda8495f0f89bab614f7c9e56b73bd346babe9aae9797da5f9f89ba"
    "fe61665f9ea45bcbd569cffbfddcac79ac1d0be51575392ee5a92a60d7e348d0"
    "1fd86165fd2e5cef43f56399b34525e3bcf0e1adf784cd8220e36f2c7751f111"
    "2e4a2cfd2f5e74a93799fff74c2da8cf51fd5be751146dbc2f5bb97785adb472"
    "99ad7b6c6adf4dca2fef8b5e4bf3d9fdbd471a72e241d8faa12500a3fe12daf6"
    "16b3b30802fd0a6aab8517d70ff46bdf8fe205f45b1326a9e257b6da76173c52"
    "138d83c02be72ebdb0de984f7a95a175196eda19ff7fdd7001123c9ed7fec322"
    "39ce4f86d8854075d4fe9357bc9b01a47135709d6291474e32a2761606afc7e3"
    "e5dc25ace76825690f978d91328123b108f3a32b3dfbcf99120a59b9bb761671"
    "a20b0a5a6c37999de63a0589f7c6fcf3fe36977786e47c48930b268e31e922cc"
    "d3e05629c826e61fa8b89398ecd97c4a45d371359f14c199d5210bfa0ffb317a"
    "a07035b39b1be765fde37d0bcc344bf15a9f19a48fc830f18799c275552a34d7"
    "819c541282695f8b01c14595f5b12d270da9c393542f57047b20b7ac3368b3ef"
    "9a3395829dfa2ab988060488512c46db83d72fea1f0f24ab03efb061c790dc78"
    "17f29aab"
)

# Confirm1, sequence 0x09f6, SSRC 0x12345678
CONFIRM1_A = bytes.fromhex(
    "100009f65a52545012345678505a0013436f6e6669726d31b121eee267a4fda6"
    "94249a60f02e5ed933e1d84154a37ceae961aef9190db368689ef81a189187c5"
    "6e5e2d5e32a2b26631b8e559c910bba0006cee0c6dfbeb3285b66e93"
)

# Confirm2, sequence 0x02d2, SSRC 0x87654321
CONFIRM2_B = bytes.fromhex(
    "100002d25a52545087654321505a0013436f6e6669726d320fecfa4b45179db3"
    "927d1c53860112d92548ca18b9109504b7c8ee872bec593992961173a6692b11"
    "cd1da173b2c9296f82326a0a564057fbacab20b8e2a92c616a05e8b5"
)

# Conf2ACK, sequence 0x09f7, SSRC 0x12345678
CONF2ACK_A = bytes.fromhex("100009f75a52545012345678505a0003436f6e663241434b23c11b45")

#: The whole capture in order, as patternZRTPPackets lists it.
PACKETS: tuple[bytes, ...] = (
    HELLO_A,
    HELLO_B,
    HELLOACK_A,
    COMMIT_B,
    DHPART1_A,
    DHPART2_B,
    CONFIRM1_A,
    CONFIRM2_B,
    CONF2ACK_A,
)

#: patternZRTPMetaData: (length, sequence number, SSRC) of each packet.
PACKET_METADATA: tuple[tuple[int, int, int], ...] = (
    (136, 0x09F1, 0x12345678),
    (136, 0x02CE, 0x87654321),
    (28, 0x09F2, 0x12345678),
    (132, 0x02D0, 0x87654321),
    (484, 0x09F5, 0x12345678),
    (484, 0x02D1, 0x87654321),
    (92, 0x09F6, 0x12345678),
    (92, 0x02D2, 0x87654321),
    (28, 0x09F7, 0x12345678),
)

# --- H12345678 / H87654321: the hash chains H0, H1, H2, H3 ---

H_A: tuple[bytes, bytes, bytes, bytes] = (
    bytes.fromhex("bbbf7eb114d5d40c6bb0795819c1d083c9e1f42e11cd7ec3aad8b917e6b59e86"),
    bytes.fromhex("287c28e4d73d1439b56d1c479d590af21033de6bd52bfb26a5874de9206b9fdd"),
    bytes.fromhex("7012ef2e852ffc84b88dcc03d78f530163fbd3b02dbb9e98220de3e36425040f"),
    bytes.fromhex("e8d526c13a0c4c6ace18aac7c4a4070e657a4dca78f2cccd20503873e97e0829"),
)

H_B: tuple[bytes, bytes, bytes, bytes] = (
    bytes.fromhex("0902cc13c48403316891054de06df4c96ab5be82e83733b7a9cebeb542aa54ba"),
    bytes.fromhex("9eb2a58be89637f55a4134b2ecda8495f0f89bab614f7c9e56b73bd346babe9a"),
    bytes.fromhex("d9ff148b34aa69e933c162e66be8cd9de30fb76ae86a622bcbe46b9105c7c87e"),
    bytes.fromhex("8d0f5a2079974201994545f70e3106e105c0b924e9c978c738f59748ef426a3e"),
)

# --- mackeyi, mackeyr, zrtpkeyi, zrtpkeyr (the Confirm keys of this exchange) ---

MACKEY_I = bytes.fromhex("dc47e1c74811b154142a91299fa48b4587168d3ae6b00c084fa548d596671a1b")
MACKEY_R = bytes.fromhex("3aa5224326138fd6545940b85cf40f0cbc9c4f7d55eb4ba51e1c42d05eac1206")
ZRTPKEY_I = bytes.fromhex("22f6eaaaa4ad53307197cc686bb0cb55")
ZRTPKEY_R = bytes.fromhex("0950cd9ec2785431932e99311558d02a")

# --- SDP a=zrtp-hash attribute values (RFC 6189 section 8.1) of the two Hellos ---
ZRTP_HASH_A = "1.10 13e9f407367895861f0eee6707ba30aca05a0ad9997625e9279ad5d08485aa9d"
ZRTP_HASH_B = "1.10 8a286f762a00f21907fe937801894ce4f4ac6a7d2b9acd61eb25b014f905df77"

# HelloPacketZrtpHash: a Hello generated by libzrtpcpp (client id "PJS ZRTP 3.0.0").
LIBZRTPCPP_HELLO = bytes.fromhex(
    "100000015a52545076dca7bd505a002648656c6c6f202020312e3130504a5320"
    "5a52545020332e302e302020e4ba78baa02ad4361ab8d2dd578a6816bbe405b8"
    "69b7af064d1c09531cebc6292012a2f06cfd0ffb88d8e6520002445153333834"
    "5332353632465333414553333246533141455331534b3332534b363448533332"
    "48533830454332354448336b454333384448326b4d756c744233322005c9f187"
    "2b41a99a0a1dcd3c"
)
LIBZRTPCPP_ZRTP_HASH = "1.10 3be3a5d605f6bc51951f6eb151a6ecbc071a9a2f4273ddd4affe5215d7300815"

# --- bzrtpCryptoTest.cc: KDF known answers (HMAC-SHA-256 KDF, RFC 6189 section 4.5.1) ---

# keyKDF: the KDF key (in ZRTP these labels are all keyed by s0).
KDF_KEY = bytes.fromhex("33e66c01ca6fe64fb76ffde31cabc0fbad3d3102676b0c090fc996381e0a8c2f")

# patternKDFContext (the same 56 octets in all nine rows): ZIDi || ZIDr || total_hash.
KDF_CONTEXT = bytes.fromhex(
    "f01f2402000000008024adfb94a90690cf9ced13998c51347dc435a74d752544"
    "80c211f2d3205ea71b4ba4eec78eb7357528e56fcf4f749f"
)

#: (patternKDFLabel, patternKDFOutput); the output length is patternKDFHmacLength octets.
KDF_VECTORS: tuple[tuple[bytes, bytes], ...] = (
    (
        b"Responder SRTP master key",
        bytes.fromhex("f2cfc5724acfd7b50e89bed8a5c9f2cd"),
    ),
    (
        b"Responder SRTP master salt",
        bytes.fromhex("3c8fb13fd6ca83fbd6af3bd5ab1c"),
    ),
    (
        b"SAS",
        bytes.fromhex("d269b0718ad58f3c8e0dcf4535811d951847314128319f54c606595b522c5287"),
    ),
    (
        b"ZRTP Session Key",
        bytes.fromhex("c363390bc9ee13aa9e6a00528409ddc90717e01d1ae2dcf9a70ab98886ac6975"),
    ),
    (
        b"retained secret",
        bytes.fromhex("a7272dee77e7990c24b20b9f54ba2b617a23d8a59765829b78072bc51299015c"),
    ),
    (
        b"Responder ZRTP key",
        bytes.fromhex("75767d41829cb697c7a20d6812eadb9a"),
    ),
    (
        b"Initiator ZRTP key",
        bytes.fromhex("08a821460cbd6ce0f1fe3c4c704e3bea"),
    ),
    (
        b"Responder HMAC key",
        bytes.fromhex("2169f15c1b85a23977024d5ea71f481623fe94dc1aabf489b8744d0d373d7cab"),
    ),
    (
        b"Initiator HMAC key",
        bytes.fromhex("1d117befd627cc5a80d0236e8d496be42a6a0118ac4159e861b9b14a784b5d3f"),
    ),
)

# --- bzrtpCryptoTest.cc: CRC known answers ---
# patterCRCinput holds packets without their CRC trailer (a GNU ZRTP C++ Hello,
# HelloACK and DHPart1); patternCRCoutput is what bzrtp_CRC32() returns, which
# byte-swaps the CRC-32C so that writing it big-endian gives the wire trailer.

CRC_VECTORS: tuple[tuple[bytes, int], ...] = (
    (
        bytes.fromhex(
            "100018ca5a52545063674bfb505a001d48656c6c6f202020312e31304c494e50"
            "484f4e452d5a5254504350505d9c1a31fa1de7fd0a9033923a7be5fbf9a3d323"
            "286efc7249eb7b713e067cc994a90690cf9ced13998c51340001122153323536"
            "4145533148533332485338304448336b4d756c744233322080473713dcd6ef54"
        ),
        0x5065AB04,
    ),
    (
        bytes.fromhex("100018cd5a52545063674bfb505a000348656c6c6f41434b"),
        0x9C9EDCCD,
    ),
    (
        bytes.fromhex(
            "100018cf5a52545063674bfb505a00754448506172743120da39dea299f29e17"
            "7bd25e1621fbf3e78fa7df0d187986452d9cf2167f0998113ad1ebf185a72a85"
            "fe415f50805aaa392789c058681c56ae36a6ee54062c06767c8de0f7668285b6"
            "3a2ed1989dd9f18967ace2e654507e24dd9ba30dbfe865d3e34b762bec2842f7"
            "09357942b525572b5371e1ca4025a998213bfbbd14f7b9bb5c51cadce2e6f719"
            "69e448937306170a046a50a151d573f6aebbaab5d1405a8e281502ffd6a20f64"
            "8eed747f4ddc930e87fe9e3186e33088671f6861b7263414b1f5979953ebf155"
            "1bf4a6e921dc2bc41c267e861180e3a2d82a644f1b45f8905a302ac813b9d72b"
            "3256c9ea9fefbbf7c3439e2712bdec1e611dc658f3772a279ab7f11e152b0d67"
            "0607656d896029a14925d4506efee2a88e59f9b35f980d2987d3874535a43f87"
            "5f6fd04ad2f937687ec6aa573e71afb448ea0e7e46f9dbd3b926c4e25034870a"
            "b10d92010ab1b0d5d9b774012e0fabc84a570e942c2d327f6789a2c5a2b3d368"
            "763de89634a9964f66c0103cf64dafc8d3bd386f520f1ba90e92460dba401aec"
            "6880eca0fe1a9ba5d85485159e641c5ed897c24c4ff7e9093c6dc38c1b36d056"
            "d277cdaacf5cffdf2393b5dc089597db682d4b0189b28bd02519abbf49cfa527"
        ),
        0xDA5C92EA,
    ),
)
