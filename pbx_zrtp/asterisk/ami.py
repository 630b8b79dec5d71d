"""The one place that knows panoramisk (AMI) and its quirks.

- ``Manager.connect()`` returns before the login: we act in panoramisk's
  ``on_login`` (our ``on_connect``), which it calls with ``call_soon`` (so it must
  be a plain function).
- An action whose connection drops is re-sent after the next login unless its
  future is done: every action here has a time-out, and a timed-out action is
  cancelled so a stale Setvar/Hangup is never replayed.
- Repeated header names arrive as lists; events that carry an ActionID are
  consumed by that action's result (DBGet, CoreShowChannels).
- ``send_action(..., as_list=True)`` never completes an action that Asterisk
  answers with a lone ``Response: Error`` (a DBGet of a missing key: "Database
  entry not found"): the future waits for a list that never comes, so the
  lookup took the whole action time-out. List actions therefore use
  panoramisk's own detection (``as_list=None``): a response with ``EventList:
  start`` (every list action of Asterisk 22) collects events up to the
  ``...Complete`` one, a lone Error completes at once. ``_send_list`` is the
  only caller; tests/asterisk/test_ami.py fails if panoramisk changes either.
- panoramisk reconnects by itself (reconnect_timeout, integer seconds) and pings.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping
from typing import Any

from panoramisk import Manager

from pbx_zrtp.pbx.link import LiveChannel, PbxError

log = logging.getLogger("pbx_zrtp.asterisk")

AmiEvent = dict[str, str]


class AmiError(PbxError):
    """An AMI action failed or timed out; the message is safe to log."""


class AmiRefused(AmiError):
    """Asterisk answered the action with ``Response: Error``; ``reason`` is its Message."""

    def __init__(self, action: str, reason: str) -> None:
        super().__init__(f"AMI {action}: {reason}")
        self.reason = reason


#: manager.c's answer to a DBGet of a key that does not exist.
DB_ENTRY_NOT_FOUND = "Database entry not found"


def _flatten(message: Any) -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in message.items():
        if key == "content":
            continue
        out[str(key)] = ",".join(map(str, value)) if isinstance(value, list | tuple) else str(value)
    return out


class _QuietReconnects(logging.Filter):
    """panoramisk says "protocol version", "Connection lost", "Try to connect again"...
    at every attempt (once a second while Asterisk is down or refuses us): those go
    to debug; the adapter says what happened once, in its own words."""

    NOISE = (
        "Connection lost",
        "Try to connect again",
        "Not able to reconnect",
        "protocol version",
        "Sending awaiting actions",
    )

    def __init__(self, logger: logging.Logger) -> None:
        super().__init__()
        self._logger = logger

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno > logging.DEBUG and str(record.msg).startswith(self.NOISE):
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            return self._logger.isEnabledFor(logging.DEBUG)
        return True


class Ami:
    """An AMI session that stays connected: events out, actions in (a ``PbxLink``)."""

    def __init__(
        self,
        host: str,
        port: int,
        username: str,
        secret: str,
        *,
        on_event: Callable[[AmiEvent], None],
        on_connect: Callable[[], None],
        action_timeout: float = 5.0,
        reconnect_delay: int = 1,
    ) -> None:
        self._on_event = on_event
        self._on_connect = on_connect
        self.action_timeout = action_timeout
        self._logged_in = asyncio.Event()
        self.connections = 0
        #: Asterisk's answer to the last refused Login ("Authentication failed"), until
        #: a login succeeds; said once in the log, not at every reconnection.
        self.refused: str | None = None
        self._username = username
        panoramisk_log = logging.getLogger("pbx_zrtp.asterisk.panoramisk")
        # its protocol logs "protocol version" on its own module logger, at each connection
        for noisy in (panoramisk_log, logging.getLogger("panoramisk.ami_protocol")):
            if not any(isinstance(f, _QuietReconnects) for f in noisy.filters):
                noisy.addFilter(_QuietReconnects(noisy))
        self._manager = Manager(
            host=host,
            port=port,
            username=username,
            secret=secret,
            events="on",
            reconnect_timeout=reconnect_delay,
            ping_delay=10,
            ping_interval=10,
            on_login=self._login,
            on_connect=self._connected,
            on_disconnect=self._disconnected,
            log=panoramisk_log,
        )
        self._manager.register_event("UserEvent", self._event)
        self._manager.register_event("Hangup", self._event)
        self._manager.register_event("Newchannel", self._event)
        self._manager.register_event("Shutdown", self._event)
        for name in ("BridgeEnter", "BridgeLeave", "BridgeDestroy", "Rename"):  # call changes
            self._manager.register_event(name, self._event)
        self._manager.register_event("VarSet", self._event)  # globals: the zrtp CLI lines
        self.address = f"{host}:{port}"

    @property
    def connected(self) -> bool:
        return self._logged_in.is_set()

    def _login(self, manager: Any) -> None:
        self.connections += 1
        self.refused = None
        self._logged_in.set()
        log.info("AMI logged in at %s", self.address)
        self._on_connect()

    def _connected(self, manager: Any) -> None:
        """Connected, Login sent: watch its answer (panoramisk only logs a refusal at
        debug level, then Asterisk hangs up and it reconnects every second)."""
        future = getattr(manager, "authenticated_future", None)
        if isinstance(future, asyncio.Future):
            future.add_done_callback(self._login_answer)

    def _login_answer(self, future: asyncio.Future[Any]) -> None:
        if future.cancelled() or future.exception() is not None:
            return
        response = future.result()
        if bool(getattr(response, "success", False)):
            return
        reason = str(_flatten(response).get("Message", "refused"))
        if self.refused is None:
            log.error(
                "AMI at %s refused the login of %r: %s (check username and secret in the "
                "[asterisk] section and in Asterisk's manager.conf); retrying quietly",
                self.address,
                self._username,
                reason,
            )
        self.refused = reason

    def _disconnected(self, manager: Any, exc: object) -> None:
        was_in = self._logged_in.is_set()
        self._logged_in.clear()
        if was_in:
            log.warning("AMI connection to %s lost; reconnecting", self.address)

    def _event(self, manager: Any, message: Any) -> None:
        try:
            self._on_event(_flatten(message))
        except Exception:  # a handler bug must not break the AMI session
            log.exception("AMI event handler failed")

    async def start(self, wait: float = 5.0) -> bool:
        """Connect (and keep reconnecting); True if logged in within ``wait`` s."""
        self._manager.loop = asyncio.get_running_loop()
        self._manager.connect()
        try:
            await asyncio.wait_for(self._logged_in.wait(), wait)
        except TimeoutError:
            if self.refused is None:  # a refusal was said already
                log.warning(
                    "AMI at %s: not logged in yet (check host, port, username, secret); "
                    "retrying quietly",
                    self.address,
                )
            return False
        return True

    async def close(self) -> None:
        self._manager.close()
        self._logged_in.clear()

    async def action(self, **fields: str) -> dict[str, str]:
        """Send one action and return its single response (raises AmiError on failure)."""
        name = fields.get("Action", "?")
        if not self.connected:
            raise AmiError(f"AMI not connected (action {name})")
        future = self._manager.send_action(dict(fields))
        try:
            response = await asyncio.wait_for(asyncio.shield(future), self.action_timeout)
        except TimeoutError:
            future.cancel()  # never replayed after a reconnect
            raise AmiError(f"AMI action {name} timed out") from None
        if isinstance(response, list):
            response = response[0]
        flat = _flatten(response)
        if flat.get("Response") not in ("Success", "Follows", "Goodbye"):
            raise AmiRefused(name, flat.get("Message", flat.get("Response", "failed")))
        return flat

    def _send_list(self, fields: dict[str, str]) -> asyncio.Future[Any]:
        """Send a list action so that a lone ``Response: Error`` completes it too.

        Not ``as_list=True``: panoramisk 1.4 then waits for list items after an
        Error forever (see the module docstring)."""
        future: asyncio.Future[Any] = self._manager.send_action(fields, as_list=None)
        return future

    async def action_list(self, **fields: str) -> list[dict[str, str]]:
        """An action answered by a list of events (e.g. CoreShowChannels), or by one
        Error (raised as AmiError at once)."""
        name = fields.get("Action", "?")
        if not self.connected:
            raise AmiError(f"AMI not connected (action {name})")
        future = self._send_list(dict(fields))
        try:
            responses = await asyncio.wait_for(asyncio.shield(future), self.action_timeout)
        except TimeoutError:
            future.cancel()
            raise AmiError(f"AMI action {name} timed out") from None
        messages = [
            _flatten(m) for m in (responses if isinstance(responses, list) else [responses])
        ]
        if messages and messages[0].get("Response") == "Error":
            raise AmiRefused(name, messages[0].get("Message", "failed"))
        return messages

    # -- the PbxLink actions ----------------------------------------------------------

    async def get_var(self, channel: str, name: str) -> str:
        response = await self.action(Action="Getvar", Channel=channel, Variable=name)
        return response.get("Value", "")

    async def set_var(self, channel: str, name: str, value: str) -> None:
        await self.action(Action="Setvar", Channel=channel, Variable=name, Value=value)

    async def set_vars(self, channel: str, values: Mapping[str, str]) -> None:
        """One Setvar each, in order (AMI has no multi-set)."""
        for name, value in values.items():
            await self.set_var(channel, name, value)

    async def hang_up(self, channel: str, cause: str) -> None:
        await self.action(Action="Hangup", Channel=channel, Cause=cause)

    async def notify(self, name: str, headers: Mapping[str, str]) -> None:
        """A UserEvent for other AMI consumers (and the dialplan's CLI aliases)."""
        await self.action(Action="UserEvent", UserEvent=name, **headers)

    async def live_bridges(self) -> dict[str, list[str]]:
        """Asterisk's bridges now (BridgeUniqueid -> its channels' Uniqueids): BridgeList,
        then BridgeInfo for each (a bridge gone in between is left out)."""
        bridges: dict[str, list[str]] = {}
        for item in await self.action_list(Action="BridgeList"):
            name = item.get("BridgeUniqueid", "")
            if item.get("Event") != "BridgeListItem" or not name:
                continue
            try:
                info = await self.action_list(Action="BridgeInfo", BridgeUniqueid=name)
            except AmiRefused:  # destroyed since the list was made
                continue
            bridges[name] = [
                m["Uniqueid"]
                for m in info
                if m.get("Event") == "BridgeInfoChannel" and m.get("Uniqueid")
            ]
        return bridges

    async def live_channels(self) -> list[LiveChannel]:
        messages = await self.action_list(Action="CoreShowChannels")
        return [
            LiveChannel(m.get("Uniqueid", ""), m.get("Channel", ""), m.get("Exten", ""))
            for m in messages
            if m.get("Event") == "CoreShowChannel"
        ]

    # -- AstDB -------------------------------------------------------------------------

    async def db_get(self, family: str, key: str) -> str | None:
        """The AstDB value, None when the key does not exist; AmiError when the
        lookup itself failed (time-out, connection lost): then nobody knows."""
        try:
            messages = await self.action_list(Action="DBGet", Family=family, Key=key)
        except AmiRefused as exc:
            if exc.reason == DB_ENTRY_NOT_FOUND:
                return None
            raise
        for message in messages:
            if message.get("Event") == "DBGetResponse":
                return message.get("Val", "")
        return None

    async def db_put(self, family: str, key: str, value: str) -> None:
        await self.action(Action="DBPut", Family=family, Key=key, Val=value)

    async def db_del(self, family: str, key: str) -> None:
        with contextlib.suppress(AmiError):  # already gone
            await self.action(Action="DBDel", Family=family, Key=key)
