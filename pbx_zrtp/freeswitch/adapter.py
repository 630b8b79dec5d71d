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

Administration from fs_cli rides on commands FreeSWITCH already has, which
reach us as API events: ``uuid_setvar <uuid> pbx_zrtp_verified true|false``
marks the SAS; ``uuid_setvar <uuid> pbx_zrtp_policy <policy>`` changes a live
call; ``global_setvar pbx_zrtp_policy_<extension>=<policy>`` sets what ``auto``
resolves to; ``global_getvar pbx_zrtp_calls`` lists ZRTP calls.

The flows themselves are ``pbx_zrtp.pbx.book.CallBook``'s; this module maps ESL to it.
"""

from __future__ import annotations

import contextlib
import logging
from urllib.parse import unquote

from pbx_zrtp.calls import CallReport, Policy, RelayDirectory, RelayError, RelayHandle
from pbx_zrtp.config.relays import DEFAULT_GROUP
from pbx_zrtp.freeswitch.config import FreeswitchConfig
from pbx_zrtp.freeswitch.esl import Esl, EslError, EslEvent
from pbx_zrtp.pbx.book import ENROLL_OFFER, NO, YES, Announcement, CallBook, PbxCall
from pbx_zrtp.pbx.link import LiveChannel
from pbx_zrtp.pbx.variables import CallView, VariableTable

log = logging.getLogger("pbx_zrtp.freeswitch")

CALL_PREFIX = "fs-"
#: pbx_zrtp::request announces a call; pbx_zrtp::enroll (action=confirm|remove) is the
#: enrollment extension telling us the user confirmed the SAS (or wants out).
SUBCLASSES = ("pbx_zrtp::request", "pbx_zrtp::enroll")

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
        ("state", "pbx_zrtp_state"),
    ),
    true="true",
    false="false",
)
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


def _port(text: str) -> int | None:
    return int(text) if text.isdigit() else None


class FreeswitchAdapter(CallBook):
    prefix = CALL_PREFIX
    variables = VARIABLES
    stored_policy_name = "global variable pbx_zrtp_policy_{target}"
    stored_phone_policy_name = "global variable pbx_zrtp_phone_policy_{target}"
    no_port_reason = "no local_media_port yet: announce the call after pre_answer or answer"

    def __init__(self, config: FreeswitchConfig, relay: RelayHandle) -> None:
        self.config = config
        self.esl = Esl(
            config.host,
            config.port,
            config.password,
            on_event=self._on_event,
            on_connect=self._on_connect,
            custom_subclasses=SUBCLASSES,
        )
        super().__init__(
            relay,
            self.esl,
            default_policy=config.default_policy,
            hangup_failed_after=config.hangup_failed_after,
            failed_cause=config.hangup_cause,
        )

    # ------------------------------------------------------------------ ESL events

    def _on_event(self, headers: EslEvent) -> None:
        name = headers.get("Event-Name", "")
        uuid = headers.get("Unique-ID", "")
        if name in ("CHANNEL_PROGRESS_MEDIA", "CHANNEL_ANSWER"):
            if uuid and requested_policy(headers) is not None:
                self._spawn(self.announce(self._announcement(headers)))
        elif name == "CUSTOM" and headers.get("Event-Subclass") == "pbx_zrtp::request":
            if uuid:
                self._spawn(self.announce(self._announcement(headers)))
        elif name == "CUSTOM" and headers.get("Event-Subclass") == "pbx_zrtp::enroll":
            if uuid:
                self._spawn(self._enrollment(uuid, headers.get("action", "")))
        elif name == "CHANNEL_HANGUP_COMPLETE":
            self.hung_up(uuid, headers.get("Hangup-Cause", "hangup"))
        elif name == "API":
            self._spawn(self._api_event(headers))

    def _announcement(self, headers: EslEvent) -> Announcement:
        uuid = headers.get("Unique-ID", "")
        advertised = headers.get("variable_rtp_adv_audio_ip", "")
        return Announcement(
            uuid,
            uuid,
            requested_policy(headers) or headers.get("policy", "").strip().lower(),
            target=headers.get("Caller-Destination-Number", ""),
            peer=headers.get("Caller-Caller-ID-Number", "") or headers.get("Caller-Username", ""),
            endpoint=_phone(headers),
            # Both legs of a bridge carry the A leg's uuid as Channel-Call-UUID.
            bridge=headers.get("Channel-Call-UUID", ""),
            enroll=headers.get("variable_pbx_zrtp_enroll", "").strip().lower() in ENROLL_OFFER,
            group=headers.get("variable_pbx_zrtp_group", ""),
            # the relay at the address FreeSWITCH advertised
            media_address=advertised if self.relay.serves(advertised) else "",
            port=_port(headers.get("variable_local_media_port", "")),
            details=(("rtp_adv_audio_ip", advertised),),
        )

    # ------------------------------------------------------------------ CallBook hooks

    async def _stored_policy(self, target: str) -> str | None:
        return await self.esl.global_getvar(f"pbx_zrtp_policy_{target}")

    async def _stored_phone_policy(self, endpoint: str) -> str | None:
        return await self.esl.global_getvar(f"pbx_zrtp_phone_policy_{endpoint}")

    async def _find_port(self, call: PbxCall, announced: Announcement) -> int | None:
        if announced.port is not None:
            return announced.port
        with contextlib.suppress(EslError):
            return _port(await self.esl.get_var(call.channel, "local_media_port"))
        return None

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
        """global_getvar pbx_zrtp_calls at fs_cli: one `uuid state sas verified` per call."""
        entries = []
        for call in self.calls.values():
            w = call.written
            entries.append(
                f"{call.key} {w.get('pbx_zrtp_state', '-')} "
                f"{(w.get('pbx_zrtp_sas') or '-').replace(' ', '_')} "
                f"verified={w.get('pbx_zrtp_sas_verified', 'false')}"
            )
        await self.esl.api(f"global_setvar pbx_zrtp_calls={', '.join(entries) or 'none'}")

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
                    await self.esl.api(f"global_setvar {name}={value}")
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
            "rtp_adv_audio_ip",
            "destination_number",
            "call_uuid",
            "pbx_zrtp_enroll",
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
            "variable_rtp_adv_audio_ip": found["rtp_adv_audio_ip"],
            "Caller-Destination-Number": found["destination_number"],
            "Channel-Call-UUID": found["call_uuid"] or uuid,
            "variable_pbx_zrtp_enroll": found["pbx_zrtp_enroll"],
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
        with contextlib.suppress(EslError):
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
