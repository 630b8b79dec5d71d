"""Log lines under systemd: no timestamps of our own, a syslog priority before every
line (so ``journalctl -p warning`` works), call lines tagged ``[CALLID port N]``."""

from __future__ import annotations

import io
import logging
import os
import pathlib
import re
import signal
import subprocess
import sys
import time

import pytest

from pbx_zrtp import logs
from tests.install_check import PHONE_HOST, clean_env, relay_config
from tests.relay.helpers import RELAY_HOST, free_even_port

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _journal_env(stream: io.TextIOBase | object, monkeypatch: pytest.MonkeyPatch) -> None:
    info = os.fstat(stream.fileno())  # type: ignore[attr-defined]
    monkeypatch.setenv("JOURNAL_STREAM", f"{info.st_dev}:{info.st_ino}")


def test_journal_lines_carry_the_priority_on_every_line_and_no_timestamp(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with open(tmp_path / "journal", "w+") as stream:
        _journal_env(stream, monkeypatch)
        assert logs.under_journal(stream)
        handler = logs.setup("debug", stream)
        try:
            log = logging.getLogger("journal_test")
            log.debug("d")
            log.info("i")
            log.warning("w")
            log.error("e")
            try:
                raise ValueError("boom")
            except ValueError:
                log.exception("x")
            logs.set_level("warning")
            log.info("hidden")
        finally:
            logging.getLogger().removeHandler(handler)
        stream.seek(0)
        lines = stream.read().splitlines()
    assert lines[:4] == [
        "<7>journal_test: d",
        "<6>journal_test: i",
        "<4>journal_test: w",
        "<3>journal_test: e",
    ]
    assert lines[4] == "<3>journal_test: x"
    traceback = lines[5:]
    assert traceback and all(line.startswith("<3>") for line in traceback), traceback
    assert "<3>ValueError: boom" in traceback
    assert not any("hidden" in line for line in lines)


def test_a_terminal_or_a_pipe_gets_timestamps(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # JOURNAL_STREAM inherited from a service by a child writing elsewhere: not the journal
    monkeypatch.setenv("JOURNAL_STREAM", "1:2")
    stream = io.StringIO()
    assert not logs.under_journal(stream)
    handler = logs.setup("info", stream)
    try:
        logging.getLogger("journal_test").warning("w")
    finally:
        logging.getLogger().removeHandler(handler)
    assert re.fullmatch(
        r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} WARNING journal_test: w\n", stream.getvalue()
    )


def test_the_relay_under_systemd_logs_for_the_journal_with_call_tags(
    tmp_path: pathlib.Path,
) -> None:
    port = free_even_port()
    config = relay_config(tmp_path, port, fastpath="auto")
    journal = tmp_path / "journal"
    with open(journal, "w") as sink:
        info = os.fstat(sink.fileno())
        env = clean_env(JOURNAL_STREAM=f"{info.st_dev}:{info.st_ino}", PYTHONPATH=str(ROOT))
        relay = subprocess.Popen(
            [sys.executable, "-m", "pbx_zrtp.cli", "run", "--config", str(config)],
            stdout=sink,
            stderr=sink,
            env=env,
            cwd="/",
        )
    try:
        deadline = time.monotonic() + 30
        while "relay ready" not in journal.read_text():
            assert relay.poll() is None and time.monotonic() < deadline, journal.read_text()
            time.sleep(0.1)
        cli = [sys.executable, "-m", "pbx_zrtp.cli"]
        control = ["ctl", "--control", f"unix:{tmp_path}/control.sock"]
        subprocess.run(
            [*cli, *control, "create", "c-1", str(port), "--policy", "required"],
            env=env,
            check=True,
            capture_output=True,
        )
        phone = subprocess.run(
            [*cli, "endpoint", "--bind", f"{PHONE_HOST}:0", "--peer", f"{RELAY_HOST}:{port}"],
            env=env,
            capture_output=True,
            text=True,
        )
        assert phone.returncode == 0, phone.stdout + phone.stderr
    finally:
        relay.send_signal(signal.SIGINT)  # at once: SIGTERM would drain c-1
        relay.wait(30)
    lines = journal.read_text().splitlines()
    assert lines and all(re.match(r"<[2-7]>", line) for line in lines), lines
    assert not any(re.search(r"\d\d:\d\d:\d\d", line) for line in lines), lines
    assert any(line.startswith("<6>pbx_zrtp.relay: relay ready") for line in lines)
    assert f"<6>pbx_zrtp.relay: [c-1 port {port}] secure" in lines
    assert any(line.startswith(f"<6>pbx_zrtp.relay: [c-1 port {port}] pending") for line in lines)


def test_every_line_about_a_call_carries_its_tag_in_the_adapter_and_the_relay() -> None:
    """A whole Asterisk call (fake AMI, real relay, real phone): what the adapter, the
    relay pool's caller and the relay log about it all start ``[ast-UNIQUEID port N]``,
    and lines about nothing in particular stay untagged."""
    import asyncio

    from tests.asterisk.test_adapter import SETTLED, lab, phone

    stream = io.StringIO()
    root = logging.getLogger()
    level = root.level
    handler = logs.setup("info", stream)
    uniqueid, port = "", 0

    async def scenario() -> None:
        nonlocal uniqueid, port
        async with lab() as t:
            channel, port = await t.call("required")
            uniqueid = channel.uniqueid
            result, state = await asyncio.gather(
                phone(port), channel.wait_for_var("ZRTP_STATE", SETTLED, 10)
            )
            assert state == "secure" and result["ok"]
            await channel.hangup()
            for _ in range(200):
                if not t.adapter.calls:
                    break
                await asyncio.sleep(0.02)
            assert not t.adapter.calls
            logging.getLogger("pbx_zrtp").info("between calls")

    try:
        asyncio.run(asyncio.wait_for(scenario(), 60))
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
    lines = [line.split(": ", 1)[1] for line in stream.getvalue().splitlines() if ": " in line]
    tag = f"[ast-{uniqueid} port {port}] "
    about = [line for line in lines if uniqueid in line or "PJSIP/" in line]
    assert len(about) >= 4, lines
    assert all(line.startswith(tag) for line in about), [x for x in about if not x.startswith(tag)]
    assert any(line.startswith(f"{tag}call PJSIP/") and "policy required" in line for line in about)
    assert f"{tag}secure" in about
    assert any(line.startswith(f"{tag}call {uniqueid} ended (hangup)") for line in about)
    assert "between calls" in lines  # no tag outside a call
