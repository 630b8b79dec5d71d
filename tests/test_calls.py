"""The call vocabulary (pbx_zrtp.calls): below the media path, typed across the
relay/adapter boundary, and with distinct errors for distinct failures."""

from __future__ import annotations

import asyncio
import pathlib
import subprocess
import sys
from typing import Any

import pytest

from pbx_zrtp.calls import (
    BadRequest,
    CallReport,
    CallRequest,
    CallState,
    NoSuchCall,
    Policy,
    RelayError,
    RelayUnavailable,
    StreamReport,
    no_traffic,
)
from pbx_zrtp.relay.control.server import ControlServer
from pbx_zrtp.relay.handle import LocalRelay, RemoteRelay
from tests.relay.helpers import RELAY_HOST, free_even_port, make_relay

ROOT = pathlib.Path(__file__).resolve().parent.parent
MEDIA_PATH = (
    "cffi",
    "pylibsrtp",
    "pbx_zrtp.relay.fastpath",
    "pbx_zrtp.relay.mirror",
    "_cffi_backend",
)


def _loaded_after(statement: str) -> set[str]:
    code = f"import sys\n{statement}\nprint('\\n'.join(sorted(sys.modules)))"
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    return set(proc.stdout.split())


def test_the_vocabulary_does_not_load_the_media_path() -> None:
    loaded = _loaded_after("import pbx_zrtp.calls")
    assert not loaded & set(MEDIA_PATH), sorted(loaded & set(MEDIA_PATH))


def test_a_report_goes_through_the_wire_and_back_unchanged() -> None:
    counters = no_traffic()
    counters["phone_in"] = 7
    counters["drops"] = {"wrong_source": 2}
    report = CallReport(
        call_id="c1",
        port=10000,
        state=CallState.SECURE,
        policy=Policy.REQUIRED,
        sas="b7k2",
        sas_verified=True,
        handshake_ms=12.5,
        counters=counters,
    )
    wire = report.to_wire()
    assert wire["state"] == "secure" and wire["policy"] == "required"
    assert type(wire["state"]) is str and type(wire["policy"]) is str  # plain JSON strings
    assert CallReport.from_wire(wire) == report
    idle = CallReport(call_id="", port=10002, state=CallState.IDLE, policy=None)
    assert idle.to_wire()["policy"] == ""
    assert CallReport.from_wire(idle.to_wire()) == idle


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ([], "must be an object"),
        ({"state": "secure"}, "needs call_id"),
        ({"call_id": "c", "state": "bogus"}, "unknown call state"),
        ({"call_id": "c", "state": "secure", "policy": "maybe"}, "unknown policy"),
        ({"call_id": "c", "state": "secure", "port": "10000"}, "port must be an integer"),
        ({"call_id": "c", "state": "secure", "sas_verified": "yes"}, "sas_verified must be"),
        ({"call_id": "c", "state": "secure", "sas": 5}, "sas must be a str"),
    ],
)
def test_a_malformed_report_is_refused_by_name(data: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        CallReport.from_wire(data)


def test_a_newer_relays_extra_fields_are_ignored() -> None:
    report = CallReport.from_wire({"call_id": "c", "state": "clear", "video": {"x": 1}})
    assert report.state is CallState.CLEAR and report.policy is None and report.port == 0


def test_failed_and_lost_reports_say_what_happened() -> None:
    failed = CallReport.failed("c1", "no RTP port", Policy.REQUIRED)
    assert failed.state is CallState.FAILED and failed.reason == "no RTP port"
    # an `off` call that could not be set up is still off: it asked for nothing
    assert CallReport.failed("c2", "no RTP port", Policy.OFF).state is CallState.OFF
    lost = CallReport.lost("c3", "relay a restarted and lost the call")
    assert lost.state is CallState.FAILED and not lost.secure and lost.policy is None


def test_a_request_is_the_control_apis_create() -> None:
    request = CallRequest(
        "c1", 10000, Policy.OPTIONAL, phone_hint=("192.0.2.7", 0), bridge="b", enroll=True
    )
    assert request.to_wire() == {
        "call_id": "c1",
        "port": 10000,
        "policy": "optional",
        "self_uri": "",
        "peer_uri": "",
        "bridge": "b",
        "enroll": True,
        "phone_host": "192.0.2.7",
        "phone_port": 0,
    }


def test_a_report_with_a_video_stream_goes_through_the_wire_and_back() -> None:
    counters = no_traffic()
    counters["pbx_out"] = 30
    video = StreamReport(
        name="video",
        port=10002,
        state=CallState.SECURE,
        key_agreement="Mult",
        cipher="AES1",
        auth_tag="HS80",
        sas="b7k2",
        phone="192.0.2.7:40002",
        handshake_ms=8.0,
        counters=counters,
    )
    report = CallReport(
        call_id="c1", port=10000, state=CallState.SECURE, policy=Policy.REQUIRED, streams=(video,)
    )
    wire = report.to_wire()
    assert isinstance(wire["streams"], list) and wire["streams"][0]["state"] == "secure"
    assert CallReport.from_wire(wire) == report and report.stream("video") == video
    assert report.stream("text") is None
    # an older relay sends no streams; a malformed one is refused by name
    assert CallReport.from_wire({"call_id": "c", "state": "secure"}).streams == ()
    with pytest.raises(ValueError, match="unknown stream state"):
        CallReport.from_wire(
            {"call_id": "c", "state": "secure", "streams": [{**wire["streams"][0], "state": "x"}]}
        )  # type: ignore[dict-item]
    with pytest.raises(ValueError, match="streams must be a list"):
        CallReport.from_wire({"call_id": "c", "state": "secure", "streams": {}})


def test_a_stream_request_names_its_call_and_stream() -> None:
    request = CallRequest("c1", 10002, Policy.REQUIRED, payload_type=96, stream="video")
    assert request.to_wire()["stream"] == "video" and request.to_wire()["payload_type"] == 96


def _run(coro: Any) -> None:
    asyncio.run(asyncio.wait_for(coro, 30))


def test_local_and_remote_relays_raise_the_same_distinct_errors(tmp_path: pathlib.Path) -> None:
    """No such call, a refused request and an unreachable relay are three errors
    (the remote relay used to raise RelayUnavailable for all three)."""

    async def scenario() -> None:
        relay = make_relay()
        server = ControlServer(relay)
        path = str(tmp_path / "control.sock")
        await server.start_unix(path)
        remote = RemoteRelay(f"unix:{path}", RELAY_HOST)
        await remote.start()
        try:
            for handle in (LocalRelay(relay), remote):
                with pytest.raises(NoSuchCall, match="no call 'nope'"):
                    await handle.verify("nope", True)
                assert await handle.show("nope") is None
                call_id = f"c-{type(handle).__name__}"
                report = await handle.create(CallRequest(call_id, free_even_port(), Policy.OFF))
                assert isinstance(report, CallReport) and report.state is CallState.OFF
                with pytest.raises(BadRequest, match="not secure"):
                    await handle.verify(call_id, True)
                listed = await handle.calls()
                assert call_id in [r.call_id for r in listed]
                # a further stream of the call, through the same create
                video = CallRequest(call_id, free_even_port(), Policy.OFF, stream="video")
                report = await handle.create(video)
                assert report.call_id == call_id and report.stream("video") is not None
                with pytest.raises(BadRequest, match="already has a video stream"):
                    await handle.create(video)
                final = await handle.delete(call_id, "bye")
                assert final is not None and final.state is CallState.ENDED
                ended = final.stream("video")
                assert ended is not None and ended.state is CallState.ENDED
                assert await handle.delete(call_id, "again") is None
            await server.close()
            await asyncio.sleep(0.1)
            with pytest.raises(RelayUnavailable):
                await remote.verify("nope", True)
            assert issubclass(RelayUnavailable, RelayError)
        finally:
            await remote.close()
            await server.close()
            await relay.close()

    _run(scenario())
