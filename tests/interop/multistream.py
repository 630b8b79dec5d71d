"""Our engine on two UDP streams of one call: a DH exchange, then Multistream (§4.4.3).

``pbx-zrtp endpoint`` runs one stream; this drives two ``ZrtpConnection`` objects
over real loopback sockets, the second one started with the first one's session
once it is secure, and sends SRTP on the second stream.
"""

from __future__ import annotations

import os
import pathlib
import select
import socket
import struct
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from pbx_zrtp.srtp import SrtpContext
from pbx_zrtp.zrtp.config import ZrtpConfiguration
from pbx_zrtp.zrtp.connection import ZrtpConnection
from pbx_zrtp.zrtp.events import HandshakeFailed, Secured
from pbx_zrtp.zrtp.packets import is_zrtp_packet

from .bzrtp_build import finish, run_bzrtp_peer, wait_port_file


@dataclass
class _Stream:
    sock: socket.socket
    peer: tuple[str, int]
    conn: ZrtpConnection | None = None
    secured: Secured | None = None
    failure: str | None = None
    srtp: SrtpContext | None = None
    sent: int = 0
    received_ok: int = 0
    early: list[bytes] = field(default_factory=list)


def run_two_streams(
    peer_ports: tuple[int, int],
    *,
    srtp: int = 10,
    timeout: float = 20.0,
    host: str = "127.0.0.1",
    bind: str = "127.0.0.1",
    **config: object,
) -> tuple[Secured, Secured, int]:
    """Secure stream 1 (DH) then stream 2 (Mult) from ``bind`` with the peer on
    ``host``; returns both Secured events and how many SRTP packets stream 2 received."""
    configuration = ZrtpConfiguration(zid=os.urandom(12), **config)  # type: ignore[arg-type]
    streams = []
    for port in peer_ports:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind((bind, 0))
        streams.append(_Stream(sock, (host, port)))
    first, second = streams
    start = time.monotonic()
    first.conn = ZrtpConnection(configuration, ssrc=int.from_bytes(os.urandom(4), "big"))
    first.conn.start(0.0)
    last_send = 0.0
    try:
        while time.monotonic() - start < timeout:
            now = time.monotonic() - start
            for stream in streams:
                if stream.conn is None:
                    continue
                for datagram in stream.conn.datagrams_to_send():
                    stream.sock.sendto(datagram, stream.peer)
                while (event := stream.conn.next_event()) is not None:
                    if isinstance(event, Secured):
                        stream.secured = event
                        stream.srtp = stream.srtp or SrtpContext(event.keys)
                    elif isinstance(event, HandshakeFailed):
                        stream.failure = event.reason
            if first.failure or second.failure:
                raise AssertionError(f"failed: {first.failure or second.failure}")
            if first.secured is not None and second.conn is None:
                assert first.conn.session is not None
                second.conn = ZrtpConnection(
                    configuration,
                    ssrc=int.from_bytes(os.urandom(4), "big"),
                    session=first.conn.session,
                )
                second.conn.start(now)
                continue
            if second.secured is not None and second.srtp is not None:
                if second.sent < srtp and now - last_send >= 0.02:
                    header = struct.pack("!BBHII", 0x80, 0, second.sent + 1, 160 * second.sent, 7)
                    packet = second.srtp.protect(header + b"\xff" * 160)
                    assert packet is not None
                    second.sock.sendto(packet, second.peer)
                    second.sent += 1
                    last_send = now
                if second.sent >= srtp and (second.received_ok >= srtp or now - last_send > 1.5):
                    assert first.secured is not None
                    return first.secured, second.secured, second.received_ok
            timers = [s.conn.get_timer() for s in streams if s.conn is not None]
            due = min((t for t in timers if t is not None), default=now + 0.02)
            wait = max(0.0, min(due - now, 0.02))
            readable, _, _ = select.select([s.sock for s in streams], [], [], wait)
            now = time.monotonic() - start
            for stream in streams:
                if stream.sock in readable:
                    data, _ = stream.sock.recvfrom(4096)
                    if stream.conn is None:
                        continue
                    if is_zrtp_packet(data):
                        stream.conn.receive_datagram(data, now)
                    elif stream.srtp is not None and stream.srtp.unprotect(data) is not None:
                        stream.received_ok += 1
                        stream.conn.srtp_authenticated(now)
                timer = stream.conn.get_timer() if stream.conn is not None else None
                if stream.conn is not None and timer is not None and timer <= now:
                    stream.conn.handle_timer(now)
        raise AssertionError(
            f"time-out: stream 1 {first.secured is not None}, stream 2 {second.secured is not None}"
        )
    finally:
        for stream in streams:
            stream.sock.close()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def ours_first(
    binary: pathlib.Path,
    tmp: pathlib.Path,
    our_args: list[str],
    peer_args: list[str],
    *,
    delay: float,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """``pbx-zrtp endpoint`` starts first, sending Hellos to a port where the peer
    program only starts ``delay`` seconds later (a phone answering late)."""
    peer_port = _free_port()
    port_file = tmp / f"ours-port-{time.monotonic_ns()}"
    ours = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pbx_zrtp.cli",
            "endpoint",
            "--bind",
            "127.0.0.1:0",
            "--peer",
            f"127.0.0.1:{peer_port}",
            "--port-file",
            str(port_file),
            "--timeout",
            "20",
            *our_args,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    peer = None
    try:
        our_port = wait_port_file(port_file, ours, timeout=10)
        time.sleep(delay)
        peer = run_bzrtp_peer(
            binary,
            [
                "--bind",
                f"127.0.0.1:{peer_port}",
                "--peer",
                f"127.0.0.1:{our_port}",
                "--linger-ms",
                "500",
                "--timeout",
                "20",
                *peer_args,
            ],
        )
        theirs = finish(peer, 25.0)
        mine = finish(ours, 25.0)
    finally:
        for proc in (ours, peer):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.communicate()
    return mine, theirs


def two_streams_with_peer(
    peer_bin: pathlib.Path, tmp_path: pathlib.Path, *, srtp: int
) -> tuple[Secured, Secured, dict[str, Any], int]:
    """A peer program (bzrtp, libzrtp or GNU ZRTP) with a second, Multistream stream:
    (our first stream, our second, the peer's Multistream result, SRTP packets we
    received on the second). Asserts what every peer must agree on: the first
    stream's SAS and key agreement, Mult on both sides with the first's SAS, the
    second stream's keys as the peer has them, and SRTP both ways on it."""
    port_file, ms_port_file = tmp_path / "port", tmp_path / "ms-port"
    proc = run_bzrtp_peer(
        peer_bin,
        [
            *("--bind", "127.0.0.1:0", "--port-file", str(port_file)),
            *("--ms-bind", "127.0.0.1:0", "--ms-port-file", str(ms_port_file)),
            *("--srtp", str(srtp), "--linger-ms", "300", "--timeout", "20"),
        ],
    )
    try:
        ports = (wait_port_file(port_file, proc), wait_port_file(ms_port_file, proc))
        first, second, received = run_two_streams(ports, srtp=srtp)
        theirs = finish(proc, 25.0)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert theirs.get("ok"), theirs
    assert first.sas == theirs["sas"] and first.key_agreement == theirs["key_agreement"]
    ms = theirs["multistream"]
    assert ms["ok"] and ms["key_agreement"] == "Mult" and second.key_agreement == "Mult"
    assert second.multistream and second.sas == first.sas
    assert second.keys.local_key.hex() == ms["srtp_peer_key"]
    assert received == srtp and ms["srtp"]["received_ok"] == srtp, (received, ms)
    return first, second, ms, received
