"""A packet sniffer for the real-PBX tests: which RTP reaches the phone straight from the PBX.

Run inside the phone's network namespace (``ip netns exec NS python -m
tests.integration.sniff --iface IF --src A``): an ``AF_PACKET`` socket sees every
frame the phone's interface receives, before any socket of the phone could, so a
packet FreeSWITCH sends from its own address A to the phone is seen whatever port
it goes to. Prints ``ready`` once listening, then one JSON line per UDP datagram
from ``--src`` that looks like RTP/RTCP (version 2) and does not come from the SIP
port: ``{"sport": …, "dport": …, "len": …, "pt": …}``.
"""

from __future__ import annotations

import argparse
import json
import socket
import struct
import sys

ETH_P_ALL = 0x0003


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--iface", required=True)
    parser.add_argument("--src", required=True, help="the PBX's media address A")
    parser.add_argument("--sip-port", type=int, default=5060)
    args = parser.parse_args()
    src = socket.inet_aton(args.src)
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    sock.bind((args.iface, 0))
    print("ready", flush=True)
    while True:
        frame, address = sock.recvfrom(65535)
        if address[2] == socket.PACKET_OUTGOING or len(frame) < 14 + 20 + 8:
            continue
        if struct.unpack("!H", frame[12:14])[0] != 0x0800:  # IPv4 only
            continue
        ip = frame[14:]
        header = (ip[0] & 0x0F) * 4
        if ip[9] != 17 or ip[12:16] != src:  # UDP from A
            continue
        sport, dport = struct.unpack("!HH", ip[header : header + 4])
        payload = ip[header + 8 :]
        if sport == args.sip_port or not payload or payload[0] >> 6 != 2:
            continue
        pt = payload[1] & 0x7F if len(payload) > 1 else -1
        line = {"sport": sport, "dport": dport, "len": len(payload), "pt": pt}
        print(json.dumps(line), flush=True)


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit(0)
