"""``pbx-zrtp endpoint`` and ``pbx-zrtp demo`` as a user runs them (real UDP on loopback)."""

from __future__ import annotations

import asyncio
import json
import pathlib
import socket
import subprocess
import sys
from typing import Any

import pytest

from pbx_zrtp.cli import main
from pbx_zrtp.endpoint import EndpointError, EndpointOptions, run_endpoint
from pbx_zrtp.zrtp.config import ZrtpConfiguration


def cli(*args: str, timeout: float = 30) -> tuple[int, dict[str, Any]]:
    proc = subprocess.run(
        [sys.executable, "-m", "pbx_zrtp.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1, proc.stdout + proc.stderr  # exactly one JSON line
    return proc.returncode, json.loads(lines[0])


def test_demo_secures_and_exchanges_srtp() -> None:
    code, result = cli("demo", "--srtp", "10")
    assert code == 0 and result["ok"]
    assert result["initiator"]["sas"] == result["responder"]["sas"]
    assert result["initiator"]["srtp"] == {"sent": 10, "received_ok": 10}
    assert result["responder"]["srtp"] == {"sent": 10, "received_ok": 10}
    assert "srtp_self_key" not in result["initiator"]  # the demo prints no keys


def test_two_endpoint_processes_with_cache_and_port_file(tmp_path: pathlib.Path) -> None:
    port_file = tmp_path / "port"
    responder = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pbx_zrtp.cli",
            "endpoint",
            "--role",
            "responder",
            "--port-file",
            str(port_file),
            "--cache",
            str(tmp_path / "r.db"),
            "--srtp",
            "5",
            "--timeout",
            "20",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        for _ in range(200):
            if port_file.exists():
                break
            try:
                responder.wait(0.05)
                pytest.fail(responder.stderr.read() if responder.stderr else "responder died")
            except subprocess.TimeoutExpired:
                pass
        port = int(port_file.read_text())
        code, ours = cli(
            "endpoint",
            "--peer",
            f"127.0.0.1:{port}",
            "--role",
            "initiator",
            "--cache",
            str(tmp_path / "i.db"),
            "--srtp",
            "5",
            "--key-agreement",
            "DH3k",
            "--sas",
            "B256",
        )
        out, _ = responder.communicate(timeout=20)
    finally:
        if responder.poll() is None:
            responder.kill()
    theirs = json.loads(out)
    assert code == 0 and ours["ok"] and theirs["ok"]
    assert ours["sas"] == theirs["sas"] and len(ours["sas"].split()) == 2
    assert ours["key_agreement"] == "DH3k" and ours["role"] == "initiator"
    assert ours["srtp_self_key"] == theirs["srtp_peer_key"]
    assert ours["srtp"]["received_ok"] == 5 and theirs["srtp"]["received_ok"] == 5
    assert (tmp_path / "i.db").stat().st_mode & 0o777 == 0o600


def test_unreachable_peer_fails_with_one_json_line() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))  # bound but never answers
        port = silent.getsockname()[1]
        code, result = cli("endpoint", "--peer", f"127.0.0.1:{port}", "--timeout", "1")
    assert code == 1 and result["ok"] is False
    assert "time-out" in result["error"]


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--key-agreement", "FOO1"], "unsupported key agreement type 'FOO1'"),
        (["--cipher", "AES1,AES1"], "duplicates"),
        (["--srtp", "-1"], "--srtp"),
        (["--timeout", "0"], "--timeout"),
        (["--linger", "61"], "--linger"),
    ],
)
def test_bad_arguments_are_named(args: list[str], fragment: str) -> None:
    code, result = cli("endpoint", "--peer", "127.0.0.1:9", *args)
    assert code == 2 and result["ok"] is False and fragment in result["error"]


def test_bad_address_is_rejected_by_the_parser(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["endpoint", "--peer", "nohost"])
    assert exc.value.code == 2
    assert "is not HOST:PORT" in capsys.readouterr().err


def test_endpoint_reports_peer_error() -> None:
    """A peer that refuses our version: the Error code reaches the user."""

    async def scenario() -> str:
        loop = asyncio.get_running_loop()
        ready: asyncio.Future[tuple[str, int]] = loop.create_future()
        # Both sides use one ZID: the responder answers Error 0x90 (equal ZIDs).
        zid = b"\x01" * 12
        responder = asyncio.ensure_future(
            run_endpoint(
                ZrtpConfiguration(zid=zid, role="responder"),
                EndpointOptions(bind=("127.0.0.1", 0), peer=None, timeout=5),
                ready=ready,
            )
        )
        address = await ready
        try:
            await run_endpoint(
                ZrtpConfiguration(zid=zid, role="initiator"),
                EndpointOptions(bind=("127.0.0.1", 0), peer=address, timeout=5),
            )
        except EndpointError as exc:
            message = str(exc)
        else:
            message = "no error"
        with pytest.raises(EndpointError):
            await responder
        return message

    message = asyncio.run(scenario())
    assert "Error 0x90" in message or "own ZID" in message


def test_linger_answers_the_initiators_confirm2_repeat() -> None:
    """A responder endpoint with --linger is still there when its Conf2ACK is lost:
    the initiator's repeated Confirm2 gets a Conf2ACK and the initiator completes."""
    from pbx_zrtp.zrtp import packets as zp
    from pbx_zrtp.zrtp.connection import State, ZrtpConnection
    from pbx_zrtp.zrtp.events import Secured

    async def scenario() -> tuple[State, int]:
        loop = asyncio.get_running_loop()
        ready: asyncio.Future[tuple[str, int]] = loop.create_future()
        responder = asyncio.ensure_future(
            run_endpoint(
                ZrtpConfiguration(zid=b"R" * 12, role="responder"),
                EndpointOptions(bind=("127.0.0.1", 0), peer=None, timeout=10, linger=2.0),
                ready=ready,
            )
        )
        peer = await ready
        initiator = ZrtpConnection(ZrtpConfiguration(zid=b"I" * 12, role="initiator"), ssrc=7)
        acks_dropped = 0
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", 0))
        sock.setblocking(False)
        initiator.start(loop.time())
        deadline = loop.time() + 10
        try:
            while initiator.state is not State.SECURE and loop.time() < deadline:
                for datagram in initiator.datagrams_to_send():
                    sock.sendto(datagram, peer)
                try:
                    data = sock.recv(4096)
                except BlockingIOError:
                    await asyncio.sleep(0.005)
                    initiator.handle_timer(loop.time())
                    continue
                message = zp.ZrtpPacket.parse(data).message
                if isinstance(message, zp.Conf2Ack) and not acks_dropped:
                    acks_dropped += 1  # lost on the way: only the lingering responder helps
                    continue
                if zp.is_zrtp_packet(data):
                    initiator.receive_datagram(data, loop.time())
            events = []
            while (event := initiator.next_event()) is not None:
                events.append(event)
            assert any(isinstance(e, Secured) for e in events)
            result = await responder
            assert result["ok"]
        finally:
            sock.close()
        return initiator.state, acks_dropped

    state, dropped = asyncio.run(scenario())
    assert state is State.SECURE and dropped == 1
