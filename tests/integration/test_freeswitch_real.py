"""A real ZRTP call through a real FreeSWITCH 1.10 (mod_sofia) and ``pbx-zrtp run``.

Runs only as root (it creates a network namespace), when ``PBX_ZRTP_FREESWITCH`` names a
FreeSWITCH binary (e.g. ``/opt/freeswitch/bin/freeswitch``) built with mod_sofia,
mod_event_socket, mod_dptools, mod_dialplan_xml, mod_commands, mod_logfile and mod_lua,
and when ``linphonec`` (Debian ``linphone-cli``) is installed.

FreeSWITCH applies ``rtp_adv_audio_ip`` only to phones outside ``local-network-acl`` and
never to phones on loopback, so the phone lives in a network namespace:

- a veth pair on a private /24 (10.77.N.0/24, N chosen free at run time); the host end
  holds A = .1 (FreeSWITCH: SIP and RTP) and R = .2 (the relay); the namespace end holds
  the phone, PHONE = .3;
- FreeSWITCH (``-nonat -nf -nc``) with a private configuration written to the test's tmp
  directory: event socket on 127.0.0.1 (a free port), one sofia profile on A with the
  project's sample settings (``dialplan/freeswitch/sofia_profile_pbx_zrtp.xml``:
  ext-sip-ip=A, local-network-acl=none, no ext-rtp-ip, rtp_auto_adjust_threshold=1), a
  narrow RTP range, and the project's sample dialplan
  (``dialplan/freeswitch/pbx_zrtp.xml`` with ``pbx_zrtp_wait.lua``) as context default;
- ``pbx-zrtp run``: relay on R in front of A, the RTP range pre-bound on R, ESL adapter;
- the phone: ``linphonec`` in the namespace calling 9400 (required ZRTP, then echo).

Run (as root): ``PBX_ZRTP_FREESWITCH=/opt/freeswitch/bin/freeswitch .venv/bin/python -m pytest
-m integration tests/integration/test_freeswitch_real.py -q -s`` (``-s`` prints a JSON summary
of each call). Every wait has a time-out; every process is ended and the namespace and veth
pair are deleted in ``finally``. Logs stay in the test's tmp directory; their tails are
printed when a check fails.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import random
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest

from tests.integration.procs import (
    ROOT,
    LabGuard,
    Proc,
    ctl_json,
    free_tcp_port,
    guard_unavailable,
    hangup_phone,
    start_relay,
    wait_port,
    write,
    write_tone,
)

pytestmark = pytest.mark.integration

SAMPLES = ROOT / "dialplan" / "freeswitch"
FREESWITCH = os.environ.get("PBX_ZRTP_FREESWITCH", "")
FS_CLI = str(Path(FREESWITCH).with_name("fs_cli")) if FREESWITCH else ""
LINPHONEC = shutil.which("linphonec")
IP = shutil.which("ip")

RTP_PORTS = (16400, 16420)  # FreeSWITCH's rtp-start-port / rtp-end-port, pre-bound on R
RELAY_PORTS = (16400, 16423)  # the relay's range: + one pair for the watcher's probe
PROBE_PORT = 16422
DISCARD_PORT = 9  # the sniffer's positive control goes there
ESL_PASSWORD = "integration-test-esl-secret"
REQUIRED_TIMEOUT = 6.0  # [timeouts] required in pbx-zrtp.toml (the dialplan waits 12 s)


def _skip_reason() -> str | None:
    if not FREESWITCH:
        return (
            "set PBX_ZRTP_FREESWITCH to a FreeSWITCH 1.10 binary"
            " (e.g. /opt/freeswitch/bin/freeswitch)"
        )
    if not os.access(FREESWITCH, os.X_OK):
        return f"PBX_ZRTP_FREESWITCH={FREESWITCH} is not an executable"
    if LINPHONEC is None:
        return "linphonec is not installed (Debian package linphone-cli)"
    if IP is None:
        return "the ip command (iproute2) is not installed"
    if os.geteuid() != 0:
        return "must run as root: the phone needs its own network namespace"
    return None


if (_reason := _skip_reason()) is not None:
    pytest.skip(_reason, allow_module_level=True)


# ---------------------------------------------------------------------- processes


# ---------------------------------------------------------------------- the network


@dataclass
class Net:
    """A veth pair: host end with A and R, namespace end with the phone's address."""

    namespace: str
    host_link: str
    a: str
    r: str
    phone: str


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    assert IP is not None
    return subprocess.run([IP, *args], capture_output=True, text=True, timeout=10, check=check)


def _free_subnet() -> ipaddress.IPv4Network:
    used = [
        ipaddress.ip_interface(word).network
        for word in _ip("-4", "-o", "addr").stdout.split()
        if re.fullmatch(r"\d+\.\d+\.\d+\.\d+/\d+", word)
    ]
    used += [
        ipaddress.ip_network(word, strict=False)
        for word in _ip("-4", "route").stdout.split()
        if re.fullmatch(r"\d+\.\d+\.\d+\.\d+/\d+", word)
    ]
    candidates = list(range(1, 255))
    random.shuffle(candidates)
    for n in candidates:
        subnet = ipaddress.IPv4Network(f"10.77.{n}.0/24")
        if not any(subnet.overlaps(other) for other in used):
            return subnet
    raise AssertionError("no free 10.77.N.0/24 subnet")


@contextlib.contextmanager
def network() -> Iterator[Net]:
    tag = f"{os.getpid() % 100000}"
    namespace, host_link, phone_link = f"pbxzrtp-fs-{tag}", f"vzfs{tag}h", f"vzfs{tag}p"
    subnet = _free_subnet()
    a, r, phone = (str(subnet.network_address + i) for i in (1, 2, 3))
    try:
        _ip("netns", "add", namespace)
        _ip("link", "add", host_link, "type", "veth", "peer", "name", phone_link)
        _ip("link", "set", phone_link, "netns", namespace)
        _ip("addr", "add", f"{a}/24", "dev", host_link)
        _ip("addr", "add", f"{r}/24", "dev", host_link)
        _ip("link", "set", host_link, "up")
        _ip("-n", namespace, "addr", "add", f"{phone}/24", "dev", phone_link)
        _ip("-n", namespace, "link", "set", phone_link, "up")
        _ip("-n", namespace, "link", "set", "lo", "up")
        # DAD would keep the addresses "tentative" for a moment (IPv4 has none; wait for
        # the link to be up on both ends).
        deadline = time.monotonic() + 10
        while "state UP" not in _ip("link", "show", host_link).stdout:
            assert time.monotonic() < deadline, _ip("link", "show", host_link).stdout
            time.sleep(0.05)
        yield Net(namespace, host_link, a, r, phone)
    finally:
        _ip("link", "del", host_link, check=False)
        _ip("netns", "del", namespace, check=False)


# ---------------------------------------------------------------------- ESL


class EslClient:
    """A minimal raw event-socket client: one reader thread, replies in order, events kept."""

    def __init__(self, host: str, port: int, password: str, timeout: float) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.settimeout(None)
        self.events: list[dict[str, str]] = []
        self.closed = False
        self._replies: list[tuple[dict[str, str], str]] = []
        self._cond = threading.Condition()
        self._lock = threading.Lock()  # one command at a time: replies come in order
        self._thread = threading.Thread(target=self._read, name="esl-test", daemon=True)
        self._thread.start()
        self._wait_reply(timeout)  # auth/request
        headers, _ = self.command(f"auth {password}")
        if not headers.get("Reply-Text", "").startswith("+OK"):
            raise AssertionError(f"ESL auth failed: {headers}")

    @staticmethod
    def _headers(text: str) -> dict[str, str]:
        headers: dict[str, str] = {}
        for line in text.split("\n"):
            key, sep, value = line.partition(":")
            if sep and key not in headers:
                headers[key.strip()] = unquote(value.strip())
        return headers

    def _read(self) -> None:
        buffer = b""
        try:
            while True:
                while b"\n\n" not in buffer:
                    chunk = self.sock.recv(65536)
                    if not chunk:
                        return
                    buffer += chunk
                raw, buffer = buffer.split(b"\n\n", 1)
                headers = self._headers(raw.decode("utf-8", "replace"))
                body = b""
                length = int(headers.get("Content-Length", "0") or 0)
                while len(buffer) < length:
                    chunk = self.sock.recv(65536)
                    if not chunk:
                        return
                    buffer += chunk
                body, buffer = buffer[:length], buffer[length:]
                text = body.decode("utf-8", "replace")
                with self._cond:
                    if headers.get("Content-Type") == "text/event-plain":
                        head, _, event_body = text.partition("\n\n")
                        event = self._headers(head)
                        if event_body:
                            event["_body"] = event_body
                        event["_time"] = f"{time.monotonic():.6f}"
                        self.events.append(event)
                    elif headers.get("Content-Type") in (
                        "auth/request",
                        "command/reply",
                        "api/response",
                    ):
                        self._replies.append((headers, text))
                    self._cond.notify_all()
        except OSError:
            pass
        finally:
            with self._cond:
                self.closed = True
                self._cond.notify_all()

    def _wait_reply(self, timeout: float) -> tuple[dict[str, str], str]:
        deadline = time.monotonic() + timeout
        with self._cond:
            while not self._replies:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self.closed:
                    raise AssertionError(f"ESL: no reply within {timeout} s")
                self._cond.wait(remaining)
            return self._replies.pop(0)

    def command(self, text: str, timeout: float = 10.0) -> tuple[dict[str, str], str]:
        with self._lock:
            self.sock.sendall(text.encode() + b"\n\n")
            return self._wait_reply(timeout)

    def api(self, text: str, timeout: float = 10.0) -> str:
        return self.command(f"api {text}", timeout)[1]

    def getvar(self, uuid: str, name: str) -> str:
        value = self.api(f"uuid_getvar {uuid} {name}").strip()
        return "" if value in ("_undef_", "") or value.startswith("-ERR") else value

    def wait_event(
        self, predicate: Callable[[dict[str, str]], bool], timeout: float, what: str
    ) -> dict[str, str]:
        deadline = time.monotonic() + timeout
        index = 0
        with self._cond:
            while True:
                while index < len(self.events):
                    if predicate(self.events[index]):
                        return self.events[index]
                    index += 1
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self.closed:
                    seen = [
                        e.get("Event-Name", "") + "/" + e.get("Event-Subclass", "")
                        for e in self.events
                    ]
                    raise AssertionError(f"no ESL event {what} within {timeout} s; saw {seen}")
                self._cond.wait(remaining)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.sendall(b"exit\n\n")
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        self._thread.join(5)


# ---------------------------------------------------------------------- configuration


def sample_profile_params(a: str, r: str) -> dict[str, str]:
    """The <param>s of the sample sofia profile, and its vars, with this lab's addresses."""
    text = (SAMPLES / "sofia_profile_pbx_zrtp.xml").read_text()
    text = text.replace("192.0.2.1", a).replace("192.0.2.2", r)
    profile = re.search(r"<profile name=\"internal\">(.*?)</profile>", text, re.S)
    assert profile, "sofia_profile_pbx_zrtp.xml changed shape"
    params = dict(re.findall(r'<param name="([^"]+)" value="([^"]*)"/>', profile.group(1)))
    assert params.get("ext-sip-ip") == a and params.get("local-network-acl") == "none", params
    assert "ext-rtp-ip" not in params, params
    return params


def sample_vars(a: str, r: str) -> list[str]:
    text = (SAMPLES / "sofia_profile_pbx_zrtp.xml").read_text()
    text = text.replace("192.0.2.1", a).replace("192.0.2.2", r)
    found = re.findall(r'<X-PRE-PROCESS cmd="set" data="([^"]+)"/>', text)
    assert f"pbx_zrtp_relay_ip={r}" in found, found
    return found


def write_freeswitch_config(base: Path, net: Net, esl_port: int, carol_port: int) -> Path:
    """A complete, private FreeSWITCH configuration under ``base``/conf."""
    conf = base / "conf"
    for name in ("conf", "log", "db", "run", "scripts", "temp", "storage", "cache", "rec"):
        (base / name).mkdir(parents=True, exist_ok=True)
    shutil.copy(SAMPLES / "pbx_zrtp.xml", conf / "pbx_zrtp.xml")
    shutil.copy(SAMPLES / "pbx_zrtp_wait.lua", base / "scripts" / "pbx_zrtp_wait.lua")
    shutil.copy(SAMPLES / "pbx_zrtp_admin.lua", base / "scripts" / "pbx_zrtp_admin.lua")
    params = {
        **sample_profile_params(net.a, net.r),
        "sip-port": "5060",
        "context": "default",
        "dialplan": "XML",
        "auth-calls": "false",
        "accept-blind-reg": "true",
        # H264 (mod_h26x, passed through) for video calls; other phones offer no video
        "inbound-codec-prefs": "PCMU,PCMA,H264",
        "outbound-codec-prefs": "PCMU,PCMA,H264",
        "inbound-late-negotiation": "false",
        "rtp-timer-name": "soft",
        "manage-presence": "false",
        "dtmf-type": "rfc2833",
    }
    profile = "".join(f'        <param name="{k}" value="{v}"/>\n' for k, v in params.items())
    variables = "".join(
        f'  <X-PRE-PROCESS cmd="set" data="{v}"/>\n' for v in sample_vars(net.a, net.r)
    )
    modules = (
        "mod_logfile",
        "mod_event_socket",
        "mod_sofia",
        "mod_commands",
        "mod_dptools",
        "mod_dialplan_xml",
        "mod_sndfile",
        "mod_lua",
        "mod_h26x",
    )
    loads = "".join(f'        <load module="{m}"/>\n' for m in modules)
    # The sample's pbx_zrtp_two_phones dial string, to carol instead of a directory user.
    sample = (SAMPLES / "pbx_zrtp.xml").read_text()
    two_phones = re.search(r'<action application="bridge" data="(\{[^"]*\})user/10\$1"/>', sample)
    assert two_phones, "pbx_zrtp.xml's pbx_zrtp_two_phones changed shape"
    bridge_to_carol = f"{two_phones.group(1)}sofia/pbxzrtp/carol@{net.phone}:{carol_port}"
    # Two video phones: the sample's pbx_zrtp_two_phones as typed, calling carol.
    extension = re.search(r'<extension name="pbx_zrtp_two_phones">.*?</extension>', sample, re.S)
    assert extension, "pbx_zrtp.xml's pbx_zrtp_two_phones changed shape"
    two_video_phones = extension.group(0)
    for typed, here in (
        ('name="pbx_zrtp_two_phones"', 'name="two_video_phones_test"'),
        ('expression="^96([0-9][0-9])$"', 'expression="^9713$"'),
        ("}user/10$1", f"}}sofia/pbxzrtp/carol@{net.phone}:{carol_port}"),
    ):
        assert two_video_phones.count(typed) == 1, typed
        two_video_phones = two_video_phones.replace(typed, here)
    # The unsafe settings (auto-adjust after 10 packets, no wait before the bridge): the
    # sniffer's real positive control, and what the adapter must warn about.
    unsafe_to_carol = (
        "{pbx_zrtp_policy=required,rtp_adv_audio_ip=${pbx_zrtp_relay_ip},"
        f"rtp_auto_adjust_threshold=10}}sofia/pbxzrtp/carol@{net.phone}:{carol_port}"
    )
    return write(
        conf / "freeswitch.xml",
        f"""<?xml version="1.0"?>
<document type="freeswitch/xml">
{variables}  <section name="configuration" description="Various Configuration">
    <configuration name="switch.conf" description="Core Configuration">
      <settings>
        <param name="loglevel" value="debug"/>
        <param name="max-sessions" value="20"/>
        <param name="sessions-per-second" value="20"/>
        <param name="rtp-start-port" value="{RTP_PORTS[0]}"/>
        <param name="rtp-end-port" value="{RTP_PORTS[1]}"/>
      </settings>
    </configuration>
    <configuration name="modules.conf" description="Modules">
      <modules>
{loads}      </modules>
    </configuration>
    <configuration name="logfile.conf" description="File Logging">
      <settings><param name="rotate-on-hup" value="true"/></settings>
      <profiles>
        <profile name="default">
          <settings><param name="logfile" value="{base / "log" / "freeswitch.log"}"/></settings>
          <mappings>
            <map name="all" value="console,debug,info,notice,warning,err,crit,alert"/>
          </mappings>
        </profile>
      </profiles>
    </configuration>
    <configuration name="event_socket.conf" description="Socket Client">
      <settings>
        <param name="listen-ip" value="127.0.0.1"/>
        <param name="listen-port" value="{esl_port}"/>
        <param name="password" value="{ESL_PASSWORD}"/>
      </settings>
    </configuration>
    <configuration name="lua.conf" description="LUA Configuration">
      <settings/>
    </configuration>
    <configuration name="sofia.conf" description="sofia Endpoint">
      <global_settings>
        <param name="log-level" value="0"/>
      </global_settings>
      <profiles>
        <profile name="pbxzrtp">
          <settings>
{profile}          </settings>
        </profile>
      </profiles>
    </configuration>
  </section>
  <section name="dialplan" description="Regex/XML Dialplan">
    <context name="default">
      <!-- Two ZRTP phones: as the sample's pbx_zrtp_two_phones, with carol's address
           instead of a directory user. -->
      <extension name="two_phones_test">
        <condition field="destination_number" expression="^9700$">
          <action application="set" data="pbx_zrtp_policy=required"/>
          <action application="set" data="rtp_adv_audio_ip=${{pbx_zrtp_relay_ip}}"/>
          <action application="set" data="rtp_auto_adjust_threshold=1"/>
          <action application="pre_answer"/>
          <action application="lua" data="pbx_zrtp_wait.lua 12"/>
          <action application="bridge" data="{bridge_to_carol}"/>
        </condition>
      </extension>
      <extension name="two_phones_unsafe">
        <condition field="destination_number" expression="^9711$">
          <action application="set" data="pbx_zrtp_policy=required"/>
          <action application="set" data="rtp_adv_audio_ip=${{pbx_zrtp_relay_ip}}"/>
          <action application="set" data="rtp_auto_adjust_threshold=10"/>
          <action application="answer"/>
          <action application="bridge" data="{unsafe_to_carol}"/>
        </condition>
      </extension>
      <!-- A video call (issue 15): the relay advertised for video too, echoed. -->
      <extension name="video_test">
        <condition field="destination_number" expression="^9712$">
          <action application="set" data="pbx_zrtp_policy=required"/>
          <action application="set" data="rtp_adv_audio_ip=${{pbx_zrtp_relay_ip}}"/>
          <action application="set" data="rtp_adv_video_ip=${{pbx_zrtp_relay_ip}}"/>
          <action application="answer"/>
          <action application="lua" data="pbx_zrtp_wait.lua 12"/>
          <action application="echo"/>
        </condition>
      </extension>
      <!-- Two video phones (issue 15): the sample's pbx_zrtp_two_phones to carol. -->
      {two_video_phones}
      <X-PRE-PROCESS cmd="include" data="pbx_zrtp.xml"/>
    </context>
  </section>
</document>
""",
    )


def write_relay_config(base: Path, net: Net, esl_port: int) -> Path:
    return write(
        base / "pbx-zrtp.toml",
        f"""[relay]
address = "{net.r}"
pbx_address = "{net.a}"
ports = "{RELAY_PORTS[0]}-{RELAY_PORTS[1]}"
prebind = "{RTP_PORTS[0]}-{RTP_PORTS[1]}"

[cache]
path = "{base / "cache.db"}"

[timeouts]
required = {REQUIRED_TIMEOUT}

[control]
socket = "{base / "control.sock"}"

[metrics]
listen = ""

[log]
level = "debug"

[freeswitch]
host = "127.0.0.1"
port = {esl_port}
password = "{ESL_PASSWORD}"
policy_file = "{base / "freeswitch-policies.json"}"
""",
        0o600,
    )


NO_ZRTP = "support_capability_negotiations=1\nsupported_encryptions=LinphoneMediaEncryptionNone\n"


#: A video call from linphonec: its static-picture camera in H264, no display.
VIDEO = (
    "enabled=1\ncapture=1\ndisplay=0\nautomatically_initiate=1\nautomatically_accept=1\n"
    "device=StaticImage: Static picture\nsize=qvga\n"
)


def write_linphonerc(
    home: Path,
    phone: str,
    *,
    zrtp: bool,
    user: str = "alice",
    sip_port: int = -1,
    video: bool = False,
) -> Path:
    (home / ".local/share/linphone").mkdir(parents=True, exist_ok=True)
    encryption = "zrtp" if zrtp else "none"
    # liblinphone 5.1 answers a peer's ZRTP Hello even with media_encryption=none unless
    # ZRTP is also dropped from its supported list (needs capability negotiation).
    no_zrtp = "" if zrtp else NO_ZRTP
    return write(
        home / "linphonerc",
        f"""[sip]
sip_port={sip_port}
sip_tcp_port=0
sip_tls_port=0
ipv6_migration_done=1
use_ipv6=0
contact="{user}" <sip:{user}@{phone}>
media_encryption={encryption}
media_encryption_mandatory={1 if zrtp else 0}
{no_zrtp}
[rtp]
audio_rtp_port={random.randrange(30000, 40000, 2)}
video_rtp_port={random.randrange(44000, 46000, 2)}
bind_address={phone}

[sound]
echocancellation=0

[video]
{VIDEO if video else "enabled=0"}
""",
    )


# ---------------------------------------------------------------------- the lab


@dataclass
class Lab:
    base: Path
    net: Net
    freeswitch: Proc
    relay: Proc
    esl: EslClient
    watch: Proc
    tone: Path
    carol_port: int
    procs: list[Proc] = field(default_factory=list)

    @property
    def control(self) -> str:
        return f"unix:{self.base / 'control.sock'}"

    def ctl(self, *args: str) -> Any:
        return ctl_json(self.control, *args)

    def calls(self) -> list[dict[str, Any]]:
        """The relay's calls, without idle pre-bound ports."""
        return [c for c in self.ctl("list") if not str(c.get("call_id", "")).startswith("port-")]

    def freeswitch_log(self) -> str:
        path = self.base / "log" / "freeswitch.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def sip_sent(self, call_id: str) -> list[str]:
        """First lines (and CSeq) of the SIP messages FreeSWITCH sent in one dialog
        (sofia's siptrace in freeswitch.log): e.g. ``SIP/2.0 183 Session Progress|1 INVITE``."""
        found = []
        for block in re.split(r"\nsend \d+ bytes to ", self.freeswitch_log())[1:]:
            lines = [line.strip() for line in block.split("\n")[:40]]
            body = lines[2 : lines.index("-" * 72, 2)] if "-" * 72 in lines[2:] else lines[2:]
            if f"Call-ID: {call_id}" in body and body:
                cseq = next((b[6:] for b in body if b.startswith("CSeq: ")), "")
                found.append(f"{body[0]}|{cseq}")
        return found

    def hang_up(self, phone: Proc, uuid: str) -> dict[str, str]:
        """The phone hangs up: FreeSWITCH's CHANNEL_HANGUP_COMPLETE for ``uuid`` (its
        RTP counters), once the relay's calls are gone too (or 10 s have passed)."""
        hangup_phone(phone)
        hangup = self.esl.wait_event(
            lambda e: (
                e.get("Event-Name") == "CHANNEL_HANGUP_COMPLETE" and e.get("Unique-ID") == uuid
            ),
            15,
            "CHANNEL_HANGUP_COMPLETE",
        )
        deadline = time.monotonic() + 10
        while self.calls() and time.monotonic() < deadline:
            time.sleep(0.2)
        return hangup

    def channel_log(self, uuid: str) -> list[str]:
        return [line for line in self.freeswitch_log().splitlines() if line.startswith(uuid)]

    def relay_events(self, call_id: str) -> list[dict[str, Any]]:
        """The relay's state events for one call (from ``pbx-zrtp ctl watch --json``)."""
        events = []
        for line, stamp in zip(list(self.watch.lines), list(self.watch.times), strict=False):
            try:
                event = json.loads(line)
            except ValueError:
                continue
            call = event.get("call") if isinstance(event, dict) else None
            if isinstance(call, dict) and call.get("call_id") == call_id:
                events.append({**call, "_time": stamp})
        return events

    def phone(self, name: str, *, zrtp: bool, carol: bool = False, video: bool = False) -> Proc:
        """alice (calls out), or carol (called by FreeSWITCH, auto-answers)."""
        assert IP is not None and LINPHONEC is not None
        home = self.base / name
        home.mkdir()
        if carol:
            rc = write_linphonerc(
                home,
                self.net.phone,
                zrtp=zrtp,
                user="carol",
                sip_port=self.carol_port,
                video=video,
            )
        else:
            rc = write_linphonerc(home, self.net.phone, zrtp=zrtp, video=video)
        env = {**os.environ, "HOME": str(home)}
        proc = Proc(
            name,
            [
                IP,
                "netns",
                "exec",
                self.net.namespace,
                LINPHONEC,
                "-c",
                str(rc),
                "-d",
                "6",
                "-l",
                str(home / "linphone-debug.log"),
                *(["-a"] if carol else []),  # carol auto-answers
                *(["-C"] if video else []),  # video capture only: no display
            ],
            self.base / f"{name}.log",
            env=env,
            stdin=True,
            cwd=home,
        )
        self.procs.append(proc)
        proc.send("soundcard use files")
        proc.wait_for(r"Using wav files instead of soundcard", 20)
        proc.send(f"play {self.tone}")
        return proc

    def sniffer(self) -> Proc:
        """Every RTP-like datagram from FreeSWITCH's address A reaching the phones'
        interface (``tests/integration/sniff.py``), proven to see one: a positive
        control datagram from A to the phone's discard port is seen first."""
        assert IP is not None
        link = self.net.host_link[:-1] + "p"  # the veth end inside the namespace
        command = [IP, "netns", "exec", self.net.namespace, sys.executable, "-m"]
        command += ["tests.integration.sniff", "--iface", link, "--src", self.net.a]
        proc = Proc("sniff", command, self.base / f"sniff-{len(self.procs)}.log", cwd=ROOT)
        self.procs.append(proc)
        proc.wait_for(r"^ready$", 10)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as control:
            control.bind((self.net.a, 0))
            control.sendto(b"\x80\x00" + bytes(170), (self.net.phone, DISCARD_PORT))
        proc.wait_for(rf'"dport": {DISCARD_PORT},', 5)
        return proc

    @staticmethod
    def direct_rtp(sniffer: Proc) -> list[dict[str, int]]:
        """What the sniffer saw from A, without its positive control."""
        seen = [json.loads(line) for line in list(sniffer.lines) if line.startswith("{")]
        return [p for p in seen if p["dport"] != DISCARD_PORT]

    def fs_cli(self, line: str) -> str:
        """``fs_cli -x LINE`` against this FreeSWITCH, as an admin types it."""
        esl_port = self.relay_config_port()
        done = subprocess.run(
            [FS_CLI, "-H", "127.0.0.1", "-P", str(esl_port), "-p", ESL_PASSWORD, "-x", line],
            capture_output=True,
            text=True,
            timeout=20,
            check=False,
        )
        return (done.stdout + done.stderr).strip()

    def zrtp(self, line: str) -> str:
        """``fs_cli -x 'zrtp LINE'``: FreeSWITCH prints how it expanded the alias, then
        pbx-zrtp's reply; this returns the reply."""
        out = self.fs_cli(f"zrtp {line}")
        expanded, _, reply = out.partition("\n")
        assert expanded == f"Expand Alias [zrtp]->[lua pbx_zrtp_admin.lua {line}]", out
        return reply.strip()

    def relay_config_port(self) -> int:
        found = re.search(r"^port = (\d+)$", (self.base / "pbx-zrtp.toml").read_text(), re.M)
        assert found
        return int(found.group(1))

    def diagnostics(self) -> str:
        parts = [f"--- freeswitch.log\n{self.freeswitch_log()[-6000:]}"]
        for proc in [self.freeswitch, self.relay, self.watch, *self.procs]:
            parts.append(f"--- {proc.name} ({proc.log_path})\n{proc.tail(60)}")
        return "\n".join(parts)


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    base = tmp_path_factory.mktemp("freeswitch-real")
    base.chmod(0o755)
    esl_port = free_tcp_port("127.0.0.1")
    tone = write_tone(base / "tone.wav")
    started: list[Proc] = []
    esl: EslClient | None = None
    with network() as net:
        try:
            carol_port = random.randrange(41000, 42000)
            write_freeswitch_config(base, net, esl_port, carol_port)
            relay_conf = write_relay_config(base, net, esl_port)
            dirs = {
                "-conf": "conf",
                "-log": "log",
                "-db": "db",
                "-run": "run",
                "-scripts": "scripts",
                "-temp": "temp",
                "-storage": "storage",
                "-cache": "cache",
                "-recordings": "rec",
            }
            args = [FREESWITCH, "-nonat", "-nf", "-nc"]
            for flag, name in dirs.items():
                args += [flag, str(base / name)]
            freeswitch = Proc("freeswitch", args, base / "freeswitch.out")
            started.append(freeswitch)
            wait_port("127.0.0.1", esl_port, 60, freeswitch)
            esl = EslClient("127.0.0.1", esl_port, ESL_PASSWORD, 10)
            reply, _ = esl.command(
                "event plain CHANNEL_CREATE CHANNEL_PROGRESS_MEDIA CHANNEL_ANSWER"
                " CHANNEL_HANGUP_COMPLETE CALL_SECURE"
                " CUSTOM pbx_zrtp::secure pbx_zrtp::failed"
            )
            assert reply.get("Reply-Text", "").startswith("+OK"), reply
            deadline = time.monotonic() + 30
            while not re.search(r"pbxzrtp\s+profile\s.*RUNNING", esl.api("sofia status")):
                assert time.monotonic() < deadline, esl.api("sofia status")
                time.sleep(0.2)
            # SIP messages in freeswitch.log: what FreeSWITCH sent each phone (sip_sent).
            assert "+OK" in esl.api("sofia global siptrace on")
            relay, watch = start_relay(base, relay_conf, r"ESL connected to", started)
            the_lab = Lab(base, net, freeswitch, relay, esl, watch, tone, carol_port)
            # The watcher is subscribed once it reports a probe mirror (outside the
            # pre-bound range; no call is running yet).
            deadline = time.monotonic() + 30
            while not the_lab.relay_events("probe"):
                assert time.monotonic() < deadline, f"ctl watch saw no event:\n{watch.tail()}"
                the_lab.ctl("create", "probe", str(PROBE_PORT), "--policy", "off")
                the_lab.ctl("delete", "probe")
                time.sleep(0.5)
            yield the_lab
        finally:
            if esl is not None:
                esl.close()
            for proc in reversed(started):
                proc.stop()


# ---------------------------------------------------------------------- the tests


VARIABLES = (
    "pbx_zrtp_state",
    "pbx_zrtp_secure",
    "pbx_zrtp_sas",
    "pbx_zrtp_sas_type",
    "pbx_zrtp_active_policy",
    "pbx_zrtp_cipher",
    "pbx_zrtp_auth_tag",
    "pbx_zrtp_key_agreement",
    "zrtp_secure_media_confirmed_audio",
    "zrtp_sas1_string_audio",
    "zrtp_sas2_string",
    "rtp_adv_audio_ip",
    "local_media_ip",
    "local_media_port",
    "remote_media_ip",
    "remote_audio_ip",
    "remote_audio_port",
)


def test_required_zrtp_call_is_secured_through_freeswitch(lab: Lab) -> None:
    phone = lab.phone("phone-zrtp", zrtp=True)
    try:
        sniffer = lab.sniffer()
        started = time.monotonic()
        count = len(lab.esl.events)
        phone.send(f"call sip:9400@{lab.net.a}")
        # 1. The phone: ZRTP with the relay (which FreeSWITCH advertised as c=R).
        match, _ = phone.wait_for(r"fully encrypted and auth token is (\S+?)\.?\s*$", 30)
        phone_sas = match.group(1)
        phone_secure_at = time.monotonic()
        answer = lab.esl.wait_event(
            lambda e: e.get("Event-Name") == "CHANNEL_ANSWER" and float(e["_time"]) >= started,
            10,
            "CHANNEL_ANSWER",
        )
        uuid = answer["Unique-ID"]
        call_id = f"fs-{uuid}"
        assert answer.get("variable_pbx_zrtp_policy") == "required", answer
        assert answer.get("variable_rtp_adv_audio_ip") == lab.net.r, answer
        # 2. The adapter's CUSTOM event.
        secure = lab.esl.wait_event(
            lambda e: (
                e.get("Event-Subclass") == "pbx_zrtp::secure" and e.get("pbx_zrtp_uuid") == uuid
            ),
            20,
            "CUSTOM pbx_zrtp::secure",
        )
        assert secure.get("pbx_zrtp_sas") == phone_sas, (secure, phone_sas)
        assert secure.get("secure_type", "").startswith(f"zrtp:{phone_sas}"), secure
        # The drop-in: the CALL_SECURE event FreeSWITCH <= 1.10.8's built-in ZRTP fired.
        legacy = lab.esl.wait_event(
            lambda e: e.get("Event-Name") == "CALL_SECURE" and e.get("caller-unique-id") == uuid,
            5,
            "CALL_SECURE",
        )
        assert legacy.get("secure_type") == secure.get("secure_type"), legacy
        assert legacy.get("secure_media_type") == "audio", legacy
        # 3. The relay: the same call, secure, same SAS.
        calls = lab.calls()
        assert [c["call_id"] for c in calls] == [call_id], calls
        assert calls[0]["state"] == "secure" and calls[0]["sas"] == phone_sas, calls[0]
        # 4. The channel's variables, read over ESL, once the dialplan has moved on to
        # the echo (pbx_zrtp_wait.lua returned and `transfer pbx-zrtp-secure`).
        deadline = time.monotonic() + 15
        while lab.esl.getvar(uuid, "destination_number") != "pbx-zrtp-secure":
            assert time.monotonic() < deadline, "the dialplan never reached pbx-zrtp-secure"
            time.sleep(0.1)
        values = {name: lab.esl.getvar(uuid, name) for name in VARIABLES}
        assert values["pbx_zrtp_state"] == "secure", values
        # fs_cli> global_getvar pbx_zrtp_calls (issue 13, defect 3: it was never set)
        expected = f"{uuid} secure {phone_sas.replace(' ', '_')} verified:"
        deadline = time.monotonic() + 5
        while not (listing := lab.esl.api("global_getvar pbx_zrtp_calls").strip()).startswith(
            expected
        ):
            assert time.monotonic() < deadline, (listing, expected)
            time.sleep(0.1)
        assert values["pbx_zrtp_secure"] == "true", values
        assert values["pbx_zrtp_sas"] == phone_sas, values
        assert values["pbx_zrtp_active_policy"] == "required", values
        assert values["zrtp_secure_media_confirmed_audio"] == "true", values
        assert values["zrtp_sas1_string_audio"], values
        expected_sas1 = phone_sas.split(" ")[0]
        assert values["zrtp_sas1_string_audio"] == expected_sas1, values
        assert values["local_media_ip"] == lab.net.a, values
        # FreeSWITCH's SDP carried R (with its own port): the phone's media went to the relay.
        local_sdp = lab.esl.getvar(uuid, "rtp_local_sdp_str")
        assert f"c=IN IP4 {lab.net.r}" in local_sdp, local_sdp
        assert f"m=audio {values['local_media_port']} " in local_sdp, local_sdp
        # 5. Media flows both ways through the relay (echo sends the tone back).
        time.sleep(3)
        report = lab.ctl("show", call_id)
        counters = report["counters"]
        assert counters["phone_in"] > 50 and counters["pbx_in"] > 50, counters
        assert counters["phone_out"] > 50 and counters["pbx_out"] > 50, counters
        assert counters["drops"].get("srtcp_auth", 0) == 0, (report["auth_tag"], counters)
        # FreeSWITCH's auto-adjust latched onto the relay's PBX-side socket on R.
        remote_ip = lab.esl.getvar(uuid, "remote_audio_ip")
        assert remote_ip == lab.net.r, (remote_ip, values)
        log = lab.freeswitch_log()
        assert f"pbx_zrtp: {uuid} secure, SAS {phone_sas}" in log
        # Positive control of the refused call's check: 183 first, 200 OK once secure.
        sip = lab.sip_sent(lab.esl.getvar(uuid, "sip_call_id"))
        invite = [line for line in sip if line.startswith("SIP/2.0 ") and "INVITE" in line]
        assert [line.split(" ")[1] for line in invite][-2:] == ["183", "200"], sip
        secured = [e for e in lab.relay_events(call_id) if e["state"] == "secure"]
        assert secured and float(answer["_time"]) > float(secured[0]["_time"]), "answered early"
        problems = [line for line in lab.channel_log(uuid) if re.search(r"\[(ERR|CRIT)\]", line)]
        assert problems == [], problems
        hangup = lab.hang_up(phone, uuid)
        freeswitch_sent = int(hangup.get("variable_rtp_audio_out_packet_count", "0") or 0)
        assert lab.calls() == []
        events = lab.relay_events(call_id)
        states = [e["state"] for e in events]
        assert "secure" in states and states[-1] == "ended", states
        ended = events[-1]
        relay_heard = ended["counters"]["pbx_in"]
        # Packets FreeSWITCH sent before auto-adjust latched went straight to the phone.
        leak = freeswitch_sent - relay_heard
        # Issue 13, defect 8: under `required` not one clear packet from A to the phone.
        direct = lab.direct_rtp(sniffer)
        assert freeswitch_sent > 50 and leak == 0 and direct == [], (
            freeswitch_sent,
            relay_heard,
            direct,
        )
        summary = {
            "sas": phone_sas,
            "sas_type": report.get("sas_type"),
            "algorithms": [report.get(k) for k in ("key_agreement", "hash", "cipher", "auth_tag")],
            "handshake_ms": report.get("handshake_ms"),
            "phone_secure_after_s": round(phone_secure_at - started, 3),
            "states": states,
            "channel_variables": values,
            "remote_audio_ip_at_3s": remote_ip,
            "freeswitch_rtp_out": freeswitch_sent,
            "relay_pbx_in": relay_heard,
            "leaked_to_phone": leak,
            "sniffed_from_freeswitch_to_phone": len(direct),
            "counters_at_3s": {k: v for k, v in counters.items() if k != "drops"},
            "drops": counters.get("drops"),
            "ended_counters": ended.get("counters"),
            "esl_events": [
                e.get("Event-Name", "") + "/" + e.get("Event-Subclass", "")
                for e in lab.esl.events[count:]
            ],
        }
        print("REAL CALL:", json.dumps(summary))
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{lab.diagnostics()}") from None
    finally:
        phone.stop()


def test_video_call_secures_audio_and_video_through_freeswitch(lab: Lab) -> None:
    """linphonec's static picture in H264 (mod_h26x passes it through): the video
    port FreeSWITCH answered with, pre-bound, secured by Multistream; FreeSWITCH's
    video latched onto the relay (its priming) and echoed the phone's video back
    through it, none of it went to the phone directly."""
    phone = lab.phone("phone-video", zrtp=True, video=True)
    try:
        sniffer = lab.sniffer()
        started = time.monotonic()
        phone.send(f"call sip:9712@{lab.net.a}")
        match, _ = phone.wait_for(r"fully encrypted and auth token is (\S+?)\.?\s*$", 30)
        phone_sas = match.group(1)
        answer = lab.esl.wait_event(
            lambda e: e.get("Event-Name") == "CHANNEL_ANSWER" and float(e["_time"]) >= started,
            10,
            "CHANNEL_ANSWER",
        )
        uuid = answer["Unique-ID"]
        call_id = f"fs-{uuid}"
        video_port = answer.get("variable_local_video_port", "")
        assert video_port, {k: v for k, v in answer.items() if "video" in k}
        deadline = time.monotonic() + 20
        video: dict[str, Any] | None = None
        while time.monotonic() < deadline:
            report = lab.ctl("show", call_id)
            video = next((s for s in report.get("streams", []) if s["name"] == "video"), None)
            if video is not None and video["state"] != "pending":
                break
            time.sleep(0.2)
        assert video is not None and video["port"] == int(video_port), lab.ctl("show", call_id)
        assert video["state"] == "secure" and video["key_agreement"] == "Mult", video
        assert video["sas"] == phone_sas, video
        time.sleep(4)
        report = lab.ctl("show", call_id)
        video = next(s for s in report["streams"] if s["name"] == "video")
        counters = video["counters"]
        # The phone's video reached FreeSWITCH (decrypted by the relay), and echo sent
        # it back (H264 passed through by mod_h26x) through the relay. (It sent none
        # while the relay primed between the phone's frames: see the bridged test.)
        assert counters["phone_in"] > 0 and counters["pbx_out"] > 0, counters
        assert counters["pbx_in"] > 0 and counters["phone_out"] > 0, counters
        assert counters["drops"].get("srtp_auth", 0) == 0, counters
        names = (
            "pbx_zrtp_state",
            "pbx_zrtp_state_video",
            "pbx_zrtp_secure_video",
            "zrtp_secure_media_confirmed_video",
            "remote_video_ip",
        )
        values = {name: lab.esl.getvar(uuid, name) for name in names}
        assert values == {
            "pbx_zrtp_state": "secure",
            "pbx_zrtp_state_video": "secure",
            "pbx_zrtp_secure_video": "true",
            "zrtp_secure_media_confirmed_video": "true",
            "remote_video_ip": lab.net.r,
        }, values
        hangup = lab.hang_up(phone, uuid)
        freeswitch_sent = int(hangup.get("variable_rtp_video_out_packet_count", "0") or 0)
        ended = lab.relay_events(call_id)[-1]
        ended_video = next(s for s in ended["streams"] if s["name"] == "video")
        relay_heard = ended_video["counters"]["pbx_in"]
        direct = lab.direct_rtp(sniffer)
        summary = {
            "sas": phone_sas,
            "audio": [report.get(k) for k in ("key_agreement", "cipher", "auth_tag")],
            "video": [video.get(k) for k in ("state", "key_agreement", "cipher", "auth_tag")],
            "video_port": video_port,
            "video_handshake_ms": video.get("handshake_ms"),
            "video_counters_at_4s": counters,
            "video_ended_counters": ended_video["counters"],
            "freeswitch_video_out": freeswitch_sent,
            "relay_video_pbx_in": relay_heard,
            "sniffed_from_freeswitch_to_phone": len(direct),
            "variables": values,
        }
        print("REAL VIDEO CALL:", json.dumps(summary))
        # Every video packet FreeSWITCH sent reached the relay; none reached the phone
        # straight from FreeSWITCH (`required`: not one clear packet).
        assert 0 < freeswitch_sent <= relay_heard, (freeswitch_sent, relay_heard)
        assert direct == [], direct
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{lab.diagnostics()}") from None
    finally:
        phone.stop()


def test_required_call_without_zrtp_is_hung_up_by_the_dialplan(lab: Lab) -> None:
    phone = lab.phone("phone-clear", zrtp=False)
    try:
        started = time.monotonic()
        phone.send(f"call sip:9400@{lab.net.a}")
        progress = lab.esl.wait_event(
            lambda e: (
                e.get("Event-Name") == "CHANNEL_PROGRESS_MEDIA" and float(e["_time"]) >= started
            ),
            15,
            "CHANNEL_PROGRESS_MEDIA",
        )
        uuid = progress["Unique-ID"]
        hangup = lab.esl.wait_event(
            lambda e: (
                e.get("Event-Name") == "CHANNEL_HANGUP_COMPLETE" and e.get("Unique-ID") == uuid
            ),
            REQUIRED_TIMEOUT + 20,
            "CHANNEL_HANGUP_COMPLETE of the clear call",
        )
        hung_up_after = time.monotonic() - started
        assert hangup.get("Hangup-Cause") == "BEARERCAPABILITY_NOTAVAIL", hangup
        assert hangup.get("variable_pbx_zrtp_state") == "failed", hangup
        # Refused before answer (issue 13, defect 7): 183 with the SDP, then a final
        # error; never a 200 OK, never CHANNEL_ANSWER, never billed as answered.
        assert not any(
            e.get("Event-Name") == "CHANNEL_ANSWER" and e.get("Unique-ID") == uuid
            for e in lab.esl.events
        )
        assert hangup.get("variable_sip_hangup_disposition") == "send_refuse", hangup
        assert hangup.get("variable_answersec", "0") == "0", hangup
        sip = lab.sip_sent(hangup["variable_sip_call_id"])
        statuses = [line for line in sip if line.startswith("SIP/2.0 ") and "INVITE" in line]
        assert statuses and not any(" 200 " in line for line in statuses), sip
        assert any(line.startswith("SIP/2.0 183 ") for line in statuses), sip
        # the final error: mod_sofia's SIP for BEARERCAPABILITY_NOTAVAIL is 503
        assert statuses[-1].startswith("SIP/2.0 503 "), sip
        assert not any(
            e.get("Event-Name") == "CHANNEL_ANSWER" and e.get("Unique-ID") == uuid
            for e in lab.esl.events
        )
        assert not any(
            e.get("Event-Subclass") == "pbx_zrtp::secure" and e.get("pbx_zrtp_uuid") == uuid
            for e in lab.esl.events
        )
        failed = lab.esl.wait_event(
            lambda e: (
                e.get("Event-Subclass") == "pbx_zrtp::failed" and e.get("pbx_zrtp_uuid") == uuid
            ),
            1,
            "CUSTOM pbx_zrtp::failed",
        )
        events = lab.relay_events(f"fs-{uuid}")
        states = [e["state"] for e in events]
        assert "failed" in states and "secure" not in states, states
        final = events[-1]["counters"]
        # `required`: the phone's clear audio never reached FreeSWITCH.
        assert final["pbx_out"] == 0 and final["drops"].get("clear_blocked", 0) > 0, final
        warning = [
            line
            for line in lab.channel_log(uuid)
            if "[WARNING]" in line and f"pbx_zrtp: {uuid} required ZRTP but is failed" in line
        ]
        assert warning, "no WARNING line from pbx_zrtp_wait.lua (or pbx_zrtp_refused)"
        print(
            "CLEAR CALL:",
            json.dumps(
                {
                    "hung_up_after_s": round(hung_up_after, 3),
                    "sip_sent": sip,
                    "cause": hangup.get("Hangup-Cause"),
                    "fail_reason": failed.get("pbx_zrtp_fail_reason"),
                    "warning": warning[0].split("] ", 1)[-1][:300],
                    "states": states,
                    "counters": final,
                }
            ),
        )
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{lab.diagnostics()}") from None
    finally:
        hangup_phone(phone)
        phone.stop()


def test_two_zrtp_phones_bridged_through_freeswitch_are_linked_legs(lab: Lab) -> None:
    """alice -> 9700 -> bridge {pbx_zrtp_policy=required,...}sofia/.../carol: both legs
    secure through the relay, linked by Channel-Call-UUID. Linphone cannot enroll, so no
    SAS is relayed and both channels say so (pbx_zrtp_sas_scope=pbx-leg)."""
    carol = lab.phone(f"carol-zrtp-{len(lab.procs)}", zrtp=True, carol=True)
    alice = lab.phone(f"alice-2-{len(lab.procs)}", zrtp=True)
    try:
        sniffer = lab.sniffer()
        alice.send(f"call sip:9700@{lab.net.a}")
        match, _ = alice.wait_for(r"fully encrypted and auth token is (\S+?)\.?\s*$", 30)
        alice_sas = match.group(1)
        match, _ = carol.wait_for(r"fully encrypted and auth token is (\S+?)\.?\s*$", 30)
        carol_sas = match.group(1)
        deadline = time.monotonic() + 10
        calls: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            calls = lab.calls()
            if len(calls) == 2 and all(c.get("sas_relay") == "none" for c in calls):
                break
            time.sleep(0.2)
        assert len(calls) == 2, calls
        assert {c["sas"] for c in calls} == {alice_sas, carol_sas}, (calls, alice_sas, carol_sas)
        bridges = {c["bridge"] for c in calls}
        assert len(bridges) == 1 and "" not in bridges, calls  # the A leg's uuid on both
        assert f"fs-{next(iter(bridges))}" in {c["call_id"] for c in calls}, calls
        for call in calls:
            assert call["state"] == "secure" and call["sas_scope"] == "pbx-leg", call
            uuid = call["call_id"].removeprefix("fs-")
            for variable, expected in (
                ("pbx_zrtp_state", "secure"),
                ("pbx_zrtp_sas_scope", "pbx-leg"),
                ("pbx_zrtp_sas_relay", "none"),
                ("pbx_zrtp_enrolled", "false"),
                ("pbx_zrtp_sas", call["sas"]),
            ):
                got = lab.esl.getvar(uuid, variable)
                assert got == expected, (uuid, variable, got, expected)
        time.sleep(2)
        for call in lab.calls():
            counters = call["counters"]
            assert counters["phone_in"] > 30 and counters["pbx_in"] > 30, call
        # Issue 13, defect 8: not one clear packet from A to either phone, on either leg.
        caller = f"fs-{next(iter(bridges))}"
        legs = {
            int(c["phone"].rsplit(":", 1)[1]): "caller" if c["call_id"] == caller else "callee"
            for c in calls
        }
        direct = lab.direct_rtp(sniffer)
        by_leg = {leg: sum(p["dport"] == port for p in direct) for port, leg in legs.items()}
        print(
            "TWO PHONES:",
            json.dumps(
                {
                    "alice_sas": alice_sas,
                    "carol_sas": carol_sas,
                    "sniffed_from_freeswitch_to_phone": by_leg,
                    "sniffed_other": len(direct) - sum(by_leg.values()),
                }
            ),
        )
        assert direct == [], (direct, legs)
        hangup_phone(alice)
        deadline = time.monotonic() + 15
        while lab.calls() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert lab.calls() == []
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{lab.diagnostics()}") from None
    finally:
        alice.stop()
        carol.stop()


def test_two_video_phones_bridged_through_freeswitch_send_video_both_ways(lab: Lab) -> None:
    """alice -> 9713 (the sample's pbx_zrtp_two_phones, as typed) -> carol, both
    linphonec phones sending their static picture in H264, each leg `required` and
    through the relay: on each leg audio and video are secure (video by Multistream,
    under that leg's SAS), and FreeSWITCH bridges the video, so on each leg the relay
    counts video both ways (SRTP toward the phone, none failing there); every video
    packet FreeSWITCH sent on a leg reached the relay, and nothing from FreeSWITCH
    reached a phone directly."""
    carol = lab.phone(f"carol-video-{len(lab.procs)}", zrtp=True, carol=True, video=True)
    alice = lab.phone(f"alice-video-{len(lab.procs)}", zrtp=True, video=True)
    try:
        sniffer = lab.sniffer()
        alice.send(f"call sip:9713@{lab.net.a}")
        match, _ = alice.wait_for(r"fully encrypted and auth token is (\S+?)\.?\s*$", 30)
        alice_sas = match.group(1)
        match, _ = carol.wait_for(r"fully encrypted and auth token is (\S+?)\.?\s*$", 30)
        carol_sas = match.group(1)
        # Both legs' video settled (secure or failed, never left pending).
        deadline = time.monotonic() + 20
        calls: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            calls = lab.calls()
            states = [
                [s["state"] for s in c.get("streams", []) if s["name"] == "video"] for c in calls
            ]
            if len(calls) == 2 and all(s and s[0] != "pending" for s in states):
                break
            time.sleep(0.2)
        assert len(calls) == 2, calls
        assert {c["sas"] for c in calls} == {alice_sas, carol_sas}, (calls, alice_sas, carol_sas)
        bridges = {c["bridge"] for c in calls}
        assert len(bridges) == 1 and "" not in bridges, calls
        caller = f"fs-{next(iter(bridges))}"
        legs = {"alice" if c["call_id"] == caller else "carol": c["call_id"] for c in calls}
        assert set(legs) == {"alice", "carol"}, calls
        phones = {"alice": alice, "carol": carol}
        variables = {}
        for leg, call_id in legs.items():
            call = next(c for c in calls if c["call_id"] == call_id)
            video = next(s for s in call["streams"] if s["name"] == "video")
            assert call["state"] == "secure", call
            assert video["state"] == "secure" and video["key_agreement"] == "Mult", (leg, video)
            assert video["sas"] == call["sas"] == (alice_sas if leg == "alice" else carol_sas)
            uuid = call_id.removeprefix("fs-")
            names = (
                "pbx_zrtp_state",
                "pbx_zrtp_state_video",
                "pbx_zrtp_secure_video",
                "zrtp_secure_media_confirmed_video",
                "remote_video_ip",
                "rtp_use_video_codec_name",
                "local_video_port",
            )
            variables[leg] = {name: lab.esl.getvar(uuid, name) for name in names}
            assert video["port"] == int(variables[leg]["local_video_port"]), (leg, video)
        time.sleep(6)  # both pictures flow, each bridged to the other phone
        during = {c["call_id"]: c for c in lab.calls()}
        video_counters = {
            leg: next(s for s in during[cid]["streams"] if s["name"] == "video")["counters"]
            for leg, cid in legs.items()
        }
        audio_counters = {leg: during[cid]["counters"] for leg, cid in legs.items()}
        uuids = {leg: cid.removeprefix("fs-") for leg, cid in legs.items()}
        hangup_phone(alice)

        def hung_up(uuid: str) -> Callable[[dict[str, str]], bool]:
            return lambda e: (
                e.get("Event-Name") == "CHANNEL_HANGUP_COMPLETE" and e.get("Unique-ID") == uuid
            )

        hangups = {
            leg: lab.esl.wait_event(hung_up(uuid), 15, f"CHANNEL_HANGUP_COMPLETE of {leg}")
            for leg, uuid in uuids.items()
        }
        deadline = time.monotonic() + 10
        while lab.calls() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert lab.calls() == []
        summary: dict[str, Any] = {"alice_sas": alice_sas, "carol_sas": carol_sas, "legs": {}}
        for leg, call_id in legs.items():
            ended = lab.relay_events(call_id)[-1]
            assert ended["state"] == "ended", ended
            ended_video = next(s for s in ended["streams"] if s["name"] == "video")["counters"]
            hangup = hangups[leg]
            summary["legs"][leg] = {
                "video": [
                    next(s for s in during[call_id]["streams"] if s["name"] == "video").get(k)
                    for k in ("state", "key_agreement", "cipher", "auth_tag", "handshake_ms")
                ],
                "audio": [during[call_id].get(k) for k in ("key_agreement", "cipher")],
                "variables": variables[leg],
                "audio_counters_at_6s": {
                    k: v for k, v in audio_counters[leg].items() if k != "drops"
                },
                "video_counters_at_6s": video_counters[leg],
                "video_ended_counters": ended_video,
                "freeswitch_video_out": int(
                    hangup.get("variable_rtp_video_out_packet_count", "0") or 0
                ),
                "freeswitch_video_in": int(
                    hangup.get("variable_rtp_video_in_packet_count", "0") or 0
                ),
                "phone_srtp_failures": srtp_failures(lab.base / phones[leg].name),
                "phone_video_received": video_received(lab.base / phones[leg].name),
            }
        direct = lab.direct_rtp(sniffer)
        summary["sniffed_from_freeswitch_to_phones"] = len(direct)
        print("TWO VIDEO PHONES:", json.dumps(summary))
        for leg, got in summary["legs"].items():
            assert got["variables"] == {
                **got["variables"],
                "pbx_zrtp_state": "secure",
                "pbx_zrtp_state_video": "secure",
                "pbx_zrtp_secure_video": "true",
                "zrtp_secure_media_confirmed_video": "true",
                "remote_video_ip": lab.net.r,
            }, (leg, got)
            counters = got["video_ended_counters"]
            # Video both ways on this leg, through the relay: the phone's SRTP in and
            # decrypted to FreeSWITCH, FreeSWITCH's bridged video in and SRTP to the phone.
            assert counters["phone_in"] > 0 and counters["pbx_out"] > 0, (leg, counters)
            assert counters["pbx_in"] > 0 and counters["phone_out"] > 0, (leg, counters)
            assert counters["drops"].get("srtp_auth", 0) == 0, (leg, counters)
            assert got["phone_srtp_failures"] == 0, (leg, got)
            # ... and the phone took it: its oRTP counted that video as received.
            assert 0 < got["phone_video_received"] <= counters["pbx_in"], (leg, got)
            # Every video packet FreeSWITCH sent on this leg reached the relay.
            assert 0 < got["freeswitch_video_out"] <= counters["pbx_in"], (leg, got)
        assert direct == [], direct
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{lab.diagnostics()}") from None
    finally:
        alice.stop()
        carol.stop()


def video_received(home: Path, timeout: float = 10.0) -> int:
    """The video RTP packets a linphonec phone received (its oRTP statistics, logged
    when its call ends), after SRTP: what reached it and authenticated; -1: none."""
    log = home / "linphone-debug.log"
    stats = re.compile(r"VIDEO SESSION'S RTP STATISTICS.*?ortp-message-received\s+(\d+) ", re.S)
    deadline = time.monotonic() + timeout
    while not (found := stats.findall(log.read_text(errors="replace") if log.exists() else "")):
        if time.monotonic() > deadline:
            return -1
        time.sleep(0.1)
    return int(found[-1])


def srtp_failures(home: Path) -> int:
    """SRTP packets a linphonec phone rejected (clear or forged ones that reached it)."""
    log = home / "linphone-debug.log"
    return log.read_text(errors="replace").count("srtp_unprotect() failed") if log.exists() else 0


def test_strays_on_prebound_ports_neither_amplify_nor_poison_the_next_call(lab: Lab) -> None:
    """Issue 13, items 1 and 2, on the real FreeSWITCH: stray and forged datagrams
    from another LAN host to every pre-bound port get back at most their own bytes
    and the ports return to idle; then, with plain RTP still arriving on every port
    long after the unclaimed calls failed their time-out, a real `required`
    linphonec call is placed on one of those ports and is secured."""
    assert IP is not None
    stray_ip = str(ipaddress.ip_address(lab.net.phone) + 1)
    link = lab.net.host_link[:-1] + "p"  # the veth end inside the namespace
    _ip("-n", lab.net.namespace, "addr", "add", f"{stray_ip}/24", "dev", link)
    ports = f"{RTP_PORTS[0]}-{RTP_PORTS[1]}"
    n_ports = len(range(RTP_PORTS[0], RTP_PORTS[1] + 1, 2))
    strays_cmd = [IP, "netns", "exec", lab.net.namespace, sys.executable, "-m"]
    strays_cmd += ["tests.integration.strays", "--bind", stray_ip, "--target", lab.net.r]
    strays_cmd += ["--ports", ports]
    procs: list[Proc] = []
    phone: Proc | None = None

    def unclaimed() -> list[dict[str, Any]]:
        return [c for c in lab.ctl("list") if str(c.get("call_id", "")).startswith("port-")]

    try:
        # 1. One stray of each kind per port, round robin; the sender listens 6 s.
        sent_at = time.monotonic()
        burst = Proc(
            "strays-burst",
            [*strays_cmd, "--mode", "burst", "--listen", "6"],
            lab.base / "strays-burst.log",
            cwd=ROOT,
        )
        procs.append(burst)
        # 2. The relay holds them as unclaimed calls, then lets them go by itself.
        seen: set[str] = set()
        idle_after = None
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            live = {c["call_id"] for c in unclaimed()}
            seen |= live
            if len(seen) == n_ports and not live:
                idle_after = round(time.monotonic() - sent_at, 1)
                break
            time.sleep(0.2)
        match, _ = burst.wait_for(r"^\{", 30)
        burst_stats = json.loads(match.string)
        print(
            "STRAYS BURST:",
            json.dumps({"unclaimed_seen": len(seen), "idle_after_s": idle_after, **burst_stats}),
        )
        for kind, figures in burst_stats["kinds"].items():
            assert figures["received_bytes"] <= figures["sent_bytes"], (kind, burst_stats)
        assert len(seen) == n_ports and idle_after is not None, (seen, unclaimed())
        # 3. Plain RTP keeps arriving on every port (a phone still sending after its
        # BYE, everywhere) until every port's unclaimed call has failed.
        flood = Proc(
            "strays-flood",
            [*strays_cmd, "--mode", "continuous", "--duration", str(REQUIRED_TIMEOUT + 22)],
            lab.base / "strays-flood.log",
            cwd=ROOT,
        )
        procs.append(flood)
        deadline = time.monotonic() + REQUIRED_TIMEOUT + 8
        while sum(c["state"] == "failed" for c in unclaimed()) < n_ports:
            assert time.monotonic() < deadline, unclaimed()
            time.sleep(0.3)
        poisoned = {c["port"] for c in unclaimed()}
        phone = lab.phone("phone-after-strays", zrtp=True)
        started = time.monotonic()
        phone.send(f"call sip:9400@{lab.net.a}")
        match, _ = phone.wait_for(r"fully encrypted and auth token is (\S+?)\.?\s*$", 30)
        phone_sas = match.group(1)
        secure_after = round(time.monotonic() - started, 2)
        deadline = time.monotonic() + 10
        while not [c for c in lab.calls() if c["state"] == "secure"]:
            assert time.monotonic() < deadline, lab.calls()
            time.sleep(0.2)
        (call,) = lab.calls()
        assert call["sas"] == phone_sas and call["port"] in poisoned, (call, poisoned)
        assert call["phone"].startswith(lab.net.phone + ":"), call
        before = [e["state"] for e in lab.relay_events(f"port-{call['port']}")]
        assert "failed" in before, before  # the call really landed on a poisoned port
        time.sleep(2)
        counters = lab.ctl("show", call["call_id"])["counters"]
        assert counters["phone_in"] > 30 and counters["pbx_in"] > 30, counters
        hangup_phone(phone)
        match, _ = flood.wait_for(r"^\{", REQUIRED_TIMEOUT + 40)
        flood_stats = json.loads(match.string)
        rtp = flood_stats["kinds"]["rtp"]
        assert rtp["received_bytes"] <= rtp["sent_bytes"], flood_stats
        deadline = time.monotonic() + 15
        while unclaimed() or lab.calls():
            assert time.monotonic() < deadline, (unclaimed(), lab.calls())
            time.sleep(0.2)
        print(
            "STRAYS THEN CALL:",
            json.dumps(
                {
                    "burst_idle_after_s": idle_after,
                    "poisoned_ports": len(poisoned),
                    "call_port": call["port"],
                    "secure_after_s": secure_after,
                    "sas": phone_sas,
                    "unclaimed_before_call": before,
                    "call_drops": counters.get("drops"),
                    "flood": flood_stats,
                }
            ),
        )
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{lab.diagnostics()}") from None
    finally:
        if phone is not None:
            phone.stop()
        for proc in procs:
            proc.stop()
        _ip("-n", lab.net.namespace, "addr", "del", f"{stray_ip}/24", "dev", link, check=False)


def test_unsafe_settings_send_clear_rtp_to_the_phone_and_pbx_zrtp_warns(lab: Lab) -> None:
    """The positive control of the zero counts above (issue 13, defect 8): with
    FreeSWITCH's default auto-adjust threshold (10) and no wait before the bridge
    (extension 9711), the sniffer sees FreeSWITCH's RTP reach the phones directly, and
    pbx-zrtp says so in its log, for the call's settings and at hangup in figures."""
    carol = lab.phone(f"carol-unsafe-{len(lab.procs)}", zrtp=True, carol=True)
    alice = lab.phone(f"alice-unsafe-{len(lab.procs)}", zrtp=True)
    try:
        sniffer = lab.sniffer()
        logged = len(lab.relay.lines)
        alice.send(f"call sip:9711@{lab.net.a}")
        alice.wait_for(r"fully encrypted and auth token is (\S+?)\.?\s*$", 30)
        carol.wait_for(r"fully encrypted and auth token is (\S+?)\.?\s*$", 30)
        deadline = time.monotonic() + 10
        while len(calls := lab.calls()) < 2 or any(c["state"] != "secure" for c in calls):
            assert time.monotonic() < deadline, calls
            time.sleep(0.2)
        time.sleep(1)
        direct = lab.direct_rtp(sniffer)
        hangup_phone(alice)
        deadline = time.monotonic() + 15
        while lab.calls() and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(0.5)
        log = "\n".join(list(lab.relay.lines)[logged:])
        uuids = [c["call_id"].removeprefix("fs-") for c in calls]
        settings = [u for u in uuids if f"call {u}: FreeSWITCH may send CLEAR AUDIO" in log]
        audits = re.findall(r"call (\S+) \(policy required\): FreeSWITCH sent (\d+) RTP", log)
        leaked = re.findall(r"(\d+) went straight to the phone IN THE CLEAR", log)
        print(
            "UNSAFE SETTINGS:",
            json.dumps(
                {
                    "sniffed_from_freeswitch_to_phone": len(direct),
                    "settings_warnings": len(settings),
                    "hangup_warnings": [int(n) for n in leaked],
                }
            ),
        )
        assert len(direct) > 0, "the sniffer saw no direct RTP with the unsafe settings"
        assert sorted(settings) == sorted(uuids), log
        assert audits and sum(int(n) for n in leaked) > 0, log
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{lab.diagnostics()}") from None
    finally:
        alice.stop()
        carol.stop()


def test_the_egress_guard_keeps_even_the_unsafe_settings_clear_rtp_from_the_phones(
    lab: Lab,
) -> None:
    """The same unsafe call (9711) with the PBX host's egress guard loaded as
    docs/asterisk.md has it (``pbx-zrtp guard``, from the lab's own configuration: A,
    R, the RTP range): FreeSWITCH still tries to send straight to the phones, the
    kernel drops it (the guard's counter), and the sniffer on the phones' link sees
    nothing from A. The guard is PBX-agnostic; FreeSWITCH's own fix stays the
    samples' settings (the other tests)."""
    reason = guard_unavailable()
    if reason:
        pytest.skip(reason)
    guard = LabGuard(lab.base / "pbx-zrtp.toml", f"pbx_zrtp_guard_fs{os.getpid()}")
    carol = lab.phone(f"carol-guarded-{len(lab.procs)}", zrtp=True, carol=True)
    alice = lab.phone(f"alice-guarded-{len(lab.procs)}", zrtp=True)
    try:
        sniffer = lab.sniffer()
        alice.send(f"call sip:9711@{lab.net.a}")
        a_sas = alice.wait_for(r"fully encrypted and auth token is (\S+?)\.?\s*$", 30)[0]
        c_sas = carol.wait_for(r"fully encrypted and auth token is (\S+?)\.?\s*$", 30)[0]
        deadline = time.monotonic() + 10
        while len(calls := lab.calls()) < 2 or any(c["state"] != "secure" for c in calls):
            assert time.monotonic() < deadline, calls
            time.sleep(0.2)
        time.sleep(1)
        direct = lab.direct_rtp(sniffer)
        dropped = guard.dropped()
        counters = {c["call_id"]: c["counters"] for c in lab.calls()}
        print(
            "GUARDED UNSAFE SETTINGS:",
            json.dumps(
                {
                    "sas": [a_sas.group(1), c_sas.group(1)],
                    "sniffed_from_freeswitch_to_phone": len(direct),
                    "guard_dropped": dropped,
                    "relay_counters": counters,
                }
            ),
        )
        assert direct == [], direct[:5]
        assert dropped["egress"] > 0, dropped  # what would have reached the phones
        for call_id, counter in counters.items():  # the call itself goes on, secured
            assert counter["phone_in"] > 0 and counter["phone_out"] > 0, (call_id, counter)
        hangup_phone(alice)
        deadline = time.monotonic() + 15
        while lab.calls() and time.monotonic() < deadline:
            time.sleep(0.2)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{lab.diagnostics()}") from None
    finally:
        alice.stop()
        carol.stop()
        guard.remove()


def test_the_secure_line_9401_is_reached_and_shows_the_sas(lab: Lab) -> None:
    """Issue 13: pbx_zrtp.xml's optional pattern shadowed the 9401 "secure line".
    Now 9401 runs pbx_zrtp_secure_line: secured before answer, uuid_display succeeds."""
    phone = lab.phone(f"phone-9401-{len(lab.procs)}", zrtp=True)
    try:
        started = time.monotonic()
        phone.send(f"call sip:9401@{lab.net.a}")
        match, _ = phone.wait_for(r"fully encrypted and auth token is (\S+?)\.?\s*$", 30)
        answer = lab.esl.wait_event(
            lambda e: e.get("Event-Name") == "CHANNEL_ANSWER" and float(e["_time"]) >= started,
            15,
            "CHANNEL_ANSWER",
        )
        uuid = answer["Unique-ID"]
        deadline = time.monotonic() + 10
        while lab.esl.getvar(uuid, "api_result") == "":
            assert time.monotonic() < deadline, "uuid_display never ran"
            time.sleep(0.1)
        assert lab.esl.getvar(uuid, "api_result").startswith("+OK"), lab.esl.getvar(
            uuid, "api_result"
        )
        assert lab.esl.getvar(uuid, "pbx_zrtp_sas") == match.group(1)
        hunted = [line for line in lab.channel_log(uuid) if "Regex (PASS)" in line]
        assert hunted and "[pbx_zrtp_secure_line]" in hunted[0], hunted
        print("SECURE LINE:", json.dumps({"sas": match.group(1), "hunted": hunted[0][-120:]}))
        hangup_phone(phone)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{lab.diagnostics()}") from None
    finally:
        phone.stop()


def test_zrtp_commands_at_fs_cli_answer_in_the_console(lab: Lab) -> None:
    """Issue 13: `zrtp …` at fs_cli, set up as docs/freeswitch.md says (the sticky alias
    to pbx_zrtp_admin.lua), answered by pbx-zrtp in the console."""
    assert os.access(FS_CLI, os.X_OK), FS_CLI
    assert lab.fs_cli("alias stickyadd zrtp lua pbx_zrtp_admin.lua").startswith("+OK")
    phone = lab.phone(f"phone-cli-{len(lab.procs)}", zrtp=True)
    try:
        assert lab.zrtp("show calls") == "+OK no ZRTP calls"
        started = time.monotonic()
        phone.send(f"call sip:9400@{lab.net.a}")
        match, _ = phone.wait_for(r"fully encrypted and auth token is (\S+?)\.?\s*$", 30)
        sas = match.group(1)
        answer = lab.esl.wait_event(
            lambda e: e.get("Event-Name") == "CHANNEL_ANSWER" and float(e["_time"]) >= started,
            15,
            "CHANNEL_ANSWER",
        )
        uuid = answer["Unique-ID"]
        listing = lab.zrtp("show calls")
        assert f"{uuid} secure {sas.replace(' ', '_')} false required" in listing, listing
        verified = lab.zrtp(f"verify {uuid}")
        assert verified == f"+OK SAS of {uuid} marked verified", verified
        assert lab.esl.getvar(uuid, "pbx_zrtp_sas_verified") == "true"
        shown = lab.zrtp(f"show call {uuid}")
        assert "pbx_zrtp_sas_verified=true" in shown.splitlines(), shown
        assert lab.zrtp(f"unverify {uuid}") == f"+OK SAS of {uuid} marked unverified"
        missing = lab.zrtp("verify no-such-call")
        assert missing.startswith("-ERR no ZRTP call no-such-call"), missing
        assert lab.zrtp("policy 9402 required") == "+OK 9402: required"
        assert lab.esl.api("global_getvar pbx_zrtp_policy_9402").strip() == "required"
        assert json.loads((lab.base / "freeswitch-policies.json").read_text()) == {
            "9402": "required"
        }
        typo = lab.zrtp("policy 9402 requried")
        assert typo.startswith("-ERR 'requried': use off, optional, required or auto"), typo
        assert lab.zrtp("policy 9402 auto") == "+OK 9402: auto"
        print("FS_CLI:", json.dumps({"show_calls": listing, "verify": verified}))
        hangup_phone(phone)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{lab.diagnostics()}") from None
    finally:
        phone.stop()
