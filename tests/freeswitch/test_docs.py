"""docs/freeswitch.md's snippets are the samples the real-FreeSWITCH test runs
(``tests/integration/test_freeswitch_real.py`` loads ``dialplan/freeswitch/``): each
snippet here is checked against the sample it comes from, so "works as typed" on the
real PBX carries over to the page."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from pbx_zrtp.calls import BadRequest
from pbx_zrtp.relay.config import RelayConfig, load_config, validate
from pbx_zrtp.relay.core import RelayLayout

ROOT = Path(__file__).resolve().parents[2]
DOC = (ROOT / "docs" / "freeswitch.md").read_text()
SAMPLE = (ROOT / "dialplan" / "freeswitch" / "pbx_zrtp.xml").read_text()
ACTION = re.compile(r'<action application="([^"]+)"(?: data="([^"]*)")?/>')


def _extension(name: str) -> list[tuple[str, str]]:
    found = re.search(rf'<extension name="{name}">(.*?)</extension>', SAMPLE, re.S)
    assert found, name
    return ACTION.findall(found.group(1))


def _doc_blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", DOC, re.S)


def test_the_dialplan_snippet_is_the_required_echo_extension() -> None:
    (snippet,) = [b for b in _doc_blocks("xml") if "transfer" in b]
    assert ACTION.findall(snippet) == _extension("pbx_zrtp_required_echo")


def test_the_bridge_snippet_is_the_two_phones_dial_string() -> None:
    (sample,) = [d for a, d in _extension("pbx_zrtp_two_phones") if a == "bridge"]
    (snippet,) = [b for b in _doc_blocks("xml") if "group_confirm_key" in b]
    ((application, data),) = ACTION.findall(snippet)
    assert application == "bridge"
    assert data.split("}")[0] == sample.split("}")[0]


def test_every_sample_that_sends_audio_to_the_relay_sends_video_there_too() -> None:
    """Issue 15: a `required` call from a video phone whose rtp_adv_video_ip is not the
    relay fails (its video would bypass the relay). The samples set only the audio
    address, so a video phone could not call any of them; now every leg that is told
    the relay for audio (a `set` or a dial string's {...}) is told it for video too."""
    address = re.compile(r"(rtp_adv_(?:audio|video)_ip)=(\$\{[^}]*\}|[^,}]+)")
    legs = []
    for name in re.findall(r'<extension name="([^"]+)">', SAMPLE):
        actions = _extension(name)
        sets = [d for a, d in actions if a == "set" and d.startswith("rtp_adv_")]
        legs.append(dict(address.findall(",".join(sets))))  # the channel's own leg
        legs += [dict(address.findall(d)) for a, d in actions if a == "bridge"]  # B legs
    legs = [leg for leg in legs if "rtp_adv_audio_ip" in leg]
    assert len(legs) == 8, legs  # seven extensions, and the B leg of pbx_zrtp_two_phones
    for leg in legs:
        assert leg.get("rtp_adv_video_ip") == leg["rtp_adv_audio_ip"], leg
    (snippet,) = [b for b in _doc_blocks("xml") if "transfer" in b]
    assert "rtp_adv_video_ip=${pbx_zrtp_relay_ip}" in snippet


def test_the_relay_toml_snippet_checks_and_runs_alike(tmp_path: Path) -> None:
    """Issue 13: `ports = "16384-16584"` with `prebind = "16384-16584"` passed `--check`
    but `run` refused to pre-bind 16584 ("outside the relay's range"). Both now read
    `ports` as the PBX's RTP range (its last port is an RTP port, RTCP the next)."""
    (snippet,) = [b for b in _doc_blocks("toml") if "prebind" in b]
    relay_table = snippet.split("[freeswitch]")[0]
    path = tmp_path / "relay.toml"
    path.write_text(relay_table)
    config = load_config(path, others=("freeswitch",))
    validate(config)  # what --check does for the relay's settings
    assert config.prebind[-1] == config.port_max == 16584
    layout = RelayLayout(
        config.relay_address,
        config.pbx_address,
        config.port_min,
        config.port_max,
        config.prebind,
        config.prebind_policy,
        config.rtcp,
    )
    for port in config.prebind:  # what Relay.start does before binding each
        layout.check_port(port)
    with pytest.raises(BadRequest, match="outside the relay's range 16384-16584"):
        layout.check_port(16586)


@pytest.mark.parametrize(
    ("number", "extension"),
    [
        ("9400", "pbx_zrtp_required_echo"),
        ("9401", "pbx_zrtp_secure_line"),  # issue 13: was shadowed by pbx_zrtp_optional
        ("9402", "pbx_zrtp_optional"),
        ("9500", "pbx_zrtp_legacy"),
        ("9601", "pbx_zrtp_two_phones"),
        ("*77", "pbx_zrtp_enroll"),
        ("*78", "pbx_zrtp_unenroll"),
        ("pbx-zrtp-secure", "pbx_zrtp_secure"),
        ("pbx-zrtp-failed", "pbx_zrtp_refused"),
        ("pbx-zrtp-enroll-1", "pbx_zrtp_enroll_confirmed"),
    ],
)
def test_each_sample_number_reaches_its_extension(number: str, extension: str) -> None:
    """mod_dialplan_xml: the first extension whose destination_number condition
    matches (PCRE; none of the samples sets continue="true") takes the call."""
    extensions = re.findall(
        r'<extension name="([^"]+)">\s*<condition field="destination_number"'
        r' expression="([^"]+)">',
        SAMPLE,
    )
    assert len(extensions) == SAMPLE.count("<extension ")
    first = next(name for name, pattern in extensions if re.search(pattern, number))
    assert first == extension


def test_each_sample_waits_longer_than_the_relay_takes_to_decide() -> None:
    """Issue 13, defect 9 (FreeSWITCH's samples): pbx_zrtp_wait.lua must outwait the
    relay's decision ([timeouts] optional / required, defaults), or the dialplan right
    after it sees `pending`."""
    defaults = RelayConfig.defaults()
    decided = {"optional": defaults.optional_timeout, "required": defaults.required_timeout}
    checked = 0
    for name, _pattern in re.findall(
        r'<extension name="([^"]+)">\s*<condition field="destination_number"'
        r' expression="([^"]+)">',
        SAMPLE,
    ):
        actions = _extension(name)
        policy = next((d.split("=")[1] for a, d in actions if d.startswith("pbx_zrtp_policy=")), "")
        if ("set", "zrtp_secure_media=true") in actions:
            policy = "optional"  # the legacy switch
        for application, data in actions:
            words = data.split()
            if application == "lua" and words[:1] == ["pbx_zrtp_wait.lua"] and len(words) == 2:
                assert float(words[1]) >= decided[policy] + 2, (name, words, decided[policy])
                checked += 1
    assert checked >= 5
