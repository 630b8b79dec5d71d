"""Transfers, park and retrieve, pickup: the FreeSWITCH adapter follows the real PBX's bridges.

Each fixture in ``fixtures/`` is the ESL event stream a real FreeSWITCH 1.10.12 sent
during one transfer by REFER (captured by
``tests/integration/test_freeswitch_call_changes_real.py`` with linphonec phones; the
headers the adapter reads). It is replayed to the adapter, which has a real relay
behind it: each leg that asked for ZRTP is mirrored at its CHANNEL_ANSWER (on one of
the lab's pre-bound ports instead of the real one), and CHANNEL_BRIDGE/UNBRIDGE move
the calls' bridge ids. Replayed up to the last CHANNEL_BRIDGE (the transfer done,
before the test hung up), the two legs of that bridge share one bridge id that no
other call holds: the relay links them. Before the adapter followed the bridges, the
transferred leg kept the old call's id and the new one the A leg's Channel-Call-UUID.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from tests.asterisk.test_adapter import _until, run
from tests.freeswitch.test_adapter import lab
from tests.relay.helpers import RELAY_HOST

FIXTURES = Path(__file__).parent / "fixtures"


def events(name: str) -> list[dict[str, str]]:
    text = (FIXTURES / f"{name}-esl-events.txt").read_text()
    out = []
    for block in text.split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
        if fields:
            out.append(fields)
    return out


@pytest.mark.parametrize(
    "change", ["blind-transfer", "attended-transfer", "park-retrieve", "pickup"]
)
def test_the_legs_of_the_new_bridge_share_a_bridge_id(change: str) -> None:
    stream = events(change)
    last = max(i for i, e in enumerate(stream) if e["Event-Name"] == "CHANNEL_BRIDGE")
    pair = {stream[last]["Bridge-A-Unique-ID"], stream[last]["Bridge-B-Unique-ID"]}

    async def scenario() -> None:
        async with lab(calls=6) as t:
            ports: dict[str, str] = {}  # the real port -> one of the lab's pre-bound ports
            for event in stream[: last + 1]:
                event = dict(event)
                if "variable_local_media_port" in event:
                    real = event["variable_local_media_port"]
                    if real not in ports:
                        ports[real] = str(t.free_ports[len(ports)])
                    event["variable_local_media_port"] = ports[real]
                    event["variable_rtp_adv_audio_ip"] = RELAY_HOST
                t.adapter._on_event(event)
                await asyncio.sleep(0)
            legs = {f"fs-{uuid}" for uuid in pair}

            def settled() -> bool:
                reports = {r.call_id: r for r in t.relay.calls()}
                shared = {reports[c].bridge for c in legs if c in reports}
                return len(shared) == 1 and next(iter(shared)).startswith("bridge:")

            await _until(settled)
            reports = {r.call_id: r for r in t.relay.calls()}
            bridge = reports[next(iter(legs))].bridge
            others = [r for cid, r in reports.items() if cid not in legs]
            assert all(r.bridge != bridge for r in others), (bridge, others)

    run(scenario())


def test_bridges_changed_while_esl_was_down_are_relearned_at_resync() -> None:
    """The transfer happened while the adapter's event socket was down: no
    CHANNEL_BRIDGE reached it. At its next connection it reads ``show bridged_calls``
    (the fake answers as FreeSWITCH 1.10.12 did, fixtures/resync-bridged-calls.json)
    and links the two legs FreeSWITCH now bridges."""

    async def scenario() -> None:
        async with lab() as t:
            carol, _ = await t.call("optional")
            dave, _ = await t.call("optional")
            await _until(lambda: len(t.adapter.calls) == 2)

            def bridges() -> list[str]:
                return [t.relay.get(f"fs-{c.uuid}").bridge for c in (carol, dave)]

            assert bridges()[0] != bridges()[1]
            t.fake.bridged_calls = [(carol.uuid, dave.uuid)]
            await t.fake.drop_connections()
            name = f"bridge:{carol.uuid}+{dave.uuid}"
            await _until(lambda: bridges() == [name, name])

    run(scenario())


def test_the_fake_answers_show_bridged_calls_as_freeswitch_did() -> None:
    real = json.loads((FIXTURES / "resync-bridged-calls.json").read_text())

    async def scenario() -> None:
        async with lab() as t:
            carol, _ = await t.call("optional")
            dave, _ = await t.call("optional")
            t.fake.bridged_calls = [(carol.uuid, dave.uuid)]
            answer = json.loads(await t.adapter.esl.api("show bridged_calls as json"))
            assert answer["row_count"] == 1
            assert list(answer["rows"][0]) == list(real["rows"][0])  # the same columns
            assert answer["rows"][0]["b_uuid"] == dave.uuid
            t.fake.bridged_calls = []
            assert await t.adapter.esl.api("show bridged_calls as json") == '{"row_count": 0}\n'

    run(scenario())
