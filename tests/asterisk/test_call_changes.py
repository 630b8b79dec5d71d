"""Transfers, pickup, park: the Asterisk adapter follows the real PBX's bridges.

Each fixture in ``fixtures/`` is the AMI event stream a real Asterisk 22.10.1 sent
during one call change (captured by ``tests/integration/test_asterisk_call_changes_real.py``
with linphonec phones). The fake AMI replays it to the adapter, which has a real relay
behind it: each channel that raised ``UserEvent(PbxZrtp)`` gets a mirror when it does,
and the bridge events move the calls' bridge ids (``rebridge``). Replayed up to the
last ``BridgeEnter`` (the call change done, before the test hung up), the legs of the
new bridge share one bridge id that no other call holds: the relay links them.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from pbx_zrtp.pbx.book import Announcement
from tests.asterisk.test_adapter import _until, lab, run
from tests.relay.helpers import free_even_port

FIXTURES = Path(__file__).parent / "fixtures"

#: fixture -> the two phones whose legs the change bridges (channel name prefixes)
CHANGES = {
    "blind-transfer": ("PJSIP/carol-", "PJSIP/dave-"),
    "attended-transfer": ("PJSIP/carol-", "PJSIP/dave-"),
    "park-retrieve": ("PJSIP/carol-", "PJSIP/dave-"),
    "pickup": ("PJSIP/alice-", "PJSIP/dave-"),
}


def events(name: str) -> list[list[tuple[str, str]]]:
    text = (FIXTURES / f"{name}-ami-events.txt").read_bytes().decode()
    out = []
    for block in text.split("\r\n\r\n"):
        fields = [tuple(line.split(": ", 1)) for line in block.split("\r\n") if ": " in line]
        if fields:
            out.append([(k, v) for k, v in fields])
    return out


@pytest.mark.parametrize("change", sorted(CHANGES))
def test_the_legs_of_the_new_bridge_share_a_bridge_id(change: str) -> None:
    stream = events(change)
    last_enter = max(i for i, e in enumerate(stream) if dict(e)["Event"] == "BridgeEnter")

    async def scenario() -> None:
        async with lab() as t:
            names: dict[str, str] = {}  # uniqueid -> channel
            for fields in stream[: last_enter + 1]:
                event = dict(fields)
                kind = event.pop("Event")
                event.pop("Privilege", None)
                if kind == "UserEvent" and event.get("UserEvent") == "PbxZrtp":
                    uid = event["Uniqueid"]
                    names[uid] = event["Channel"]
                    await t.adapter.announce(  # what the adapter does with this event
                        Announcement(
                            uid,
                            event["Channel"],
                            "optional",  # no phone here: the call stays up, pending
                            bridge=event["Linkedid"],
                            port=free_even_port(),
                        )
                    )
                    continue
                if kind == "UserEvent":
                    continue
                t.fake.emit(kind, "call", list(event.items()))
                await asyncio.sleep(0)
            first, second = CHANGES[change]
            legs = {
                uid: f"ast-{uid}"
                for uid, name in names.items()
                if name.startswith((first, second)) and uid in t.adapter.calls
            }
            assert len(legs) == 2, (names, list(t.adapter.calls))

            def settled() -> bool:
                reports = {r.call_id: r for r in t.relay.calls()}
                shared = {reports[c].bridge for c in legs.values() if c in reports}
                return len(shared) == 1 and next(iter(shared)).startswith("bridge:")

            await _until(settled)
            reports = {r.call_id: r for r in t.relay.calls()}
            bridge = reports[next(iter(legs.values()))].bridge
            others = [r for cid, r in reports.items() if cid not in legs.values()]
            # the phone that left (transferer, parker) shares no id with them
            assert all(r.bridge != bridge for r in others), (bridge, others)
            for uid, call in t.adapter.calls.items():
                assert call.bridge == reports[f"ast-{uid}"].bridge  # the adapter's view

    run(scenario())


def test_a_leg_that_leaves_its_bridge_is_unlinked_and_a_third_member_unlinks_both() -> None:
    """The adapter's rules, on hand-made events: two of our legs alone in a bridge
    keep the id they were created with (no needless SASrelay); a foreign channel in
    the bridge (a Local channel, a clear phone) gives each of ours an id of its own;
    a leg that leaves gets none."""

    async def scenario() -> None:
        async with lab() as t:
            for uid in ("1.1", "1.2"):
                await t.adapter.announce(
                    Announcement(
                        uid, f"PJSIP/x-{uid}", "optional", bridge="1.1", port=free_even_port()
                    )
                )

            def enter(uid: str) -> None:
                t.fake.emit(
                    "BridgeEnter",
                    "call",
                    [("BridgeUniqueid", "b1"), ("Channel", f"PJSIP/x-{uid}"), ("Uniqueid", uid)],
                )

            def bridges() -> list[str]:
                return [t.relay.get(f"ast-{uid}").bridge for uid in ("1.1", "1.2")]

            enter("1.1")
            enter("1.2")
            await asyncio.sleep(0.2)
            assert bridges() == ["1.1", "1.1"]  # the call as dialled: unchanged
            enter("9.9")  # a third, foreign channel joins
            await _until(lambda: bridges() == ["bridge:b1/1.1", "bridge:b1/1.2"])
            t.fake.emit(
                "BridgeLeave",
                "call",
                [("BridgeUniqueid", "b1"), ("Channel", "Local/x"), ("Uniqueid", "9.9")],
            )
            await _until(lambda: bridges() == ["bridge:b1", "bridge:b1"])
            t.fake.emit(
                "BridgeLeave",
                "call",
                [("BridgeUniqueid", "b1"), ("Channel", "PJSIP/x-1.1"), ("Uniqueid", "1.1")],
            )
            await _until(lambda: bridges() == ["", "bridge:b1"])

    run(scenario())


def test_the_documented_call_change_extensions_are_the_samples_the_real_pbx_ran() -> None:
    """docs/asterisk.md's [pbx-zrtp-call-changes] block is the sample file's context,
    word for word, and the real-Asterisk lab includes that context from the sample."""
    root = Path(__file__).resolve().parents[2]
    doc = (root / "docs" / "asterisk.md").read_text()
    block = doc.split("```\n[pbx-zrtp-call-changes]\n", 1)[1].split("```", 1)[0]
    sample = (root / "dialplan" / "asterisk" / "extensions_pbx_zrtp.conf").read_text()
    assert "[pbx-zrtp-call-changes]\n" + block in sample
    lab = (root / "tests" / "integration" / "test_asterisk_call_changes_real.py").read_text()
    assert "include => pbx-zrtp-call-changes" in lab


def test_a_masquerade_rename_moves_the_adapters_actions_to_the_new_name() -> None:
    """AMI Rename (a masquerade): variables and hangups then address the new name."""

    async def scenario() -> None:
        async with lab() as t:
            channel, _port = await t.call("optional")
            await _until(lambda: channel.uniqueid in t.adapter.calls)
            t.fake.emit(
                "Rename",
                "call",
                [
                    ("Channel", channel.name),
                    ("Newname", "PJSIP/zalice-renamed"),
                    ("Uniqueid", channel.uniqueid),
                ],
            )
            await _until(lambda: t.adapter.calls[channel.uniqueid].channel.endswith("renamed"))

    run(scenario())


def test_bridges_changed_while_ami_was_down_are_relearned_at_resync() -> None:
    """The transfer happened while the adapter's AMI session was down: no bridge event
    reached it. At its next login it reads Asterisk's bridges (BridgeList, BridgeInfo:
    the fake answers as Asterisk 22.10.1 did, fixtures/resync-bridges-ami.json) and
    links the two legs now alone in one bridge; a leg it had moved before, now in no
    bridge, talks to no one."""

    async def scenario() -> None:
        async with lab() as t:
            carol, _ = await t.call("optional", linkedid="L1")
            dave, _ = await t.call("optional", linkedid="L2")
            erin, _ = await t.call("optional", linkedid="L3")
            await _until(lambda: len(t.adapter.calls) == 3)
            t.fake.emit(  # erin joins a bridge with a foreign channel, then AMI goes down
                "BridgeEnter",
                "call",
                [("BridgeUniqueid", "old"), ("Channel", erin.name), ("Uniqueid", erin.uniqueid)],
            )
            t.fake.emit(
                "BridgeEnter",
                "call",
                [("BridgeUniqueid", "old"), ("Channel", "Local/x"), ("Uniqueid", "9.9")],
            )

            def bridges() -> list[str]:
                return [t.relay.get(f"ast-{c.uniqueid}").bridge for c in (carol, dave, erin)]

            await _until(lambda: bridges() == ["L1", "L2", f"bridge:old/{erin.uniqueid}"])
            t.fake.bridges = {"new": [carol.uniqueid, dave.uniqueid]}
            await t.fake.drop_connections()
            await _until(lambda: bridges() == ["bridge:new", "bridge:new", ""])
            assert t.adapter._bridge_of == {carol.uniqueid: "new", dave.uniqueid: "new"}

    run(scenario())


def test_the_fake_answers_bridgelist_and_bridgeinfo_as_asterisk_did() -> None:
    """The fields of the fake's BridgeList/BridgeInfo answers are those of the real
    Asterisk 22.10.1 transcript (captured by the real-PBX resync test)."""
    import json

    real = json.loads((FIXTURES / "resync-bridges-ami.json").read_text())
    info_key = next(k for k in real if k.startswith("BridgeInfo "))

    async def scenario() -> None:
        async with lab() as t:
            channel, _ = await t.call("optional")
            t.fake.bridges = {"b": [channel.uniqueid]}
            listed = await t.adapter.ami.action_list(Action="BridgeList")
            info = await t.adapter.ami.action_list(Action="BridgeInfo", BridgeUniqueid="b")
            for ours, theirs in ((listed, real["BridgeList"]), (info, real[info_key])):

                def kind(m: dict[str, str]) -> str:
                    return m.get("Event") or m.get("Response", "")

                fields = {kind(m): set(m) - {"_time"} for m in theirs}
                # the same kinds in the same order (one item each here)
                assert [kind(m) for m in ours] == list(dict.fromkeys(kind(m) for m in theirs))
                for mine in ours:
                    assert set(mine) == fields[kind(mine)], (set(mine) ^ fields[kind(mine)], mine)

    run(scenario())
