"""Several relays behind one RelayHandle: calls placed by group and load, and what
happens to the calls of a relay that goes away.

An adapter keeps talking to "the relay"; the pool routes each call to the member it
was placed on. Placement (``choose``) takes the call's group (dialplan variable),
keeps only members that are up, and — when the PBX already advertised a relay
address R to the phone — only members at R, since the phone's media goes there.
Among those it takes the lowest load: live calls (this pool's, plus the others the
relay reports in ``stats``) divided by the member's weight.

A member whose control connection drops is marked down at once (no new calls). If
it is back within ``grace`` seconds and still has a call's mirror, the call carries
on and its state is reported again; a mirror that is gone (the relay restarted) or
a relay still unreachable after ``grace`` makes the pool report the call ``failed``
with a reason naming the relay, so the adapter tells the PBX (and hangs up
``required`` calls) through its usual failure path. A lost call is never moved to
another relay: its keys died with the relay, and a fresh mirror would only show
the phone an endpoint it never agreed keys with.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Coroutine, Sequence
from functools import partial
from typing import Any

from pbx_zrtp.calls import (
    CallReport,
    CallRequest,
    CallState,
    Policy,
    RelayDirectory,
    RelayError,
    RelayHandle,
    RelayUnavailable,
)
from pbx_zrtp.config.relays import DEFAULT_GRACE, DEFAULT_GROUP, RelayEntry
from pbx_zrtp.relay.handle import Listeners, RemoteRelay

log = logging.getLogger("pbx_zrtp.relay.pool")

#: How often each member's ``stats`` are read (load from other adapters; liveness).
STATS_INTERVAL = 2.0


class _Member:
    def __init__(self, entry: RelayEntry, handle: RelayHandle) -> None:
        self.entry = entry
        self.handle = handle
        self.up = False
        self.calls: set[str] = set()  # placed here by this pool and not ended
        self.others = 0  # live calls the relay reports beyond ours (other adapters)
        self.stale: set[str] = set()  # declared lost while unreachable: delete when back
        self.grace_task: asyncio.Task[None] | None = None

    @property
    def load(self) -> float:
        return (len(self.calls) + self.others) / self.entry.weight

    def status(self) -> dict[str, Any]:
        return {
            "name": self.entry.name,
            "group": self.entry.group,
            "address": self.entry.address,
            "weight": self.entry.weight,
            "up": self.up,
            "calls": len(self.calls),
            "other_calls": self.others,
            "load": round(self.load, 2),
        }


class RelayPool(Listeners):
    """Several relays as one handle (see the module's docstring)."""

    def __init__(
        self,
        members: Sequence[tuple[RelayEntry, RelayHandle]],
        *,
        grace: float = DEFAULT_GRACE,
        stats_interval: float = STATS_INTERVAL,
    ) -> None:
        super().__init__()
        if not members:
            raise ValueError("a relay pool needs at least one relay")
        self.grace = grace
        self.stats_interval = stats_interval
        self._members = [_Member(entry, handle) for entry, handle in members]
        #: removed by ``reconfigure`` but still holding calls: serve those, place none
        self._retiring: list[_Member] = []
        self._where: dict[str, _Member] = {}  # call id -> the member holding it
        self._bridges: dict[str, str] = {}  # call id -> bridge id (legs of one call)
        self._listed: dict[str, _Member] = {}  # from the last calls(): for orphan deletes
        self._status_callbacks: list[Callable[[], None]] = []
        self._tasks: set[asyncio.Task[Any]] = set()
        self._poller: asyncio.Task[None] | None = None
        self._closing = False
        for member in self._members:
            self._listen(member)

    def _listen(self, member: _Member) -> None:
        member.handle.on_state(partial(self._member_state, member))
        member.handle.on_link(partial(self._member_link, member))

    @property
    def _all(self) -> list[_Member]:
        """Every member holding calls: the configured ones and those retiring."""
        return [*self._members, *self._retiring]

    @classmethod
    def connect(cls, entries: Sequence[RelayEntry], *, grace: float = DEFAULT_GRACE) -> RelayPool:
        """A pool of relays reached over their control APIs."""
        return cls(
            [(e, RemoteRelay(e.control, e.address, token=e.token)) for e in entries], grace=grace
        )

    # ------------------------------------------------------------------ status

    def on_status(self, callback: Callable[[], None]) -> None:
        """Told whenever a member goes up or down or its load changes."""
        self._status_callbacks.append(callback)

    def _changed(self) -> None:
        for callback in self._status_callbacks:
            try:
                callback()
            except Exception:
                log.exception("status callback failed")

    def status(self) -> list[dict[str, Any]]:
        return [member.status() for member in self._members]

    def status_lines(self) -> dict[str, str]:
        """One human line per relay, for the PBX consoles."""
        return {
            s["name"]: (
                f"{'up' if s['up'] else 'DOWN'} group={s['group']} address={s['address']}"
                f" calls={s['calls']} other_calls={s['other_calls']} weight={s['weight']:g}"
                f" load={s['load']:g}"
            )
            for s in self.status()
        }

    def advertise(self) -> dict[str, str]:
        """Per group, the address a PBX should advertise for its next call: the
        least-loaded member that is up (the group's first member when none is)."""
        out: dict[str, str] = {}
        for group in dict.fromkeys(m.entry.group for m in self._members):
            members = [m for m in self._members if m.entry.group == group]
            up = [m for m in members if m.up]
            out[group] = (self._best(up) if up else members[0]).entry.address
        return out

    @staticmethod
    def _best(members: list[_Member]) -> _Member:
        return min(members, key=lambda m: (m.load, len(m.calls)))  # ties: config order

    @property
    def directory(self) -> RelayDirectory | None:
        return self

    @property
    def relay_host(self) -> str:
        return " or ".join(dict.fromkeys(m.entry.address for m in self._members))

    @property
    def connected(self) -> bool:
        return any(m.up for m in self._members)

    def serves(self, address: str) -> bool:
        return any(m.entry.address == address for m in self._members)

    def holder(self, call_id: str) -> str | None:
        """The name of the relay a call is placed on."""
        member = self._where.get(call_id)
        return member.entry.name if member is not None else None

    # ------------------------------------------------------------------ placement

    def choose(self, call_id: str, *, group: str = "", address: str = "", bridge: str = "") -> None:
        """Place a call. The legs of one bridged call go to one relay when they can,
        since only a relay holding both can relay the SAS between them (§7.3)."""
        if call_id in self._where:
            return
        group = group.strip() or DEFAULT_GROUP
        candidates = [m for m in self._members if m.entry.group == group]
        if not candidates:
            raise RelayUnavailable(f"no relay in group {group}")
        if address:
            candidates = [m for m in candidates if m.entry.address == address]
            if not candidates:
                raise RelayUnavailable(f"no relay of group {group} at {address}")
        up = [m for m in candidates if m.up]
        if not up:
            names = ", ".join(m.entry.name for m in candidates)
            raise RelayUnavailable(f"no relay of group {group} is up ({names} down)")
        best = self._best(up)
        if bridge:
            for other, member in self._where.items():
                if member in up and self._bridges.get(other) == bridge:
                    best = member
                    break
            self._bridges[call_id] = bridge
        self._where[call_id] = best
        best.calls.add(call_id)  # counted now, so a burst of calls spreads
        self._changed()

    def _forget(self, call_id: str) -> _Member | None:
        member = self._where.pop(call_id, None)
        self._bridges.pop(call_id, None)
        if member is not None:
            member.calls.discard(call_id)
            self._changed()
            self._retire_if_idle(member)
        return member

    def _holding(self, call_id: str) -> _Member:
        member = self._where.get(call_id) or self._listed.get(call_id)  # or adopted
        if member is None:
            raise RelayUnavailable(f"no relay holds call {call_id!r}")
        return member

    async def create(self, request: CallRequest) -> CallReport:
        call_id = request.call_id
        self.choose(call_id, bridge=request.bridge)
        member = self._holding(call_id)
        try:
            report = await member.handle.create(request)
        except RelayError as exc:
            if not request.stream:  # a refused further stream leaves its call in place
                self._forget(call_id)
            raise type(exc)(f"{member.entry.name}: {exc}") from None
        log.info("call %s placed on relay %s", call_id, member.entry.name)
        return report

    async def update(self, call_id: str, policy: Policy) -> CallReport:
        return await self._holding(call_id).handle.update(call_id, policy)

    async def rebridge(self, call_id: str, bridge: str) -> CallReport:
        """Re-link on the relay that holds the call; legs on two relays stay unlinked."""
        if bridge:
            self._bridges[call_id] = bridge
        else:
            self._bridges.pop(call_id, None)
        return await self._holding(call_id).handle.rebridge(call_id, bridge)

    async def verify(self, call_id: str, verified: bool) -> CallReport:
        return await self._holding(call_id).handle.verify(call_id, verified)

    async def enroll(self, call_id: str) -> CallReport:
        return await self._holding(call_id).handle.enroll(call_id)

    async def unenroll(self, call_id: str) -> None:
        await self._holding(call_id).handle.unenroll(call_id)

    async def show(self, call_id: str) -> CallReport | None:
        member = self._where.get(call_id) or self._listed.get(call_id)
        return await member.handle.show(call_id) if member is not None else None

    async def delete(self, call_id: str, reason: str) -> CallReport | None:
        member = self._forget(call_id) or self._listed.pop(call_id, None)
        if member is None:
            return None
        if not member.up:
            member.stale.add(call_id)  # deleted when the relay is back
            return None
        return await member.handle.delete(call_id, reason)

    async def calls(self) -> list[CallReport]:
        out: list[CallReport] = []
        listed: dict[str, _Member] = {}
        for member in self._all:
            if not member.up:
                continue
            with contextlib.suppress(RelayError):
                for report in await member.handle.calls():
                    listed[report.call_id] = member
                    out.append(report)
        self._listed = listed
        return out

    async def live_calls(self) -> int:
        return sum(len(m.calls) + m.others for m in self._all if m.up)

    # ------------------------------------------------------------------ members coming and going

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _member_state(self, member: _Member, report: CallReport) -> None:
        call_id = report.call_id
        if report.state is CallState.ENDED and self._where.get(call_id) is member:
            # Ended by the relay, not by us (we forget a call before deleting it):
            # the relay is stopping, or someone deleted the mirror by hand.
            self._lose(member, [call_id], f"relay {member.entry.name} ended the call", stale=False)
            return
        self._emit(report)

    def _member_link(self, member: _Member, up: bool) -> None:
        if self._closing:
            return
        if up:
            self._spawn(self._reconnected(member))
        elif member.up:
            self._down(member)

    def _down(self, member: _Member) -> None:
        member.up = False
        log.warning(
            "relay %s (%s) went away: no new calls on it; %d live call(s) wait %g s for it",
            member.entry.name,
            member.entry.control,
            len(member.calls),
            self.grace,
        )
        self._changed()
        if member.grace_task is None:
            member.grace_task = asyncio.ensure_future(self._grace(member))

    async def _grace(self, member: _Member) -> None:
        try:
            await asyncio.sleep(self.grace)
            if not member.up and member.calls:
                self._lose(
                    member,
                    list(member.calls),
                    f"relay {member.entry.name} unreachable for {self.grace:g} s",
                    stale=True,
                )
        finally:
            member.grace_task = None

    async def _reconnected(self, member: _Member) -> None:
        """The control connection is back: see which of our calls survived."""
        try:
            listed = {r.call_id: r for r in await member.handle.calls()}
        except RelayError:
            return  # lost again; the next connection tries anew
        if not member.handle.connected or self._closing:
            return
        if member.grace_task is not None:
            member.grace_task.cancel()
            member.grace_task = None
        was_up, member.up = member.up, True
        gone = [call_id for call_id in member.calls if call_id not in listed]
        if gone:
            self._lose(
                member,
                gone,
                f"relay {member.entry.name} restarted and lost the call",
                stale=False,
            )
        for call_id in list(member.calls):
            self._emit(listed[call_id])  # events missed while disconnected
        for call_id in member.stale & set(listed):
            await member.handle.delete(call_id, "declared lost while the relay was unreachable")
        member.stale.clear()
        if not was_up:
            log.info("relay %s is up (%d call(s) carried on)", member.entry.name, len(member.calls))
        await self._poll(member)
        self._changed()

    def _lose(self, member: _Member, call_ids: list[str], reason: str, *, stale: bool) -> None:
        for call_id in call_ids:
            if self._where.get(call_id) is not member:
                continue
            del self._where[call_id]
            member.calls.discard(call_id)
            if stale:
                member.stale.add(call_id)
            log.warning("call %s: %s", call_id, reason)
            self._emit(CallReport.lost(call_id, reason))
        self._changed()
        self._retire_if_idle(member)

    async def _poll(self, member: _Member) -> None:
        try:
            live = await asyncio.wait_for(member.handle.live_calls(), self.stats_interval * 2)
        except (RelayError, TimeoutError):
            if member.up:
                self._down(member)  # connected, but not answering
            return
        if not member.up and member.handle.connected:
            self._spawn(self._reconnected(member))  # answering again
            return
        others = max(0, live - len(member.calls))
        if others != member.others:
            member.others = others
            self._changed()

    async def _poll_forever(self) -> None:
        while True:
            await asyncio.sleep(self.stats_interval)
            for member in self._all:
                if member.handle.connected:
                    await self._poll(member)

    # ------------------------------------------------------------------ reconfiguration

    async def reconfigure(
        self, entries: Sequence[RelayEntry], *, grace: float = DEFAULT_GRACE
    ) -> None:
        """Take a new list of relays (SIGHUP) without dropping a live call (see the
        module's docstring)."""
        if not entries:
            raise ValueError("a relay pool needs at least one relay")
        self.grace = grace
        kept = {_identity(m.entry): m for m in self._members}
        members: list[_Member] = []
        added: list[_Member] = []
        for entry in entries:
            member = kept.pop(_identity(entry), None)
            if member is None:
                member = _Member(
                    entry, RemoteRelay(entry.control, entry.address, token=entry.token)
                )
                self._listen(member)
                added.append(member)
            member.entry = entry  # address, group, weight: for the next placements
            members.append(member)
        self._members = members
        for member in kept.values():
            log.info(
                "relay %s left the configuration: no new calls on it; %d live call(s) stay",
                member.entry.name,
                len(member.calls),
            )
            self._retiring.append(member)
            self._retire_if_idle(member)
        await asyncio.gather(*(m.handle.start() for m in added))
        for member in added:
            if member.handle.connected and not member.up:
                await self._reconnected(member)
            log.info(
                "relay %s joined the pool (%s)", member.entry.name, "up" if member.up else "down"
            )
        self._changed()

    def _retire_if_idle(self, member: _Member) -> None:
        """A member that left the configuration goes once its last call has."""
        if member in self._retiring and not member.calls:
            self._retiring.remove(member)
            member.up = False  # its link going down now is no news
            if member.grace_task is not None:
                member.grace_task.cancel()
            self._spawn(member.handle.close())
            log.info("relay %s disconnected (left the configuration)", member.entry.name)

    # ------------------------------------------------------------------ life

    async def start(self) -> None:
        await asyncio.gather(*(m.handle.start() for m in self._members))
        for member in self._members:
            if member.handle.connected and not member.up:
                await self._reconnected(member)
        up = [m.entry.name for m in self._members if m.up]
        log.info("relay pool: %d of %d relays up (%s)", len(up), len(self._members), up)
        self._poller = asyncio.ensure_future(self._poll_forever())

    async def close(self) -> None:
        self._closing = True
        tasks = [*self._tasks, self._poller, *(m.grace_task for m in self._all)]
        for task in tasks:
            if task is not None:
                task.cancel()
        for member in self._all:
            with contextlib.suppress(Exception):
                await member.handle.close()


def _identity(entry: RelayEntry) -> tuple[str, str, str | None]:
    """What a connection to a relay is made of: a change of any needs a new one."""
    return entry.name, entry.control, entry.token
