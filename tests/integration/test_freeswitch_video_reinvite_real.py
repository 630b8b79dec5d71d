# ruff: noqa: F811
"""Video added by re-INVITE through a real FreeSWITCH (issue 15, item 1).

linphonec starts an audio-only call (``camera off``), then adds video (``camera on``:
a re-INVITE with an H264 video stream). FreeSWITCH answers it with a new
``local_video_port`` from its RTP range, which the relay has pre-bound; the phone
keys that stream by ZRTP Multistream at once. The adapter learns of the new stream
from FreeSWITCH's ``sofia::reinvite`` event (fired after the 200 OK) and names the
port as the call's video; the relay keys it by Multistream under the call's SAS.

The ESL events of the call are kept in the test's tmp directory;
``tests/freeswitch/fixtures/video-reinvite-esl-events.txt`` holds the ones the fake
replays.
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from tests.integration import test_freeswitch_real
from tests.integration.procs import write

# The lab fixture of test_freeswitch_real, its own instance for this module (the
# tests' `lab` parameters name it, hence F811).
from tests.integration.test_freeswitch_real import Lab, lab  # noqa: F401

pytestmark = pytest.mark.integration

SECURE = r"fully encrypted and auth token is (\S+?)\.?\s*$"
KEEP = (
    "Event-Name",
    "Event-Subclass",
    "Unique-ID",
    "Channel-Call-UUID",
    "Caller-Destination-Number",
    "Caller-Caller-ID-Number",
    "Channel-Name",
    "Hangup-Cause",
    "variable_pbx_zrtp_policy",
    "variable_rtp_adv_audio_ip",
    "variable_rtp_adv_video_ip",
    "variable_local_media_port",
    "variable_local_video_port",
    "variable_rtp_video_recv_pt",
    "Event-Calling-Function",
    "channel-video-read-codec-name",
    "channel-video-write-codec-name",
)


def _save_events(lab: Lab, name: str, uuid: str, since: int) -> str:
    out = []
    for event in lab.esl.events[since:]:
        if event.get("Unique-ID") != uuid:
            continue
        out.append("\n".join(f"{k}: {event[k]}" for k in KEEP if k in event))
    return str(write(lab.base / f"{name}-esl-events.txt", "\n\n".join(out) + "\n\n"))


def _video(lab: Lab, call_id: str) -> dict[str, Any] | None:
    report = lab.ctl("show", call_id)
    return next((s for s in report.get("streams", []) if s["name"] == "video"), None)


@pytest.mark.parametrize("origin", ["phone", "freeswitch"])
def test_video_added_by_re_invite_is_secured_by_multistream(
    lab: Lab, monkeypatch: pytest.MonkeyPatch, origin: str
) -> None:
    """``phone``: linphonec's ``camera on`` re-INVITEs with video (FreeSWITCH fires
    ``sofia::reinvite``); ``freeswitch``: ``uuid_media_reneg <uuid> =PCMU,H264``
    re-INVITEs the phone with video (FreeSWITCH fires only CODEC events)."""
    reply, _ = lab.esl.command("event plain CODEC CUSTOM sofia::reinvite")
    assert reply.get("Reply-Text", "").startswith("+OK"), reply
    # video capable, but calls start audio-only (linphonec: "later add video using
    # 'camera on'"); it accepts video offered to it (automatically_accept=1)
    audio_first = test_freeswitch_real.VIDEO.replace(
        "automatically_initiate=1", "automatically_initiate=0"
    )
    monkeypatch.setattr(test_freeswitch_real, "VIDEO", audio_first)
    phone = lab.phone(f"phone-reinvite-{origin}", zrtp=True, video=True)
    try:
        phone.send("camera off")
        phone.wait_for(r"Camera is disabled", 10)
        started, since = time.monotonic(), len(lab.esl.events)
        phone.send(f"call sip:9712@{lab.net.a}")
        match, _ = phone.wait_for(SECURE, 30)
        phone_sas = match.group(1)
        answer = lab.esl.wait_event(
            lambda e: e.get("Event-Name") == "CHANNEL_ANSWER" and float(e["_time"]) >= started,
            10,
            "CHANNEL_ANSWER",
        )
        uuid = answer["Unique-ID"]
        call_id = f"fs-{uuid}"
        assert not answer.get("variable_local_video_port"), "the call started with video"
        assert _video(lab, call_id) is None
        time.sleep(1)
        added = time.monotonic()
        if origin == "phone":
            phone.send("camera on")
            trigger = lab.esl.wait_event(
                lambda e: (
                    e.get("Event-Subclass") == "sofia::reinvite" and e.get("Unique-ID") == uuid
                ),
                15,
                "sofia::reinvite",
            )
        else:
            assert "+OK" in lab.esl.api(f"uuid_media_reneg {uuid} =PCMU,H264")
            trigger = lab.esl.wait_event(
                lambda e: (
                    e.get("Event-Name") == "CODEC"
                    and e.get("Unique-ID") == uuid
                    and bool(e.get("channel-video-read-codec-name"))
                ),
                15,
                "CODEC (video)",
            )
        video_port = lab.esl.getvar(uuid, "local_video_port")
        deadline = time.monotonic() + 20
        video = _video(lab, call_id)
        while time.monotonic() < deadline and (video is None or video["state"] == "pending"):
            time.sleep(0.2)
            video = _video(lab, call_id)
        time.sleep(0.5)  # the trigger's companions (the write codec's CODEC event)
        events_path = _save_events(lab, f"video-{origin}-reinvite", uuid, since)
        assert video is not None, (video_port, lab.calls(), events_path)
        assert video["port"] == int(video_port), video
        assert video["state"] == "secure" and video["key_agreement"] == "Mult", video
        assert video["sas"] == phone_sas, video
        time.sleep(3)
        video = _video(lab, call_id)
        assert video is not None
        counters = video["counters"]
        assert counters["phone_in"] > 0 and counters["pbx_out"] > 0, counters
        assert counters["drops"].get("srtp_auth", 0) == 0, counters
        names = ("pbx_zrtp_state_video", "zrtp_secure_media_confirmed_video", "remote_video_ip")
        values = {name: lab.esl.getvar(uuid, name) for name in names}
        assert values == {
            "pbx_zrtp_state_video": "secure",
            "zrtp_secure_media_confirmed_video": "true",
            "remote_video_ip": lab.net.r,
        }, values
        hangup = lab.hang_up(phone, uuid)
        freeswitch_sent = int(hangup.get("variable_rtp_video_out_packet_count", "0") or 0)
        ended = lab.relay_events(call_id)[-1]
        relay_heard = next(s for s in ended["streams"] if s["name"] == "video")["counters"]
        summary = {
            "sas": phone_sas,
            "video_port": video_port,
            "origin": origin,
            "trigger_after_s": round(float(trigger["_time"]) - added, 3),
            "video": [video.get(k) for k in ("state", "key_agreement", "cipher", "auth_tag")],
            "video_handshake_ms": video.get("handshake_ms"),
            "video_counters_at_3s": counters,
            "events": events_path,
            "freeswitch_video_out": freeswitch_sent,
            "relay_video_pbx_in": relay_heard["pbx_in"],
        }
        print("REAL VIDEO RE-INVITE:", json.dumps(summary))
        # What FreeSWITCH sent before its auto-adjust latched went straight to the phone.
        assert 0 <= freeswitch_sent - relay_heard["pbx_in"] <= 5, summary
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{lab.diagnostics()}") from None
    finally:
        phone.stop()
