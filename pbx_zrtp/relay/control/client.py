"""The control API's asyncio client, for PBX adapters (``relay.handle.RemoteRelay``)
and ``pbx-zrtp ctl``. It speaks the protocol only: it loads nothing of the relay."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
from collections.abc import AsyncIterator
from typing import Any

from pbx_zrtp.relay.control.protocol import (
    CLIENT_EVENT_BUFFER,
    CLIENT_MAX_LINE,
    SERVICE,
    VERSION,
    ControlConnectionError,
    ControlError,
    encode,
    parse_control_address,
)


class ControlClient:
    """An asyncio client of the control API, for PBX adapters and ``pbx-zrtp ctl``.

    ::

        async with ControlClient("unix:/run/pbx-zrtp/control.sock") as client:
            report = await client.request("create", call_id="c1", port=10000, policy="required")
            await client.request("subscribe")
            async for event in client.events():
                ...
    """

    def __init__(self, address: str, *, token: str | None = None, timeout: float = 10.0) -> None:
        self.address = address
        self.kind, self.host, self.port = parse_control_address(address)
        self._token = token
        self.timeout = timeout
        self.hello: dict[str, Any] = {}
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._events: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue(CLIENT_EVENT_BUFFER)
        self._ids = itertools.count(1)
        self._closing = False
        self._lost: str | None = None  # why the connection ended, once it has

    async def __aenter__(self) -> ControlClient:
        await self.connect()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def connect(self) -> dict[str, Any]:
        """Connect, check the server's hello, authenticate if required; returns the hello."""
        unreachable = (
            f"cannot reach the relay control socket at {self.address}: is `pbx-zrtp relay` running?"
        )
        try:
            if self.kind == "unix":
                opening = asyncio.open_unix_connection(self.host, limit=CLIENT_MAX_LINE)
            else:
                opening = asyncio.open_connection(self.host, self.port, limit=CLIENT_MAX_LINE)
            self._reader, self._writer = await asyncio.wait_for(opening, self.timeout)
        except (FileNotFoundError, ConnectionRefusedError, TimeoutError):
            raise ControlConnectionError(unreachable) from None
        except PermissionError:
            raise ControlConnectionError(
                f"permission denied on the relay control socket at {self.address}:"
                " run as the relay's user (or root)"
            ) from None
        except OSError as exc:
            raise ControlConnectionError(
                f"cannot reach the relay control socket at {self.address}: {exc.strerror or exc}"
            ) from None
        try:
            hello = await self._read_hello()
        except BaseException:
            await self._close_transport()
            raise
        self.hello = hello
        self._reader_task = asyncio.create_task(self._read_loop())
        if hello.get("auth_required"):
            if self._token is None:
                await self.close()
                raise ControlError(
                    f"the relay at {self.address} requires a token (pbx-zrtp ctl: --token-file)"
                )
            try:
                await self.request("auth", token=self._token)
            except ControlError:
                await self.close()
                raise
        return hello

    async def _read_hello(self) -> dict[str, Any]:
        assert self._reader is not None
        try:
            line = await asyncio.wait_for(self._reader.readuntil(b"\n"), self.timeout)
            hello = json.loads(line)
        except (asyncio.IncompleteReadError, ConnectionError):
            raise ControlConnectionError(
                f"the relay at {self.address} closed the connection before greeting"
            ) from None
        except TimeoutError:
            raise ControlConnectionError(f"no greeting from {self.address}") from None
        except (ValueError, asyncio.LimitOverrunError):
            raise ControlError(f"{self.address} is not a pbx-zrtp control socket") from None
        if not isinstance(hello, dict):
            raise ControlError(f"{self.address} is not a pbx-zrtp control socket")
        if hello.get("type") == "reply" and hello.get("ok") is False:
            raise ControlError(str(hello.get("error", "refused")))
        if hello.get("type") != "hello" or hello.get("service") != SERVICE:
            raise ControlError(f"{self.address} is not a pbx-zrtp control socket")
        if hello.get("version") != VERSION:
            raise ControlError(
                f"the relay speaks control protocol version {hello.get('version')!r};"
                f" this client speaks {VERSION}"
            )
        return hello

    async def _read_loop(self) -> None:
        assert self._reader is not None
        reason = "the relay closed the control connection"
        try:
            while True:
                line = await self._reader.readuntil(b"\n")
                try:
                    message = json.loads(line)
                except ValueError:
                    reason = "the relay sent malformed JSON"
                    break
                if not isinstance(message, dict):
                    continue
                kind = message.get("type")
                if kind == "event":
                    await self._events.put(message)  # full: stop reading (back-pressure)
                elif kind == "reply":
                    request_id = message.get("id")
                    future = (
                        self._pending.pop(request_id, None) if isinstance(request_id, int) else None
                    )
                    if future is not None and not future.done():
                        future.set_result(message)
                    elif message.get("ok") is False:
                        reason = f"the relay closed the control connection: {message.get('error')}"
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            pass
        except asyncio.LimitOverrunError:
            reason = "the relay sent a line that is too long"
        finally:
            self._lost = reason
            for future in self._pending.values():
                if not future.done():
                    future.set_exception(ControlConnectionError(reason))
            self._pending.clear()
            with contextlib.suppress(asyncio.QueueFull):
                self._events.put_nowait(None)

    async def request(self, op: str, **args: Any) -> Any:
        """Send one request; its result, or ``ControlError`` with the relay's message."""
        if self._writer is None or self._reader_task is None:
            raise ControlConnectionError("not connected")
        if self._lost is not None:
            raise ControlConnectionError(self._lost)
        if "id" in args:
            raise TypeError("the client numbers requests itself: 'id' is not an argument")
        request_id = next(self._ids)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        try:
            self._writer.write(encode({"id": request_id, "op": op, **args}))
            await asyncio.wait_for(self._writer.drain(), self.timeout)
            reply = await asyncio.wait_for(asyncio.shield(future), self.timeout)
        except TimeoutError:
            raise ControlConnectionError(
                f"no reply from the relay at {self.address} within {self.timeout:g} s"
            ) from None
        except (ConnectionError, OSError) as exc:
            raise ControlConnectionError(
                self._lost or f"the control connection failed: {exc}"
            ) from None
        finally:
            self._pending.pop(request_id, None)
        if not reply.get("ok"):
            code = reply.get("code")
            raise ControlError(
                str(reply.get("error", "the relay refused the request")),
                code if isinstance(code, str) else "",
            )
        return reply.get("result")

    async def events(self) -> AsyncIterator[dict[str, Any]]:
        """Events after ``request("subscribe")``; raises ``ControlConnectionError``
        when the connection is lost (ends quietly after ``close()``)."""
        while True:
            # The end marker is dropped if the buffer was full when the connection
            # ended: once the buffer is empty, the flag tells instead.
            ended = self._lost is not None and self._events.empty()
            event = None if ended else await self._events.get()
            if event is None:
                with contextlib.suppress(asyncio.QueueFull):
                    self._events.put_nowait(None)  # for a later caller too
                if self._closing:
                    return
                raise ControlConnectionError(self._lost or "the control connection was lost")
            yield event

    async def close(self) -> None:
        self._closing = True
        if self._reader_task is not None:
            self._reader_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader_task
            self._reader_task = None
        await self._close_transport()

    async def _close_transport(self) -> None:
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.close()
            with contextlib.suppress(ConnectionError, OSError, TimeoutError):
                await asyncio.wait_for(writer.wait_closed(), 2.0)
