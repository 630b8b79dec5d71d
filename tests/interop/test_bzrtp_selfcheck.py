"""Self-check of the bzrtp interop harness: two bzrtp_peer processes against each other.

This proves the harness (bzrtp_peer.c + helpers) before it is used against our
own Python engine: both ends must agree on the SAS, the SRTP keys must cross
over (one side's self key is the other's peer key), SRTP must flow both ways,
and bzrtp's SQLite ZID cache must behave as documented (previously-verified
flag, cache mismatch after tampering with the retained secrets).
"""

from __future__ import annotations

import os
import pathlib
import re
import sqlite3
from typing import Any

import pytest

from .bzrtp_build import finish, run_bzrtp_peer, run_pair
from .test_bzrtp_interop import algorithms

pytestmark = pytest.mark.interop

N_SRTP = 20
B32_ALPHABET = "ybndrfg8ejkmcpqxot1uwisza345h769"


def _check_pair(a: dict[str, Any], b: dict[str, Any], n_srtp: int = 0) -> None:
    for r in (a, b):
        assert r["ok"] is True, r
        assert r["returncode"] == 0, r
        assert r["elapsed_ms"] > 0
    assert a["sas"] == b["sas"]
    assert a["sas_raw"] == b["sas_raw"]
    for field in ("sas_type", "key_agreement", "hash", "cipher", "auth_tag"):
        assert a[field] == b[field], field
    assert {a["role"], b["role"]} == {"initiator", "responder"}
    assert a["zid_self"] == b["zid_peer"] and b["zid_self"] == a["zid_peer"]
    assert len(a["zid_self"]) == 24 and a["zid_self"] != b["zid_self"]
    # what one side protects with, the other side unprotects with
    assert a["srtp_self_key"] == b["srtp_peer_key"]
    assert a["srtp_self_salt"] == b["srtp_peer_salt"]
    assert b["srtp_self_key"] == a["srtp_peer_key"]
    assert b["srtp_self_salt"] == a["srtp_peer_salt"]
    assert a["srtp_self_key"] != a["srtp_peer_key"]
    key_len = 32 if a["cipher"] == "AES3" else 16
    for r in (a, b):
        assert len(r["srtp_self_key"]) == 2 * key_len
        assert len(r["srtp_self_salt"]) == 2 * 14
    if a["sas_type"] == "B32":
        assert re.fullmatch(f"[{B32_ALPHABET}]{{4}}", a["sas"]), a["sas"]
    else:
        assert re.fullmatch(r"[A-Za-z]+ [A-Za-z]+", a["sas"]), a["sas"]
        assert a["sas_raw"] == a["sas"].replace(" ", ":")
    if n_srtp:
        for r in (a, b):
            assert r["srtp"]["sent"] == n_srtp, r
            assert r["srtp"]["received_ok"] == n_srtp, r


@pytest.mark.parametrize(
    ("ka", "hash_", "cipher", "auth", "sas"),
    [
        ("X255", "S256", "AES1", "HS32", "B32"),
        ("DH3k", "S256", "AES1", "HS32", "B32"),
        ("DH3k", "S256", "AES3", "HS80", "B32"),
        ("X448", "S384", "AES1", "HS80", "B256"),
        ("X448", "S384", "AES3", "HS32", "B256"),
        ("DH2k", "S256", "AES1", "HS80", "B32"),
    ],
)
def test_pair_negotiates_and_exchanges_srtp(
    bzrtp_peer_bin: pathlib.Path,
    tmp_path: pathlib.Path,
    ka: str,
    hash_: str,
    cipher: str,
    auth: str,
    sas: str,
) -> None:
    args = [*algorithms(ka, hash_, cipher, auth, sas), "--srtp", str(N_SRTP)]
    a, b = run_pair(bzrtp_peer_bin, tmp_path, args, args)
    _check_pair(a, b, N_SRTP)
    assert (a["key_agreement"], a["hash"], a["cipher"], a["auth_tag"], a["sas_type"]) == (
        ka,
        hash_,
        cipher,
        auth,
        sas,
    )
    for r in (a, b):
        assert r["cache_mismatch"] is False
        assert r["previously_verified"] is False


def test_key_agreement_faster_first_choice_wins(
    bzrtp_peer_bin: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    # RFC 6189 4.1.2: different first choices -> the faster one (bzrtp: DH2k<X255<X448<DH3k).
    a, b = run_pair(
        bzrtp_peer_bin, tmp_path, ["--key-agreement", "DH3k,X255"], ["--key-agreement", "X255,DH3k"]
    )
    _check_pair(a, b)
    assert a["key_agreement"] == "X255"


ALICE = "sip:alice@example.org"
BOB = "sip:bob@example.org"
CAROL = "sip:carol@example.org"


def _cache_args(path: pathlib.Path, self_uri: str, peer_uri: str) -> list[str]:
    return ["--cache", str(path), "--self-uri", self_uri, "--peer-uri", peer_uri]


def test_passive_side_answers_a_late_peer(
    bzrtp_peer_bin: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    # bzrtp stops retransmitting Hello after 20 tries (~4 s); the passive side (no --peer)
    # must still complete when the peer shows up later.
    a, b = run_pair(
        bzrtp_peer_bin, tmp_path, ["--timeout", "15"], ["--srtp", "3"], start_b_after=4.5
    )
    _check_pair(a, b)
    assert b["srtp"]["sent"] == 3
    assert a["elapsed_ms"] > 4000 and b["elapsed_ms"] < 2000


def _tamper(cache: pathlib.Path, columns: tuple[str, ...]) -> int:
    """Overwrite retained secrets of every peer row in bzrtp's cache; return rows changed."""
    db = sqlite3.connect(cache)
    try:
        # schema: ziduri(zuid, zid, selfuri, peeruri, active) -- peeruri 'self' holds own ZID
        #         zrtp(zuid, rs1, rs2, aux, pbx, pvs)
        sets = ", ".join(f"{c} = randomblob(32)" for c in columns)
        cur = db.execute(f"UPDATE zrtp SET {sets} WHERE rs1 IS NOT NULL")
        db.commit()
        return cur.rowcount
    finally:
        db.close()


def test_cache_verified_flag_and_mismatch(
    bzrtp_peer_bin: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    cache_a = _cache_args(tmp_path / "alice.sqlite", ALICE, BOB)
    cache_b = _cache_args(tmp_path / "bob.sqlite", BOB, ALICE)
    srtp = ["--srtp", "5"]

    # 1st call: empty caches, both users confirm the SAS
    a1, b1 = run_pair(
        bzrtp_peer_bin,
        tmp_path,
        [*cache_a, *srtp, "--mark-verified"],
        [*cache_b, *srtp, "--mark-verified"],
    )
    _check_pair(a1, b1, 5)
    for r in (a1, b1):
        assert r["cache_mismatch"] is False and r["previously_verified"] is False

    # 2nd call: rs1 matches, SAS was verified by both -> previously verified
    a2, b2 = run_pair(bzrtp_peer_bin, tmp_path, [*cache_a, *srtp], [*cache_b, *srtp])
    _check_pair(a2, b2, 5)
    for r in (a2, b2):
        assert r["cache_mismatch"] is False and r["previously_verified"] is True
    # the ZIDs persist in the cache
    assert (a2["zid_self"], b2["zid_self"]) == (a1["zid_self"], b1["zid_self"])
    assert a2["sas"] != a1["sas"] or a2["srtp_self_key"] != a1["srtp_self_key"]

    # Tampering rs1 alone is NOT a mismatch for bzrtp: after call 2 both sides hold the
    # same rs2 (call 1's rs1) and bzrtp also accepts rs2 == peer's rs2.
    assert _tamper(tmp_path / "alice.sqlite", ("rs1",)) == 1
    a3, b3 = run_pair(bzrtp_peer_bin, tmp_path, [*cache_a, *srtp], [*cache_b, *srtp])
    _check_pair(a3, b3, 5)
    assert a3["cache_mismatch"] is False and b3["cache_mismatch"] is False

    # Tampering rs1 and rs2: cache mismatch, the verified flag is dropped; keys still work.
    assert _tamper(tmp_path / "alice.sqlite", ("rs1", "rs2")) == 1
    a4, b4 = run_pair(bzrtp_peer_bin, tmp_path, [*cache_a, *srtp], [*cache_b, *srtp])
    _check_pair(a4, b4, 5)
    assert a4["cache_mismatch"] or b4["cache_mismatch"]
    for r in (a4, b4):
        assert r["previously_verified"] is False

    # bzrtp does not store the new rs1 after a mismatch until the SAS is verified: the
    # mismatch persists on the next call; confirming the SAS then repairs the cache.
    a5, b5 = run_pair(
        bzrtp_peer_bin, tmp_path, [*cache_a, "--mark-verified"], [*cache_b, "--mark-verified"]
    )
    _check_pair(a5, b5)
    assert a5["cache_mismatch"] or b5["cache_mismatch"]
    a6, b6 = run_pair(bzrtp_peer_bin, tmp_path, cache_a, cache_b)
    _check_pair(a6, b6)
    for r in (a6, b6):
        assert r["cache_mismatch"] is False and r["previously_verified"] is True


def test_cache_is_keyed_by_uris(bzrtp_peer_bin: pathlib.Path, tmp_path: pathlib.Path) -> None:
    """Same two ZIDs, but alice now calls with another peer URI: she has no secret
    for (bob's ZID, alice, carol) while bob still has one for alice -> bob sees a mismatch."""
    cache_b = _cache_args(tmp_path / "bob.sqlite", BOB, ALICE)
    a1, b1 = run_pair(
        bzrtp_peer_bin, tmp_path, _cache_args(tmp_path / "alice.sqlite", ALICE, BOB), cache_b
    )
    _check_pair(a1, b1)
    a2, b2 = run_pair(
        bzrtp_peer_bin, tmp_path, _cache_args(tmp_path / "alice.sqlite", ALICE, CAROL), cache_b
    )
    _check_pair(a2, b2)
    assert a2["zid_self"] == a1["zid_self"]
    assert a2["cache_mismatch"] is False
    assert b2["cache_mismatch"] is True


def test_timeout_reports_failure(bzrtp_peer_bin: pathlib.Path, tmp_path: pathlib.Path) -> None:
    # nobody listens on the peer port: bzrtp keeps sending Hello, never goes secure
    proc = run_bzrtp_peer(
        bzrtp_peer_bin,
        ["--bind", "127.0.0.1:0", "--peer", "127.0.0.1:9", "--timeout", "0.5"],
    )
    r = finish(proc, timeout=10)
    assert r["ok"] is False and r["returncode"] == 1
    assert "timeout" in r["error"] and "Hello" in r["error"]


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["--bind", "127.0.0.1:0", "--key-agreement", "EC99"],
        ["--bind", "nonsense"],
        ["--bind", "127.0.0.1:0", "--cache", "x.sqlite"],
    ],
)
def test_bad_arguments(bzrtp_peer_bin: pathlib.Path, args: list[str]) -> None:
    r = finish(run_bzrtp_peer(bzrtp_peer_bin, args), timeout=10)
    assert r["ok"] is False and r["returncode"] == 1 and r["error"]


def test_garbage_input_does_not_crash(bzrtp_peer_bin: pathlib.Path, tmp_path: pathlib.Path) -> None:
    """Random datagrams, truncated and corrupted ZRTP packets before a real peer talks."""
    import socket
    import time

    from .bzrtp_build import wait_port_file

    port_file = tmp_path / "port"
    proc = run_bzrtp_peer(
        bzrtp_peer_bin,
        ["--bind", "127.0.0.1:0", "--port-file", str(port_file), "--timeout", "1"],
    )
    try:
        port = wait_port_file(port_file, proc)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            hdr = b"\x10\x00\x00\x01ZRTP\x00\x00\x00\x01"
            for i in range(300):
                body = os.urandom(i % 200)
                pkt = hdr + b"\x50\x5a" + body if i % 2 else os.urandom(i % 1600)
                s.sendto(pkt, ("127.0.0.1", port))
            s.sendto(hdr + b"\x50\x5a\x00\x16Hello   " + os.urandom(2000), ("127.0.0.1", port))
            time.sleep(0.2)
        r = finish(proc, timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert r["returncode"] == 1 and r["ok"] is False and "timeout" in r["error"], r
