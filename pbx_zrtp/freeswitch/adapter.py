"""The FreeSWITCH adapter: dialplan variables in, relay mirrors out, state back.

FreeSWITCH reveals a call's RTP port only as its SDP leaves (``local_media_port``
on CHANNEL_PROGRESS_MEDIA / CHANNEL_ANSWER), often after the phone's first
packet: so the relay pre-binds FreeSWITCH's RTP range on R and holds early media
under its ``prebind_policy``; this adapter then names the call and sets its policy.

A call asks for ZRTP with ``pbx_zrtp_policy=required|optional|off|auto`` or, like
FreeSWITCH's removed built-in ZRTP, ``zrtp_secure_media=true`` (= optional), and
``rtp_adv_audio_ip=<relay address>`` before answer. Results come back as
``pbx_zrtp_*`` variables and the legacy ``zrtp_secure_media_confirmed_audio``,
``zrtp_sas1_string_audio``, ``zrtp_sas2_string``, plus CUSTOM events
``pbx_zrtp::secure`` (with a CALL_SECURE-style ``secure_type=zrtp:<sas1>:<sas2>``),
``pbx_zrtp::failed`` and ``pbx_zrtp::verified``.

Administration from fs_cli: ``zrtp …`` lines (``console.py``, ``pbx_zrtp_admin.lua``)
answered in the console; and the older lines riding on commands FreeSWITCH already
has, which reach us as API events: ``uuid_setvar <uuid> pbx_zrtp_verified true|false``
marks the SAS; ``uuid_setvar <uuid> pbx_zrtp_policy <policy>`` changes a live
call; ``global_setvar pbx_zrtp_policy_<extension>=<policy>`` sets what ``auto``
resolves to; ``global_getvar pbx_zrtp_calls`` lists ZRTP calls.

The flows themselves are ``pbx_zrtp.pbx.book.CallBook``'s; this module maps ESL to it.
"""

from __future__ import annotations

import contextlib
import logging
from collections import OrderedDict
from collections.abc import Iterable
from urllib.parse import unquote

from pbx_zrtp.calls import CallReport, Policy, RelayDirectory, RelayError, RelayHandle
from pbx_zrtp.config.relays import DEFAULT_GROUP
from pbx_zrtp.freeswitch import console
from pbx_zrtp.freeswitch.config import FreeswitchConfig
from pbx_zrtp.freeswitch.esl import Esl, EslError, EslEvent
from pbx_zrtp.pbx.book import (
    ENROLL_OFFER,
    NO,
    YES,
    Announcement,
    CallBook,
    PbxCall,
    remember,
)
from pbx_zrtp.pbx.link import LiveChannel, PbxError
from pbx_zrtp.pbx.variables import CallView, VariableTable

log = logging.getLogger("pbx_zrtp.freeswitch")

CALL_PREFIX = "fs-"
#: mod_sofia fires it (Unique-ID only, no channel data) after its 200 OK to a phone's
#: re-INVITE; a re-INVITE FreeSWITCH sends itself shows only as a CODEC event.
REINVITE = "sofia::reinvite"
#: The [freeswitch] settings of the ESL session itself: a change applies on a restart.
LINK_SETTINGS = ("host", "port", "password")
#: pbx_zrtp::request announces a call; pbx_zrtp::enroll (action=confirm|remove) is the
#: enrollment extension telling us the user confirmed the SAS (or wants out).
#: pbx_zrtp::admin is a `zrtp …` line typed at fs_cli (pbx_zrtp_admin.lua; console.py).
#: sofia::reinvite: FreeSWITCH answered a phone's re-INVITE (it may have added video).
SUBCLASSES = ("pbx_zrtp::request", "pbx_zrtp::enroll", console.REQUEST, REINVITE)

#: The dialplan's variables (docs/freeswitch.md), in the order they are set. The
#: dialplan's own pbx_zrtp_policy is the request (maybe "auto"); pbx_zrtp_active_policy
#: the policy in force. The zrtp_* ones are what FreeSWITCH's removed built-in ZRTP set.
VARIABLES = VariableTable(
    (
        ("policy", "pbx_zrtp_active_policy"),
        ("timeout", "pbx_zrtp_timeout"),  # pending: hold the call this many seconds at most
        ("secure", "pbx_zrtp_secure"),
        ("sas", "pbx_zrtp_sas"),
        ("sas_type", "pbx_zrtp_sas_type"),
        ("sas_verified", "pbx_zrtp_sas_verified"),
        ("cache_mismatch", "pbx_zrtp_cache_mismatch"),
        ("cipher", "pbx_zrtp_cipher"),
        ("auth_tag", "pbx_zrtp_auth_tag"),
        ("key_agreement", "pbx_zrtp_key_agreement"),
        ("pq", "pbx_zrtp_pq"),
        ("hash", "pbx_zrtp_hash"),
        ("peer_zid", "pbx_zrtp_peer_zid"),
        ("fail_reason", "pbx_zrtp_fail_reason"),
        ("enrolled", "pbx_zrtp_enrolled"),
        ("sas_scope", "pbx_zrtp_sas_scope"),
        ("displayed_sas", "pbx_zrtp_displayed_sas"),
        ("sas_relay", "pbx_zrtp_sas_relay"),
        ("cache_error", "pbx_zrtp_cache_error"),
        ("secure", "zrtp_secure_media_confirmed_audio"),
        ("sas1", "zrtp_sas1_string_audio"),
        ("sas2", "zrtp_sas2_string"),
        ("video_secure", "pbx_zrtp_secure_video"),
        ("video_fail_reason", "pbx_zrtp_fail_reason_video"),
        ("video_state", "pbx_zrtp_state_video"),
        ("video_secure", "zrtp_secure_media_confirmed_video"),
        ("state", "pbx_zrtp_state"),
    ),
    true="true",
    false="false",
)
#: The variables FreeSWITCH <= 1.10.8 set on enrollment (switch_rtp.c,
#: ZRTP_EVENT_NEW_USER_ENROLLED / ZRTP_EVENT_USER_UNENROLLED), by our result.
LEGACY_ENROLL = {
    "enrolled": "zrtp_new_user_enrolled_audio",
    "unenrolled": "zrtp_user_unenrolled_audio",
}
#: zrtp_secure_media (FreeSWITCH's removed ZRTP) values that ask for ZRTP.
LEGACY_OPTIONAL = YES | {"optional"}
LEGACY_REQUIRED = frozenset({"required", "mandatory"})


def variables_for(report: CallReport, policy: Policy) -> dict[str, str]:
    """The dialplan's view of a relay report (every variable always present)."""
    return VARIABLES.render(CallView.of(report, policy))


def requested_policy(headers: EslEvent) -> str | None:
    """What the dialplan asked for: pbx_zrtp_policy, else legacy zrtp_secure_media."""
    value = headers.get("variable_pbx_zrtp_policy")
    if value:
        return value.strip().lower()
    legacy = headers.get("variable_zrtp_secure_media", "").strip().lower()
    if legacy in LEGACY_OPTIONAL:
        return "optional"
    if legacy in LEGACY_REQUIRED:
        return "required"
    return None


def calls_listing(calls: Iterable[PbxCall]) -> str:
    """``pbx_zrtp_calls``: `uuid state sas verified:true|false`, comma-separated, or
    ``none``; never an ``=`` (see ``FreeswitchAdapter._publish_list``)."""
    entries = []
    for call in calls:
        w = call.written
        entries.append(
            f"{call.key} {w.get('pbx_zrtp_state', '-')} "
            f"{(w.get('pbx_zrtp_sas') or '-').replace(' ', '_')} "
            f"verified:{w.get('pbx_zrtp_sas_verified', 'false')}"
        )
    return (", ".join(entries) or "none").replace("=", "_")


#: The auto-adjust threshold that closes the direct path (docs/freeswitch.md).
THRESHOLD = "rtp_auto_adjust_threshold"
SAFE_THRESHOLD = "1"


def direct_path_problem(headers: EslEvent, global_threshold: str) -> str:
    """Why FreeSWITCH may send this call's RTP to the phone before (or instead of)
    the relay; "" when its settings are the safe ones."""
    if headers.get("variable_disable_rtp_auto_adjust", "").strip().lower() in YES:
        return "disable_rtp_auto_adjust is set: FreeSWITCH never follows the relay"
    threshold = headers.get("variable_rtp_auto_adjust_threshold", "").strip() or global_threshold
    if threshold != SAFE_THRESHOLD:
        return (
            f"rtp_auto_adjust_threshold is {threshold or 'unset (10)'}, not 1:"
            " set rtp_auto_adjust_threshold=1 before pre_answer/answer"
            " (and in the bridge's dial string)"
        )
    return ""


def word_of(policy: Policy | None) -> str:
    return "" if policy is None else policy.value


def _port(text: str) -> int | None:
    return int(text) if text.isdigit() else None


def _video_pt(text: str) -> int:
    """The video codec's payload type FreeSWITCH negotiated (96 if unknown)."""
    return int(text) if text.isdigit() and int(text) <= 127 else 96


class FreeswitchAdapter(CallBook):
    prefix = CALL_PREFIX
    variables = VARIABLES
    stored_policy_name = "global variable pbx_zrtp_policy_{target}"
    stored_phone_policy_name = "global variable pbx_zrtp_phone_policy_{target}"
    no_port_reason = "no local_media_port yet: announce the call after pre_answer or answer"

    def __init__(self, config: FreeswitchConfig, relay: RelayHandle) -> None:
        self.config = config
        self._linked = config  # what the ESL session was made with
        self.esl = Esl(
            config.host,
            config.port,
            config.password,
            on_event=self._on_event,
            on_connect=self._on_connect,
            custom_subclasses=SUBCLASSES,
        )
        self._direct_checked: OrderedDict[str, None] = OrderedDict()
        self.policies = console.StoredPolicies(config.policy_file)
        self._enroll_offered: OrderedDict[str, None] = OrderedDict()
        super().__init__(
            relay,
            self.esl,
            default_policy=config.default_policy,
            hangup_failed_after=config.hangup_failed_after,
            failed_cause=config.hangup_cause,
        )

    def reconfigure(self, config: object) -> list[str]:
        """SIGHUP: the re-read [freeswitch] section applies to calls from now on
        (default policy, time-out, hangup cause, the advertised-relay check); calls in
        progress keep their policy. Returns the settings that changed but need a restart."""
        if not isinstance(config, FreeswitchConfig):
            raise TypeError(f"a FreeswitchConfig, not {type(config).__name__}")
        self.config = config
        self.default_policy = config.default_policy
        self.hangup_failed_after = config.hangup_failed_after
        self.failed_cause = config.hangup_cause
        return [
            f"freeswitch.{key}"
            for key in LINK_SETTINGS
            if getattr(config, key) != getattr(self._linked, key)
        ]

    # ------------------------------------------------------------------ ESL events

    def _on_event(self, headers: EslEvent) -> None:
        name = headers.get("Event-Name", "")
        uuid = headers.get("Unique-ID", "")
        if name in ("CHANNEL_PROGRESS_MEDIA", "CHANNEL_ANSWER"):
            if uuid and requested_policy(headers) is not None:
                self._spawn(self._check_direct_path(uuid, headers))
                self._spawn(self.announce(self._announcement(headers)))
        elif name == "CUSTOM" and headers.get("Event-Subclass") == "pbx_zrtp::request":
            if uuid:
                self._spawn(self.announce(self._announcement(headers)))
        elif name == "CUSTOM" and headers.get("Event-Subclass") == "pbx_zrtp::enroll":
            if uuid:
                self._spawn(self._enrollment(uuid, headers.get("action", "")))
        elif name == "CUSTOM" and headers.get("Event-Subclass") == console.REQUEST:
            self._spawn(self._admin(headers))
        elif name == "CUSTOM" and headers.get("Event-Subclass") == REINVITE:
            if uuid:
                self._spawn(self._reinvited(uuid))
        elif name == "CODEC" and headers.get("channel-video-read-codec-name"):
            # The channel's video codec was set: video began (at answer, or added by
            # a re-INVITE FreeSWITCH sent itself, which fires no sofia::reinvite).
            if uuid:
                self._spawn(self._reinvited(uuid))
        elif name == "CHANNEL_HANGUP_COMPLETE":
            if uuid in self.calls:
                self._spawn(self._audit_then_end(uuid, headers))
            else:
                self.hung_up(uuid, headers.get("Hangup-Cause", "hangup"))
        elif name in ("CHANNEL_BRIDGE", "CHANNEL_UNBRIDGE"):
            self._bridge_event(name, headers)
        elif name == "API":
            self._spawn(self._api_event(headers))

    def _bridge_event(self, name: str, headers: EslEvent) -> None:
        """A FreeSWITCH bridge joins two channels (bridge, uuid_bridge, intercept,
        a transfer's new leg, a valet parking retrieval) or parts them (uuid_transfer,
        park, hangup): the calls' SAS relay follows (``CallBook.bridged``)."""
        a = headers.get("Bridge-A-Unique-ID", "") or headers.get("Unique-ID", "")
        b = headers.get("Bridge-B-Unique-ID", "") or headers.get("Other-Leg-Unique-ID", "")
        if not a or not b:
            return
        if name == "CHANNEL_UNBRIDGE":
            self.left_bridge(a)
            self.left_bridge(b)
        else:
            self.bridged(f"{a}+{b}", [a, b])

    # ------------------------------------------------------------------ the direct path

    async def _check_direct_path(self, uuid: str, headers: EslEvent) -> None:
        """Warn (once per call) when FreeSWITCH's settings let it send this call's
        audio straight to the phone: only auto-adjust turns FreeSWITCH's RTP toward
        the relay, and only after ``rtp_auto_adjust_threshold`` packets from it (10
        by default: ~100-200 ms of clear audio to the phone at call start)."""
        if uuid in self._direct_checked:
            return
        remember(self._direct_checked, uuid)
        global_threshold = ""
        if not headers.get("variable_rtp_auto_adjust_threshold", "").strip():
            with contextlib.suppress(EslError):  # vars.xml's, if the dialplan set none
                global_threshold = (await self.esl.global_getvar(THRESHOLD)).strip()
        problem = direct_path_problem(headers, global_threshold)
        if problem:
            log.warning(
                "call %s: FreeSWITCH may send CLEAR AUDIO straight to the phone, bypassing"
                " the relay: %s (docs/freeswitch.md, Dialplan)",
                uuid,
                problem,
            )

    async def _audit_then_end(self, uuid: str, headers: EslEvent) -> None:
        """At hangup: every RTP packet FreeSWITCH sent should have reached the relay;
        what did not went straight to the phone (clear audio). Then end the call."""
        call = self.calls.get(uuid)
        try:
            sent = int(headers.get("variable_rtp_audio_out_packet_count", "") or -1)
            if call is not None and sent >= 0:
                report = await self.relay.show(call.call_id)
                heard = report.counters["pbx_in"] if report is not None else sent
                if sent > heard:
                    log.warning(
                        "call %s (policy %s): FreeSWITCH sent %d RTP packets, the relay got"
                        " %d: %d went straight to the phone IN THE CLEAR; set"
                        " rtp_auto_adjust_threshold=1 before pre_answer/answer and firewall"
                        " FreeSWITCH's RTP address from the phones (docs/freeswitch.md)",
                        uuid,
                        call.policy.value,
                        sent,
                        heard,
                        sent - heard,
                    )
        except (ValueError, RelayError):
            pass
        finally:
            self.hung_up(uuid, headers.get("Hangup-Cause", "hangup"))

    def _announcement(self, headers: EslEvent) -> Announcement:
        uuid = headers.get("Unique-ID", "")
        advertised = headers.get("variable_rtp_adv_audio_ip", "")
        enroll = headers.get("variable_pbx_zrtp_enroll", "").strip().lower() in ENROLL_OFFER
        # FreeSWITCH <= 1.10.8: zrtp_enrollment=true started the stream in registration mode
        enroll = enroll or headers.get("variable_zrtp_enrollment", "").strip().lower() in YES
        if enroll:
            remember(self._enroll_offered, uuid)
        return Announcement(
            uuid,
            uuid,
            requested_policy(headers) or headers.get("policy", "").strip().lower(),
            target=headers.get("Caller-Destination-Number", ""),
            peer=headers.get("Caller-Caller-ID-Number", "") or headers.get("Caller-Username", ""),
            endpoint=_phone(headers),
            # Both legs of a bridge carry the A leg's uuid as Channel-Call-UUID.
            bridge=headers.get("Channel-Call-UUID", ""),
            enroll=enroll,
            group=headers.get("variable_pbx_zrtp_group", ""),
            # the relay at the address FreeSWITCH advertised
            media_address=advertised if self.relay.serves(advertised) else "",
            port=_port(headers.get("variable_local_media_port", "")),
            # a video call: its own port (pre-bound range too), and PT for priming
            video_port=_port(headers.get("variable_local_video_port", "")),
            video_payload_type=_video_pt(headers.get("variable_rtp_video_recv_pt", "")),
            details=(
                ("rtp_adv_audio_ip", advertised),
                ("rtp_adv_video_ip", headers.get("variable_rtp_adv_video_ip", "")),
            ),
        )

    async def _reinvited(self, uuid: str) -> None:
        """A re-INVITE was answered (``sofia::reinvite``: the phone's; a CODEC event
        setting a video codec: FreeSWITCH's own too): a call that had no video may
        have one now, on a new ``local_video_port`` from the pre-bound range, whose
        phone starts its Multistream exchange at once (the relay holds it until it
        is named here). Neither event carries the channel's variables, so they are
        read (after the call's announcement, spawned before, has registered it)."""
        if uuid not in self.calls:
            return  # a channel that asked for no ZRTP
        names = ("local_video_port", "rtp_adv_video_ip", "rtp_video_recv_pt")
        try:
            port, advertised, pt = [await self.esl.get_var(uuid, name) for name in names]
        except EslError as exc:
            log.warning("call %s: re-INVITE: its video could not be read: %s", uuid, exc)
            return
        if not port:
            return  # still no video
        await self.video_added(
            uuid,
            Announcement(
                uuid,
                uuid,
                "",
                video_port=_port(port),
                video_payload_type=_video_pt(pt),
                details=(("rtp_adv_video_ip", advertised),),
            ),
        )

    # ------------------------------------------------------------------ CallBook hooks

    async def _catch_up(self, call: PbxCall) -> None:
        await self._reinvited(call.key)  # video added while ESL was down

    async def _stored_policy(self, target: str) -> str | None:
        # the global (fs_cli `global_setvar`, or `zrtp policy` written back), else what
        # `zrtp policy` stored, should FreeSWITCH have restarted before it was written back
        found = await self.esl.global_getvar(f"pbx_zrtp_policy_{target}")
        return found or self.policies.policies.get(target)

    def _on_connect(self) -> None:
        """After every (re)connect: the policies set at fs_cli back into FreeSWITCH's
        globals (a restarted FreeSWITCH lost them), then the usual resync."""
        self._spawn(self._publish_policies())
        super()._on_connect()

    async def _publish_policies(self) -> None:
        for extension, policy in sorted(self.policies.policies.items()):
            try:
                await self.esl.api(f"global_setvar pbx_zrtp_policy_{extension}={policy}")
            except EslError as exc:
                log.warning("could not write back the stored policy of %s: %s", extension, exc)
                return

    async def _stored_phone_policy(self, endpoint: str) -> str | None:
        return await self.esl.global_getvar(f"pbx_zrtp_phone_policy_{endpoint}")

    async def _find_port(self, call: PbxCall, announced: Announcement) -> int | None:
        if announced.port is not None:
            return announced.port
        with contextlib.suppress(EslError):
            return _port(await self.esl.get_var(call.channel, "local_media_port"))
        return None

    async def _find_video_port(self, call: PbxCall, announced: Announcement) -> int | None:
        """local_video_port of a video call; its phone must have been told the relay
        for video too (rtp_adv_video_ip), or its video would bypass the relay."""
        port = announced.video_port
        advertised = announced.detail("rtp_adv_video_ip")
        if (
            port is not None
            and self.config.require_advertised_relay
            and call.policy is not Policy.OFF
            and not self.relay.serves(advertised)
        ):
            raise PbxError(
                f"rtp_adv_video_ip is {advertised or 'unset'}, not the relay address"
                f" {self.relay.relay_host}: set it before answer on a video call"
            )
        return port

    def _refusal(self, call: PbxCall, announced: Announcement) -> str | None:
        """A ZRTP call whose phone was not told the relay's address would bypass it."""
        advertised = announced.detail("rtp_adv_audio_ip")
        if (
            self.config.require_advertised_relay
            and call.policy is not Policy.OFF
            and not self.relay.serves(advertised)
        ):
            return (
                f"rtp_adv_audio_ip is {advertised or 'unset'}, not the relay address"
                f" {self.relay.relay_host}: set it before answer"
            )
        return None

    async def _live_bridges(self) -> dict[str, list[str]] | None:
        return await self.esl.live_bridges()  # EslError is a PbxError

    async def _tell(self, call: PbxCall, before: dict[str, str], changed: bool) -> None:
        """CUSTOM events (CALL_SECURE-style for old consumers); the fs_cli call list."""
        values = call.written
        state = values["pbx_zrtp_state"]
        verified_now = self.verified_now(call, before)
        if changed and state == "secure":
            sas1, sas2 = values["zrtp_sas1_string_audio"], values["zrtp_sas2_string"]
            await self.esl.notify(
                "pbx_zrtp::secure",
                {
                    "pbx_zrtp_uuid": call.key,
                    "secure_type": f"zrtp:{sas1}:{sas2}",
                    "pbx_zrtp_sas": values["pbx_zrtp_sas"],
                    "pbx_zrtp_sas_type": values["pbx_zrtp_sas_type"],
                    "pbx_zrtp_cipher": values["pbx_zrtp_cipher"],
                },
            )
            # The event FreeSWITCH <= 1.10.8's built-in ZRTP fired (switch_rtp.c,
            # zrtp_event_callback, ZRTP_EVENT_IS_SECURE), header for header.
            await self.esl.fire(
                "CALL_SECURE",
                {
                    "secure_media_type": "audio",
                    "secure_type": f"zrtp:{sas1}:{sas2}",
                    "caller-unique-id": call.key,
                },
            )
            if call.key in self._enroll_offered and values["pbx_zrtp_enrolled"] == "true":
                await self.esl.set_var(call.channel, "zrtp_already_enrolled_audio", "true")
        if changed and state == "failed":
            await self.esl.notify(
                "pbx_zrtp::failed",
                {"pbx_zrtp_uuid": call.key, "pbx_zrtp_fail_reason": values["pbx_zrtp_fail_reason"]},
            )
        if verified_now:
            await self.esl.notify("pbx_zrtp::verified", {"pbx_zrtp_uuid": call.key})
        if changed or verified_now:
            await self._publish_list()

    async def _publish_list(self) -> None:
        """global_getvar pbx_zrtp_calls at fs_cli: one `uuid state sas verified:…` per call.

        The value must hold no ``=``: mod_commands splits ``global_setvar``'s argument
        at ``=`` into at most three fields, and a third one makes it a *conditional*
        set (only if the current value equals it), which silently never happens."""
        await self.esl.api(f"global_setvar pbx_zrtp_calls={calls_listing(self.calls.values())}")

    async def _ended(self, call: PbxCall) -> None:
        await self._publish_list()

    async def _publish_relays(self, directory: RelayDirectory) -> None:
        """Globals for the dialplan and fs_cli: ``pbx_zrtp_relay_ip_<group>`` (and
        ``pbx_zrtp_relay_ip`` for the default group) name the relay the next call
        should advertise; ``global_getvar pbx_zrtp_relays`` lists them all."""
        values = {f"pbx_zrtp_relay_ip_{g}": a for g, a in directory.advertise().items()}
        if f"pbx_zrtp_relay_ip_{DEFAULT_GROUP}" in values:
            values["pbx_zrtp_relay_ip"] = values[f"pbx_zrtp_relay_ip_{DEFAULT_GROUP}"]
        lines = directory.status_lines()
        values["pbx_zrtp_relays"] = ", ".join(f"{n} {s}" for n, s in lines.items())
        for name, value in values.items():
            if self._published.get(name) != value:
                try:
                    # "group=default …" would make it a conditional set: see _publish_list
                    await self.esl.api(f"global_setvar {name}={value.replace('=', ':')}")
                except EslError:
                    return  # written again after the next connect
                self._published[name] = value

    async def _asked(self, channel: LiveChannel) -> bool:
        requested = await self.esl.get_var(channel.key, "pbx_zrtp_policy")
        legacy = await self.esl.get_var(channel.key, "zrtp_secure_media")
        return bool(requested or legacy)

    async def _announcement_at_resync(self, channel: LiveChannel) -> Announcement | None:
        """Rebuild the channel's CHANNEL_ANSWER from its variables."""
        uuid = channel.key
        names = (
            "pbx_zrtp_policy",
            "zrtp_secure_media",
            "local_media_port",
            "local_video_port",
            "rtp_adv_audio_ip",
            "rtp_adv_video_ip",
            "destination_number",
            "call_uuid",
            "pbx_zrtp_enroll",
            "zrtp_enrollment",
            "pbx_zrtp_group",
        )
        found = dict.fromkeys(names, "")
        for name in names:
            with contextlib.suppress(EslError):
                found[name] = await self.esl.get_var(uuid, name)
        if not found["local_media_port"]:
            return None
        headers = {
            "Unique-ID": uuid,
            "variable_pbx_zrtp_policy": found["pbx_zrtp_policy"],
            "variable_zrtp_secure_media": found["zrtp_secure_media"],
            "variable_local_media_port": found["local_media_port"],
            "variable_local_video_port": found["local_video_port"],
            "variable_rtp_adv_audio_ip": found["rtp_adv_audio_ip"],
            "variable_rtp_adv_video_ip": found["rtp_adv_video_ip"],
            "Caller-Destination-Number": found["destination_number"],
            "Channel-Call-UUID": found["call_uuid"] or uuid,
            "variable_pbx_zrtp_enroll": found["pbx_zrtp_enroll"],
            "variable_zrtp_enrollment": found["zrtp_enrollment"],
            "variable_pbx_zrtp_group": found["pbx_zrtp_group"],
        }
        return self._announcement(headers)

    # ------------------------------------------------------------------ fs_cli administration

    async def _api_event(self, headers: EslEvent) -> None:
        """Commands typed at fs_cli (or run by anyone) arrive as API events."""
        if headers.get("API-Command") != "uuid_setvar":
            return
        argument = unquote(headers.get("API-Command-Argument", ""))
        parts = argument.split()
        if len(parts) < 2:
            return
        uuid, name = parts[0], parts[1]
        value = parts[2].lower() if len(parts) > 2 else ""
        call = self.calls.get(uuid)
        if call is None or name not in ("pbx_zrtp_verified", "pbx_zrtp_policy", "pbx_zrtp_enroll"):
            return
        if name == "pbx_zrtp_enroll":  # fs_cli> uuid_setvar <uuid> pbx_zrtp_enroll confirm|remove
            await self._enrollment(uuid, value)
            return
        try:
            if name == "pbx_zrtp_verified":
                # anything but a yes takes the mark back: the safe reading of a typo
                await self.verify(call, uuid, value in YES)
            else:
                await self.change_policy(call, uuid, value)
        except (RelayError, ValueError) as exc:
            log.warning("fs_cli %s %s: %s", name, uuid, exc)
            with contextlib.suppress(EslError):
                await self.esl.set_var(
                    uuid, "pbx_zrtp_admin_error", str(exc).replace(" ", "_")[:200]
                )

    async def _admin(self, headers: EslEvent) -> None:
        """A `zrtp …` line from fs_cli (pbx_zrtp_admin.lua): act, and reply with what
        the console prints (``+OK …`` or ``-ERR …``)."""
        request = headers.get("pbx_zrtp_request", "")
        words = unquote(headers.get("pbx_zrtp_command", "")).split()
        try:
            reply = await self._admin_reply(words)
        except (RelayError, ValueError) as exc:
            reply = f"-ERR {exc}"
        log.info("fs_cli: zrtp %s: %s", " ".join(words), reply.splitlines()[0])
        with contextlib.suppress(EslError):
            await self.esl.notify(
                console.REPLY,
                {"pbx_zrtp_request": request, "pbx_zrtp_reply": console.encode_reply(reply)},
            )

    def _call_named(self, ref: str) -> PbxCall:
        call = self.calls.get(ref.removeprefix(CALL_PREFIX))
        if call is None:
            raise ValueError(f"no ZRTP call {ref} (zrtp show calls lists them)")
        return call

    async def _admin_reply(self, words: list[str]) -> str:
        verb = words[0].lower() if words else ""
        if verb in ("", "help"):
            return f"+OK {console.USAGE}"
        if verb == "show" and words[1:] == ["calls"]:
            if not self.calls:
                return "+OK no ZRTP calls"
            lines = [f"+OK {len(self.calls)} ZRTP call(s): uuid state sas verified policy"]
            for call in self.calls.values():
                w = call.written
                lines.append(
                    f"{call.key} {w.get('pbx_zrtp_state', 'pending')}"
                    f" {(w.get('pbx_zrtp_sas') or '-').replace(' ', '_')}"
                    f" {w.get('pbx_zrtp_sas_verified', 'false')} {call.policy.value}"
                )
            return "\n".join(lines)
        if verb == "show" and len(words) == 3 and words[1] == "call":
            call = self._call_named(words[2])
            lines = [f"+OK {call.key}"]
            lines += [f"{name}={value}" for name, value in call.written.items() if value]
            return "\n".join(lines)
        if verb in ("verify", "unverify") and len(words) == 2:
            call = self._call_named(words[1])
            await self.verify(call, call.key, verb == "verify")
            return f"+OK SAS of {call.key} marked {verb[:-1]}ied"
        if verb == "policy" and len(words) in (2, 3):
            extension = words[1]
            if not console.EXTENSION.fullmatch(extension):
                raise ValueError(f"{extension!r} is not an extension")
            if len(words) == 2:
                stored = await self.esl.global_getvar(f"pbx_zrtp_policy_{extension}")
                return f"+OK {extension}: {stored or 'auto (no policy stored)'}"
            word = words[2].lower()
            if word not in ("auto", "none", "-", "off", "optional", "required"):
                raise ValueError(f"{word!r}: use off, optional, required or auto")
            policy = None if word in ("auto", "none", "-") else Policy(word)
            self.policies.set(extension, policy)
            await self.esl.api(f"global_setvar pbx_zrtp_policy_{extension}={word_of(policy)}")
            kept = "" if self.config.policy_file else " (not kept over restarts: set policy_file)"
            return f"+OK {extension}: {word_of(policy) or 'auto'}{kept}"
        if verb == "enroll" and len(words) == 3:
            call = self._call_named(words[1])
            action = words[2].lower()
            if action not in ("confirm", "remove"):
                raise ValueError(f"enroll: {action!r} is not confirm or remove")
            result = await self.change_enrollment(call, action == "confirm", call.key)
            await self._enroll_result(call.key, result)
            return f"-ERR {result}" if result.startswith("failed") else f"+OK {result}"
        return f"-ERR unknown command: zrtp {' '.join(words)}\n{console.USAGE}"

    async def _enrollment(self, uuid: str, action: str) -> None:
        """confirm: the user compared the SAS on an enrollment call (store the
        pbxsecret); remove: forget the phone. pbx_zrtp_enroll_result says how it went."""
        action = action.strip().lower()
        if action in YES | {"confirm"} or action in NO | {"remove"}:
            enroll = action in YES | {"confirm"}
            result = await self.change_enrollment(self.calls.get(uuid), enroll, uuid)
        else:
            result = f"failed: pbx_zrtp_enroll: unknown action {action!r}"
            log.warning("enrollment of %s: %s", uuid, result)
        await self._enroll_result(uuid, result)

    async def _enroll_result(self, uuid: str, result: str) -> None:
        """pbx_zrtp_enroll_result (last: the dialplan waits on it), and before it what
        FreeSWITCH <= 1.10.8's built-in ZRTP set (zrtp_new_user_enrolled_audio,
        zrtp_user_unenrolled_audio)."""
        values = {LEGACY_ENROLL[result]: "true"} if result in LEGACY_ENROLL else {}
        with contextlib.suppress(EslError):
            if values:
                await self.esl.set_vars(uuid, values)
            await self.esl.set_var(uuid, "pbx_zrtp_enroll_result", result[:200])


def _phone(headers: EslEvent) -> str:
    """This leg's phone (its per-phone policy key): pbx_zrtp_phone if the dialplan set
    it; else the registered user that placed an inbound leg, or the user an outbound
    leg (a bridge's callee) was dialled to."""
    chosen = headers.get("variable_pbx_zrtp_phone", "")
    if chosen:
        return chosen
    if headers.get("Call-Direction") == "outbound":
        return headers.get("variable_dialed_user", "")
    return headers.get("Caller-Username", "")


#: What the registry (pbx_zrtp.pbx.registry) starts for a [section].
Adapter = FreeswitchAdapter
