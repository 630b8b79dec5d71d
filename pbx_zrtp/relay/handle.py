"""How a PBX adapter talks to a relay: in the same process, or over the control API.

Both give the same async methods and push every call-state change (a
``CallReport.as_dict()``) to the callbacks registered with ``on_state``, so an
adapter neither knows nor cares where the relay runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any

from pbx_zrtp.relay.control import ControlClient, ControlError
from pbx_zrtp.relay.core import Relay, RelayError
from pbx_zrtp.relay.mirror import CallReport, Policy

log = logging.getLogger("pbx_zrtp.relay")

StateCallback = Callable[[dict[str, Any]], None]
LinkCallback = Callable[[bool], None]


class RelayUnavailable(Exception):
    """The relay refused a request or cannot be reached; the message says why."""


class RelayHandle(ABC):
    def __init__(self) -> None:
        self._callbacks: list[StateCallback] = []
        self._link_callbacks: list[LinkCallback] = []

    def on_state(self, callback: StateCallback) -> None:
        self._callbacks.append(callback)

    def on_link(self, callback: LinkCallback) -> None:
        """Told True when the control connection comes up, False when it is lost."""
        self._link_callbacks.append(callback)

    def _link(self, up: bool) -> None:
        for callback in self._link_callbacks:
            try:
                callback(up)
            except Exception:
                log.exception("link callback failed")

    @property
    def connected(self) -> bool:
        return True

    def serves(self, address: str) -> bool:
        """Whether a phone sent to ``address`` reaches this relay (or one of a pool)."""
        return address == self.relay_host

    def choose(  # noqa: B027
        self, call_id: str, *, group: str = "", address: str = "", bridge: str = ""
    ) -> None:
        """Place a new call on a relay of ``group`` (at ``address`` when the PBX already
        advertised one): only a pool of relays has a choice; raises RelayUnavailable."""

    async def stats(self) -> dict[str, Any] | None:
        """The relay's counters (``stats`` of the control API), if it has any."""
        return None

    def _emit(self, report: dict[str, Any]) -> None:
        for callback in self._callbacks:
            try:
                callback(report)
            except Exception:
                log.exception("state callback failed")

    @property
    @abstractmethod
    def relay_host(self) -> str:
        """R, the address the PBX advertises to phones."""

    @abstractmethod
    async def create(
        self,
        call_id: str,
        port: int,
        policy: Policy,
        *,
        self_uri: str = "",
        peer_uri: str = "",
        phone_hint: tuple[str, int] | None = None,
        bridge: str = "",
        enroll: bool = False,
    ) -> dict[str, Any]: ...

    @abstractmethod
    async def update(self, call_id: str, policy: Policy) -> dict[str, Any]: ...

    @abstractmethod
    async def delete(self, call_id: str, reason: str) -> dict[str, Any] | None:
        """The final report, or None if the relay had no such call."""

    @abstractmethod
    async def verify(self, call_id: str, verified: bool) -> dict[str, Any]: ...

    @abstractmethod
    async def enroll(self, call_id: str) -> dict[str, Any]:
        """The user confirmed the SAS on an enrollment call: store the pbxsecret."""

    @abstractmethod
    async def unenroll(self, call_id: str) -> None:
        """Forget the pbxsecret of this call's phone."""

    @abstractmethod
    async def show(self, call_id: str) -> dict[str, Any] | None: ...

    @abstractmethod
    async def calls(self) -> list[dict[str, Any]]: ...

    async def start(self) -> None:  # noqa: B027 - optional
        """Connect, if there is anything to connect to."""

    async def close(self) -> None:  # noqa: B027 - optional
        """Disconnect."""


class LocalRelay(RelayHandle):
    """The relay in this process (``pbx-zrtp run``)."""

    def __init__(self, relay: Relay) -> None:
        super().__init__()
        self.relay = relay
        relay.add_listener(self._report)

    def _report(self, report: CallReport) -> None:
        self._emit(report.as_dict())

    @property
    def relay_host(self) -> str:
        return self.relay.layout.relay_host

    async def create(
        self,
        call_id: str,
        port: int,
        policy: Policy,
        *,
        self_uri: str = "",
        peer_uri: str = "",
        phone_hint: tuple[str, int] | None = None,
        bridge: str = "",
        enroll: bool = False,
    ) -> dict[str, Any]:
        try:
            report = await self.relay.create(
                call_id,
                port,
                policy,
                self_uri=self_uri,
                peer_uri=peer_uri,
                phone_hint=phone_hint,
                bridge=bridge,
                enroll=enroll,
            )
        except RelayError as exc:
            raise RelayUnavailable(str(exc)) from None
        return report.as_dict()

    async def update(self, call_id: str, policy: Policy) -> dict[str, Any]:
        try:
            return self.relay.update(call_id, policy=policy).as_dict()
        except RelayError as exc:
            raise RelayUnavailable(str(exc)) from None

    async def delete(self, call_id: str, reason: str) -> dict[str, Any] | None:
        try:
            return self.relay.delete(call_id, reason).as_dict()
        except RelayError:
            return None

    async def verify(self, call_id: str, verified: bool) -> dict[str, Any]:
        try:
            self.relay.verify(call_id, verified)
            return (await self.relay.stored(call_id)).as_dict()
        except RelayError as exc:
            raise RelayUnavailable(str(exc)) from None

    async def enroll(self, call_id: str) -> dict[str, Any]:
        try:
            return (await self.relay.enroll(call_id)).as_dict()
        except RelayError as exc:
            raise RelayUnavailable(str(exc)) from None

    async def unenroll(self, call_id: str) -> None:
        try:
            await self.relay.unenroll(call_id=call_id)
        except RelayError as exc:
            raise RelayUnavailable(str(exc)) from None

    async def show(self, call_id: str) -> dict[str, Any] | None:
        try:
            return self.relay.get(call_id).as_dict()
        except RelayError:
            return None

    async def calls(self) -> list[dict[str, Any]]:
        return [report.as_dict() for report in self.relay.calls()]

    async def stats(self) -> dict[str, Any] | None:
        return self.relay.stats()


class RemoteRelay(RelayHandle):
    """A relay in another process or on another host, through its control API.

    Reconnects with a bounded back-off when the connection drops; requests made
    while disconnected fail with RelayUnavailable (the adapter reports that to
    the dialplan instead of waiting forever).
    """

    def __init__(self, address: str, relay_host: str, *, token: str | None = None) -> None:
        super().__init__()
        self.address = address
        self._relay_host = relay_host
        self._token = token
        self._client: ControlClient | None = None
        self._task: asyncio.Task[None] | None = None
        self._connected = asyncio.Event()

    @property
    def relay_host(self) -> str:
        return self._relay_host

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
                    if event.get("event") == "state" and isinstance(event.get("call"), dict):
                        self._emit(event["call"])
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

    async def _request(self, op: str, **args: Any) -> Any:
        client = self._client
        if client is None:
            raise RelayUnavailable(f"the relay at {self.address} is not connected")
        try:
            return await client.request(op, **args)
        except ControlError as exc:
            raise RelayUnavailable(str(exc)) from None

    async def create(
        self,
        call_id: str,
        port: int,
        policy: Policy,
        *,
        self_uri: str = "",
        peer_uri: str = "",
        phone_hint: tuple[str, int] | None = None,
        bridge: str = "",
        enroll: bool = False,
    ) -> dict[str, Any]:
        args: dict[str, Any] = {
            "call_id": call_id,
            "port": port,
            "policy": policy.value,
            "self_uri": self_uri,
            "peer_uri": peer_uri,
        }
        if bridge:
            args["bridge"] = bridge
        if enroll:
            args["enroll"] = True
        if phone_hint is not None:
            args["phone_host"], args["phone_port"] = phone_hint
        result: dict[str, Any] = await self._request("create", **args)
        return result

    async def update(self, call_id: str, policy: Policy) -> dict[str, Any]:
        result: dict[str, Any] = await self._request("update", call_id=call_id, policy=policy.value)
        return result

    async def delete(self, call_id: str, reason: str) -> dict[str, Any] | None:
        try:
            result: dict[str, Any] = await self._request("delete", call_id=call_id, reason=reason)
        except RelayUnavailable:
            return None
        return result

    async def verify(self, call_id: str, verified: bool) -> dict[str, Any]:
        result: dict[str, Any] = await self._request("verify", call_id=call_id, verified=verified)
        return result

    async def enroll(self, call_id: str) -> dict[str, Any]:
        result: dict[str, Any] = await self._request("enroll", call_id=call_id)
        return result

    async def unenroll(self, call_id: str) -> None:
        await self._request("unenroll", call_id=call_id)

    async def show(self, call_id: str) -> dict[str, Any] | None:
        try:
            result: dict[str, Any] = await self._request("show", call_id=call_id)
        except RelayUnavailable:
            return None
        return result

    async def calls(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = await self._request("list")
        return result

    async def stats(self) -> dict[str, Any] | None:
        result: dict[str, Any] = await self._request("stats")
        return result
