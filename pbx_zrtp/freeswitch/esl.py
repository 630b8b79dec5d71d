"""The one place that knows greenswitch (FreeSWITCH inbound ESL) and gevent.

greenswitch is gevent-based. It runs here in its own thread with its own gevent
hub — the relay's process is never monkey-patched. asyncio talks to that thread
through a queue and a gevent ``async_`` watcher (thread-safe wake-up); results and
events come back with ``loop.call_soon_threadsafe``.

greenswitch quirks handled here: it does not reconnect (this thread does, with a
bounded back-off); a dropped connection leaves pending commands waiting forever
(every command has a time-out on the asyncio side); CUSTOM events are dispatched
by subclass (we register a ``*`` handler and look at Event-Name ourselves); its
parser URL-decodes before splitting lines, so multi-line values arrive garbled
(we never rely on one).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import queue
import threading
from collections.abc import Callable, Mapping
from typing import Any

from pbx_zrtp.pbx.link import LiveChannel, PbxError

log = logging.getLogger("pbx_zrtp.freeswitch")

EslEvent = dict[str, str]

#: Events the adapter needs. CUSTOM subclasses are added by name.
EVENTS = (
    "CHANNEL_CREATE CHANNEL_PROGRESS_MEDIA CHANNEL_ANSWER CHANNEL_HANGUP_COMPLETE "
    "CHANNEL_BRIDGE CHANNEL_UNBRIDGE API BACKGROUND_JOB CODEC"
)


# ---------------------------------------------------------------------- greenswitch's insides
# The only private parts of greenswitch used anywhere, each behind one function
# here. pyproject.toml pins the versions they were checked with, and
# tests/test_dependencies.py fails loudly when an installed greenswitch lacks them.


def reader_died(esl: Any) -> bool:
    """greenswitch's event reader greenlet (``_receive_events_greenlet``) has died."""
    reader = esl._receive_events_greenlet
    return reader is not None and bool(reader.dead)


def fail_sent_commands(esl: Any, error: Exception) -> None:
    """Commands sent on a dropped connection (``_commands_sent``): greenswitch would
    leave them waiting forever."""
    for pending in list(esl._commands_sent):
        with contextlib.suppress(Exception):
            pending.set_exception(error)


def abandon(esl: Any) -> None:
    """Close without ``stop()``, which may block on a dead reader: clear ``_run``
    (the reader's loop condition) and close the socket."""
    with contextlib.suppress(Exception):
        esl._run = False
        esl.sock.close()


class EslError(PbxError):
    """An ESL command failed, timed out, or the connection is down."""


#: mod_event_socket's answer to an ``api`` command whose output is empty.
NO_REPLY = "-ERR no reply"


class Esl:
    """A reconnecting inbound ESL session served by a gevent thread (a ``PbxLink``)."""

    def __init__(
        self,
        host: str,
        port: int,
        password: str,
        *,
        on_event: Callable[[EslEvent], None],
        on_connect: Callable[[], None],
        custom_subclasses: tuple[str, ...] = (),
        command_timeout: float = 5.0,
    ) -> None:
        self.host, self.port = host, port
        self._password = password
        self._on_event = on_event
        self._on_connect = on_connect
        self._subscription = " ".join((EVENTS, "CUSTOM", *custom_subclasses))
        self.command_timeout = command_timeout
        self.address = f"{host}:{port}"
        self._up = asyncio.Event()
        self.connections = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._requests: queue.SimpleQueue[tuple[str, asyncio.Future[str]] | None] = (
            queue.SimpleQueue()
        )
        self._wake: Any = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._esl: Any = None

    # ------------------------------------------------------------------ asyncio side

    @property
    def connected(self) -> bool:
        return self._up.is_set()

    async def start(self, wait: float = 5.0) -> bool:
        self._loop = asyncio.get_running_loop()
        ready = threading.Event()
        self._thread = threading.Thread(
            target=self._thread_main, args=(ready,), name="pbx-zrtp-esl", daemon=True
        )
        self._thread.start()
        await asyncio.get_running_loop().run_in_executor(None, ready.wait, 5)
        try:
            await asyncio.wait_for(self._up.wait(), wait)
        except TimeoutError:
            log.warning(
                "ESL at %s:%d: not connected yet (check host, port, password)", self.host, self.port
            )
            return False
        return True

    async def close(self) -> None:
        self._stopping.set()
        self._requests.put(None)
        if self._wake is not None:
            self._wake.send()
        if self._thread is not None:
            await asyncio.get_running_loop().run_in_executor(None, self._thread.join, 5)

    async def api(self, command: str) -> str:
        """Run an ESL ``api`` command; returns its body; raises EslError on -ERR."""
        if "\n" in command or "\r" in command:
            raise EslError("ESL commands are single lines")
        if not self.connected:
            raise EslError(f"ESL not connected (api {command.split(' ', 1)[0]})")
        future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._requests.put((f"api {command}", future))
        self._wake.send()
        try:
            body = await asyncio.wait_for(future, self.command_timeout)
        except TimeoutError:
            raise EslError(f"ESL api {command.split(' ', 1)[0]} timed out") from None
        if body.startswith("-ERR"):
            raise EslError(body.strip())
        return body

    async def set_var(self, channel: str, name: str, value: str) -> None:
        await self.api(f"uuid_setvar {channel} {name} {value}")

    async def set_vars(self, channel: str, values: Mapping[str, str]) -> None:
        """One uuid_setvar_multi; a ';' (its separator) in a value becomes ','."""
        parts = ";".join(f"{k}={v.replace(';', ',')}" for k, v in values.items())
        await self.api(f"uuid_setvar_multi {channel} {parts}")

    async def get_var(self, channel: str, name: str) -> str:
        value = (await self.api(f"uuid_getvar {channel} {name}")).strip()
        return "" if value == "_undef_" else value

    async def hang_up(self, channel: str, cause: str) -> None:
        await self.api(f"uuid_kill {channel} {cause}")

    async def global_getvar(self, name: str) -> str:
        """A global variable, "" when unset (FreeSWITCH answers an empty API output
        with ``-ERR no reply``); EslError when it could not be read."""
        try:
            return (await self.api(f"global_getvar {name}")).strip()
        except EslError as exc:
            if str(exc) == NO_REPLY:
                return ""
            raise

    async def live_channels(self) -> list[LiveChannel]:
        body = await self.api("show channels as json")
        try:
            data = json.loads(body)
        except ValueError:
            raise EslError("show channels as json: not JSON") from None
        rows = data.get("rows", []) if isinstance(data, dict) else []
        uuids = {str(row.get("uuid", "")) for row in rows if isinstance(row, dict)} - {""}
        return [LiveChannel(uuid, uuid) for uuid in sorted(uuids)]

    async def live_bridges(self) -> dict[str, list[str]]:
        """FreeSWITCH's bridged calls now (``show bridged_calls``: its calls table,
        kept by CHANNEL_BRIDGE/UNBRIDGE), named as the adapter names a
        CHANNEL_BRIDGE: ``<a-leg uuid>+<b-leg uuid>`` -> both uuids."""
        body = await self.api("show bridged_calls as json")
        try:
            data = json.loads(body)
        except ValueError:
            raise EslError("show bridged_calls as json: not JSON") from None
        rows = data.get("rows", []) if isinstance(data, dict) else []
        bridges: dict[str, list[str]] = {}
        for row in rows:
            if not isinstance(row, dict):
                continue
            a, b = str(row.get("uuid") or ""), str(row.get("b_uuid") or "")
            if a and b:
                bridges[f"{a}+{b}"] = [a, b]
        return bridges

    async def notify(self, name: str, headers: Mapping[str, str]) -> None:
        """``sendevent CUSTOM`` of subclass ``name``; never with a Unique-ID header
        (FreeSWITCH would deliver it to that channel instead of broadcasting it)."""
        await self.fire("CUSTOM", {"Event-Subclass": name, **headers})

    async def fire(self, event: str, headers: Mapping[str, str]) -> None:
        """``sendevent <event>``: an event of that type (e.g. ``CALL_SECURE``, as
        FreeSWITCH's removed built-in ZRTP fired), never with a Unique-ID header."""
        lines = [f"sendevent {event}"]
        lines += [f"{k}: {v}" for k, v in headers.items() if k.lower() != "unique-id"]
        if not self.connected:
            raise EslError("ESL not connected (sendevent)")
        future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._requests.put(("\n".join(lines), future))
        self._wake.send()
        try:
            await asyncio.wait_for(future, self.command_timeout)
        except TimeoutError:
            raise EslError("ESL sendevent timed out") from None

    def _deliver(self, future: asyncio.Future[str], result: str | BaseException) -> None:
        if future.done():
            return
        if isinstance(result, BaseException):
            future.set_exception(result)
        else:
            future.set_result(result)

    # ------------------------------------------------------------------ gevent thread

    def _thread_main(self, ready: threading.Event) -> None:
        import gevent  # imported here: gevent lives in this thread only
        from greenswitch.esl import InboundESL

        hub = gevent.get_hub()
        self._wake = hub.loop.async_()
        self._wake.start(lambda: gevent.spawn(self._drain))
        ready.set()
        delay = 0.2
        while not self._stopping.is_set():
            esl = InboundESL(self.host, self.port, self._password, timeout=5)
            try:
                esl.connect()
                esl.register_handle("*", self._gevent_event)
                reply = esl.send(f"event plain {self._subscription}")
                if not str(getattr(reply, "data", "")).startswith("+OK"):
                    raise ConnectionError(f"event subscription refused: {reply.data}")
            except Exception as exc:  # socket errors, ValueError('Invalid password.')
                self._fail_pending(EslError(f"ESL connect failed: {exc}"))
                log.warning("ESL %s:%d: %s", self.host, self.port, exc)
                with contextlib.suppress(Exception):
                    esl.stop()
                gevent.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            self._esl = esl
            self.connections += 1
            delay = 0.2
            self._to_loop(self._connected)
            while esl.connected and not self._stopping.is_set():
                if reader_died(esl):
                    # greenswitch's reader dies on input it cannot parse (e.g. a header
                    # line without ": "), leaving a connection that never answers
                    # again: treat it as lost and start over.
                    log.warning(
                        "ESL input from %s:%d could not be parsed; reconnecting",
                        self.host,
                        self.port,
                    )
                    break
                gevent.sleep(0.1)
            self._esl = None
            fail_sent_commands(esl, ConnectionError("ESL connection lost"))
            self._to_loop(self._up.clear)
            self._fail_pending(EslError("ESL connection lost"))
            abandon(esl)
            if not self._stopping.is_set():
                log.warning("ESL connection to %s:%d lost; reconnecting", self.host, self.port)
                gevent.sleep(delay)
        self._wake.stop()

    def _connected(self) -> None:
        self._up.set()
        log.info("ESL connected to %s:%d", self.host, self.port)
        self._on_connect()

    def _to_loop(self, callback: Callable[..., Any], *args: Any) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # loop closing
                loop.call_soon_threadsafe(callback, *args)

    def _gevent_event(self, event: Any) -> None:
        headers = {str(k): str(v) for k, v in event.headers.items()}
        self._to_loop(self._dispatch, headers)

    def _dispatch(self, headers: EslEvent) -> None:
        try:
            self._on_event(headers)
        except Exception:
            log.exception("ESL event handler failed")

    def _drain(self) -> None:
        import gevent

        while True:
            try:
                item = self._requests.get_nowait()
            except queue.Empty:
                return
            if item is None:
                return
            gevent.spawn(self._run_command, *item)

    def _run_command(self, line: str, future: asyncio.Future[str]) -> None:
        esl = self._esl
        if esl is None:
            self._to_loop(self._deliver, future, EslError("ESL not connected"))
            return
        try:
            response = esl.send(line)
            result = str(getattr(response, "data", "") or "")
        except Exception as exc:
            self._to_loop(self._deliver, future, EslError(f"ESL command failed: {exc}"))
            return
        self._to_loop(self._deliver, future, result)

    def _fail_pending(self, error: EslError) -> None:
        while True:
            try:
                item = self._requests.get_nowait()
            except queue.Empty:
                return
            if item is not None:
                self._to_loop(self._deliver, item[1], error)
