"""A real ZRTP call through a real Asterisk (chan_pjsip) and ``pbx-zrtp run``.

Runs only when ``PBX_ZRTP_ASTERISK`` names an Asterisk binary (e.g.
``/opt/asterisk/sbin/asterisk``) and ``linphonec`` (Debian ``linphone-cli``) is
installed. Everything runs on loopback addresses:

- Asterisk: SIP transport and RTP on A = 127.0.10.1, AMI on 127.0.0.1 (a free port),
  configured from the project's samples in ``dialplan/asterisk/`` (pjsip, manager,
  the ``[pbx-zrtp]`` Gosub), RTP ports 20000-20100;
- ``pbx-zrtp run``: relay on R = 127.0.10.2 in front of A, AMI adapter;
- the phone: ``linphonec`` (alice) with its RTP on 127.0.10.3, calling 600, which runs
  ``Gosub(pbx-zrtp,s,1(required))``, ``Answer()`` and ``Echo()``.

Run: ``PBX_ZRTP_ASTERISK=/opt/asterisk/sbin/asterisk .venv/bin/python -m pytest -m integration
tests/integration -q -s`` (``-s`` shows a JSON summary of each call). Every wait has a
time-out and every process is ended in a ``finally``. The logs of all programs are left in
the test's tmp directory and their tails are printed when a check fails.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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

SAMPLES = ROOT / "dialplan" / "asterisk"
ASTERISK = os.environ.get("PBX_ZRTP_ASTERISK", "")
LINPHONEC = shutil.which("linphonec")

A = "127.0.10.1"  # Asterisk: SIP transport and RTP
R = "127.0.10.2"  # the relay (media_address of the ZRTP endpoint)
PHONE = "127.0.10.3"  # linphonec's RTP
CAROL = "127.0.10.4"  # the second phone (called by Asterisk)
RTP_PORTS = (20000, 20100)
AMI_SECRET = "integration-test-secret-0123456789"
TEST_AMI_USER = "zrtp-test"
TEST_AMI_SECRET = "integration-test-listener-secret"
REQUIRED_TIMEOUT = 6.0  # [timeouts] required in pbx-zrtp.toml (the dialplan waits 12 s)


def _skip_reason() -> str | None:
    if not ASTERISK:
        return "set PBX_ZRTP_ASTERISK to an Asterisk 22 binary (e.g. /opt/asterisk/sbin/asterisk)"
    if not os.access(ASTERISK, os.X_OK):
        return f"PBX_ZRTP_ASTERISK={ASTERISK} is not an executable"
    if LINPHONEC is None:
        return "linphonec is not installed (Debian package linphone-cli)"
    return None


if (_reason := _skip_reason()) is not None:
    pytest.skip(_reason, allow_module_level=True)


# ---------------------------------------------------------------------- processes


# ---------------------------------------------------------------------- AMI


class AmiClient:
    """A minimal raw AMI client: one reader thread, actions by ActionID, events kept."""

    def __init__(self, host: str, port: int, username: str, secret: str, timeout: float) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.settimeout(None)
        self.events: list[dict[str, str]] = []
        self.closed = False
        self._responses: dict[str, dict[str, str]] = {}
        self._cond = threading.Condition()
        self._next = 0
        self._thread = threading.Thread(target=self._read, name="ami-test", daemon=True)
        self._thread.start()
        reply = self.action("Login", Username=username, Secret=secret, Events="on")
        if reply.get("Response") != "Success":
            raise AssertionError(f"AMI login as {username} failed: {reply}")

    def _read(self) -> None:
        buffer = b""
        banner = True
        try:
            while True:
                chunk = self.sock.recv(65536)
                if not chunk:
                    break
                buffer += chunk
                if banner and b"\r\n" in buffer:
                    _, buffer = buffer.split(b"\r\n", 1)  # "Asterisk Call Manager/x.y.z"
                    banner = False
                while b"\r\n\r\n" in buffer:
                    raw, buffer = buffer.split(b"\r\n\r\n", 1)
                    message: dict[str, str] = {}
                    for line in raw.decode("utf-8", "replace").split("\r\n"):
                        key, sep, value = line.partition(":")
                        if sep and key not in message:
                            message[key.strip()] = value.strip()
                    with self._cond:
                        if "Response" in message and "ActionID" in message:
                            self._responses[message["ActionID"]] = message
                        elif "Event" in message:
                            message["_time"] = f"{time.monotonic():.6f}"
                            self.events.append(message)
                        self._cond.notify_all()
        except OSError:
            pass
        finally:
            with self._cond:
                self.closed = True
                self._cond.notify_all()

    def action(self, name: str, timeout: float = 5.0, **fields: str) -> dict[str, str]:
        with self._cond:
            self._next += 1
            action_id = f"t{self._next}"
        text = f"Action: {name}\r\nActionID: {action_id}\r\n"
        text += "".join(f"{key}: {value}\r\n" for key, value in fields.items()) + "\r\n"
        self.sock.sendall(text.encode())
        deadline = time.monotonic() + timeout
        with self._cond:
            while action_id not in self._responses:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self.closed:
                    raise AssertionError(f"AMI {name}: no response within {timeout} s")
                self._cond.wait(remaining)
            return self._responses.pop(action_id)

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
                    seen = [e.get("Event", "") + "/" + e.get("UserEvent", "") for e in self.events]
                    raise AssertionError(f"no AMI event {what} within {timeout} s; saw {seen}")
                self._cond.wait(remaining)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.sendall(b"Action: Logoff\r\n\r\n")
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        self._thread.join(5)


# ---------------------------------------------------------------------- configuration


def _free_udp_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _asterisk_prefix(binary: str) -> Path:
    return Path(binary).resolve().parent.parent


#: The start of Asterisk 22's configs/samples/cli_aliases.conf.sample.
STOCK_CLI_ALIASES = """;
; CLI Aliases configuration
;
[general]
template = friendly		; By default, include friendly aliases
;template = asterisk_1dot2	; Asterisk 1.2 style syntax

[friendly]
hangup request=channel request hangup
originate=channel originate
help=core show help
reload=module reload

"""

MODULES = (
    "res_pjproject.so",
    "res_sorcery_config.so",
    "res_sorcery_memory.so",
    "res_sorcery_astdb.so",
    "res_pjsip.so",
    "res_pjsip_session.so",
    "res_pjsip_pubsub.so",
    "chan_pjsip.so",
    "res_pjsip_sdp_rtp.so",
    "res_pjsip_endpoint_identifier_user.so",
    "res_pjsip_authenticator_digest.so",
    "res_rtp_asterisk.so",
    "res_timing_timerfd.so",
    "codec_ulaw.so",
    "codec_alaw.so",
    "pbx_config.so",
    "app_stack.so",
    "app_userevent.so",
    "app_waitforcond.so",
    "app_verbose.so",
    "app_echo.so",
    "func_channel.so",
    "func_logic.so",
    "func_pjsip_endpoint.so",  # the subroutine reads the endpoint's media_address
    "app_dial.so",
    "bridge_simple.so",  # Dial() bridges the two legs
    "app_playback.so",  # early media (extension 620)
    "format_wav.so",
    "res_format_attr_vp8.so",  # a video call (VP8, linphonec's static picture)
    "res_clioriginate.so",  # the admin's `channel originate` CLI lines (docs/asterisk.md)
    "res_clialiases.so",  # cli_aliases_pbx_zrtp.conf
    "func_db.so",  # DB() in the admin context
)


STUB_CONFIGS = (
    "acl.conf",
    "ccss.conf",
    "cdr.conf",
    "cel.conf",
    "features.conf",
    "indications.conf",
    "pjproject.conf",
    "udptl.conf",
)


def write_asterisk_config(base: Path, ami_port: int, carol_port: int) -> Path:
    """A complete, private Asterisk configuration under ``base``; returns asterisk.conf."""
    prefix = _asterisk_prefix(ASTERISK)
    moddir = Path(os.environ.get("PBX_ZRTP_ASTERISK_MODULES", prefix / "lib/asterisk/modules"))
    datadir = prefix / "var/lib/asterisk"
    etc, var, spool, run, log = (base / d for d in ("etc", "var", "spool", "run", "log"))
    for directory in (etc, var, spool, run, log):
        directory.mkdir(parents=True, exist_ok=True)
    conf = write(
        etc / "asterisk.conf",
        f"""[directories]
astetcdir => {etc}
astmoddir => {moddir}
astvarlibdir => {var}
astdbdir => {var}
astkeydir => {var}
astdatadir => {datadir}
astagidir => {var}/agi-bin
astspooldir => {spool}
astrundir => {run}
astlogdir => {log}
astsbindir => {prefix / "sbin"}

[options]
verbose = 5
debug = 0
documentation_language = en_US
""",
    )
    write(
        etc / "modules.conf",
        "[modules]\nautoload = no\n" + "".join(f"load => {m}\n" for m in MODULES),
    )
    write(
        etc / "logger.conf",
        "[general]\ndateformat = %F %T.%3q\n\n[logfiles]\n"
        "console => notice,warning,error,verbose\n"
        "full => notice,warning,error,verbose,debug\n",
    )
    for quiet in STUB_CONFIGS:  # absent files are logged as errors at every start
        write(etc / quiet, "")
    write(etc / "rtp.conf", f"[general]\nrtpstart = {RTP_PORTS[0]}\nrtpend = {RTP_PORTS[1]}\n")
    # The project's samples, with this lab's addresses, port and secrets.
    pjsip = (SAMPLES / "pjsip_pbx_zrtp.conf").read_text()
    assert "192.0.2.1:5060" in pjsip and "media_address = 192.0.2.2" in pjsip
    pjsip = pjsip.replace("192.0.2.1", A).replace("192.0.2.2", R)
    # video calls (issue 15): VP8 too; the other tests' phones offer no video
    pjsip = pjsip.replace("allow = ulaw,alaw\n", "allow = ulaw,alaw,vp8\n")
    # carol: a second ZRTP phone that Asterisk calls (static contact, media via the relay).
    pjsip += f"""
[carol]
type = endpoint
transport = transport-udp
context = from-phones
disallow = all
allow = ulaw,alaw
aors = carol
media_address = {R}
bind_rtp_to_media_address = no
rtp_symmetric = yes
direct_media = no

[carol]
type = aor
contact = sip:carol@{CAROL}:{carol_port}
"""
    write(etc / "pjsip.conf", pjsip)
    manager = (SAMPLES / "manager_pbx_zrtp.conf").read_text()
    manager, ports = re.subn(r"(?m)^port = 5038$", f"port = {ami_port}", manager)
    manager, secrets = re.subn(r"(?m)^secret = .*$", f"secret = {AMI_SECRET}", manager)
    assert ports == 1 and secrets == 1, "manager_pbx_zrtp.conf changed shape"
    manager += (
        f"\n[{TEST_AMI_USER}]\nsecret = {TEST_AMI_SECRET}\n"
        "deny = 0.0.0.0/0.0.0.0\npermit = 127.0.0.1/255.255.255.255\n"
        "read = all\nwrite = all\n"
    )
    write(etc / "manager.conf", manager, 0o600)
    shutil.copy(SAMPLES / "extensions_pbx_zrtp.conf", etc / "extensions_pbx_zrtp.conf")
    # cli_aliases.conf as Asterisk's sample starts (its [general] and [friendly]), with
    # the project's file appended as docs/asterisk.md says.
    write(
        etc / "cli_aliases.conf",
        STOCK_CLI_ALIASES + (SAMPLES / "cli_aliases_pbx_zrtp.conf").read_text(),
    )
    write(
        etc / "extensions.conf",
        """[general]
static = yes
writeprotect = yes

#include extensions_pbx_zrtp.conf

[from-phones]
include => pbx-zrtp-examples
exten => 600,1,Gosub(pbx-zrtp,s,1(required))
 same => n,Answer()
 same => n,UserEvent(ZrtpSeen,State: ${ZRTP_STATE},SAS: ${ZRTP_SAS},Secure: ${ZRTP_SECURE},\
Policy: ${ZRTP_POLICY},Cipher: ${ZRTP_CIPHER},RtpDest: ${CHANNEL(rtp,dest)})
 same => n,Echo()
 same => n,Hangup()

; auto: no AstDB key, [asterisk.policies] resolves it to required (issue 11, item 4).
exten => 610,1,Gosub(pbx-zrtp,s,1(auto))
 same => n,Answer()
 same => n,UserEvent(ZrtpSeen,State: ${ZRTP_STATE},SAS: ${ZRTP_SAS},Secure: ${ZRTP_SECURE},\
Policy: ${ZRTP_POLICY},Cipher: ${ZRTP_CIPHER},RtpDest: ${CHANNEL(rtp,dest)})
 same => n,Echo()
 same => n,Hangup()

; Early media (issue 15): a tone in the 183, before Answer(), once the subroutine is done.
exten => 620,1,Gosub(pbx-zrtp,s,1(required))
 same => n,UserEvent(EarlyMedia,State: ${ZRTP_STATE},RtpDest: ${CHANNEL(rtp,dest)})
 same => n,Playback(@EARLY@,noanswer)
 same => n,UserEvent(ZrtpSeen,State: ${ZRTP_STATE},SAS: ${ZRTP_SAS},Secure: ${ZRTP_SECURE},\
Policy: ${ZRTP_POLICY},Cipher: ${ZRTP_CIPHER},RtpDest: ${CHANNEL(rtp,dest)})
 same => n,Answer()
 same => n,Echo()
 same => n,Hangup()

; Optional (issue 13 defect 9): the Gosub returns on the relay's decision, never pending.
exten => 630,1,Gosub(pbx-zrtp,s,1(optional))
 same => n,UserEvent(ZrtpSeen,State: ${ZRTP_STATE},Wait: ${PBX_ZRTP_WAIT},\
Reason: ${ZRTP_FAIL_REASON})
 same => n,Answer()
 same => n,Echo()
 same => n,Hangup()

; Per-phone policy (issue 13): auto takes the strongest of number, caller and callee phone.
exten => 640,1,Gosub(pbx-zrtp,s,1(auto))
 same => n,UserEvent(ZrtpSeen,State: ${ZRTP_STATE},Policy: ${ZRTP_POLICY})
 same => n,Answer()
 same => n,Echo()
 same => n,Hangup()
exten => 641,1,Gosub(pbx-zrtp,s,1(auto))
 same => n,Dial(PJSIP/carol,20,U(pbx-zrtp^auto^641))
 same => n,Hangup()

; Two ZRTP phones, both legs through the relay (as extension 702 of the samples).
exten => 702,1,Gosub(pbx-zrtp,s,1(required))
 same => n,Dial(PJSIP/carol,20,U(pbx-zrtp^required^702))
 same => n,Hangup()
""".replace("@EARLY@", str(write_tone(base / "early.wav", 2.0).with_suffix(""))),
    )
    return conf


def write_relay_config(base: Path, ami_port: int) -> Path:
    secret = write(base / "ami.secret", AMI_SECRET + "\n", 0o600)
    return write(
        base / "pbx-zrtp.toml",
        f"""[relay]
address = "{R}"
pbx_address = "{A}"
ports = "{RTP_PORTS[0]}-{RTP_PORTS[1]}"

[zrtp]
ciphers = ["AES3", "AES1"]  # AES-256 first: a phone that offers it gets it in both roles

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

[asterisk]
host = "127.0.0.1"
port = {ami_port}
username = "pbx-zrtp"
secret_file = "{secret}"

[asterisk.policies]
"610" = "required"
""",
    )


def _free_rtp_port(host: str) -> int:
    """An even UDP port on ``host`` whose successor (RTCP) is free too."""
    for _ in range(50):
        port = _free_udp_port(host) & ~1
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as rtp:
                rtp.bind((host, port))
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as rtcp:
                    rtcp.bind((host, port + 1))
        except OSError:
            continue
        return port
    raise AssertionError(f"no free RTP port pair on {host}")


NO_ZRTP = "support_capability_negotiations=1\nsupported_encryptions=LinphoneMediaEncryptionNone\n"
#: A video call from linphonec: its static-picture camera, no display (headless).
VIDEO = (
    "enabled=1\ncapture=1\ndisplay=0\nautomatically_initiate=1\nautomatically_accept=1\n"
    "device=StaticImage: Static picture\nsize=qvga\n"
)


def write_linphonerc(
    home: Path,
    *,
    zrtp: bool,
    user: str = "alice",
    address: str = PHONE,
    sip_port: int = -1,
    ciphers: str = "",
    video: bool = False,
) -> Path:
    (home / ".local/share/linphone").mkdir(parents=True, exist_ok=True)
    encryption = "zrtp" if zrtp else "none"
    # liblinphone 5.1 answers a peer's ZRTP Hello even with media_encryption=none (it
    # creates its ZRTP engine for every encryption it *supports*): a phone without ZRTP
    # must also drop ZRTP from its supported list, which needs capability negotiation.
    no_zrtp = "" if zrtp else NO_ZRTP
    return write(
        home / "linphonerc",
        f"""[sip]
sip_port={sip_port}
sip_tcp_port=0
sip_tls_port=0
ipv6_migration_done=1
use_ipv6=0
contact="{user}" <sip:{user}@{address}>
media_encryption={encryption}
media_encryption_mandatory={1 if zrtp else 0}
{f"zrtp_cipher_suites={ciphers}" if ciphers else ""}
{no_zrtp}
[rtp]
audio_rtp_port={_free_rtp_port(address)}
bind_address={address}

[sound]
echocancellation=0

[video]
{VIDEO if video else "enabled=0"}

[auth_info_0]
username=alice
passwd=change-me
realm=asterisk
""",
    )


# ---------------------------------------------------------------------- the lab


@dataclass
class Lab:
    base: Path
    asterisk: Proc
    relay: Proc
    ami: AmiClient
    watch: Proc
    tone: Path
    carol_port: int
    procs: list[Proc] = field(default_factory=list)
    #: The host's egress guard for A (docs/asterisk.md), where this host can load one.
    guard: LabGuard | None = None

    @property
    def control(self) -> str:
        return f"unix:{self.base / 'control.sock'}"

    def ctl(self, *args: str) -> Any:
        return ctl_json(self.control, *args)

    def cli(self, line: str) -> str:
        """One Asterisk CLI line, as an admin types it: ``asterisk -rx '<line>'``."""
        conf = self.base / "etc" / "asterisk.conf"
        done = subprocess.run(
            [ASTERISK, "-C", str(conf), "-rx", line],
            capture_output=True,
            text=True,
            timeout=20,
            check=False,
        )
        return done.stdout + done.stderr

    def wait_calls(self, predicate: Callable[[list[dict[str, Any]]], bool], timeout: float) -> Any:
        """The relay's calls (``pbx-zrtp ctl list``) once ``predicate`` holds."""
        deadline = time.monotonic() + timeout
        calls: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            calls = [c for c in self.ctl("list") if c["call_id"].startswith("ast-")]
            if predicate(calls):
                return calls
            time.sleep(0.1)
        raise AssertionError(f"the relay's calls did not get there in {timeout} s: {calls}")

    def asterisk_log(self) -> str:
        path = self.base / "log" / "full"
        return path.read_text(errors="replace") if path.exists() else ""

    def channel_log(self, channel: str) -> list[str]:
        """Asterisk's log lines about one channel (by its call id tag [C-…])."""
        lines = self.asterisk_log().splitlines()
        tags = {
            match.group(1)
            for line in lines
            if channel in line and (match := re.search(r"\]\[(C-[0-9a-f]+)\]", line))
        }
        return [line for line in lines if any(f"[{tag}]" in line for tag in tags)]

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

    def phone(
        self,
        name: str,
        *,
        zrtp: bool,
        carol: bool = False,
        ciphers: str = "",
        video: bool = False,
        user: str = "",
    ) -> Proc:
        """alice (calls out), or carol (called by Asterisk at CAROL, auto-answers)."""
        home = self.base / name
        home.mkdir()
        if carol:
            rc = write_linphonerc(
                home, zrtp=zrtp, user="carol", address=CAROL, sip_port=self.carol_port
            )
        else:
            rc = write_linphonerc(
                home, zrtp=zrtp, ciphers=ciphers, video=video, user=user or "alice"
            )
        env = {**os.environ, "HOME": str(home)}
        command = [str(LINPHONEC), "-c", str(rc), "-d", "6", "-l", str(home / "linphone-debug.log")]
        if video:
            command.append("-C")  # video capture only: no display
        if carol:
            command.append("-a")  # auto-answer
        proc = Proc(
            name,
            command,
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

    def diagnostics(self) -> str:
        parts = []
        for proc in [self.asterisk, self.relay, self.watch, *self.procs]:
            parts.append(f"--- {proc.name} ({proc.log_path})\n{proc.tail(60)}")
        return "\n".join(parts)


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    base = tmp_path_factory.mktemp("asterisk-real")
    ami_port = free_tcp_port("127.0.0.1")
    carol_port = _free_udp_port(CAROL)
    conf = write_asterisk_config(base, ami_port, carol_port)
    relay_conf = write_relay_config(base, ami_port)
    tone = write_tone(base / "tone.wav")
    started: list[Proc] = []
    ami: AmiClient | None = None
    guard: LabGuard | None = None
    try:
        asterisk = Proc("asterisk", [ASTERISK, "-C", str(conf), "-f", "-n"], base / "asterisk.out")
        started.append(asterisk)
        wait_port("127.0.0.1", ami_port, 30, asterisk)
        ami = AmiClient("127.0.0.1", ami_port, TEST_AMI_USER, TEST_AMI_SECRET, 10)
        ami.wait_event(lambda e: e.get("Event") == "FullyBooted", 30, "FullyBooted")
        relay, watch = start_relay(base, relay_conf, r"AMI logged in at", started)
        # the documented set-up: the host's egress guard for A (docs/asterisk.md)
        if guard_unavailable() is None:
            guard = LabGuard(relay_conf, f"pbx_zrtp_guard_lab{os.getpid()}")
        the_lab = Lab(base, asterisk, relay, ami, watch, tone, carol_port, guard=guard)
        # The watcher is subscribed once it reports a probe mirror (no call is running yet).
        probe = str((RTP_PORTS[1] - 2) & ~1)  # P and P+1 inside the range
        deadline = time.monotonic() + 30
        while not the_lab.relay_events("probe"):
            assert time.monotonic() < deadline, f"ctl watch saw no event:\n{watch.tail()}"
            the_lab.ctl("create", "probe", probe, "--policy", "off")
            the_lab.ctl("delete", "probe")
            time.sleep(0.5)
        yield the_lab
    finally:
        if ami is not None:
            ami.close()
        for proc in reversed(started):
            proc.stop()
        if guard is not None:
            guard.remove()


# ---------------------------------------------------------------------- the tests


# linphonec's own offer, or AES-256 only (liblinphone's zrtp_cipher_suites; bzrtp adds AES1)
@pytest.mark.parametrize("cipher", ["AES1", "AES3"])
def test_required_zrtp_call_is_secured_through_asterisk(lab: Lab, cipher: str) -> None:
    ciphers = "MS_ZRTP_CIPHER_AES3" if cipher == "AES3" else ""
    phone = lab.phone(f"phone-zrtp-{cipher}", zrtp=True, ciphers=ciphers)
    try:
        started = time.monotonic()
        phone.send(f"call sip:600@{A}")
        # 1. The phone: ZRTP with the relay (which Asterisk advertised as c=R).
        match, _ = phone.wait_for(r"fully encrypted and auth token is (\S+?)\.?\s*$", 30)
        phone_sas = match.group(1)
        phone_secure_at = time.monotonic()
        # 2. The dialplan: the variables the adapter set, read after Answer().
        seen = zrtp_seen(lab, started)
        assert seen["State"] == "secure", seen
        assert seen["Secure"] == "1", seen
        assert seen["Policy"] == "required", seen
        assert seen["SAS"] == phone_sas, (seen, phone_sas)
        channel, uniqueid = seen["Channel"], seen["Uniqueid"]
        call_id = f"ast-{uniqueid}"
        # 3. The relay: the same call, secure, same SAS.
        calls = lab.ctl("list")
        assert [c["call_id"] for c in calls] == [call_id], calls
        assert calls[0]["state"] == "secure" and calls[0]["sas"] == phone_sas, calls[0]
        if cipher == "AES3":  # phone and relay both put AES3 first: whoever initiates
            assert calls[0]["cipher"] == seen["Cipher"] == "AES3", (calls[0], seen)
        # 4. Media flows both ways through the relay (Echo sends the tone back).
        time.sleep(3)
        report = lab.ctl("show", call_id)
        counters = report["counters"]
        assert counters["phone_in"] > 50 and counters["pbx_in"] > 50, counters
        assert counters["phone_out"] > 50 and counters["pbx_out"] > 50, counters
        # Asterisk sends to the relay's PBX-side socket on R (its symmetric RTP latched
        # onto the relay), not to the phone's SDP address.
        dest = lab.ami.action("Getvar", Channel=channel, Variable="CHANNEL(rtp,dest)")
        assert dest.get("Value", "").startswith(f"{R}:"), (dest, seen["RtpDest"])
        # SRTCP from the phone authenticates (bzrtp/mediastreamer2 use a 32-bit SRTCP tag
        # with HS32, libsrtp's AES128_CM_SHA1_32 profile an 80-bit one).
        assert counters["drops"].get("srtcp_auth", 0) == 0, (report["auth_tag"], counters)
        log = lab.asterisk_log()
        assert f"pbx_zrtp: {channel} secure, SAS {phone_sas}" in log
        call_log = lab.channel_log(channel)
        problems = [line for line in call_log if re.search(r"\] (WARNING|ERROR)\[", line)]
        assert problems == [], problems
        hangup_phone(phone)
        lab.ami.wait_event(
            lambda e: e.get("Event") == "Hangup" and e.get("Uniqueid") == uniqueid,
            15,
            f"Hangup of {channel}",
        )
        qos = lab.ami.wait_event(
            lambda e: (
                e.get("Event") == "VarSet"
                and e.get("Uniqueid") == uniqueid
                and e.get("Variable") == "RTPAUDIOQOS"
            ),
            5,
            "RTPAUDIOQOS",
        )
        sent = re.search(r"(?:^|;)txcount=(\d+)", qos.get("Value", ""))
        assert sent, qos
        asterisk_sent = int(sent.group(1))
        deadline = time.monotonic() + 10
        while lab.ctl("list") and time.monotonic() < deadline:
            time.sleep(0.2)
        assert lab.ctl("list") == []
        events = lab.relay_events(call_id)
        states = [e["state"] for e in events]
        assert "secure" in states and states[-1] == "ended", states
        ended = events[-1]
        # Every packet Asterisk sent reached the relay: none went straight to the phone.
        relay_heard = ended["counters"]["pbx_in"]
        assert asterisk_sent > 50 and abs(asterisk_sent - relay_heard) <= 2, (
            asterisk_sent,
            relay_heard,
        )
        summary = {
            "sas": phone_sas,
            "sas_type": report.get("sas_type"),
            "algorithms": [report.get(k) for k in ("key_agreement", "hash", "cipher", "auth_tag")],
            "handshake_ms": report.get("handshake_ms"),
            "phone_secure_after_s": round(phone_secure_at - started, 3),
            "states": states,
            "asterisk_rtp_dest_at_answer": seen["RtpDest"],
            "asterisk_rtp_dest_at_3s": dest.get("Value"),
            "asterisk_txcount": asterisk_sent,
            "counters_at_3s": {k: v for k, v in counters.items() if k != "drops"},
            "drops": counters.get("drops"),
            "ended_counters": ended.get("counters"),
        }
        print("REAL CALL:", json.dumps(summary))
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{lab.diagnostics()}") from None
    finally:
        phone.stop()


def zrtp_seen(
    lab: Lab, started: float, timeout: float = 20, what: str = "UserEvent ZrtpSeen"
) -> dict[str, str]:
    """The adapter's first ZrtpSeen UserEvent (the dialplan's decision) since ``started``."""
    return lab.ami.wait_event(
        lambda e: (
            e.get("Event") == "UserEvent"
            and e.get("UserEvent") == "ZrtpSeen"
            and float(e["_time"]) >= started
        ),
        timeout,
        what,
    )


def _secure_call_to_600(lab: Lab, phone: Proc, *options: str) -> tuple[str, dict[str, str]]:
    """The phone calls 600 (``call`` ``options``): its SAS once secure, and the
    adapter's ZrtpSeen event for the call (secure, the same SAS)."""
    started = time.monotonic()
    phone.send(" ".join((f"call sip:600@{A}", *options)))
    match, _ = phone.wait_for(r"fully encrypted and auth token is (\S+?)\.?\s*$", 30)
    phone_sas = match.group(1)
    seen = zrtp_seen(lab, started)
    assert seen["State"] == "secure" and seen["SAS"] == phone_sas, seen
    return phone_sas, seen


def _video_stream(lab: Lab, call_id: str) -> dict[str, Any] | None:
    report = lab.ctl("show", call_id)
    return next((s for s in report.get("streams", []) if s["name"] == "video"), None)


def _settled_video(lab: Lab, call_id: str, timeout: float) -> dict[str, Any] | None:
    """The call's video stream once it is no longer pending (None: it never came)."""
    deadline = time.monotonic() + timeout
    video = _video_stream(lab, call_id)
    while (video is None or video["state"] == "pending") and time.monotonic() < deadline:
        time.sleep(0.2)
        video = _video_stream(lab, call_id)
    return video


def test_video_call_secures_audio_and_video_through_asterisk(lab: Lab) -> None:
    """linphonec sends video from its static-picture camera (VP8): the relay mirrors
    the video port Asterisk answered with, the phone keys it by Multistream."""
    phone = lab.phone("phone-video", zrtp=True, video=True)
    try:
        phone_sas, seen = _secure_call_to_600(lab, phone)
        channel, uniqueid = seen["Channel"], seen["Uniqueid"]
        call_id = f"ast-{uniqueid}"
        video = _settled_video(lab, call_id, 20)
        report = lab.ctl("show", call_id)
        assert video is not None, report
        assert video["state"] == "secure" and video["key_agreement"] == "Mult", video
        assert video["sas"] == phone_sas, video
        time.sleep(4)  # the static picture, echoed by Echo()
        report = lab.ctl("show", call_id)
        video = next(s for s in report["streams"] if s["name"] == "video")
        counters = video["counters"]
        assert counters["phone_in"] > 0 and counters["pbx_out"] > 0, counters
        assert counters["pbx_in"] > 0 and counters["phone_out"] > 0, counters
        assert counters["drops"].get("srtp_auth", 0) == 0, counters
        variables = {
            name: lab.ami.action("Getvar", Channel=channel, Variable=name).get("Value", "")
            for name in ("ZRTP_VIDEO_STATE", "ZRTP_VIDEO_SECURE", "ZRTP_STATE")
        }
        assert variables == {
            "ZRTP_VIDEO_STATE": "secure",
            "ZRTP_VIDEO_SECURE": "1",
            "ZRTP_STATE": "secure",
        }, variables
        dest = lab.ami.action("Getvar", Channel=channel, Variable="CHANNEL(rtp,dest,video)")
        assert dest.get("Value", "").startswith(f"{R}:"), dest
        # Every video packet Asterisk sent so far reached the relay, none the phone
        # directly (chan_pjsip sets no RTPVIDEOQOS at hangup: read its count live,
        # then the relay's, which may have heard a few more since).
        tx = lab.ami.action("Getvar", Channel=channel, Variable="CHANNEL(rtcp,txcount,video)")
        asterisk_video_sent = int(tx.get("Value") or -1)
        relay_heard = next(s for s in lab.ctl("show", call_id)["streams"] if s["name"] == "video")[
            "counters"
        ]["pbx_in"]
        assert 0 < asterisk_video_sent <= relay_heard <= asterisk_video_sent + 20, (
            tx,
            relay_heard,
        )
        hangup_phone(phone)
        lab.ami.wait_event(
            lambda e: e.get("Event") == "Hangup" and e.get("Uniqueid") == uniqueid,
            15,
            f"Hangup of {channel}",
        )
        deadline = time.monotonic() + 10
        while lab.ctl("list") and time.monotonic() < deadline:
            time.sleep(0.2)
        events = lab.relay_events(call_id)
        ended = events[-1]
        assert ended["state"] == "ended", ended
        ended_video = next(s for s in ended["streams"] if s["name"] == "video")

        summary = {
            "sas": phone_sas,
            "audio": [report.get(k) for k in ("key_agreement", "cipher", "auth_tag")],
            "audio_counters": {k: v for k, v in report["counters"].items() if k != "drops"},
            "video": [video.get(k) for k in ("state", "key_agreement", "cipher", "auth_tag")],
            "video_handshake_ms": video.get("handshake_ms"),
            "video_counters_at_4s": {k: v for k, v in counters.items()},
            "video_ended_counters": ended_video["counters"],
            "asterisk_video_dest": dest.get("Value"),
            "asterisk_video_txcount": asterisk_video_sent,
            "relay_video_pbx_in_then": relay_heard,
        }
        print("REAL VIDEO CALL:", json.dumps(summary))
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{lab.diagnostics()}") from None
    finally:
        phone.stop()


def test_video_added_by_a_re_invite_is_mirrored_and_keyed_by_multistream(lab: Lab) -> None:
    """An audio-only call whose phone turns its camera on mid-call (linphonec ``camera
    on``: a re-INVITE adding a video stream). Asterisk gives the video a port of its
    own and answers with the endpoint's media_address: the adapter sees the new stream
    (``[asterisk] video_watch``), the relay mirrors it and the phone keys it by
    Multistream under the call's SAS. Until then no video flows either way: the phone
    sends to R:P, where nothing listens yet, and Asterisk's video to the phone's own
    address is stopped by the egress guard."""
    phone = lab.phone("phone-late-video", zrtp=True, video=True)
    try:
        phone_sas, seen = _secure_call_to_600(lab, phone, "--audio-only")
        channel, uniqueid = seen["Channel"], seen["Uniqueid"]
        call_id = f"ast-{uniqueid}"
        assert _video_stream(lab, call_id) is None
        no_video = lab.ami.action("Getvar", Channel=channel, Variable="CHANNEL(videonativeformat)")
        assert no_video.get("Value") == "(nothing)", no_video  # what Asterisk 22 answers
        dropped = lab.guard.dropped() if lab.guard else {}
        asked = time.monotonic()
        phone.send("camera on")
        phone.wait_for(r"Trying to bring up video stream", 10)
        video = _settled_video(lab, call_id, 20)
        assert video is not None, lab.ctl("show", call_id)
        secured_after = time.monotonic() - asked
        assert video["state"] == "secure" and video["key_agreement"] == "Mult", video
        assert video["sas"] == phone_sas, video
        time.sleep(4)  # the static picture, echoed by Echo()
        video = _video_stream(lab, call_id)
        assert video is not None
        counters = video["counters"]
        assert counters["phone_in"] > 0 and counters["pbx_out"] > 0, counters
        assert counters["pbx_in"] > 0 and counters["phone_out"] > 0, counters
        assert counters["drops"].get("srtp_auth", 0) == 0, counters
        variables = {
            name: lab.ami.action("Getvar", Channel=channel, Variable=name).get("Value", "")
            for name in ("ZRTP_VIDEO_STATE", "ZRTP_VIDEO_SECURE", "ZRTP_STATE", "ZRTP_SAS")
        }
        assert variables == {
            "ZRTP_VIDEO_STATE": "secure",
            "ZRTP_VIDEO_SECURE": "1",
            "ZRTP_STATE": "secure",
            "ZRTP_SAS": phone_sas,
        }, variables
        dest = lab.ami.action("Getvar", Channel=channel, Variable="CHANNEL(rtp,dest,video)")
        assert dest.get("Value", "").startswith(f"{R}:"), dest
        log = lab.base / "phone-late-video" / "linphone-debug.log"
        srtp_failed = log.read_text(errors="replace").count("srtp_unprotect() failed")
        assert srtp_failed == 0
        summary = {
            "sas": phone_sas,
            "video": [video.get(k) for k in ("state", "key_agreement", "cipher", "auth_tag")],
            "secured_after_camera_on_s": round(secured_after, 2),
            "video_counters_4s": counters,
            "guard_dropped_before": dropped,
            "guard_dropped_after": lab.guard.dropped() if lab.guard else None,
            "asterisk_video_dest": dest.get("Value"),
        }
        print("VIDEO ADDED BY RE-INVITE:", json.dumps(summary))
        hangup_phone(phone)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{lab.diagnostics()}") from None
    finally:
        phone.stop()


@pytest.mark.parametrize("exten", ["600", "610"])  # 610: auto, resolved to required
def test_required_call_without_zrtp_is_hung_up_by_the_dialplan(lab: Lab, exten: str) -> None:
    phone = lab.phone(f"phone-clear-{exten}", zrtp=False)
    try:
        started = time.monotonic()
        count = len(lab.ami.events)
        phone.send(f"call sip:{exten}@{A}")
        hangup = lab.ami.wait_event(
            lambda e: (
                e.get("Event") == "Hangup"
                and e.get("Channel", "").startswith("PJSIP/alice-")
                and float(e["_time"]) >= started
            ),
            REQUIRED_TIMEOUT + 20,
            "Hangup of the clear call",
        )
        hung_up_after = time.monotonic() - started
        assert hangup.get("Cause") == "58", hangup
        channel, uniqueid = hangup["Channel"], hangup["Uniqueid"]
        assert not any(e.get("UserEvent") == "ZrtpSeen" for e in lab.ami.events[count:]), (
            "the dialplan went on to Answer() a required call that was not secure"
        )
        events = lab.relay_events(f"ast-{uniqueid}")
        states = [e["state"] for e in events]
        assert "failed" in states and "secure" not in states, states
        failed = next(e for e in events if e["state"] == "failed")
        # `required`: the phone's clear audio never reached Asterisk.
        final = events[-1]["counters"]
        assert final["pbx_out"] == 0 and final["drops"].get("clear_blocked", 0) > 0, final
        # The [pbx-zrtp] refuse branch: Log(WARNING,...) then Hangup(58).
        call_log = lab.channel_log(channel)
        warning = [
            line
            for line in call_log
            if re.search(rf"\] WARNING\[.*pbx_zrtp: {re.escape(channel)} required ZRTP", line)
        ]
        assert warning, "no WARNING line from the [pbx-zrtp] refuse branch in Asterisk's log"
        expected = f"required ZRTP but is failed {failed['reason']}; hanging up"
        assert warning[0].endswith(expected), (
            f"the refuse branch's WARNING is cut short: {warning[0]!r} (expected it to end with"
            f" {expected!r}); extensions_pbx_zrtp.conf: an unescaped ';' starts a comment"
        )
        problems = [line for line in call_log if re.search(r"\] (WARNING|ERROR)\[", line)]
        assert problems == warning[:1], problems
        print(
            "CLEAR CALL:",
            json.dumps(
                {
                    "hung_up_after_s": round(hung_up_after, 3),
                    "cause": hangup.get("Cause"),
                    "warning": warning[0].split("] ", 1)[-1],
                    "states": states,
                    "reason": failed.get("reason"),
                    "counters": events[-1].get("counters"),
                }
            ),
        )
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{lab.diagnostics()}") from None
    finally:
        hangup_phone(phone)
        phone.stop()


def test_two_zrtp_phones_bridged_through_asterisk_are_linked_legs(lab: Lab) -> None:
    """alice -> 702 -> Dial(PJSIP/carol, U(pbx-zrtp...)): both legs secure through the
    relay, linked by Asterisk's Linkedid. Linphone (bzrtp) cannot enroll, so no SAS is
    relayed and both channels say so (ZRTP_SAS_SCOPE=pbx-leg)."""
    carol = lab.phone("carol-zrtp", zrtp=True, carol=True)
    alice = lab.phone("alice-2", zrtp=True)
    try:
        alice.send(f"call sip:702@{A}")
        match, _ = alice.wait_for(r"fully encrypted and auth token is (\S+?)\.?\s*$", 30)
        alice_sas = match.group(1)
        match, _ = carol.wait_for(r"fully encrypted and auth token is (\S+?)\.?\s*$", 30)
        carol_sas = match.group(1)
        deadline = time.monotonic() + 10
        calls: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            calls = [c for c in lab.ctl("list") if c["call_id"].startswith("ast-")]
            if len(calls) == 2 and all(c.get("sas_relay") == "none" for c in calls):
                break
            time.sleep(0.2)
        assert len(calls) == 2, calls
        by_sas = {c["sas"]: c for c in calls}
        assert set(by_sas) == {alice_sas, carol_sas}, (calls, alice_sas, carol_sas)
        bridges = {c["bridge"] for c in calls}
        assert len(bridges) == 1 and "" not in bridges, calls  # one Linkedid for both legs
        for call in calls:
            assert call["state"] == "secure" and call["sas_scope"] == "pbx-leg", call
            assert call["displayed_sas"] == call["sas"] and not call["enrolled"], call
        # The dialplan sees the same on both channels.
        for call in calls:
            uniqueid = call["call_id"].removeprefix("ast-")
            channels = lab.ami.action("Getvar", Variable="CHANNEL(name)", Channel=uniqueid)
            name = channels.get("Value", uniqueid)
            for variable, expected in (
                ("ZRTP_STATE", "secure"),
                ("ZRTP_SAS_SCOPE", "pbx-leg"),
                ("ZRTP_SAS_RELAY", "none"),
                ("ZRTP_ENROLLED", "0"),
                ("ZRTP_SAS", call["sas"]),
            ):
                got = lab.ami.action("Getvar", Channel=name, Variable=variable).get("Value")
                assert got == expected, (name, variable, got, expected)
        # Media crosses both legs of the relay.
        time.sleep(2)
        for call in lab.ctl("list"):
            counters = call["counters"]
            assert counters["phone_in"] > 30 and counters["pbx_in"] > 30, call
        print("TWO PHONES:", json.dumps({"alice_sas": alice_sas, "carol_sas": carol_sas}))
        hangup_phone(alice)
        deadline = time.monotonic() + 15
        while lab.ctl("list") and time.monotonic() < deadline:
            time.sleep(0.2)
        assert lab.ctl("list") == []
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{lab.diagnostics()}") from None
    finally:
        alice.stop()
        carol.stop()


def test_early_media_in_the_183_reaches_the_phone_only_through_the_relay(lab: Lab) -> None:
    """Extension 620: the [pbx-zrtp] subroutine, then a 2 s tone played before Answer()
    (early media, in the 183). The phone is secure before the tone starts; Asterisk
    sends it to the relay, which encrypts it; no packet goes from Asterisk straight to
    the phone (its RTP count equals what the relay heard, and the phone saw no packet
    that failed SRTP). Before the subroutine waited for CHANNEL(rtp,dest) to be the
    relay, the first 2 packets of the tone went to the phone in the clear."""
    phone = lab.phone("phone-early", zrtp=True)
    try:
        count = len(lab.ami.events)
        phone.send(f"call sip:620@{A}")
        match, _ = phone.wait_for(r"fully encrypted and auth token is (\S+?)\.?\s*$", 30)
        phone_sas = match.group(1)
        early = lab.ami.wait_event(
            lambda e: e.get("Event") == "UserEvent" and e.get("UserEvent") == "EarlyMedia",
            20,
            "UserEvent EarlyMedia",
        )
        assert early["State"] == "secure", early  # secure before any early media
        # Asterisk sends to the relay before the tone: the subroutine waited for that
        assert early["RtpDest"].startswith(f"{R}:"), early
        uniqueid = early["Uniqueid"]
        call_id = f"ast-{uniqueid}"
        seen = lab.ami.wait_event(
            lambda e: (
                e.get("Event") == "UserEvent"
                and e.get("UserEvent") == "ZrtpSeen"
                and e.get("Uniqueid") == uniqueid
            ),
            20,
            "UserEvent ZrtpSeen (after the early media, before Answer)",
        )
        assert seen["SAS"] == phone_sas, seen
        answered = any(
            e.get("Event") == "Newstate"
            and e.get("Uniqueid") == uniqueid
            and e.get("ChannelStateDesc") == "Up"
            for e in lab.ami.events[count:]
            if float(e["_time"]) <= float(seen["_time"])
        )
        assert not answered, "the tone was not early media: the channel was up already"
        during = lab.ctl("show", call_id)["counters"]  # the tone only: Echo() not yet
        # ~100 packets of tone reached the relay and went on to the phone, as SRTP
        assert during["pbx_in"] >= 80 and during["phone_out"] >= 80, during
        drops = during["drops"]
        assert not {"clear_blocked", "srtp_protect", "srtp_repeat"} & set(drops), drops
        hangup_phone(phone)
        lab.ami.wait_event(
            lambda e: e.get("Event") == "Hangup" and e.get("Uniqueid") == uniqueid,
            15,
            "Hangup",
        )
        qos = lab.ami.wait_event(
            lambda e: (
                e.get("Event") == "VarSet"
                and e.get("Uniqueid") == uniqueid
                and e.get("Variable") == "RTPAUDIOQOS"
            ),
            5,
            "RTPAUDIOQOS",
        )
        sent = re.search(r"(?:^|;)txcount=(\d+)", qos.get("Value", ""))
        assert sent, qos
        deadline = time.monotonic() + 10
        while lab.ctl("list") and time.monotonic() < deadline:
            time.sleep(0.2)
        ended = lab.relay_events(call_id)[-1]
        assert ended["state"] == "ended", ended
        relay_heard = ended["counters"]["pbx_in"]
        # every packet Asterisk sent, the early tone included, reached the relay
        assert abs(int(sent.group(1)) - relay_heard) <= 2, (sent.group(1), relay_heard)
        # and nothing but SRTP reached the phone: a packet straight from Asterisk (clear)
        # fails the phone's SRTP authentication, which liblinphone logs
        phone_log = (lab.base / "phone-early" / "linphone-debug.log").read_text(errors="replace")
        clear = phone_log.count("srtp_unprotect() failed")
        assert clear == 0, f"{clear} packets reached the phone without SRTP"
        print(
            "EARLY MEDIA:",
            json.dumps(
                {
                    "sas": phone_sas,
                    "rtp_dest_before_tone": early["RtpDest"],
                    "counters_after_tone": {k: v for k, v in during.items() if k != "drops"},
                    "drops_after_tone": drops,
                    "asterisk_txcount": int(sent.group(1)),
                    "relay_pbx_in": relay_heard,
                }
            ),
        )
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{lab.diagnostics()}") from None
    finally:
        phone.stop()


def test_sample_701_takes_its_known_branch_after_both_sides_verified(lab: Lab) -> None:
    """Issue 13 defect 4: call 701, both sides mark the SAS verified (linphonec's
    zrtp-set-verified, the admin's CLI verify line), hang up, call again: the relay
    reports previously_verified, ZRTP_SAS_VERIFIED is 1 and the sample skips its
    'compare the SAS' prompt (Playback(vm-sorry)), which the first call played."""
    phone = lab.phone("phone-701", zrtp=True)
    try:
        seen: list[dict[str, Any]] = []
        for attempt in (1, 2):
            start = len(phone.lines)  # zrtp-set-verified prints the last SAS again
            phone.send(f"call sip:701@{A}")
            match, _ = phone.wait_for(r"fully encrypted and auth token is (\S+?)\.?\s*$", 30, start)
            sas = match.group(1)
            calls = lab.wait_calls(lambda c: len(c) == 1 and c[0]["state"] == "secure", 10)
            call = calls[0]
            assert call["sas"] == sas, (call, sas)
            uniqueid = call["call_id"].removeprefix("ast-")
            name = lab.ami.action("Getvar", Variable="CHANNEL(name)", Channel=uniqueid)["Value"]
            got = lab.ami.action("Getvar", Channel=name, Variable="ZRTP_SAS_VERIFIED")
            verified = got.get("Value")
            seen.append({"sas": sas, "verified": verified, **call})
            if attempt == 1:
                assert verified == "0" and not call["previously_verified"], call
                phone.send("zrtp-set-verified")
                out = lab.cli(
                    "channel originate Local/s@pbx-zrtp-admin application UserEvent"
                    f' "PbxZrtpAdmin,Command: verify,Call: {uniqueid}"'
                )
                lab.wait_calls(lambda c: bool(c) and c[0]["sas_verified"], 10)
                assert "unknown" not in out.lower(), out
            else:
                assert call["previously_verified"] and call["sas_verified"], call
                assert verified == "1", got
            time.sleep(1.5)  # the sample's branch runs
            log = lab.channel_log(name)
            prompted = any("Playback(" in line and "vm-sorry" in line for line in log)
            assert prompted == (attempt == 1), (attempt, [ln for ln in log if "701@" in ln])
            phone.send("terminate all")
            lab.wait_calls(lambda c: c == [], 15)
        print(
            "SAMPLE 701:",
            json.dumps(
                [{k: c[k] for k in ("sas", "verified", "previously_verified")} for c in seen]
            ),
        )
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{lab.diagnostics()}") from None
    finally:
        hangup_phone(phone)
        phone.stop()


@pytest.mark.parametrize("exten", ["600", "610"])  # 610: auto, resolved to required
def test_a_required_call_from_a_plain_endpoint_is_refused_before_answer(
    lab: Lab, exten: str
) -> None:
    """Issue 13 defect 6: bob's endpoint has no media_address (the sample's phone
    without ZRTP): its media would go straight to Asterisk. `required` (600): refused
    by the subroutine before Progress(); `auto` resolved to required (610): refused by
    pbx-zrtp as soon as it resolved the policy. Both at once (not after the relay's
    time-out), never answered, cause 58, the reason in the WARNING line."""
    phone = lab.phone(f"bob-plain-{exten}", zrtp=False, user="bob")
    try:
        started = time.monotonic()
        count = len(lab.ami.events)
        phone.send(f"call sip:{exten}@{A}")
        hangup = lab.ami.wait_event(
            lambda e: (
                e.get("Event") == "Hangup"
                and e.get("Channel", "").startswith("PJSIP/bob-")
                and float(e["_time"]) >= started
            ),
            20,
            "Hangup of bob's call",
        )
        after = time.monotonic() - started
        assert hangup.get("Cause") == "58", hangup
        channel, uniqueid = hangup["Channel"], hangup["Uniqueid"]
        mine = [e for e in lab.ami.events[count:] if e.get("Uniqueid") == uniqueid]
        assert not any(e.get("ChannelStateDesc") == "Up" for e in mine), "answered"
        reason = "has no media_address: its media would go straight to Asterisk"
        call_log = lab.channel_log(channel)
        warnings = [line for line in call_log if re.search(r"\] WARNING\[", line)]
        assert len(warnings) == 1 and reason in warnings[0], warnings
        progressed = [line for line in call_log if "Progress(" in line]
        events = lab.relay_events(f"ast-{uniqueid}")
        if exten == "600":
            assert progressed == [], progressed  # no 183, no media at all
            assert events == [], events  # pbx-zrtp was not even asked
        else:
            assert [e["state"] for e in events] == [], events  # refused before the relay
        assert after < 3.0, f"refused after {after:.2f} s"
        print(
            "PLAIN ENDPOINT:",
            json.dumps(
                {
                    "exten": exten,
                    "refused_after_s": round(after, 3),
                    "cause": hangup.get("Cause"),
                    "warning": warnings[0].split("] ", 1)[-1],
                }
            ),
        )
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{lab.diagnostics()}") from None
    finally:
        hangup_phone(phone)
        phone.stop()


def test_an_optional_call_returns_from_the_gosub_on_the_relays_decision(lab: Lab) -> None:
    """Issue 13 defect 9: a phone without ZRTP calls an `optional` extension. The
    subroutine used to wait 3 s while the relay decided `clear` after about 4 s, so
    the dialplan after it saw `pending`. It now waits ZRTP_TIMEOUT (the relay's
    optional time-out, 5 s, plus 1) and sees `clear`."""
    phone = lab.phone("phone-optional", zrtp=False)
    try:
        started = time.monotonic()
        phone.send(f"call sip:630@{A}")
        seen = zrtp_seen(lab, started)
        after = float(seen["_time"]) - started
        assert seen["State"] == "clear" and seen["Wait"] == "6", seen
        events = lab.relay_events(f"ast-{seen['Uniqueid']}")
        assert [e["state"] for e in events][:2] == ["pending", "clear"], events
        print(
            "OPTIONAL:",
            json.dumps(
                {
                    "state_after_gosub": seen["State"],
                    "zrtp_timeout": seen["Wait"],
                    "returned_after_s": round(after, 3),
                    "reason": seen["Reason"],
                }
            ),
        )
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{lab.diagnostics()}") from None
    finally:
        hangup_phone(phone)
        phone.stop()


def test_the_zrtp_console_lines_answer_in_the_asterisk_cli(lab: Lab) -> None:
    """Issue 13 (the admin's day): every `zrtp …` line of docs/asterisk.md typed as
    `asterisk -rx '…'` on the real Asterisk, with cli_aliases_pbx_zrtp.conf appended
    to a stock cli_aliases.conf; the quoted `channel originate` line too."""
    aliases = lab.cli("cli show aliases")
    assert "originate" in aliases and "zrtp show calls" in aliases, aliases  # both loaded
    phone = lab.phone("phone-cli", zrtp=True)
    seen: dict[str, str] = {}

    def result(command: str, ref: str) -> str:
        deadline = time.monotonic() + 10
        out = ""
        while time.monotonic() < deadline:
            out = lab.cli("zrtp show result")
            line = next((ln for ln in out.splitlines() if f"/result/{command} " in ln), "")
            if f": {ref}: " in line:
                return line.split(" : ", 1)[1].strip()
            time.sleep(0.1)
        raise AssertionError(f"no result for {command} {ref}: {out}")

    try:
        phone.send(f"call sip:600@{A}")
        phone.wait_for(r"fully encrypted and auth token is (\S+?)\.?\s*$", 30)
        calls = lab.wait_calls(lambda c: len(c) == 1 and c[0]["state"] == "secure", 10)
        uid = calls[0]["call_id"].removeprefix("ast-")
        listing = lab.cli("zrtp show calls")
        assert f": {uid} PJSIP/alice-" in listing and "secure" in listing, listing
        assert "1 results found" in lab.cli(f"zrtp show call {uid}")
        out = lab.cli(f"zrtp verify {uid}")
        assert f"'PBX_ZRTP_CLI_VERIFY' set to '{uid}'" in out, out
        seen["verify"] = result("verify", uid)
        assert seen["verify"].endswith("marked verified"), seen
        assert "verified=yes" in lab.cli(f"zrtp show call {uid}")
        lab.cli(f"zrtp unverify {uid}")
        seen["unverify"] = result("unverify", uid)
        assert "verified=no" in lab.cli(f"zrtp show call {uid}")
        lab.cli(f"zrtp enroll {uid}")
        seen["enroll"] = result("enroll", uid)
        assert "failed: enrollment was not offered" in seen["enroll"], seen
        lab.cli("zrtp verify no.such")
        seen["unknown"] = result("verify", "no.such")
        assert seen["unknown"] == "no.such: failed: no ZRTP call 'no.such'", seen
        # the admin table's quoted originate line (policy of the live call)
        lab.cli(
            "channel originate Local/s@pbx-zrtp-admin application UserEvent"
            f' "PbxZrtpAdmin,Command: policy,Policy: optional,Call: {uid}"'
        )
        lab.wait_calls(lambda c: bool(c) and c[0]["policy"] == "optional", 10)
        assert "unknown admin command" not in "\n".join(lab.relay.lines)
        # stored policies
        assert "Updated database successfully" in lab.cli("zrtp policy 640 required")
        assert "Updated database successfully" in lab.cli("zrtp phone policy bob optional")
        assert "/pbx_zrtp/policy/640" in lab.cli("zrtp show policies")
        assert "/pbx_zrtp/endpoint/bob" in lab.cli("zrtp show phones")
        assert "removed" in lab.cli("zrtp del policy 640")
        assert "removed" in lab.cli("zrtp del phone policy bob")
        print("CLI:", json.dumps(seen))
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{lab.diagnostics()}") from None
    finally:
        hangup_phone(phone)
        phone.stop()


def test_a_phone_policy_set_from_the_console_covers_calls_from_and_to_it(lab: Lab) -> None:
    """Issue 13 (per-phone policy), on the real Asterisk: `zrtp phone policy alice
    required` makes alice's `auto` call required (the default is optional); `zrtp phone
    policy carol required` makes the leg to carol required (Dial's U() runs the
    subroutine on it) while alice's leg keeps the number's policy."""
    seen: dict[str, Any] = {}
    phone = lab.phone("phone-policy", zrtp=True)
    carol = None
    try:
        for label, stored in (("default", None), ("phone alice", "required")):
            if stored:
                assert "Updated" in lab.cli(f"zrtp phone policy alice {stored}")
            started = time.monotonic()
            phone.send(f"call sip:640@{A}")
            event = lab.ami.wait_event(
                lambda e, t0=started: (
                    e.get("Event") == "UserEvent"
                    and e.get("UserEvent") == "ZrtpSeen"
                    and float(e["_time"]) >= t0
                ),
                20,
                "UserEvent ZrtpSeen",
            )
            seen[label] = event["Policy"]
            phone.send("terminate all")
            lab.wait_calls(lambda c: c == [], 15)
        assert seen == {"default": "optional", "phone alice": "required"}, seen
        assert "removed" in lab.cli("zrtp del phone policy alice")
        assert "Updated" in lab.cli("zrtp phone policy carol required")
        carol = lab.phone("carol-policy", zrtp=True, carol=True)
        phone.send(f"call sip:641@{A}")
        calls = lab.wait_calls(lambda c: len(c) == 2 and all(x["state"] == "secure" for x in c), 30)
        policies = sorted(c["policy"] for c in calls)
        seen["alice -> carol legs"] = policies
        assert policies == ["optional", "required"], calls
        print("PHONE POLICY:", json.dumps(seen))
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{lab.diagnostics()}") from None
    finally:
        lab.cli("zrtp del phone policy carol")
        hangup_phone(phone)
        phone.stop()
        if carol is not None:
            carol.stop()


def test_console_policies_survive_an_asterisk_restart(tmp_path: Path) -> None:
    """`zrtp policy` / `zrtp phone policy` are AstDB keys: an Asterisk restart keeps them."""
    ami_port = free_tcp_port("127.0.0.1")
    conf = write_asterisk_config(tmp_path, ami_port, _free_udp_port(CAROL))

    def cli(line: str) -> str:
        done = subprocess.run(
            [ASTERISK, "-C", str(conf), "-rx", line], capture_output=True, text=True, timeout=20
        )
        return done.stdout + done.stderr

    shown = []
    for run in (1, 2):
        asterisk = Proc(
            "asterisk", [ASTERISK, "-C", str(conf), "-f", "-n"], tmp_path / f"a{run}.out"
        )
        try:
            wait_port("127.0.0.1", ami_port, 30, asterisk)
            deadline = time.monotonic() + 20
            while "zrtp show policies" not in cli("cli show aliases"):
                assert time.monotonic() < deadline, "the zrtp aliases never loaded"
                time.sleep(0.2)
            if run == 1:
                assert "Updated" in cli("zrtp policy 640 required")
                assert "Updated" in cli("zrtp phone policy alice optional")
            shown.append(cli("zrtp show policies") + cli("zrtp show phones"))
        finally:
            asterisk.stop()
    for text in shown:
        assert re.search(r"/pbx_zrtp/policy/640\s+: required", text), text
        assert re.search(r"/pbx_zrtp/endpoint/alice\s+: optional", text), text
    print("RESTART:", json.dumps(shown[1].split("\n")))
