"""Sends hostile datagrams at a fixed rate from its own process (for relay tests).

    python -m tests.relay.flooder HOST PORT[,PORT...] RATE_PER_PORT SECONDS

Prints the number of datagrams sent. Loopback only; bounded in time.
"""

from __future__ import annotations

import os
import random
import socket
import struct
import sys
import time

from pbx_zrtp.zrtp import packets as p


def samples(rng: random.Random) -> list[bytes]:
    out = [b"", b"\x80", b"\x10\x00\x00\x01ZRTP" + bytes(40), bytes(3000), b"\xff" * 200]
    out += [rng.randbytes(rng.randrange(1, 300)) for _ in range(200)]
    out += [
        struct.pack("!BBHII", 0x80, 0, rng.randrange(65536), 0, rng.getrandbits(32)) + bytes(160)
        for _ in range(200)
    ]
    # A flood of well-formed Hellos (valid CRC) from strangers with random ZIDs.
    for i in range(50):
        hello = p.Hello(
            version=b"1.10",
            client_id=b"flooder         ",
            h3=os.urandom(32),
            zid=os.urandom(12),
            signature_capable=False,
            mitm=False,
            passive=False,
            hash_types=(b"S256",),
            cipher_types=(b"AES1",),
            auth_tag_types=(b"HS32",),
            key_agreement_types=(b"X255",),
            sas_types=(b"B32 ",),
        )
        out.append(p.ZrtpPacket(i + 1, rng.getrandbits(32), hello).serialize())
    return out


def main() -> None:
    host = sys.argv[1]
    ports = [int(x) for x in sys.argv[2].split(",")]
    rate, seconds = int(sys.argv[3]), float(sys.argv[4])
    rng = random.Random(1)
    pool = samples(rng)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.9", 0))
    sent = 0
    start = time.monotonic()
    while time.monotonic() - start < seconds:
        for _ in range(max(1, rate // 100)):
            for port in ports:
                try:
                    sock.sendto(rng.choice(pool), (host, port))
                    sent += 1
                except OSError:
                    pass
        time.sleep(0.01)
    print(sent)


if __name__ == "__main__":
    main()
