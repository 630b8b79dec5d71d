"""What both PBX adapters do with their calls, whatever the PBX.

An adapter keeps one ``PbxCall`` per PBX channel that asked for ZRTP, named in
the relay as ``<prefix><channel id>``. This base class tracks them: recently
hung-up channels (so a set-up still awaiting an answer notices and leaves no
mirror behind), background tasks, relay state reports routed to the adapter's
``_write`` under the call's lock, the safety-net hangup of a failed ``required``
call, the end of a call, and the reconciliation after a PBX reconnect.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, TypeVar

from pbx_zrtp.relay.handle import RelayHandle, RelayUnavailable
from pbx_zrtp.relay.mirror import Policy
from pbx_zrtp.relay.pool import RelayPool

log = logging.getLogger("pbx_zrtp")

#: How many hung-up channel ids to remember (late events about them are ignored).
GONE_MEMORY = 4096


@dataclass
class PbxCall:
    key: str  # the PBX's channel id (Asterisk Uniqueid, FreeSWITCH UUID)
    policy: Policy
    call_id: str  # the mirror's name in the relay
    written: dict[str, str] = field(default_factory=dict)  # variables as last written
    hangup_task: asyncio.Task[None] | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


CallT = TypeVar("CallT", bound=PbxCall)


class CallBook(ABC, Generic[CallT]):
    prefix: ClassVar[str]

    def __init__(self, relay: RelayHandle) -> None:
        self.relay = relay
        self.calls: dict[str, CallT] = {}
        self._gone: OrderedDict[str, None] = OrderedDict()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._published: dict[str, str] = {}  # relays' status as last written to the PBX
        self._publishing = False
        relay.on_state(self._on_relay_state)
        if isinstance(relay, RelayPool):
            relay.on_status(self._relays_changed)

    @abstractmethod
    async def _write(self, call: CallT, report: dict[str, Any]) -> None:
        """Put the relay's report on the PBX channel."""

    async def _ended(self, call: CallT, final: dict[str, Any] | None, reason: str) -> None:
        """Hook: PBX-side clean-up once a call's mirror is gone."""

    async def _publish_relays(self, pool: RelayPool) -> None:
        """Hook: show the relays (up/down, load; where to send the next call) to the PBX."""

    def _relays_changed(self) -> None:
        if isinstance(self.relay, RelayPool) and not self._publishing:
            self._publishing = True
            self._spawn(self._publish_now(self.relay))

    async def _publish_now(self, pool: RelayPool) -> None:
        self._publishing = False
        await self._publish_relays(pool)

    def _republish_relays(self) -> None:
        """After a PBX (re)connect: a restarted PBX lost what we had written."""
        self._published.clear()
        self._relays_changed()

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _mark_gone(self, key: str) -> None:
        self._gone[key] = None
        while len(self._gone) > GONE_MEMORY:
            self._gone.popitem(last=False)

    def _known_or_gone(self, key: str) -> bool:
        return key in self.calls or key in self._gone

    def _on_relay_state(self, report: dict[str, Any]) -> None:
        call_id = str(report.get("call_id", ""))
        if not call_id.startswith(self.prefix):
            return
        call = self.calls.get(call_id[len(self.prefix) :])
        if call is not None and report.get("state") != "ended":
            self._spawn(self._locked_write(call, report))

    async def _locked_write(self, call: CallT, report: dict[str, Any]) -> None:
        async with call.lock:
            if call.key in self.calls:
                await self._write(call, report)

    async def _change_enrollment(self, call: CallT | None, enroll: bool, name: str) -> str:
        """enroll: the user confirmed the SAS of an enrollment call (store the
        pbxsecret); otherwise forget the phone. Writes the call's new state and
        returns what the dialplan is told: "enrolled", "unenrolled" or "failed: …"."""
        report: dict[str, Any] | None
        try:
            if call is None:
                raise RelayUnavailable(f"no ZRTP call {name}")
            if enroll:
                report = await self.relay.enroll(call.call_id)
                result = "enrolled"
            else:
                await self.relay.unenroll(call.call_id)
                report = await self.relay.show(call.call_id)
                result = "unenrolled"
        except RelayUnavailable as exc:
            log.warning("enrollment of %s: %s", name, exc)
            return f"failed: {exc}"
        log.info("enrollment of %s: %s", name, result)
        if report is not None:
            await self._locked_write(call, report)
        return result

    async def _write_failure(self, call: CallT, reason: str) -> None:
        log.warning("call %s: %s", call.key, reason)
        state = "failed" if call.policy is not Policy.OFF else "off"
        await self._write(call, {"state": state, "reason": reason})

    def _arm_hangup(
        self, call: CallT, delay: float, hang_up: Callable[[], Awaitable[None]]
    ) -> None:
        """Safety net: hang up a failed `required` call the dialplan left up."""
        if delay <= 0 or call.hangup_task is not None:
            return

        async def later() -> None:
            await asyncio.sleep(delay)
            if call.key in self.calls:
                await hang_up()

        call.hangup_task = asyncio.ensure_future(later())

    async def _end(self, key: str, reason: str) -> None:
        call = self.calls.pop(key, None)
        if call is None:
            return
        self._mark_gone(key)
        if call.hangup_task is not None:
            call.hangup_task.cancel()
        final = await self.relay.delete(call.call_id, reason)
        log.info(
            "call %s ended (%s); reached %s", key, reason, (final or {}).get("last_state", "-")
        )
        await self._ended(call, final, reason)

    async def _forget_vanished(
        self, live: set[str], known_before: set[str]
    ) -> dict[str, dict[str, Any]]:
        """After a reconnect: end calls whose channel is gone (only those known before
        the PBX's channel list was asked for), and delete our orphaned mirrors.
        Returns the relay's reports of our mirrors whose channel is live, by key."""
        for key in [k for k in self.calls if k not in live and k in known_before]:
            await self._end(key, "channel gone while the PBX link was down")
        kept: dict[str, dict[str, Any]] = {}
        with contextlib.suppress(RelayUnavailable):
            for mirrored in await self.relay.calls():
                call_id = str(mirrored.get("call_id", ""))
                key = call_id[len(self.prefix) :]
                if not call_id.startswith(self.prefix):
                    continue
                if key in live:
                    kept[key] = mirrored
                elif key not in self.calls:
                    await self.relay.delete(call_id, "channel gone")
        return kept

    async def _recover(self, call: CallT, report: dict[str, Any] | None) -> None:
        """A live channel that had ZRTP before this adapter (re)started: adopt its
        mirror if the relay still has it (hangup then frees it); otherwise the relay
        lost the call (it restarted with us, or alone) and the PBX is told, as for
        any failure (a `required` call is hung up)."""
        self.calls[call.key] = call
        if report is not None:
            log.info("call %s: adopted, still mirrored by the relay", call.key)
            await self._locked_write(call, report)
        else:
            reason = "the relay lost this call (it restarted)"
            log.warning("call %s: %s", call.key, reason)
            await self._locked_write(call, {"state": "failed", "reason": reason})

    async def _close_calls(self) -> None:
        for key in list(self.calls):
            await self._end(key, "adapter stopping")
        for task in list(self._tasks):
            task.cancel()
