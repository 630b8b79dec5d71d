"""docs/freeswitch.md's snippets are the samples the real-FreeSWITCH test runs
(``tests/integration/test_freeswitch_real.py`` loads ``dialplan/freeswitch/``): each
snippet here is checked against the sample it comes from, so "works as typed" on the
real PBX carries over to the page."""

from __future__ import annotations

import re
from pathlib import Path

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
