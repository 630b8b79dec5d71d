"""Stray and forged datagrams to a relay's pre-bound ports, for the real-PBX tests.

Run inside the test's network namespace (``ip netns exec NS python -m
tests.integration.strays …``) so the datagrams come from a LAN address:

- ``burst``: each port gets one datagram of one kind (round robin over the kinds:
  plain RTP, garbage, ZRTP-looking junk with a wrong CRC, a genuine ZRTP Hello as a
  spoofer would send), one socket per kind; then it listens and prints one JSON
  line: per kind the datagrams and bytes sent, and those it got back.
- ``continuous``: plain RTP to every port every ``--interval`` s for ``--duration``
  s (a phone still sending after its BYE, on every port), then the same JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import socket
import struct
import time

from pbx_zrtp.zrtp.config import ZrtpConfiguration
from pbx_zrtp.zrtp.connection import ZrtpConnection

KINDS = ("rtp", "garbage", "zrtp_junk", "hello")


def _rtp(seq: int) -> bytes:
    return struct.pack("!BBHII", 0x80, 0, seq & 0xFFFF, seq * 160, 0x5EED5EED) + b"\xff" * 160


def _datagram(kind: str, seq: int) -> bytes:
    if kind == "rtp":
        return _rtp(seq)
    if kind == "garbage":
        return b"\x41" + os.urandom(39)
    if kind == "zrtp_junk":
        return struct.pack("!BBH", 0x10, 0, seq) + b"ZRTP" + os.urandom(64)
    engine = ZrtpConnection(ZrtpConfiguration(zid=os.urandom(12)), ssrc=0x1234 + seq)
    engine.start(0.0)
    (hello,) = engine.datagrams_to_send()
    return hello


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--bind", required=True)
    parser.add_argument("--target", required=True)
    parser.add_argument("--ports", required=True, help="LOW-HIGH, even ports are used")
    parser.add_argument("--mode", choices=("burst", "continuous"), default="burst")
    parser.add_argument("--listen", type=float, default=6.0)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--interval", type=float, default=0.1)
    args = parser.parse_args()
    low, high = (int(p) for p in args.ports.split("-"))
    ports = [p for p in range(low, high + 1) if p % 2 == 0]
    kinds = KINDS if args.mode == "burst" else ("rtp",)
    socks = {}
    for kind in kinds:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind((args.bind, 0))
        sock.setblocking(False)
        socks[kind] = sock
    stats = {k: {"sent": 0, "sent_bytes": 0, "received": 0, "received_bytes": 0} for k in kinds}

    def send(kind: str, port: int, seq: int) -> None:
        data = _datagram(kind, seq)
        try:
            socks[kind].sendto(data, (args.target, port))
        except OSError:
            return
        stats[kind]["sent"] += 1
        stats[kind]["sent_bytes"] += len(data)

    def drain(until: float) -> None:
        by_fd = {s.fileno(): k for k, s in socks.items()}
        while (left := until - time.monotonic()) > 0:
            ready, _, _ = select.select(list(socks.values()), [], [], left)
            for sock in ready:
                kind = by_fd[sock.fileno()]
                while True:
                    try:
                        data = sock.recv(4096)
                    except OSError:  # would block, or ICMP port unreachable
                        break
                    stats[kind]["received"] += 1
                    stats[kind]["received_bytes"] += len(data)

    if args.mode == "burst":
        for index, port in enumerate(ports):
            send(kinds[index % len(kinds)], port, index)
        drain(time.monotonic() + args.listen)
    else:
        end = time.monotonic() + args.duration
        seq = 0
        while time.monotonic() < end:
            for port in ports:
                send("rtp", port, seq)
            seq += 1
            drain(min(end, time.monotonic() + args.interval))
        drain(time.monotonic() + 1.0)
    for sock in socks.values():
        sock.close()
    print(json.dumps({"ports": len(ports), "kinds": stats}), flush=True)


if __name__ == "__main__":
    main()
