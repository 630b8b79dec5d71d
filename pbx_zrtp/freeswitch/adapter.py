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
"""

from __future__ import annotations

import contextlib
import json
import logging
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

from pbx_zrtp.freeswitch.config import FreeswitchConfig
from pbx_zrtp.freeswitch.esl import Esl, EslError, EslEvent
from pbx_zrtp.pbxcalls import CallBook, PbxCall
from pbx_zrtp.relay.handle import RelayHandle, RelayUnavailable
from pbx_zrtp.relay.mirror import Policy
from pbx_zrtp.relay.pool import DEFAULT_GROUP, RelayPool

log = logging.getLogger("pbx_zrtp.freeswitch")

CALL_PREFIX = "fs-"
#: pbx_zrtp::request announces a call; pbx_zrtp::enroll (action=confirm|remove) is the
#: enrollment extension telling us the user confirmed the SAS (or wants out).
SUBCLASSES = ("pbx_zrtp::request", "pbx_zrtp::enroll")


@dataclass
class FreeswitchCall(PbxCall):
    destination: str = ""
    caller: str = ""

    @property
    def uuid(self) -> str:
        return self.key


def legacy_sas(sas: str, sas_type: str) -> tuple[str, str]:
    """FreeSWITCH's old zrtp_sas1/zrtp_sas2: B256 gave one word each, B32 all in sas1."""
    if sas_type == "B256" and " " in sas:
        first, second = sas.split(" ", 1)
        return first, second
    return sas, ""


def variables_for(report: dict[str, Any], policy: Policy) -> dict[str, str]:
    state = str(report.get("state", ""))
    secure = state == "secure"
    sas = str(report.get("sas", "")) if secure else ""
    sas_type = str(report.get("sas_type", "")) if secure else ""
    sas1, sas2 = legacy_sas(sas, sas_type)
    values = {
        # The dialplan's own pbx_zrtp_policy is the request (maybe "auto"); this is
        # the policy in force.
        "pbx_zrtp_active_policy": policy.value,
        "pbx_zrtp_secure": "true" if secure else "false",
        "pbx_zrtp_sas": sas,
        "pbx_zrtp_sas_type": sas_type,
        "pbx_zrtp_sas_verified": "true" if secure and report.get("sas_verified") else "false",
        "pbx_zrtp_cache_mismatch": "true" if report.get("cache_mismatch") else "false",
        "pbx_zrtp_cipher": str(report.get("cipher", "")),
        "pbx_zrtp_auth_tag": str(report.get("auth_tag", "")),
        "pbx_zrtp_key_agreement": str(report.get("key_agreement", "")),
        "pbx_zrtp_pq": "true" if secure and report.get("pq") else "false",
        "pbx_zrtp_hash": str(report.get("hash", "")),
        "pbx_zrtp_peer_zid": str(report.get("peer_zid", "")),
        "pbx_zrtp_fail_reason": str(report.get("reason", ""))
        if state in ("failed", "clear")
        else "",
        # Trusted MiTM (docs/trusted-mitm.md): the phone's enrollment, and whether the
        # far end of the bridged call reads the same SAS (end-to-end) or not (pbx-leg).
        "pbx_zrtp_enrolled": "true" if report.get("enrolled") else "false",
        "pbx_zrtp_sas_scope": str(report.get("sas_scope", "")) if secure else "",
        "pbx_zrtp_displayed_sas": str(report.get("displayed_sas", "")) if secure else "",
        "pbx_zrtp_sas_relay": str(report.get("sas_relay", "")) if secure else "",
        # Secure, but key continuity was not saved (disk full, database down).
        "pbx_zrtp_cache_error": str(report.get("cache_error", "")),
        # FreeSWITCH's removed built-in ZRTP set these; old dialplans test them.
        "zrtp_secure_media_confirmed_audio": "true" if secure else "false",
        "zrtp_sas1_string_audio": sas1,
        "zrtp_sas2_string": sas2,
    }
    values["pbx_zrtp_state"] = state  # last: a dialplan waiting on it sees the rest
    return values


def requested_policy(headers: EslEvent) -> str | None:
    """What the dialplan asked for: pbx_zrtp_policy, else legacy zrtp_secure_media."""
    value = headers.get("variable_pbx_zrtp_policy")
    if value:
        return value.strip().lower()
    legacy = headers.get("variable_zrtp_secure_media", "").strip().lower()
    if legacy in ("true", "yes", "1", "optional"):
        return "optional"
    if legacy in ("required", "mandatory"):
        return "required"
    return None


class FreeswitchAdapter(CallBook[FreeswitchCall]):
    prefix = CALL_PREFIX

    def __init__(self, config: FreeswitchConfig, relay: RelayHandle) -> None:
        super().__init__(relay)
        self.config = config
        self.esl = Esl(
            config.host,
            config.port,
            config.password,
            on_event=self._on_event,
            on_connect=self._on_connect,
            custom_subclasses=SUBCLASSES,
        )

    async def start(self) -> bool:
        return await self.esl.start()

    async def close(self) -> None:
        await self._close_calls()
        await self.esl.close()

    # ------------------------------------------------------------------ ESL events

    def _on_connect(self) -> None:
        self._spawn(self.resync())

    def _on_event(self, headers: EslEvent) -> None:
        name = headers.get("Event-Name", "")
        uuid = headers.get("Unique-ID", "")
        if name in ("CHANNEL_PROGRESS_MEDIA", "CHANNEL_ANSWER"):
            if uuid and requested_policy(headers) is not None:
                self._spawn(self._start_call(headers))
        elif name == "CUSTOM" and headers.get("Event-Subclass") == "pbx_zrtp::request":
            if uuid:
                self._spawn(self._start_call(headers))
        elif name == "CUSTOM" and headers.get("Event-Subclass") == "pbx_zrtp::enroll":
            if uuid:
                self._spawn(self._enrollment(uuid, headers.get("action", "")))
        elif name == "CHANNEL_HANGUP_COMPLETE":
            if uuid:
                self._mark_gone(uuid)
                if uuid in self.calls:
                    self._spawn(self._end(uuid, headers.get("Hangup-Cause", "hangup")))
        elif name == "API":
            self._spawn(self._api_event(headers))

    # ------------------------------------------------------------------ calls

    async def _resolve(self, requested: str, destination: str) -> Policy:
        """The request; for ``auto``: the global variable, then the default.

        A global that cannot be read (ESL time-out) or holds no policy may be
        meant as ``required``: the call is then treated as ``required``."""
        if requested in ("off", "optional", "required"):
            return Policy(requested)
        if destination:
            try:
                stored = await self.esl.global_getvar(f"pbx_zrtp_policy_{destination}")
            except EslError as exc:
                log.warning(
                    "policy of %s unknown (%s): treating the call as required", destination, exc
                )
                return Policy.REQUIRED
            if stored:
                try:
                    return Policy(stored.lower())
                except ValueError:
                    log.warning(
                        "pbx_zrtp_policy_%s is not off, optional or required:"
                        " treating the call as required",
                        destination,
                    )
                    return Policy.REQUIRED
        return self.config.default_policy

    async def _start_call(self, headers: EslEvent) -> None:
        uuid = headers.get("Unique-ID", "")
        if self._known_or_gone(uuid):
            return
        destination = headers.get("Caller-Destination-Number", "")
        caller = headers.get("Caller-Caller-ID-Number", "") or headers.get("Caller-Username", "")
        call = FreeswitchCall(
            uuid, Policy.REQUIRED, CALL_PREFIX + uuid, destination=destination, caller=caller
        )
        self.calls[uuid] = call
        async with call.lock:
            requested = requested_policy(headers) or headers.get("policy", "").strip().lower()
            call.policy = await self._resolve(requested, destination)
            if uuid not in self.calls:
                return
            port_text = headers.get("variable_local_media_port", "")
            if not port_text.isdigit():
                with contextlib.suppress(EslError):
                    port_text = (await self.esl.getvar(uuid, "local_media_port")) or ""
            if not port_text.isdigit():
                await self._write_failure(
                    call, "no local_media_port yet: announce the call after pre_answer or answer"
                )
                return
            advertised = headers.get("variable_rtp_adv_audio_ip", "")
            if (
                self.config.require_advertised_relay
                and call.policy is not Policy.OFF
                and not self.relay.serves(advertised)
            ):
                await self._write_failure(
                    call,
                    f"rtp_adv_audio_ip is {advertised or 'unset'}, not the relay address"
                    f" {self.relay.relay_host}: set it before answer",
                )
                return
            try:
                self.relay.choose(  # the relay at the address FreeSWITCH advertised
                    call.call_id,
                    group=headers.get("variable_pbx_zrtp_group", ""),
                    address=advertised if self.relay.serves(advertised) else "",
                    bridge=headers.get("Channel-Call-UUID", ""),
                )
                report = await self.relay.create(
                    call.call_id,
                    int(port_text),
                    call.policy,
                    self_uri=destination,
                    peer_uri=caller,
                    # Both legs of a bridge carry the A leg's uuid as Channel-Call-UUID.
                    bridge=headers.get("Channel-Call-UUID", ""),
                    enroll=headers.get("variable_pbx_zrtp_enroll", "").strip().lower()
                    in ("offer", "true", "yes", "1"),
                )
            except RelayUnavailable as exc:
                await self._write_failure(call, f"relay: {exc}")
                return
            if uuid not in self.calls:
                await self.relay.delete(call.call_id, "hangup")
                return
            log.info(
                "call %s (%s -> %s) on port %s, policy %s",
                uuid,
                caller,
                destination,
                port_text,
                call.policy.value,
            )
            await self._write(call, report)

    async def _write(self, call: FreeswitchCall, report: dict[str, Any]) -> None:
        values = variables_for(report, call.policy)
        before = dict(call.written)
        changed_values = {k: v for k, v in values.items() if call.written.get(k) != v}
        if changed_values:
            # state last: one uuid_setvar_multi for the details, then the state
            state = changed_values.pop("pbx_zrtp_state", None)
            try:
                if changed_values:
                    await self.esl.setvars(
                        call.uuid, {k: v or "" for k, v in changed_values.items()}
                    )
                if state is not None:
                    await self.esl.setvar(call.uuid, "pbx_zrtp_state", state)
            except EslError as exc:
                log.warning("call %s: could not write variables: %s", call.uuid, exc)
                return
            call.written.update(values)
        state = values["pbx_zrtp_state"]
        changed = before.get("pbx_zrtp_state") != state
        verified_now = (
            values["pbx_zrtp_sas_verified"] == "true"
            and before.get("pbx_zrtp_sas_verified") != "true"
        )
        with contextlib.suppress(EslError):
            if changed and state == "secure":
                sas1, sas2 = values["zrtp_sas1_string_audio"], values["zrtp_sas2_string"]
                await self.esl.send_event(
                    "pbx_zrtp::secure",
                    {
                        "pbx_zrtp_uuid": call.uuid,
                        "secure_type": f"zrtp:{sas1}:{sas2}",
                        "pbx_zrtp_sas": values["pbx_zrtp_sas"],
                        "pbx_zrtp_sas_type": values["pbx_zrtp_sas_type"],
                        "pbx_zrtp_cipher": values["pbx_zrtp_cipher"],
                    },
                )
            if changed and state == "failed":
                await self.esl.send_event(
                    "pbx_zrtp::failed",
                    {
                        "pbx_zrtp_uuid": call.uuid,
                        "pbx_zrtp_fail_reason": values["pbx_zrtp_fail_reason"],
                    },
                )
            if verified_now:
                await self.esl.send_event("pbx_zrtp::verified", {"pbx_zrtp_uuid": call.uuid})
            if changed or verified_now:
                await self._publish_list()
        if changed and state == "failed" and call.policy is Policy.REQUIRED:
            self._arm_hangup(
                call, self.config.hangup_failed_after, lambda: self._hang_up_failed(call)
            )

    async def _publish_list(self) -> None:
        """global_getvar pbx_zrtp_calls at fs_cli: one `uuid state sas verified` per call."""
        entries = []
        for call in self.calls.values():
            w = call.written
            entries.append(
                f"{call.uuid} {w.get('pbx_zrtp_state', '-')} "
                f"{(w.get('pbx_zrtp_sas') or '-').replace(' ', '_')} "
                f"verified={w.get('pbx_zrtp_sas_verified', 'false')}"
            )
        await self.esl.api(f"global_setvar pbx_zrtp_calls={', '.join(entries) or 'none'}")

    async def _hang_up_failed(self, call: FreeswitchCall) -> None:
        log.warning(
            "call %s: required ZRTP failed (%s); hanging up with %s",
            call.uuid,
            call.written.get("pbx_zrtp_fail_reason", ""),
            self.config.hangup_cause,
        )
        with contextlib.suppress(EslError):
            await self.esl.kill(call.uuid, self.config.hangup_cause)

    async def _ended(self, call: FreeswitchCall, final: dict[str, Any] | None, reason: str) -> None:
        with contextlib.suppress(EslError):
            await self._publish_list()

    async def _publish_relays(self, pool: RelayPool) -> None:
        """Globals for the dialplan and fs_cli: ``pbx_zrtp_relay_ip_<group>`` (and
        ``pbx_zrtp_relay_ip`` for the default group) name the relay the next call
        should advertise; ``global_getvar pbx_zrtp_relays`` lists them all."""
        values = {f"pbx_zrtp_relay_ip_{g}": a for g, a in pool.advertise().items()}
        if f"pbx_zrtp_relay_ip_{DEFAULT_GROUP}" in values:
            values["pbx_zrtp_relay_ip"] = values[f"pbx_zrtp_relay_ip_{DEFAULT_GROUP}"]
        values["pbx_zrtp_relays"] = ", ".join(f"{n} {s}" for n, s in pool.status_lines().items())
        for name, value in values.items():
            if self._published.get(name) != value:
                try:
                    await self.esl.api(f"global_setvar {name}={value}")
                except EslError:
                    return  # written again after the next connect
                self._published[name] = value

    # ------------------------------------------------------------------ resync

    async def resync(self) -> None:
        """After every (re)connect: match calls and mirrors to FreeSWITCH's channels."""
        # Calls that start while we wait for the PBX's answer are not in its snapshot:
        # only calls known before asking may be judged gone.
        known_before = set(self.calls)
        self._republish_relays()
        try:
            live = await self._live_channels()
        except EslError as exc:
            log.warning("resync: %s", exc)
            return
        mirrored = await self._forget_vanished(live, known_before)
        for uuid in live:
            call = self.calls.get(uuid)
            if call is not None:
                current = await self.relay.show(call.call_id)
                if current is not None:
                    call.written.clear()
                    await self._locked_write(call, current)
                continue
            try:  # a call that asked for ZRTP while we were away
                requested = await self.esl.getvar(uuid, "pbx_zrtp_policy")
                legacy = await self.esl.getvar(uuid, "zrtp_secure_media")
                state = await self.esl.getvar(uuid, "pbx_zrtp_state")
                port = await self.esl.getvar(uuid, "local_media_port")
            except EslError:
                continue
            if (requested or legacy) and (uuid in mirrored or state not in (None, "pending")):
                policy = mirrored.get(uuid, {}).get("policy", "")
                with contextlib.suppress(EslError):
                    policy = policy or await self.esl.getvar(uuid, "pbx_zrtp_active_policy") or ""
                try:
                    known = Policy(policy)
                except ValueError:
                    known = Policy.REQUIRED  # assume the strictest
                await self._recover(
                    FreeswitchCall(uuid, known, CALL_PREFIX + uuid), mirrored.get(uuid)
                )
            elif (requested or legacy) and port:
                headers = {
                    "Unique-ID": uuid,
                    "variable_pbx_zrtp_policy": requested or "",
                    "variable_zrtp_secure_media": legacy or "",
                    "variable_local_media_port": port,
                    "variable_rtp_adv_audio_ip": await self.esl.getvar(uuid, "rtp_adv_audio_ip")
                    or "",
                    "Caller-Destination-Number": await self.esl.getvar(uuid, "destination_number")
                    or "",
                    "Channel-Call-UUID": await self.esl.getvar(uuid, "call_uuid") or uuid,
                    "variable_pbx_zrtp_enroll": await self.esl.getvar(uuid, "pbx_zrtp_enroll")
                    or "",
                    "variable_pbx_zrtp_group": await self.esl.getvar(uuid, "pbx_zrtp_group") or "",
                }
                log.info("resync: picking up %s, which asked for ZRTP while ESL was down", uuid)
                await self._start_call(headers)

    async def _live_channels(self) -> set[str]:
        body = await self.esl.api("show channels as json")
        try:
            data = json.loads(body)
        except ValueError:
            raise EslError("show channels as json: not JSON") from None
        rows = data.get("rows", []) if isinstance(data, dict) else []
        return {str(row.get("uuid", "")) for row in rows if isinstance(row, dict)} - {""}

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
                report = await self.relay.verify(call.call_id, value in ("true", "yes", "1"))
                log.info(
                    "fs_cli: SAS of %s marked %sverified",
                    uuid,
                    "" if value in ("true", "yes", "1") else "un",
                )
            else:
                policy = Policy(value)
                report = await self.relay.update(call.call_id, policy)
                call.policy = policy
            await self._locked_write(call, report)
        except (RelayUnavailable, ValueError) as exc:
            log.warning("fs_cli %s %s: %s", name, uuid, exc)
            with contextlib.suppress(EslError):
                await self.esl.setvar(
                    uuid, "pbx_zrtp_admin_error", str(exc).replace(" ", "_")[:200]
                )

    async def _enrollment(self, uuid: str, action: str) -> None:
        """confirm: the user compared the SAS on an enrollment call (store the
        pbxsecret); remove: forget the phone. pbx_zrtp_enroll_result says how it went."""
        action = action.strip().lower()
        if action in ("confirm", "true", "yes", "1", "remove", "false", "no", "0"):
            enroll = action in ("confirm", "true", "yes", "1")
            result = await self._change_enrollment(self.calls.get(uuid), enroll, uuid)
        else:
            result = f"failed: pbx_zrtp_enroll: unknown action {action!r}"
            log.warning("enrollment of %s: %s", uuid, result)
        with contextlib.suppress(EslError):
            await self.esl.setvar(uuid, "pbx_zrtp_enroll_result", result[:200])
