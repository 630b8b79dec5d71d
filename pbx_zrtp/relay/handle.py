"""The relay as an adapter sees it (``pbx_zrtp.calls.RelayHandle``): in this
process, or over the control API.

Both push every call-state change (a ``CallReport``) to the callbacks registered
with ``on_state``, so an adapter neither knows nor cares where the relay runs.
Errors are the ones of ``pbx_zrtp.calls``: ``NoSuchCall``, ``BadRequest``,
``RelayUnavailable``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from pbx_zrtp.calls import (
    CallReport,
    CallRequest,
    LinkCallback,
    NoSuchCall,
    Policy,
    RelayDirectory,
    RelayError,
    RelayUnavailable,
    StateCallback,
)
from pbx_zrtp.relay.control import ControlClient, ControlError
from pbx_zrtp.relay.core import Relay

log = logging.getLogger("pbx_zrtp.relay")


class Listeners:
    """The state and link callbacks of one handle (a bug in one never reaches the others)."""

    def __init__(self) -> None:
        self._callbacks: list[StateCallback] = []
        self._link_callbacks: list[LinkCallback] = []

    def on_state(self, callback: StateCallback) -> None:
        self._callbacks.append(callback)

    def on_link(self, callback: LinkCallback) -> None:
        self._link_callbacks.append(callback)

    def _emit(self, report: CallReport) -> None:
        for callback in self._callbacks:
            try:
                callback(report)
            except Exception:
                log.exception("state callback failed")

    def _link(self, up: bool) -> None:
        for callback in self._link_callbacks:
            try:
                callback(up)
            except Exception:
                log.exception("link callback failed")


class _OneRelay(Listeners):
    """A handle for one relay at ``relay_host``: no directory, nothing to choose."""

    def __init__(self, relay_host: str) -> None:
        super().__init__()
        self._relay_host = relay_host

    @property
    def relay_host(self) -> str:
        return self._relay_host

    @property
    def directory(self) -> RelayDirectory | None:
        return None

    def serves(self, address: str) -> bool:
        return address == self._relay_host

    def choose(self, call_id: str, *, group: str = "", address: str = "", bridge: str = "") -> None:
        """One relay: nothing to choose."""


class LocalRelay(_OneRelay):
    """The relay in this process (``pbx-zrtp run``)."""

    def __init__(self, relay: Relay) -> None:
        super().__init__(relay.layout.relay_host)
        self.relay = relay
        relay.add_listener(self._emit)

    @property
    def connected(self) -> bool:
        return True

    async def create(self, request: CallRequest) -> CallReport:
        return await self.relay.admit(request)

    async def update(self, call_id: str, policy: Policy) -> CallReport:
        return self.relay.update(call_id, policy=policy)

    async def rebridge(self, call_id: str, bridge: str) -> CallReport:
        return self.relay.rebridge(call_id, bridge)

    async def delete(self, call_id: str, reason: str) -> CallReport | None:
        try:
            return self.relay.delete(call_id, reason)
        except NoSuchCall:
            return None

    async def verify(self, call_id: str, verified: bool) -> CallReport:
        self.relay.verify(call_id, verified)
        return await self.relay.stored(call_id)  # answers once the V flag is saved

    async def enroll(self, call_id: str) -> CallReport:
        return await self.relay.enroll(call_id)

    async def unenroll(self, call_id: str) -> None:
        await self.relay.unenroll(call_id=call_id)

    async def show(self, call_id: str) -> CallReport | None:
        try:
            return self.relay.get(call_id)
        except NoSuchCall:
            return None

    async def calls(self) -> list[CallReport]:
        return self.relay.calls()

    async def live_calls(self) -> int:
        return self.relay.live_calls()

    async def start(self) -> None:
        """Nothing to connect to."""

    async def close(self) -> None:
        """The relay's owner closes it."""


class RemoteRelay(_OneRelay):
    """A relay in another process or on another host, through its control API.

    Reconnects with a bounded back-off when the connection drops; requests made
    while disconnected fail with RelayUnavailable (the adapter reports that to
    the dialplan instead of waiting forever).
    """

    def __init__(self, address: str, relay_host: str, *, token: str | None = None) -> None:
        super().__init__(relay_host)
        self.address = address
        self._token = token
        self._client: ControlClient | None = None
        self._task: asyncio.Task[None] | None = None
        self._connected = asyncio.Event()

    @property
    def connected(self) -> bool:
        return self._client is not None

    async def start(self) -> None:
        self._task = asyncio.ensure_future(self._run())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._connected.wait(), 5)

    async def _run(self) -> None:
        delay = 0.2
        while True:
            client = ControlClient(self.address, token=self._token)
            try:
                await client.connect()
                await client.request("subscribe")
                self._client = client
                self._connected.set()
                delay = 0.2
                log.info("connected to the relay at %s", self.address)
                self._link(True)
                async for event in client.events():
                    if event.get("event") == "state":
                        try:
                            report = CallReport.from_wire(event.get("call"))
                        except ValueError as exc:
                            log.warning("relay at %s: malformed state event: %s", self.address, exc)
                            continue
                        self._emit(report)
            except ControlError as exc:
                log.warning("relay at %s: %s", self.address, exc)
            finally:
                was_up, self._client = self._client is not None, None
                self._connected.clear()
                await client.close()
                if was_up:
                    self._link(False)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _request(self, op: str, **args: object) -> object:
        client = self._client
        if client is None:
            raise RelayUnavailable(f"the relay at {self.address} is not connected")
        try:
            return await client.request(op, **args)
        except ControlError as exc:
            raise exc.as_relay_error() from None

    async def _report(self, op: str, **args: object) -> CallReport:
        result = await self._request(op, **args)
        try:
            return CallReport.from_wire(result)
        except ValueError as exc:
            raise RelayUnavailable(
                f"the relay at {self.address} sent a bad report: {exc}"
            ) from None

    async def create(self, request: CallRequest) -> CallReport:
        return await self._report("create", **request.to_wire())

    async def update(self, call_id: str, policy: Policy) -> CallReport:
        return await self._report("update", call_id=call_id, policy=policy.value)

    async def rebridge(self, call_id: str, bridge: str) -> CallReport:
        return await self._report("rebridge", call_id=call_id, bridge=bridge)

    async def delete(self, call_id: str, reason: str) -> CallReport | None:
        try:
            return await self._report("delete", call_id=call_id, reason=reason)
        except RelayError:  # no such call, or unreachable: resync deletes it later
            return None

    async def verify(self, call_id: str, verified: bool) -> CallReport:
        return await self._report("verify", call_id=call_id, verified=verified)

    async def enroll(self, call_id: str) -> CallReport:
        return await self._report("enroll", call_id=call_id)

    async def unenroll(self, call_id: str) -> None:
        await self._request("unenroll", call_id=call_id)

    async def show(self, call_id: str) -> CallReport | None:
        try:
            return await self._report("show", call_id=call_id)
        except NoSuchCall:
            return None

    async def calls(self) -> list[CallReport]:
        result = await self._request("list")
        if not isinstance(result, list):
            raise RelayUnavailable(f"the relay at {self.address} sent a bad call list")
        try:
            return [CallReport.from_wire(item) for item in result]
        except ValueError as exc:
            raise RelayUnavailable(
                f"the relay at {self.address} sent a bad report: {exc}"
            ) from None

    async def live_calls(self) -> int:
        stats = await self._request("stats")
        states = stats.get("calls", {}) if isinstance(stats, dict) else {}
        if not isinstance(states, dict):
            return 0
        return sum(n for s, n in states.items() if s not in ("idle", "ended") and type(n) is int)
