"""What every PBX adapter does with its calls, whatever the PBX.

An adapter turns its PBX's events into ``announce`` (a channel asks for ZRTP),
``hung_up`` and the admin verbs, and supplies the few PBX-specific steps as
hooks (how to learn the RTP port, where a stored policy lives, how to tell the
PBX's admins). ``CallBook`` owns the rest, once for all PBXs:

- one ``PbxCall`` per channel that asked for ZRTP, named in the relay
  ``<prefix><channel id>``; recently hung-up channels are remembered, so a set-up
  still awaiting an answer notices and leaves no mirror behind;
- the relay's state reports written to the channel (details first, the state
  last) under the call's lock, and the safety-net hangup of a failed
  ``required`` call the dialplan left up;
- the end of a call, and the reconciliation after a PBX (re)connect: vanished
  channels lose their mirror, live ones get their variables written again, a
  channel that asked while the link was down is picked up, a call the relay lost
  is reported failed;
- verify / unverify / policy / enroll / unenroll from the PBX's admins.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

from pbx_zrtp import logs
from pbx_zrtp.calls import (
    Address,
    CallReport,
    CallRequest,
    CallState,
    NoSuchCall,
    Policy,
    RelayDirectory,
    RelayError,
    RelayHandle,
)
from pbx_zrtp.pbx.link import LiveChannel, PbxError, PbxLink
from pbx_zrtp.pbx.variables import CallView, VariableTable

log = logging.getLogger("pbx_zrtp")

#: How many hung-up channel ids to remember (late events about them are ignored).
GONE_MEMORY = 4096


def remember(memory: OrderedDict[str, None], key: str) -> None:
    """Add ``key`` to a bounded memory of channels: the oldest go past GONE_MEMORY."""
    memory[key] = None
    while len(memory) > GONE_MEMORY:
        memory.popitem(last=False)


#: What the PBXs' dialplans and consoles accept as "yes" (both adapters always did).
YES = frozenset({"true", "yes", "1"})
NO = frozenset({"false", "no", "0"})
#: A call invites its phone to enroll with this PBX (PBX_ZRTP_ENROLL, pbx_zrtp_enroll).
ENROLL_OFFER = YES | {"offer"}
#: off < optional < required: an `auto` call takes the strongest policy that applies.
STRENGTH = {Policy.OFF: 0, Policy.OPTIONAL: 1, Policy.REQUIRED: 2}


@dataclass
class PbxCall:
    key: str  # the PBX's channel id (Asterisk Uniqueid, FreeSWITCH UUID)
    policy: Policy
    call_id: str  # the mirror's name in the relay
    channel: str = ""  # what the PBX link's actions address (Asterisk: the channel name)
    port: int | None = None  # the RTP port, once known (log lines' [call port N] tag)
    written: dict[str, str] = field(default_factory=dict)  # variables as last written
    hangup_task: asyncio.Task[None] | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    #: The bridge id the relay links this leg by (``follow_bridge``): the announced
    #: one (Linkedid, Channel-Call-UUID) until the PBX bridges the leg elsewhere.
    bridge: str = ""


@dataclass(frozen=True)
class Announcement:
    """A channel asks for ZRTP: from a dialplan event, or found asking at resync."""

    key: str
    channel: str
    requested: str  # off | optional | required | auto (or "": the configured default)
    target: str = ""  # the extension the phone talks to (policy lookup, cache key)
    peer: str = ""  # the phone (cache key)
    #: The PBX's name of this leg's phone (Asterisk endpoint, FreeSWITCH user): the key
    #: of its per-phone policy, which covers calls from it and to it.
    endpoint: str = ""
    #: Legs of one bridged call share it (Asterisk Linkedid, FreeSWITCH Channel-Call-UUID).
    bridge: str = ""
    enroll: bool = False
    group: str = ""  # the relay group the dialplan chose
    media_address: str = ""  # the relay address the PBX advertised to the phone
    port: int | None = None  # the PBX's RTP port, when the announcement carries it
    #: The PBX's video RTP port (a video call), and its payload type for priming.
    video_port: int | None = None
    video_payload_type: int = 96
    #: The dialplan's own words, for the PBX's hooks (e.g. FreeSWITCH's rtp_adv_audio_ip).
    details: tuple[tuple[str, str], ...] = ()

    def detail(self, name: str) -> str:
        return dict(self.details).get(name, "")


class CallBook(ABC):
    """The calls of one PBX adapter (see the module docstring)."""

    #: Call ids of this adapter's mirrors carry this prefix (resync only touches these).
    prefix: ClassVar[str]
    #: The PBX's variable names for a report, in write order.
    variables: ClassVar[VariableTable]
    #: The failure reason when the announcement's channel has no RTP port yet.
    no_port_reason: ClassVar[str]
    #: Where ``_stored_policy`` looks, for log lines ("AstDB pbx_zrtp/policy/{target}").
    stored_policy_name: ClassVar[str] = "the stored policy of {target}"
    #: Where ``_stored_phone_policy`` looks ("AstDB pbx_zrtp/endpoint/{target}").
    stored_phone_policy_name: ClassVar[str] = "the stored policy of phone {target}"

    def __init__(
        self,
        relay: RelayHandle,
        link: PbxLink,
        *,
        default_policy: Policy,
        hangup_failed_after: float,
        failed_cause: str,
    ) -> None:
        self.relay = relay
        self.link = link
        self.default_policy = default_policy
        self.hangup_failed_after = hangup_failed_after
        self.failed_cause = failed_cause
        self.calls: dict[str, PbxCall] = {}
        self._gone: OrderedDict[str, None] = OrderedDict()
        #: While a snapshot of the PBX's bridges is read, the channels bridge events
        #: name (``bridge_changes``): the snapshot never undoes a newer event.
        self._bridge_watchers: list[set[str]] = []
        #: Resyncs finished (one after every (re)connection).
        self.resyncs = 0
        self._tasks: set[asyncio.Task[Any]] = set()
        self._published: dict[str, str] = {}  # relays' status as last written to the PBX
        self._publishing = False
        relay.on_state(self._on_relay_state)
        if relay.directory is not None:
            relay.directory.on_status(self._relays_changed)

    # ------------------------------------------------------------------ life

    async def start(self) -> bool:
        """Connect to the PBX (and keep reconnecting); True if connected in time."""
        return await self.link.start()

    async def close(self) -> None:
        for key in list(self.calls):
            await self._end(key, "adapter stopping")
        for task in list(self._tasks):
            task.cancel()
        await self.link.close()

    def _on_connect(self) -> None:
        """The link's ``on_connect``: after every (re)connection, resync."""
        self._spawn(self.resync())

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ------------------------------------------------------------------ hooks

    async def _stored_policy(self, target: str) -> str | None:
        """Hook: the policy an admin stored for ``target`` in the PBX (AstDB, global
        variables); None or "" when none is stored; PbxError when it cannot be read."""
        return None

    def _matched_policy(self, target: str) -> Policy | None:
        """Hook: the policy configured patterns give ``target``."""
        return None

    async def _stored_phone_policy(self, endpoint: str) -> str | None:
        """Hook: the policy an admin stored for the phone ``endpoint`` (calls from it
        and to it); None or "" when none; PbxError when it cannot be read."""
        return None

    def _matched_phone_policy(self, endpoint: str) -> Policy | None:
        """Hook: the policy the configured phone patterns give ``endpoint``."""
        return None

    async def _find_port(self, call: PbxCall, announced: Announcement) -> int | None:
        """Hook: the PBX's RTP port for the call, when the announcement lacks it."""
        return announced.port

    def _refusal(self, call: PbxCall, announced: Announcement) -> str | None:
        """Hook: why this call must not be mirrored as announced (reported failed)."""
        return None

    async def _live_bridges(self) -> dict[str, list[str]] | None:
        """Hook: the PBX's bridges now (name -> the keys of the channels in it), read
        at resync to re-learn the bridge changes made while the link was down; None
        when the PBX cannot say (the calls keep the bridge ids they had)."""
        return None

    async def _phone_hint(self, call: PbxCall) -> Address | None:
        """Hook: accept the phone's media only from this address (host, 0)."""
        return None

    async def _catch_up(self, call: PbxCall) -> None:
        """Hook, at resync: what may have changed in a known call while the link was
        down and that no event will repeat (FreeSWITCH: video added by a re-INVITE)."""
        return None

    async def _find_video_port(self, call: PbxCall, announced: Announcement) -> int | None:
        """Hook: the PBX's video RTP port of the call (None: no video stream);
        PbxError when the PBX cannot say (a ``required`` call then fails)."""
        return announced.video_port

    @abstractmethod
    async def _tell(self, call: PbxCall, before: dict[str, str], changed: bool) -> None:
        """Tell the PBX's other consumers and consoles about a write: ``call.written``
        holds the values now, ``before`` what they were; ``changed``: the state
        changed. May raise PbxError."""

    @abstractmethod
    async def _ended(self, call: PbxCall) -> None:
        """PBX-side clean-up once a call's mirror is gone; may raise PbxError."""

    @abstractmethod
    async def _publish_relays(self, directory: RelayDirectory) -> None:
        """Show the relays (up/down, load; where to send the next call) to the PBX."""

    async def _asked(self, channel: LiveChannel) -> bool:
        """Hook, at resync: whether a channel we do not know asked for ZRTP; may raise
        PbxError (the channel is then left alone)."""
        return False

    async def _announcement_at_resync(self, channel: LiveChannel) -> Announcement | None:
        """Hook, at resync: the announcement of a channel that asked while we were away."""
        return None

    # ------------------------------------------------------------------ calls

    def hung_up(self, key: str, reason: str) -> None:
        """The PBX says the channel is gone. Remembered, so a call whose set-up is
        still awaiting PBX/relay answers notices instead of leaving a mirror behind."""
        if not key:
            return
        self._mark_gone(key)
        if key in self.calls:
            self._spawn(self._end(key, reason))

    def _mark_gone(self, key: str) -> None:
        remember(self._gone, key)

    async def resolve_policy(
        self, requested: str, target: str, phones: tuple[str, ...] = ()
    ) -> Policy:
        """The dialplan's word; for ``auto`` (or nothing) the strongest of: the dialled
        number's policy (stored for the target in the PBX, then the configured patterns,
        then the default) and the per-phone policies of ``phones`` (this leg's phone and
        the dialled one: stored, then the configured phone patterns; a phone without
        one adds nothing).

        A stored policy that cannot be read (PBX time-out) or holds no policy may be
        meant as ``required``: the call is then treated as ``required`` (fail closed)."""
        requested = requested.strip().lower()
        if requested in ("off", "optional", "required"):
            return Policy(requested)
        policy = await self._number_policy(target)
        for phone in dict.fromkeys(p for p in phones if p):
            if policy is Policy.REQUIRED:
                break
            found = await self._phone_policy(phone)
            if found is not None and STRENGTH[found] > STRENGTH[policy]:
                policy = found
        return policy

    async def _number_policy(self, target: str) -> Policy:
        if target:
            stored = await self._read_stored(self._stored_policy, target, self.stored_policy_name)
            if stored is not None:
                return stored
            matched = self._matched_policy(target)
            if matched is not None:
                return matched
        return self.default_policy

    async def _phone_policy(self, phone: str) -> Policy | None:
        stored = await self._read_stored(
            self._stored_phone_policy, phone, self.stored_phone_policy_name
        )
        return stored if stored is not None else self._matched_phone_policy(phone)

    async def _read_stored(
        self, read: Callable[[str], Awaitable[str | None]], key: str, name: str
    ) -> Policy | None:
        """A stored policy; None when none is stored; REQUIRED when it cannot be read
        or is no policy (it may have meant required)."""
        try:
            stored = await read(key)
        except PbxError as exc:
            log.warning(
                "%s unknown (%s): treating the call as required", name.format(target=key), exc
            )
            return Policy.REQUIRED
        if not stored:
            return None
        try:
            return Policy(stored.strip().lower())
        except ValueError:
            log.warning(
                "%s is not off, optional or required: treating the call as required",
                name.format(target=key),
            )
            return Policy.REQUIRED

    async def announce(self, announced: Announcement) -> None:
        """A channel asks for ZRTP: have the relay mirror its port, write the state."""
        with logs.tagged(self.prefix + announced.key, announced.port):
            await self._announce(announced)

    async def _announce(self, announced: Announcement) -> None:
        key = announced.key
        if key in self.calls or key in self._gone:
            return  # a repeated announcement, or a channel that is already gone
        call = PbxCall(
            key,
            Policy.REQUIRED,
            self.prefix + key,
            channel=announced.channel,
            bridge=announced.bridge,
        )
        self.calls[key] = call  # from here a hangup finds it
        async with call.lock:
            call.policy = await self.resolve_policy(
                announced.requested,
                announced.target,
                # this leg's phone (calls from it, or to it on a callee leg) and the
                # dialled one (calls to it)
                (announced.endpoint, announced.target),
            )
            if key not in self.calls:
                return
            port = await self._find_port(call, announced)
            if port is None:
                await self._write_failure(call, self.no_port_reason)
                return
            call.port = port
            logs.retag(call.call_id, port)
            refusal = self._refusal(call, announced)
            if refusal is not None:
                await self._write_failure(call, refusal)
                return
            hint = await self._phone_hint(call)
            try:
                self.relay.choose(
                    call.call_id,
                    group=announced.group,
                    address=announced.media_address,
                    bridge=announced.bridge,
                )
                report = await self.relay.create(
                    CallRequest(
                        call.call_id,
                        port,
                        call.policy,
                        self_uri=announced.target,
                        peer_uri=announced.peer,
                        phone_hint=hint,
                        bridge=announced.bridge,
                        enroll=announced.enroll,
                    )
                )
            except RelayError as exc:
                await self._write_failure(call, f"relay: {exc}")
                return
            if key not in self.calls:  # hung up while the relay was binding
                await self.relay.delete(call.call_id, "hangup")
                return
            video = await self._add_video(call, announced, hint)
            if video is None:
                return
            report = video if isinstance(video, CallReport) else report
            log.info(
                "call %s (%s -> %s) on port %d, policy %s",
                call.channel,
                announced.peer,
                announced.target,
                port,
                call.policy.value,
            )
            await self._write(call, report)

    async def video_added(self, key: str, announced: Announcement) -> None:
        """The PBX gave a live call a video stream later (a re-INVITE that adds
        video): mirror it as one announced with the call (``_add_video``: under
        ``required`` a video that cannot be mirrored fails the call). A call that
        already has its video, or whose ``announced.video_port`` is None, is left
        as it is."""
        call = self.calls.get(key)
        if call is None or announced.video_port is None:
            return
        with logs.tagged(call.call_id, call.port):
            async with call.lock:
                if key not in self.calls:
                    return
                try:
                    current = await self.relay.show(call.call_id)
                except RelayError:
                    current = None
                if current is None or current.stream("video") is not None:
                    return  # not mirrored (failed, or being set up), or video already is
                log.info(
                    "call %s: video added (port %d) during the call",
                    call.channel,
                    announced.video_port,
                )
                video = await self._add_video(call, announced, await self._phone_hint(call))
                if isinstance(video, CallReport):
                    await self._write(call, video)

    async def _add_video(
        self, call: PbxCall, announced: Announcement, hint: Address | None
    ) -> CallReport | bool | None:
        """Mirror the call's video stream too (the PBX advertised the relay for it
        as for audio): the call's report with it, False when the call has no video,
        None when the call failed (a ``required`` call whose video cannot be
        mirrored: the PBX would send it clear, straight to the phone)."""
        try:
            port = await self._find_video_port(call, announced)
            if port is None:
                return False
            return await self.relay.create(
                CallRequest(
                    call.call_id,
                    port,
                    call.policy,
                    self_uri=announced.target,
                    peer_uri=announced.peer,
                    phone_hint=hint,
                    payload_type=announced.video_payload_type,
                    stream="video",
                )
            )
        except (RelayError, PbxError) as exc:
            if call.policy is not Policy.REQUIRED:
                log.warning("call %s: video stream not mirrored: %s", call.channel, exc)
                return False
            # The audio mirror goes too: its later reports (secure) must not
            # overwrite the failure the dialplan is about to read.
            await self.relay.delete(call.call_id, f"video stream: {exc}")
            await self._write_failure(call, f"relay: video stream: {exc}")
            return None

    def _on_relay_state(self, report: CallReport) -> None:
        call_id = report.call_id
        if not call_id.startswith(self.prefix):
            return
        call = self.calls.get(call_id[len(self.prefix) :])
        if call is not None and report.state is not CallState.ENDED:
            self._spawn(self._locked_write(call, report))

    async def _locked_write(self, call: PbxCall, report: CallReport) -> None:
        async with call.lock:
            if call.key in self.calls:
                with logs.tagged(call.call_id, call.port):
                    await self._write(call, report)

    async def _write(self, call: PbxCall, report: CallReport) -> None:
        """Set what changed, the state last; then tell the PBX's other consumers."""
        table = self.variables
        values = table.render(CallView.of(report, call.policy))
        before = dict(call.written)
        changed_values = {k: v for k, v in values.items() if call.written.get(k) != v}
        if changed_values:
            state = changed_values.pop(table.state, None)
            try:
                if changed_values:
                    await self.link.set_vars(call.channel, changed_values)
                if state is not None:
                    await self.link.set_var(call.channel, table.state, state)
            except PbxError as exc:
                log.warning("call %s: could not write variables: %s", call.channel, exc)
                return  # written again after the reconnect's resync
            call.written.update(values)
        changed = before.get(table.state) != values[table.state]
        with contextlib.suppress(PbxError):
            await self._tell(call, before, changed)
        if (
            changed
            and values[table.state] == CallState.FAILED.value
            and call.policy is Policy.REQUIRED
        ):
            self._arm_hangup(call)

    def verified_now(self, call: PbxCall, before: dict[str, str]) -> bool:
        """The last write marked the SAS verified (for ``_tell``)."""
        name = self.variables.name_of("sas_verified")
        true = self.variables.true
        return call.written.get(name) == true and before.get(name) != true

    async def _write_failure(self, call: PbxCall, reason: str) -> None:
        log.warning("call %s: %s", call.key, reason)
        await self._write(call, CallReport.failed(call.call_id, reason, call.policy))

    def _arm_hangup(self, call: PbxCall) -> None:
        """Safety net: hang up a failed `required` call the dialplan left up."""
        delay = self.hangup_failed_after
        if delay <= 0 or call.hangup_task is not None:
            return

        async def later() -> None:
            await asyncio.sleep(delay)
            if call.key in self.calls:
                await self._hang_up_failed(call)

        call.hangup_task = asyncio.ensure_future(later())

    async def _hang_up_failed(self, call: PbxCall) -> None:
        log.warning(
            "call %s: required ZRTP failed (%s) and the dialplan did not hang up;"
            " hanging up with cause %s",
            call.channel,
            call.written.get(self.variables.name_of("fail_reason"), ""),
            self.failed_cause,
        )
        with contextlib.suppress(PbxError):
            await self.link.hang_up(call.channel, self.failed_cause)

    async def _end(self, key: str, reason: str) -> None:
        call = self.calls.pop(key, None)
        if call is None:
            return
        with logs.tagged(call.call_id, call.port):
            await self._ended_call(call, reason)

    async def _ended_call(self, call: PbxCall, reason: str) -> None:
        key = call.key
        self._mark_gone(key)
        if call.hangup_task is not None:
            call.hangup_task.cancel()
        final = await self.relay.delete(call.call_id, reason)
        log.info("call %s ended (%s); reached %s", key, reason, final.last_state if final else "-")
        with contextlib.suppress(PbxError):
            await self._ended(call)

    # ------------------------------------------------------------------ call changes

    def left_bridge(self, key: str) -> None:
        """The PBX took the channel out of its bridge (a transfer, a park, a hangup):
        it talks to no one, so its SAS relay link is undone (``bridged``)."""
        self._touch([key])
        self._spawn(self._after_earlier_events(self._left_bridge, key))

    def bridged(self, name: str, members: list[str]) -> None:
        """The PBX's bridge ``name`` now holds these channels (keys; ours or not): see
        ``_bridged``. Applied after the tasks of earlier events (an announcement that
        came just before, e.g. a callee answered then bridged), in event order."""
        self._touch(members)
        self._spawn(self._after_earlier_events(self._bridged, name, list(members)))

    def _touch(self, keys: list[str]) -> None:
        for watcher in self._bridge_watchers:  # ours or not yet: an announcement may be late
            watcher.update(keys)

    @contextlib.contextmanager
    def bridge_changes(self) -> Iterator[set[str]]:
        """The channels that bridge events name while the block runs (e.g. while a
        snapshot of the PBX's bridges is being read)."""
        changed: set[str] = set()
        self._bridge_watchers.append(changed)
        try:
            yield changed
        finally:
            self._bridge_watchers.remove(changed)

    @staticmethod
    async def _after_earlier_events(step: Callable[..., None], *args: Any) -> None:
        step(*args)  # a task started after those of earlier events: they ran to their first await

    def _left_bridge(self, key: str) -> None:
        call = self.calls.get(key)
        if call is not None and call.bridge:
            self._move(call, "")

    def _bridged(self, name: str, members: list[str]) -> None:
        """The PBX's bridge ``name`` now holds these channels (keys; ours or not).

        Two of our legs alone in it share one bridge id, which the relay links
        (§7.3): their announced one when only they hold it (the call as dialled, no
        needless SASrelay), else ``bridge:<name>``. Any other mix (one of our legs
        with a clear phone, a Local channel, a conference of three) gives each of
        our legs an id of its own: the relay relays no SAS it cannot attribute to
        exactly one far end. A bridge of one (being built, or a parking lot) changes
        nothing."""
        ours = [self.calls[key] for key in members if key in self.calls]
        if len(members) < 2 or not ours:
            return
        if len(members) == 2 and len(ours) == 2:
            a, b = ours
            shared = a.bridge == b.bridge != "" and not any(
                c.bridge == a.bridge for c in self.calls.values() if c is not a and c is not b
            )
            if not shared:
                for call in ours:
                    self._move(call, f"bridge:{name}")
            return
        for call in ours:
            self._move(call, f"bridge:{name}/{call.key}")

    def _move(self, call: PbxCall, bridge: str) -> None:
        """Decide now (later events see it), tell the relay in event order (the lock)."""
        if call.bridge == bridge:
            return
        with logs.tagged(call.call_id, call.port):  # the task it starts is tagged too
            log.info("call %s: now in bridge %r (was %r)", call.channel, bridge, call.bridge)
            call.bridge = bridge
            self._spawn(self._rebridge(call, bridge))

    async def _rebridge(self, call: PbxCall, bridge: str) -> None:
        async with call.lock:
            if call.key not in self.calls:
                return
            try:
                report = await self.relay.rebridge(call.call_id, bridge)
            except RelayError as exc:  # e.g. set-up failed: the call has no mirror
                log.info("call %s: bridge change not applied: %s", call.channel, exc)
                return
            await self._write(call, report)

    # ------------------------------------------------------------------ relays' status

    def _relays_changed(self) -> None:
        directory = self.relay.directory
        if directory is not None and not self._publishing:
            self._publishing = True
            self._spawn(self._publish_now(directory))

    async def _publish_now(self, directory: RelayDirectory) -> None:
        self._publishing = False
        await self._publish_relays(directory)

    # ------------------------------------------------------------------ resync

    async def resync(self) -> None:
        """After every (re)connect: make our calls and mirrors match the PBX's channels."""
        # Calls that start while we wait for the PBX's answer are not in its snapshot:
        # only calls known before asking may be judged gone.
        known_before = set(self.calls)
        self._published.clear()  # a restarted PBX lost what we had written
        self._relays_changed()
        try:
            live = {channel.key: channel for channel in await self.link.live_channels()}
        except PbxError as exc:
            log.warning("resync: %s", exc)
            return
        live.pop("", None)
        mirrored = await self._forget_vanished(set(live), known_before)
        for key, channel in live.items():
            call = self.calls.get(key)
            if call is not None:
                try:
                    current = await self.relay.show(call.call_id)
                except RelayError:
                    continue
                if current is not None:
                    call.written.clear()  # a write may have been lost with the connection
                    await self._locked_write(call, current)
                    await self._catch_up(call)
                continue
            try:
                if not await self._asked(channel):
                    continue
                state = await self.link.get_var(channel.name, self.variables.state)
            except PbxError:
                continue
            if key in mirrored or state not in ("", CallState.PENDING.value):
                await self._recover(channel, mirrored.get(key))
                continue
            announced = await self._announcement_at_resync(channel)
            if announced is not None:
                log.info("resync: picking up %s, which asked for ZRTP while away", channel.name)
                await self.announce(announced)
        await self._resync_bridges()
        self.resyncs += 1

    async def _resync_bridges(self) -> None:
        """Bridge changes made while the link was down (a transfer, a pickup, a park):
        each bridge the PBX holds now is applied as if it had just been announced, and
        a leg we had moved (``bridge:…``) that is in no bridge now talks to no one."""
        try:
            # Channels a bridge event named while the PBX answered: the event is newer.
            with self.bridge_changes() as newer:
                bridges = await self._live_bridges()
        except PbxError as exc:
            log.warning("resync: bridges not re-learned: %s", exc)
            return
        if bridges is None:
            return
        inside: set[str] = set()
        for name, members in bridges.items():
            inside.update(members)
            if not newer.intersection(members):
                self._bridged(name, members)
        for call in list(self.calls.values()):
            if call.key not in inside | newer and call.bridge.startswith("bridge:"):
                self._move(call, "")

    async def _forget_vanished(
        self, live: set[str], known_before: set[str]
    ) -> dict[str, CallReport]:
        """End calls whose channel is gone (only those known before the PBX's channel
        list was asked for), and delete our orphaned mirrors. Returns the relay's
        reports of our mirrors whose channel is live, by key."""
        for key in [k for k in self.calls if k not in live and k in known_before]:
            await self._end(key, "channel gone while the PBX link was down")
        kept: dict[str, CallReport] = {}
        with contextlib.suppress(RelayError):
            for mirrored in await self.relay.calls():
                call_id = mirrored.call_id
                key = call_id[len(self.prefix) :]
                if not call_id.startswith(self.prefix):
                    continue
                if key in live:
                    kept[key] = mirrored
                elif key not in self.calls:
                    await self.relay.delete(call_id, "channel gone")
        return kept

    async def _recover(self, channel: LiveChannel, report: CallReport | None) -> None:
        """A live channel that had ZRTP before this adapter (re)started: adopt its
        mirror if the relay still has it (hangup then frees it); otherwise the relay
        lost the call (it restarted with us, or alone) and the PBX is told, as for
        any failure (a `required` call is hung up). Its policy: the relay's, else the
        one we had written, else the strictest."""
        policy = report.policy if report is not None else None
        if policy is None:
            with contextlib.suppress(PbxError, ValueError):
                written = await self.link.get_var(channel.name, self.variables.name_of("policy"))
                policy = Policy.named(written)
        call = PbxCall(
            channel.key, policy or Policy.REQUIRED, self.prefix + channel.key, channel=channel.name
        )
        call.port = report.port if report is not None else None
        self.calls[call.key] = call
        if report is not None:
            log.info("call %s: adopted, still mirrored by the relay", call.key)
            await self._locked_write(call, report)
        else:
            reason = "the relay lost this call (it restarted)"
            log.warning("call %s: %s", call.key, reason)
            await self._locked_write(call, CallReport.lost(call.call_id, reason))

    # ------------------------------------------------------------------ administration

    async def verify(self, call: PbxCall | None, ref: str, verified: bool) -> None:
        """The humans compared the SAS (or take it back). Raises RelayError."""
        if call is None:
            raise NoSuchCall(f"no ZRTP call {ref!r}")
        report = await self.relay.verify(call.call_id, verified)
        await self._locked_write(call, report)
        log.info("admin: SAS of %s marked %sverified", call.channel, "" if verified else "un")

    async def change_policy(self, call: PbxCall | None, ref: str, value: str) -> None:
        """A live call's policy changes. Raises RelayError, or ValueError for a bad policy."""
        if call is None:
            raise NoSuchCall(f"no ZRTP call {ref!r}")
        policy = Policy(value.strip().lower())
        report = await self.relay.update(call.call_id, policy)
        call.policy = policy
        await self._locked_write(call, report)

    async def change_enrollment(self, call: PbxCall | None, enroll: bool, name: str) -> str:
        """enroll: the user confirmed the SAS of an enrollment call (store the
        pbxsecret); otherwise forget the phone. Writes the call's new state and
        returns what the dialplan is told: "enrolled", "unenrolled" or "failed: …"."""
        report: CallReport | None
        try:
            if call is None:
                raise NoSuchCall(f"no ZRTP call {name}")
            if enroll:
                report = await self.relay.enroll(call.call_id)
                result = "enrolled"
            else:
                await self.relay.unenroll(call.call_id)
                try:
                    report = await self.relay.show(call.call_id)
                except RelayError:
                    report = None
                result = "unenrolled"
        except RelayError as exc:
            log.warning("enrollment of %s: %s", name, exc)
            return f"failed: {exc}"
        log.info("enrollment of %s: %s", name, result)
        if report is not None:
            await self._locked_write(call, report)
        return result
