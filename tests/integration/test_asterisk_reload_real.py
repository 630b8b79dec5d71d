"""``systemctl reload`` (SIGHUP) of ``pbx-zrtp run`` in front of a real Asterisk: a
secured call in progress keeps its keys and its audio; the next call takes the
re-read ``[asterisk.policies]``. Same lab as ``test_asterisk_real.py`` (its own
Asterisk, relay and linphonec phones; skipped without them)."""

from __future__ import annotations

import signal
import time

import pytest

from tests.integration.procs import Proc, hangup_phone
from tests.integration.test_asterisk_real import A, Lab, lab  # noqa: F401 - the fixture

pytestmark = pytest.mark.integration


def _seen(lab: Lab, exten_started: float) -> dict[str, str]:  # noqa: F811 - a parameter
    return lab.ami.wait_event(
        lambda e: (
            e.get("Event") == "UserEvent"
            and e.get("UserEvent") == "ZrtpSeen"
            and float(e["_time"]) >= exten_started
        ),
        30,
        "UserEvent ZrtpSeen",
    )


def test_reload_applies_a_new_policy_to_the_next_call_and_keeps_the_live_one(
    lab: Lab,  # noqa: F811 - the fixture
) -> None:
    live = lab.phone("reload-live", zrtp=True)
    clear: Proc | None = None
    try:
        started = time.monotonic()
        live.send(f"call sip:600@{A}")
        match, _ = live.wait_for(r"fully encrypted and auth token is (\S+?)\.?\s*$", 30)
        sas = match.group(1)
        seen = _seen(lab, started)
        assert seen["State"] == "secure" and seen["SAS"] == sas, seen
        call_id = f"ast-{seen['Uniqueid']}"
        time.sleep(2)
        before = lab.ctl("show", call_id)["counters"]

        # 610 (auto) resolves to required through [asterisk.policies]; now to off
        config = lab.base / "pbx-zrtp.toml"
        text = config.read_text()
        assert '"610" = "required"' in text
        config.write_text(text.replace('"610" = "required"', '"610" = "off"'))
        mark = len(lab.relay.lines)
        lab.relay.popen.send_signal(signal.SIGHUP)
        lab.relay.wait_for(r"reloaded: log level", 15, mark)
        assert not any("applied only by a restart" in line for line in lab.relay.lines[mark:])

        # the live call: still secure, same SAS, its audio still flowing both ways
        time.sleep(2)
        after = lab.ctl("show", call_id)
        assert after["state"] == "secure" and after["sas"] == sas, after
        for direction in ("phone_in", "pbx_out", "pbx_in", "phone_out"):
            assert after["counters"][direction] > before[direction] + 50, (before, after)

        # the next call: 610 without ZRTP is now off, answered instead of hung up
        clear = phone = lab.phone("reload-clear", zrtp=False)
        started = time.monotonic()
        phone.send(f"call sip:610@{A}")
        seen = _seen(lab, started)
        assert seen["Policy"] == "off" and seen["State"] == "off", seen
        hangup_phone(phone)

        states = [e["state"] for e in lab.relay_events(call_id)]
        assert "secure" in states and "failed" not in states, states
        print("RELOAD:", {"sas": sas, "before": before, "after": after["counters"]})
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{lab.diagnostics()}") from None
    finally:
        hangup_phone(live)
        live.stop()
        if clear is not None:
            clear.stop()
