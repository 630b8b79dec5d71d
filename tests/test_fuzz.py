"""The fuzz targets in CI: seed corpus, a short atheris run, Hypothesis properties.

The full campaign is ``bench/fuzz.py`` (docs/reliability.md); this file keeps the
targets honest on every run: each replays its seed corpus (real traffic and every
input that once found a bug), atheris runs each target briefly with a fixed seed,
and Hypothesis checks the parser round trip and the relay datagram path.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench import fuzz_targets as ft
from pbx_zrtp.config import ConfigError
from pbx_zrtp.relay.config import load_config
from pbx_zrtp.zrtp import packets as p

ROOT = Path(__file__).resolve().parents[1]
TARGETS = ("packets", "engine", "kem", "relay", "ami", "esl", "control", "fastpath")
PROPERTIES = settings(
    derandomize=True,
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@pytest.fixture(autouse=True, scope="module")
def _logging_as_found() -> Iterator[None]:
    """The fuzz targets' trap turns ``pbx_zrtp``'s propagation off and the root's
    level to CRITICAL for the whole process: undone after this module, or a later
    test reading log lines (the call tags) sees none."""
    names = ("pbx_zrtp", "panoramisk", "asyncio", "")
    saved = [(logging.getLogger(n), logging.getLogger(n).level) for n in names]
    ours = logging.getLogger("pbx_zrtp")
    propagate, handlers = ours.propagate, list(ours.handlers)
    yield
    ours.propagate, ours.handlers[:] = propagate, handlers
    for logger, level in saved:
        logger.setLevel(level)  # setLevel clears the loggers' cached levels


@pytest.mark.filterwarnings("ignore:The 'warn' function is deprecated:DeprecationWarning")
@pytest.mark.parametrize("name", TARGETS)
def test_every_seed_of_the_corpus_runs_clean(name: str) -> None:
    files = ft.corpus_files(name)
    assert files, f"tests/fuzz_corpus/{name} is empty"
    target: Any = ft.make_target(name)
    try:
        for path in files:
            target(path.read_bytes())  # raises on a crash or a broken invariant
    finally:
        if hasattr(target, "close"):
            target.close()


def test_corpus_stays_small() -> None:
    total = sum(
        f.stat().st_size for f in (ROOT / "tests" / "fuzz_corpus").rglob("*") if f.is_file()
    )
    assert total < 2_000_000


def test_short_deterministic_atheris_run_of_every_target(tmp_path: Path) -> None:
    pytest.importorskip("atheris")
    figures = tmp_path / "fuzz.json"
    proc = subprocess.run(
        [
            *(sys.executable, str(ROOT / "bench" / "fuzz.py"), "--runs", "300", "--seed", "7"),
            *("--artifacts", str(tmp_path / "artifacts"), "--json", str(figures)),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    results = json.loads(figures.read_text())["results"]
    assert sorted(r["target"] for r in results) == sorted(TARGETS)
    for result in results:
        assert result["inputs"] == 300, result
        assert result["crashes"] == [], result
        assert result["cov"] > 50, result  # the instrumentation saw our code


def test_a_config_file_that_is_not_utf8_is_a_config_error(tmp_path: Path) -> None:
    # Found by the control target: tomllib raised UnicodeDecodeError through load_config.
    path = tmp_path / "relay.toml"
    path.write_bytes(b'[asterisk]\npolicies = { "6\xcbX" = "required" }\n')
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config(path)


# ---------------------------------------------------------------------------- Hypothesis

_blocks = st.lists(st.binary(min_size=4, max_size=4), max_size=7).map(tuple)


def _b(size: int) -> st.SearchStrategy[bytes]:
    return st.binary(min_size=size, max_size=size)


_words = st.integers(min_value=1, max_value=64).flatmap(lambda n: _b(4 * n))
_messages = st.one_of(
    st.builds(
        p.Hello,
        version=_b(4),
        client_id=_b(16),
        h3=_b(32),
        zid=_b(12),
        signature_capable=st.booleans(),
        mitm=st.booleans(),
        passive=st.booleans(),
        hash_types=_blocks,
        cipher_types=_blocks,
        auth_tag_types=_blocks,
        key_agreement_types=_blocks,
        sas_types=_blocks,
        mac=_b(8),
    ),
    st.builds(
        p.Commit,
        h2=_b(32),
        zid=_b(12),
        hash_type=_b(4),
        cipher_type=_b(4),
        auth_tag_type=_b(4),
        key_agreement_type=st.sampled_from([b"X255", b"DH3k", b"EC25"]),
        sas_type=_b(4),
        hvi=_b(32),
        mac=_b(8),
    ),
    st.builds(
        p.Commit,
        **{k: _b(n) for k, n in (("h2", 32), ("zid", 12))},
        hash_type=_b(4),
        cipher_type=_b(4),
        auth_tag_type=_b(4),
        key_agreement_type=st.just(b"Mult"),
        sas_type=_b(4),
        nonce=_b(16),
        mac=_b(8),
    ),
    st.builds(
        p.Commit,
        h2=_b(32),
        zid=_b(12),
        hash_type=_b(4),
        cipher_type=_b(4),
        auth_tag_type=_b(4),
        key_agreement_type=st.just(b"Prsh"),
        sas_type=_b(4),
        nonce=_b(16),
        key_id=_b(8),
        mac=_b(8),
    ),
    *(
        st.builds(
            cls,
            h1=_b(32),
            rs1_id=_b(8),
            rs2_id=_b(8),
            aux_secret_id=_b(8),
            pbx_secret_id=_b(8),
            pv=_words,
            mac=_b(8),
        )
        for cls in (p.DHPart1, p.DHPart2)
    ),
    *(
        st.builds(
            cls,
            confirm_mac=_b(8),
            cfb_iv=_b(16),
            encrypted=st.integers(10, 60).flatmap(lambda n: _b(4 * n)),
        )
        for cls in (p.Confirm1, p.Confirm2)
    ),
    st.builds(
        p.SasRelay,
        mac=_b(8),
        cfb_iv=_b(16),
        encrypted=st.integers(10, 60).flatmap(lambda n: _b(4 * n)),
    ),
    st.builds(p.Error, code=st.integers(0, 2**32 - 1)),
    st.builds(p.GoClear, clear_mac=_b(8)),
    st.builds(p.Ping, version=_b(4), endpoint_hash=_b(8)),
    st.builds(
        p.PingAck,
        version=_b(4),
        sender_endpoint_hash=_b(8),
        received_endpoint_hash=_b(8),
        ssrc=st.integers(0, 2**32 - 1),
    ),
    st.sampled_from([p.HelloAck(), p.Conf2Ack(), p.ErrorAck(), p.ClearAck(), p.RelayAck()]),
)


@PROPERTIES
@given(_messages, st.integers(0, 0xFFFF), st.integers(0, 2**32 - 1))
def test_every_message_round_trips_through_the_wire_format(
    message: p.Message, sequence: int, ssrc: int
) -> None:
    packet = p.ZrtpPacket(sequence, ssrc, message)
    wire = packet.serialize()
    assert p.ZrtpPacket.parse(wire) == packet
    ft.target_packets(b"\x00" + wire)  # and byte-exact back, via the fuzz target's check


@PROPERTIES
@given(st.binary(max_size=600))
def test_arbitrary_bytes_only_ever_raise_zrtp_protocol_error(data: bytes) -> None:
    for mode in range(5):
        ft.target_packets(bytes([mode]) + data)


@pytest.fixture(scope="module")
def relay_target() -> Iterator[ft.RelayTarget]:
    target = ft.RelayTarget()
    yield target
    target.close()


@PROPERTIES
@given(st.binary(min_size=2, max_size=400))
def test_the_relay_datagram_path_never_raises_nor_leaks_clear_media(
    relay_target: ft.RelayTarget, data: bytes
) -> None:
    relay_target(data)  # raises FuzzFailure on clear media under required before secure
