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
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from typing import Any

from pbx_zrtp.asterisk.ami import Ami, AmiError, AmiEvent
from pbx_zrtp.asterisk.config import AsteriskConfig, match_policy
from pbx_zrtp.pbxcalls import CallBook, PbxCall
from pbx_zrtp.relay.handle import RelayHandle, RelayUnavailable
from pbx_zrtp.relay.mirror import Policy
from pbx_zrtp.relay.pool import RelayPool

log = logging.getLogger("pbx_zrtp.asterisk")

#: Call ids of this adapter's mirrors carry this prefix (resync only touches these).
CALL_PREFIX = "ast-"
#: Hangup cause for a `required` call that could not be secured:
#: 58 = AST_CAUSE_BEARERCAPABILITY_NOTAVAIL ("bearer capability not available").
FAILED_CAUSE = 58
#: How long to keep asking for CHANNEL(rtp,src) when the event did not carry it.
PORT_WAIT = 1.0

VARIABLES = (
    "ZRTP_POLICY",
    "ZRTP_SECURE",
    "ZRTP_SAS",
    "ZRTP_SAS_TYPE",
    "ZRTP_SAS_VERIFIED",
    "ZRTP_CACHE_MISMATCH",
    "ZRTP_CIPHER",
    "ZRTP_AUTH_TAG",
    "ZRTP_KEY_AGREEMENT",
    "ZRTP_PQ",
    "ZRTP_HASH",
    "ZRTP_PEER_ZID",
    "ZRTP_FAIL_REASON",
    "ZRTP_ENROLLED",
    "ZRTP_SAS_SCOPE",
    "ZRTP_DISPLAYED_SAS",
    "ZRTP_SAS_RELAY",
    "ZRTP_CACHE_ERROR",
    "ZRTP_STATE",
)


@dataclass
class AsteriskCall(PbxCall):
    channel: str = ""
    target: str = ""
    endpoint: str = ""

    @property
    def uniqueid(self) -> str:
        return self.key


def variables_for(report: dict[str, Any], policy: Policy) -> dict[str, str]:
    """The dialplan's view of a relay report (every name always present)."""
    state = str(report.get("state", ""))
    secure = state == "secure"
    return {
        "ZRTP_POLICY": policy.value,
        "ZRTP_SECURE": "1" if secure else "0",
        "ZRTP_SAS": str(report.get("sas", "")) if secure else "",
        "ZRTP_SAS_TYPE": str(report.get("sas_type", "")) if secure else "",
        "ZRTP_SAS_VERIFIED": "1" if secure and report.get("sas_verified") else "0",
        "ZRTP_CACHE_MISMATCH": "1" if report.get("cache_mismatch") else "0",
        "ZRTP_CIPHER": str(report.get("cipher", "")),
        "ZRTP_AUTH_TAG": str(report.get("auth_tag", "")),
        "ZRTP_KEY_AGREEMENT": str(report.get("key_agreement", "")),
        # Post-quantum key agreement (X25519/X448 + ML-KEM hybrid): "1" or "0".
        "ZRTP_PQ": "1" if secure and report.get("pq") else "0",
        "ZRTP_HASH": str(report.get("hash", "")),
        "ZRTP_PEER_ZID": str(report.get("peer_zid", "")),
        "ZRTP_FAIL_REASON": str(report.get("reason", "")) if state in ("failed", "clear") else "",
        # Trusted MiTM (docs/trusted-mitm.md): is the phone enrolled with this PBX, and
        # does the far end of a bridged call read the same SAS (end-to-end) or not.
        "ZRTP_ENROLLED": "1" if report.get("enrolled") else "0",
        "ZRTP_SAS_SCOPE": str(report.get("sas_scope", "")) if secure else "",
        "ZRTP_DISPLAYED_SAS": str(report.get("displayed_sas", "")) if secure else "",
        "ZRTP_SAS_RELAY": str(report.get("sas_relay", "")) if secure else "",
        # Secure, but key continuity was not saved (disk full, database down).
        "ZRTP_CACHE_ERROR": str(report.get("cache_error", "")),
        "ZRTP_STATE": state,
    }


def _policy_or_required(value: object) -> Policy:
    """A recovered call's policy: the relay's, else assume the strictest."""
    try:
        return Policy(value)
    except ValueError:
        return Policy.REQUIRED


def parse_port(value: str) -> int | None:
    """'127.0.0.1:20094' -> 20094 (CHANNEL(rtp,src) shows the route's source IP:
    only the port is used; the PBX address comes from the configuration)."""
    _host, sep, port = value.strip().rpartition(":")
    if not sep or not port.isdigit():
        return None
    number = int(port)
    return number if 1 <= number <= 65535 else None


class AsteriskAdapter(CallBook[AsteriskCall]):
    prefix = CALL_PREFIX

    def __init__(self, config: AsteriskConfig, relay: RelayHandle) -> None:
        super().__init__(relay)
        self.config = config
        self.ami = Ami(
            config.host,
            config.port,
            config.username,
            config.secret,
            on_event=self._on_event,
            on_login=self._on_login,
        )

    async def start(self) -> bool:
        return await self.ami.start()

    async def close(self) -> None:
        await self._close_calls()
        self.ami.close()

    # ------------------------------------------------------------------ AMI events

    def _on_login(self) -> None:
        self._spawn(self.resync())

    def _on_event(self, event: AmiEvent) -> None:
        kind = event.get("Event")
        if kind == "UserEvent":
            name = event.get("UserEvent", "")
            if name == self.config.event:
                self._spawn(self._start_call(event))
            elif name == f"{self.config.event}Admin":
                self._spawn(self._admin(event))
        elif kind == "Hangup":
            uniqueid = event.get("Uniqueid", "")
            if not uniqueid:
                return
            # Remembered so a call whose set-up is still awaiting AMI/relay answers
            # notices it is gone instead of leaving a mirror behind.
            self._mark_gone(uniqueid)
            if uniqueid in self.calls:
                self._spawn(self._end(uniqueid, "hangup"))

    # ------------------------------------------------------------------ calls

    async def _resolve_policy(self, requested: str, target: str) -> Policy:
        """The argument; for ``auto``: AstDB, then patterns, then the default.

        An AstDB key that cannot be read (AMI time-out) or holds no policy may
        be meant as ``required``: the call is then treated as ``required``."""
        requested = requested.strip().lower()
        if requested in ("off", "optional", "required"):
            return Policy(requested)
        if target:
            try:
                stored = await self.ami.db_get("pbx_zrtp/policy", target)
            except AmiError as exc:
                log.warning("policy of %s unknown (%s): treating the call as required", target, exc)
                return Policy.REQUIRED
            if stored:
                try:
                    return Policy(stored.strip().lower())
                except ValueError:
                    log.warning(
                        "AstDB pbx_zrtp/policy/%s is not off, optional or required:"
                        " treating the call as required",
                        target,
                    )
                    return Policy.REQUIRED
            matched = match_policy(self.config, target)
            if matched is not None:
                return matched
        return self.config.default_policy

    async def _start_call(self, event: AmiEvent) -> None:
        uniqueid = event.get("Uniqueid", "")
        channel = event.get("Channel", "")
        if not uniqueid or not channel:
            log.warning("ignoring %s event without Channel/Uniqueid", self.config.event)
            return
        if self._known_or_gone(uniqueid):
            return  # a repeated announcement, or a channel that is already gone
        target = event.get("Target", "") or event.get("Exten", "")
        endpoint = event.get("Endpoint", "")
        # Legs of one call share Asterisk's Linkedid: the relay relays the SAS between them.
        bridge = event.get("Linkedid", "")
        enroll = event.get("Enroll", "").strip().lower() in ("offer", "1", "yes", "true")
        call = AsteriskCall(
            uniqueid,
            Policy.REQUIRED,
            CALL_PREFIX + uniqueid,
            channel=channel,
            target=target,
            endpoint=endpoint,
        )
        self.calls[uniqueid] = call  # from here a Hangup finds it
        async with call.lock:
            call.policy = await self._resolve_policy(event.get("Policy", ""), target)
            policy = call.policy
            if uniqueid not in self.calls:
                return
            port = parse_port(event.get("RtpSrc", ""))
            deadline = asyncio.get_running_loop().time() + PORT_WAIT
            while port is None and asyncio.get_running_loop().time() < deadline:
                try:  # empty until the SDP answer went out: Progress() must come first
                    port = parse_port(await self.ami.getvar(channel, "CHANNEL(rtp,src)"))
                except AmiError as exc:
                    log.warning("call %s: %s", channel, exc)
                    break
                if port is None:
                    await asyncio.sleep(0.05)
            if port is None:
                await self._write_failure(
                    call, "no RTP port: the dialplan must run Progress() before the Gosub"
                )
                return
            hint = None
            if self.config.restrict_phone_to_sip_address:
                with contextlib.suppress(AmiError):
                    remote = await self.ami.getvar(channel, "CHANNEL(pjsip,remote_addr)")
                    host = remote.rpartition(":")[0].strip("[]")
                    if host:
                        hint = (host, 0)
            try:
                self.relay.choose(
                    call.call_id,
                    group=event.get("Group", ""),
                    address=event.get("MediaAddress", ""),  # the endpoint's media_address
                    bridge=bridge,
                )
                report = await self.relay.create(
                    call.call_id,
                    port,
                    policy,
                    self_uri=target,
                    peer_uri=endpoint or channel,
                    phone_hint=hint,
                    bridge=bridge,
                    enroll=enroll,
                )
            except RelayUnavailable as exc:
                await self._write_failure(call, f"relay: {exc}")
                return
            if uniqueid not in self.calls:  # hung up while the relay was binding
                await self.relay.delete(call.call_id, "hangup")
                return
            log.info(
                "call %s (%s) -> %s, port %d, policy %s",
                channel,
                uniqueid,
                target,
                port,
                policy.value,
            )
            await self._write(call, report)

    async def _write(self, call: AsteriskCall, report: dict[str, Any]) -> None:
        """Set what changed, ZRTP_STATE last; tell other AMI consumers; mirror to AstDB."""
        values = variables_for(report, call.policy)
        before = dict(call.written)
        try:
            for name in VARIABLES:
                if call.written.get(name) != values[name]:
                    await self.ami.setvar(call.channel, name, values[name])
                    call.written[name] = values[name]
        except AmiError as exc:
            log.warning("call %s: could not write variables: %s", call.channel, exc)
            return  # written again after the reconnect's resync
        state = values["ZRTP_STATE"]
        changed = before.get("ZRTP_STATE") != state
        verified_now = values["ZRTP_SAS_VERIFIED"] == "1" and before.get("ZRTP_SAS_VERIFIED") != "1"
        with contextlib.suppress(AmiError):
            if changed and state == "secure":
                await self.ami.user_event(
                    "ZrtpSecure",
                    Channel=call.channel,
                    CallId=call.uniqueid,
                    SAS=values["ZRTP_SAS"],
                    SASType=values["ZRTP_SAS_TYPE"],
                    Cipher=values["ZRTP_CIPHER"],
                    KeyAgreement=values["ZRTP_KEY_AGREEMENT"],
                )
            if changed and state == "failed":
                await self.ami.user_event(
                    "ZrtpFailed",
                    Channel=call.channel,
                    CallId=call.uniqueid,
                    Reason=values["ZRTP_FAIL_REASON"],
                )
            if verified_now:
                await self.ami.user_event(
                    "ZrtpSasVerified", Channel=call.channel, CallId=call.uniqueid
                )
            summary = f"{state} policy={call.policy.value} sas={values['ZRTP_SAS'] or '-'}"
            summary += (
                f" verified={'yes' if verified_now or values['ZRTP_SAS_VERIFIED'] == '1' else 'no'}"
            )
            await self.ami.db_put("pbx_zrtp/calls", call.uniqueid, f"{call.channel} {summary}")
        if changed and state == "failed" and call.policy is Policy.REQUIRED:
            self._arm_hangup(
                call, self.config.hangup_failed_after, lambda: self._hang_up_failed(call)
            )

    async def _hang_up_failed(self, call: AsteriskCall) -> None:
        log.warning(
            "call %s: required ZRTP failed (%s) and the dialplan did not hang up;"
            " hanging up (cause %d)",
            call.channel,
            call.written.get("ZRTP_FAIL_REASON", ""),
            FAILED_CAUSE,
        )
        with contextlib.suppress(AmiError):
            await self.ami.hangup(call.channel, FAILED_CAUSE)

    async def _ended(self, call: AsteriskCall, final: dict[str, Any] | None, reason: str) -> None:
        with contextlib.suppress(AmiError):
            await self.ami.db_del("pbx_zrtp/calls", call.key)

    async def _publish_relays(self, pool: RelayPool) -> None:
        """``database show pbx_zrtp/relays`` (alias ``zrtp show relays``): one line each."""
        for name, line in pool.status_lines().items():
            if self._published.get(name) != line:
                try:
                    await self.ami.db_put("pbx_zrtp/relays", name, line)
                except AmiError:
                    return  # written again after the next login
                self._published[name] = line

    # ------------------------------------------------------------------ resync

    async def resync(self) -> None:
        """After every (re)login: make our calls and mirrors match Asterisk's channels."""
        # Calls that start while we wait for the PBX's answer are not in its snapshot:
        # only calls known before asking may be judged gone.
        known_before = set(self.calls)
        self._republish_relays()
        try:
            channels = await self.ami.channels()
        except AmiError as exc:
            log.warning("resync: %s", exc)
            return
        live = {c.get("Uniqueid", ""): c for c in channels}
        mirrored = await self._forget_vanished(set(live), known_before)
        for uniqueid, info in live.items():
            call = self.calls.get(uniqueid)
            channel = info.get("Channel", "")
            if call is not None:
                current = await self.relay.show(call.call_id)
                if current is not None:
                    call.written.clear()  # a Setvar may have been lost with the connection
                    await self._locked_write(call, current)
                continue
            try:
                requested = await self.ami.getvar(channel, "PBX_ZRTP_POLICY")
                state = await self.ami.getvar(channel, "ZRTP_STATE")
            except AmiError:
                continue
            if requested and (uniqueid in mirrored or state not in ("", "pending")):
                policy = mirrored.get(uniqueid, {}).get("policy", "")
                with contextlib.suppress(AmiError):
                    policy = policy or await self.ami.getvar(channel, "ZRTP_POLICY")
                call = AsteriskCall(
                    uniqueid, _policy_or_required(policy), CALL_PREFIX + uniqueid, channel=channel
                )
                await self._recover(call, mirrored.get(uniqueid))
            elif requested:
                log.info("resync: picking up %s, which asked for ZRTP while AMI was down", channel)
                found = {"PBX_ZRTP_TARGET": "", "PBX_ZRTP_GROUP": "", "PBX_ZRTP_RELAY": ""}
                for name in found:
                    with contextlib.suppress(AmiError):
                        found[name] = await self.ami.getvar(channel, name)
                await self._start_call(
                    {
                        "Uniqueid": uniqueid,
                        "Channel": channel,
                        "Policy": requested,
                        "Target": found["PBX_ZRTP_TARGET"] or info.get("Exten", ""),
                        "Group": found["PBX_ZRTP_GROUP"],
                        "MediaAddress": found["PBX_ZRTP_RELAY"],
                    }
                )

    # ------------------------------------------------------------------ administration

    def _find(self, ref: str) -> AsteriskCall | None:
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
        if command in ("enroll", "unenroll"):
            await self._enrollment(command, event.get("Call", ""))
            return
        try:
            if command in ("verify", "unverify"):
                call = self._find(event.get("Call", ""))
                if call is None:
                    raise RelayUnavailable(f"no ZRTP call {event.get('Call', '')!r}")
                report = await self.relay.verify(call.call_id, command == "verify")
                await self._locked_write(call, report)
                log.info(
                    "admin: SAS of %s marked %sverified",
                    call.channel,
                    "" if command == "verify" else "un",
                )
            elif command == "policy":
                call = self._find(event.get("Call", ""))
                if call is None:
                    raise RelayUnavailable(f"no ZRTP call {event.get('Call', '')!r}")
                policy = Policy(event.get("Policy", "").strip().lower())
                report = await self.relay.update(call.call_id, policy)
                call.policy = policy
                await self._locked_write(call, report)
            else:
                raise RelayUnavailable(f"unknown admin command {command!r}")
        except (RelayUnavailable, ValueError) as exc:
            log.warning("admin: %s", exc)
            with contextlib.suppress(AmiError):
                await self.ami.user_event("ZrtpAdminError", Message=str(exc)[:200])

    async def _enrollment(self, command: str, ref: str) -> None:
        """enroll: the user confirmed the SAS on an enrollment call; unenroll: forget
        the phone. ZRTP_ENROLL_RESULT tells the dialplan how it went."""
        call = self._find(ref)
        result = await self._change_enrollment(call, command == "enroll", repr(ref))
        if call is None:
            with contextlib.suppress(AmiError):
                await self.ami.user_event("ZrtpAdminError", Message=result[:200])
            return
        with contextlib.suppress(AmiError):
            await self.ami.setvar(call.channel, "ZRTP_ENROLL_RESULT", result[:200])
            await self.ami.user_event(
                "ZrtpEnrollment", Channel=call.channel, CallId=call.uniqueid, Result=result[:200]
            )
