"""The Asterisk adapter: dialplan rules in, relay mirrors out, state back as variables.

Per call (see dialplan/asterisk/extensions_pbx_zrtp.conf):

1. The dialplan runs ``Progress()`` (so ``CHANNEL(rtp,src)`` exists) and raises
   ``UserEvent(PbxZrtp,Policy: …,Target: …,RtpSrc: …)``, then holds the call with
   ``WaitForCondition`` on ``ZRTP_STATE``.
2. The adapter resolves the policy (the argument; for ``auto`` an AstDB key
   ``pbx_zrtp/policy/<target>``, then the configured patterns, then the default),
   learns the port (the event's RtpSrc, else ``Getvar CHANNEL(rtp,src)``), has the
   relay mirror it, and writes ``ZRTP_*`` variables as the state changes — details
   first, ``ZRTP_STATE`` last, so the dialplan wakes up to a complete picture.
3. ``Hangup`` deletes the mirror. After an AMI reconnect the adapter compares
   ``CoreShowChannels`` with its calls: vanished channels lose their mirror,
   channels that asked for ZRTP while it was away (``PBX_ZRTP_POLICY`` set, no
   state) are picked up, and live ones get their variables written again.

Administration from the Asterisk CLI goes through UserEvents raised by a tiny
admin context (``channel originate Local/s@pbx-zrtp-admin application UserEvent
PbxZrtpAdmin,Command: verify,Call: <uniqueid>``) and AstDB (policies; the list of
live calls is mirrored to ``pbx_zrtp/calls`` for ``database show pbx_zrtp/calls``).

The flows themselves are ``pbx_zrtp.pbx.book.CallBook``'s; this module maps AMI to it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging

from pbx_zrtp.asterisk.ami import Ami, AmiError, AmiEvent
from pbx_zrtp.asterisk.config import AsteriskConfig, match_policy
from pbx_zrtp.calls import Address, CallReport, Policy, RelayDirectory, RelayError, RelayHandle
from pbx_zrtp.pbx.book import ENROLL_OFFER, Announcement, CallBook, PbxCall
from pbx_zrtp.pbx.link import LiveChannel, PbxError
from pbx_zrtp.pbx.variables import CallView, VariableTable

log = logging.getLogger("pbx_zrtp.asterisk")

#: Call ids of this adapter's mirrors carry this prefix (resync only touches these).
CALL_PREFIX = "ast-"
#: Hangup cause for a `required` call that could not be secured:
#: 58 = AST_CAUSE_BEARERCAPABILITY_NOTAVAIL ("bearer capability not available").
FAILED_CAUSE = 58
#: How long to keep asking for CHANNEL(rtp,src) when the event did not carry it.
PORT_WAIT = 1.0
#: The [asterisk] settings of the AMI session itself: a change applies on a restart.
LINK_SETTINGS = ("host", "port", "username", "secret")
#: The subroutine's MediaAddress for an endpoint without media_address.
NO_MEDIA_ADDRESS = "none"
#: What Getvar CHANNEL(videonativeformat) answers for a call without video.
NO_FORMAT = frozenset({"", "(nothing)"})
#: Asterisk CLI lines (cli_aliases_pbx_zrtp.conf): ``zrtp verify <id>`` is
#: ``dialplan set global PBX_ZRTP_CLI_VERIFY <id>``, which AMI shows as a VarSet with
#: ``Channel: none``. The outcome goes to AstDB pbx_zrtp/result (``zrtp show result``).
CLI_COMMANDS = {
    "PBX_ZRTP_CLI_VERIFY": "verify",
    "PBX_ZRTP_CLI_UNVERIFY": "unverify",
    "PBX_ZRTP_CLI_ENROLL": "enroll",
    "PBX_ZRTP_CLI_UNENROLL": "unenroll",
}

#: The dialplan's variables (docs/asterisk.md), in the order they are set.
VARIABLES = VariableTable(
    (
        ("policy", "ZRTP_POLICY"),
        ("secure", "ZRTP_SECURE"),
        ("sas", "ZRTP_SAS"),
        ("sas_type", "ZRTP_SAS_TYPE"),
        ("sas_verified", "ZRTP_SAS_VERIFIED"),
        ("cache_mismatch", "ZRTP_CACHE_MISMATCH"),
        ("cipher", "ZRTP_CIPHER"),
        ("auth_tag", "ZRTP_AUTH_TAG"),
        ("key_agreement", "ZRTP_KEY_AGREEMENT"),
        ("pq", "ZRTP_PQ"),
        ("hash", "ZRTP_HASH"),
        ("peer_zid", "ZRTP_PEER_ZID"),
        ("fail_reason", "ZRTP_FAIL_REASON"),
        ("enrolled", "ZRTP_ENROLLED"),
        ("sas_scope", "ZRTP_SAS_SCOPE"),
        ("displayed_sas", "ZRTP_DISPLAYED_SAS"),
        ("sas_relay", "ZRTP_SAS_RELAY"),
        ("cache_error", "ZRTP_CACHE_ERROR"),
        ("video_secure", "ZRTP_VIDEO_SECURE"),
        ("video_fail_reason", "ZRTP_VIDEO_FAIL_REASON"),
        ("video_state", "ZRTP_VIDEO_STATE"),
        ("timeout", "ZRTP_TIMEOUT"),
        ("state", "ZRTP_STATE"),
    ),
    true="1",
    false="0",
)


def variables_for(report: CallReport, policy: Policy) -> dict[str, str]:
    """The dialplan's view of a relay report (every variable always present)."""
    return VARIABLES.render(CallView.of(report, policy))


def parse_port(value: str) -> int | None:
    """'127.0.0.1:20094' -> 20094 (CHANNEL(rtp,src) shows the route's source IP:
    only the port is used; the PBX address comes from the configuration)."""
    _host, sep, port = value.strip().rpartition(":")
    if not sep or not port.isdigit():
        return None
    number = int(port)
    return number if 1 <= number <= 65535 else None


class AsteriskAdapter(CallBook):
    prefix = CALL_PREFIX
    variables = VARIABLES
    stored_policy_name = "AstDB pbx_zrtp/policy/{target}"
    stored_phone_policy_name = "AstDB pbx_zrtp/endpoint/{target}"
    no_port_reason = "no RTP port: the dialplan must run Progress() before the Gosub"

    def __init__(self, config: AsteriskConfig, relay: RelayHandle) -> None:
        self.config = config
        self._linked = config  # what the AMI session was made with
        self.ami = Ami(
            config.host,
            config.port,
            config.username,
            config.secret,
            on_event=self._on_event,
            on_connect=self._on_connect,
        )
        #: Asterisk's bridges (BridgeUniqueid) -> the channels (Uniqueid) in them, and back.
        self._bridges: dict[str, list[str]] = {}
        self._bridge_of: dict[str, str] = {}
        #: Mirrored calls without a video stream (Uniqueid -> their announcement): a
        #: re-INVITE may add one (``video_watch``).
        self._audio_only: dict[str, Announcement] = {}
        super().__init__(
            relay,
            self.ami,
            default_policy=config.default_policy,
            hangup_failed_after=config.hangup_failed_after,
            failed_cause=str(FAILED_CAUSE),
        )

    async def start(self) -> bool:
        self._spawn(self._watch_video())
        return await super().start()

    def reconfigure(self, config: object) -> list[str]:
        """SIGHUP: the re-read [asterisk] section applies to calls from now on (policies,
        patterns, time-outs, the event name, the phone restriction); calls in progress
        keep their policy. Returns the settings that changed but need a restart."""
        if not isinstance(config, AsteriskConfig):
            raise TypeError(f"an AsteriskConfig, not {type(config).__name__}")
        self.config = config
        self.default_policy = config.default_policy
        self.hangup_failed_after = config.hangup_failed_after
        return [
            f"asterisk.{key}"
            for key in LINK_SETTINGS
            if getattr(config, key) != getattr(self._linked, key)
        ]

    # ------------------------------------------------------------------ AMI events

    def _on_event(self, event: AmiEvent) -> None:
        kind = event.get("Event")
        if kind == "UserEvent":
            name = event.get("UserEvent", "")
            if name == self.config.event:
                self._spawn(self._announced(event))
            elif name == f"{self.config.event}Admin":
                self._spawn(self._admin(event))
        elif kind == "Hangup":
            self._bridge_event("BridgeLeave", event)
            self.hung_up(event.get("Uniqueid", ""), "hangup")
        elif kind in ("BridgeEnter", "BridgeLeave", "BridgeDestroy"):
            self._bridge_event(kind, event)
        elif kind == "Rename":
            self._renamed(event.get("Uniqueid", ""), event.get("Newname", ""))
        elif kind == "VarSet" and event.get("Channel") == "none":  # a global variable
            command = CLI_COMMANDS.get(event.get("Variable", ""))
            ref = event.get("Value", "").strip()
            if command is not None and ref:
                self._spawn(self._cli(command, ref))

    def _bridge_event(self, kind: str, event: AmiEvent) -> None:
        """Follow which channels each Asterisk bridge holds (a transfer, a pickup, a
        park and retrieve move channels between bridges; Local channels come and go
        in them): the calls' SAS relay follows (``CallBook.bridged``)."""
        uniqueid = event.get("Uniqueid", "")
        if kind == "BridgeDestroy":
            for key in self._bridges.pop(event.get("BridgeUniqueid", ""), []):
                self._bridge_of.pop(key, None)
            return
        if kind == "BridgeLeave":
            name = self._bridge_of.pop(uniqueid, "")
            members = self._bridges.get(name)
            if members is not None and uniqueid in members:
                members.remove(uniqueid)
            self.left_bridge(uniqueid)
            if members:
                self.bridged(name, list(members))
            return
        name = event.get("BridgeUniqueid", "")
        if not name or not uniqueid:
            return
        previous = self._bridge_of.get(uniqueid)
        if previous is not None and previous != name:  # a move without a BridgeLeave
            with contextlib.suppress(ValueError):
                self._bridges.get(previous, []).remove(uniqueid)
        self._bridge_of[uniqueid] = name
        members = self._bridges.setdefault(name, [])
        if uniqueid not in members:
            members.append(uniqueid)
        self.bridged(name, list(members))

    def _renamed(self, uniqueid: str, name: str) -> None:
        """A masquerade renamed the channel: actions must address its new name."""
        call = self.calls.get(uniqueid)
        if call is not None and name:
            call.channel = name

    async def _announced(self, event: AmiEvent) -> None:
        uniqueid = event.get("Uniqueid", "")
        channel = event.get("Channel", "")
        if not uniqueid or not channel:
            log.warning("ignoring %s event without Channel/Uniqueid", self.config.event)
            return
        endpoint = event.get("Endpoint", "")
        # the endpoint's media_address; "none": it has none (the phone bypasses the relay)
        media = event.get("MediaAddress", "").strip()
        await self.announce(
            Announcement(
                uniqueid,
                channel,
                event.get("Policy", ""),
                target=event.get("Target", "") or event.get("Exten", ""),
                peer=endpoint or channel,
                endpoint=endpoint,
                # Legs of one call share Asterisk's Linkedid: the relay relays the SAS.
                bridge=event.get("Linkedid", ""),
                enroll=event.get("Enroll", "").strip().lower() in ENROLL_OFFER,
                group=event.get("Group", ""),
                media_address="" if media == NO_MEDIA_ADDRESS else media,
                port=parse_port(event.get("RtpSrc", "")),
                video_port=parse_port(event.get("RtpSrcVideo", "")),
                details=(("media_address", media),),
            )
        )

    # ------------------------------------------------------------------ CallBook hooks

    async def _stored_policy(self, target: str) -> str | None:
        return await self.ami.db_get("pbx_zrtp/policy", target)

    def _matched_policy(self, target: str) -> Policy | None:
        return match_policy(self.config, target)

    async def _stored_phone_policy(self, endpoint: str) -> str | None:
        return await self.ami.db_get("pbx_zrtp/endpoint", endpoint)

    def _matched_phone_policy(self, endpoint: str) -> Policy | None:
        return match_policy(self.config, endpoint, self.config.phone_policies)

    def _refusal(self, call: PbxCall, announced: Announcement) -> str | None:
        """A `required` call whose phone was not told the relay's address: its media
        goes straight to Asterisk, so it can never be secured (issue 13, defect 6)."""
        if call.policy is Policy.REQUIRED and announced.detail("media_address") == NO_MEDIA_ADDRESS:
            return (
                f"endpoint of {call.channel} has no media_address: its media would go"
                " straight to Asterisk and not through the relay (set media_address ="
                f" {self.relay.relay_host} on the endpoint in pjsip.conf, or do not require"
                " ZRTP for it)"
            )
        return None

    async def _find_port(self, call: PbxCall, announced: Announcement) -> int | None:
        port = announced.port
        loop = asyncio.get_running_loop()
        deadline = loop.time() + PORT_WAIT
        while port is None and loop.time() < deadline:
            try:  # empty until the SDP answer went out: Progress() must come first
                port = parse_port(await self.ami.get_var(call.channel, "CHANNEL(rtp,src)"))
            except AmiError as exc:
                log.warning("call %s: %s", call.channel, exc)
                break
            if port is None:
                await asyncio.sleep(0.05)
        return port

    async def _find_video_port(self, call: PbxCall, announced: Announcement) -> int | None:
        """The video stream's port: CHANNEL(rtp,src,video), set with the audio's by
        Progress() on a video call. Asked only when the channel negotiated video
        (CHANNEL(videonativeformat) not empty): chan_pjsip logs a warning for each
        read of a stream the call does not have."""
        if announced.video_port is not None:
            return announced.video_port
        if await self.ami.get_var(call.channel, "CHANNEL(videonativeformat)") in NO_FORMAT:
            self._audio_only[call.key] = announced  # until a re-INVITE adds video
            return None
        return parse_port(await self.ami.get_var(call.channel, "CHANNEL(rtp,src,video)"))

    async def _watch_video(self) -> None:
        """Mirror a video stream that a re-INVITE added to an audio call (the phone
        turned its camera on). AMI tells nothing of a re-INVITE, so each audio-only
        call's CHANNEL(videonativeformat) is read every ``video_watch`` seconds. Until
        the stream is mirrored no video flows: the phone's goes to R:P, where nothing
        listens, and Asterisk's to the phone's own address, which the egress guard
        drops (docs/asterisk.md)."""
        while True:
            await asyncio.sleep(self.config.video_watch or 5.0)
            if not self.config.video_watch or not self.ami.connected:
                continue
            for key, announced in list(self._audio_only.items()):
                call = self.calls.get(key)
                if call is None:  # gone (_ended forgets it too, even with the watch off)
                    self._audio_only.pop(key, None)
                    continue
                try:
                    await self._video_added(call, announced)
                except (AmiError, PbxError) as exc:
                    log.warning("call %s: looking for video: %s", call.channel, exc)

    async def _video_added(self, call: PbxCall, announced: Announcement) -> None:
        if await self.ami.get_var(call.channel, "CHANNEL(videonativeformat)") in NO_FORMAT:
            return
        port = parse_port(await self.ami.get_var(call.channel, "CHANNEL(rtp,src,video)"))
        if port is None:
            return  # negotiated, not set up yet: the next look
        self._audio_only.pop(call.key, None)
        await self.video_added(call.key, dataclasses.replace(announced, video_port=port))

    async def _live_bridges(self) -> dict[str, list[str]] | None:
        """Asterisk's bridges now; the adapter's own map of them starts again from it,
        unless bridge events came in the meantime (they keep the map current)."""
        with self.bridge_changes() as changed:
            bridges = await self.ami.live_bridges()  # AmiError is a PbxError
        if not changed:
            self._bridges = {name: list(members) for name, members in bridges.items()}
            self._bridge_of = {key: name for name, members in bridges.items() for key in members}
        return bridges

    async def _phone_hint(self, call: PbxCall) -> Address | None:
        if not self.config.restrict_phone_to_sip_address:
            return None
        with contextlib.suppress(AmiError):
            remote = await self.ami.get_var(call.channel, "CHANNEL(pjsip,remote_addr)")
            host = remote.rpartition(":")[0].strip("[]")
            if host:
                return (host, 0)
        return None

    async def _tell(self, call: PbxCall, before: dict[str, str], changed: bool) -> None:
        """UserEvents for other AMI consumers; the call's line in AstDB pbx_zrtp/calls."""
        values = call.written
        state = values["ZRTP_STATE"]
        verified_now = self.verified_now(call, before)
        if changed and state == "secure":
            await self.ami.notify(
                "ZrtpSecure",
                {
                    "Channel": call.channel,
                    "CallId": call.key,
                    "SAS": values["ZRTP_SAS"],
                    "SASType": values["ZRTP_SAS_TYPE"],
                    "Cipher": values["ZRTP_CIPHER"],
                    "KeyAgreement": values["ZRTP_KEY_AGREEMENT"],
                },
            )
        if changed and state == "failed":
            await self.ami.notify(
                "ZrtpFailed",
                {"Channel": call.channel, "CallId": call.key, "Reason": values["ZRTP_FAIL_REASON"]},
            )
        if verified_now:
            await self.ami.notify("ZrtpSasVerified", {"Channel": call.channel, "CallId": call.key})
        verified = "yes" if values["ZRTP_SAS_VERIFIED"] == "1" else "no"
        summary = (
            f"{state} policy={call.policy.value} sas={values['ZRTP_SAS'] or '-'}"
            f" verified={verified}"
        )
        # the id first: what `zrtp show call`, `zrtp verify` … take
        await self.ami.db_put("pbx_zrtp/calls", call.key, f"{call.key} {call.channel} {summary}")

    async def _ended(self, call: PbxCall) -> None:
        self._audio_only.pop(call.key, None)
        await self.ami.db_del("pbx_zrtp/calls", call.key)

    async def _publish_relays(self, directory: RelayDirectory) -> None:
        """``database show pbx_zrtp/relays`` (alias ``zrtp show relays``): one line each."""
        for name, line in directory.status_lines().items():
            if self._published.get(name) != line:
                try:
                    await self.ami.db_put("pbx_zrtp/relays", name, line)
                except AmiError:
                    return  # written again after the next login
                self._published[name] = line

    async def _asked(self, channel: LiveChannel) -> bool:
        return bool(await self.ami.get_var(channel.name, "PBX_ZRTP_POLICY"))

    async def _announcement_at_resync(self, channel: LiveChannel) -> Announcement | None:
        """What the [pbx-zrtp] subroutine left on the channel before its UserEvent."""
        found = {
            "PBX_ZRTP_POLICY": "",
            "PBX_ZRTP_TARGET": "",
            "PBX_ZRTP_GROUP": "",
            "PBX_ZRTP_RELAY": "",
        }
        for name in found:
            with contextlib.suppress(AmiError):
                found[name] = await self.ami.get_var(channel.name, name)
        if not found["PBX_ZRTP_POLICY"]:
            return None
        return Announcement(
            channel.key,
            channel.name,
            found["PBX_ZRTP_POLICY"],
            target=found["PBX_ZRTP_TARGET"] or channel.exten,
            peer=channel.name,
            group=found["PBX_ZRTP_GROUP"],
            media_address=found["PBX_ZRTP_RELAY"],
        )

    # ------------------------------------------------------------------ administration

    def _find(self, ref: str) -> PbxCall | None:
        ref = ref.strip()
        if ref in self.calls:
            return self.calls[ref]
        for call in self.calls.values():
            if call.channel == ref or call.channel.startswith(ref + "-"):
                return call
        return None

    async def _admin(self, event: AmiEvent) -> None:
        """UserEvent(PbxZrtpAdmin,Command: verify|unverify|policy|enroll|unenroll,Call: …)
        from the CLI or the dialplan (the enrollment extension)."""
        command = event.get("Command", "").strip().lower()
        ref = event.get("Call", "")
        if command in ("enroll", "unenroll"):
            await self._enrollment(command, ref)
            return
        try:
            if command in ("verify", "unverify"):
                await self.verify(self._find(ref), ref, command == "verify")
            elif command == "policy":
                await self.change_policy(self._find(ref), ref, event.get("Policy", ""))
            else:
                raise ValueError(f"unknown admin command {command!r}")
        except (RelayError, ValueError) as exc:
            log.warning("admin: %s", exc)
            with contextlib.suppress(AmiError):
                await self.ami.notify("ZrtpAdminError", {"Message": str(exc)[:200]})

    async def _cli(self, command: str, ref: str) -> None:
        """``zrtp verify|unverify|enroll|unenroll <id>`` typed at the Asterisk CLI: do
        it, and leave the outcome in AstDB pbx_zrtp/result for ``zrtp show result``."""
        call = self._find(ref)
        if command in ("enroll", "unenroll"):
            result = await self.change_enrollment(call, command == "enroll", repr(ref))
            if call is not None and not result.startswith("failed"):
                result = f"done: {call.channel} {result}"
        else:
            try:
                await self.verify(call, ref, command == "verify")
            except RelayError as exc:
                log.warning("admin: %s %s: %s", command, ref, exc)
                result = f"failed: {exc}"
            else:
                assert call is not None
                marked = "verified" if command == "verify" else "unverified"
                result = f"done: SAS of {call.channel} marked {marked}"
        with contextlib.suppress(AmiError):
            await self.ami.db_put("pbx_zrtp/result", command, f"{ref}: {result}"[:200])

    async def _enrollment(self, command: str, ref: str) -> None:
        """enroll: the user confirmed the SAS on an enrollment call; unenroll: forget
        the phone. ZRTP_ENROLL_RESULT tells the dialplan how it went."""
        call = self._find(ref)
        result = await self.change_enrollment(call, command == "enroll", repr(ref))
        with contextlib.suppress(PbxError):
            if call is None:
                await self.ami.notify("ZrtpAdminError", {"Message": result[:200]})
                return
            await self.ami.set_var(call.channel, "ZRTP_ENROLL_RESULT", result[:200])
            await self.ami.notify(
                "ZrtpEnrollment",
                {"Channel": call.channel, "CallId": call.key, "Result": result[:200]},
            )


#: What the registry (pbx_zrtp.pbx.registry) starts for a [section].
Adapter = AsteriskAdapter
