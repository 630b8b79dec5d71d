"""The control API's server: listeners (a Unix socket, TCP with a token), one
connection per client, requests handed to the ops table (``ops.OPS``).

Nothing a client sends can raise out of a connection handler, and no client can
block the relay or another client: a client that stops reading is disconnected
once a write has waited ``write_timeout`` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import ipaddress
import json
import logging
import math
import os
import secrets
import socket
import stat
from typing import Any

from pbx_zrtp.calls import NoSuchCall, RelayError
from pbx_zrtp.config.fields import kind_of
from pbx_zrtp.relay.control.ops import OPS, Request, short
from pbx_zrtp.relay.control.protocol import (
    AUTH_TIMEOUT,
    INTERNAL,
    LINGER_BYTES,
    LINGER_TIME,
    MAX_CLIENTS,
    MAX_LINE,
    MIN_TOKEN_LENGTH,
    NO_SUCH_CALL,
    SERVICE,
    UNAVAILABLE,
    UNIX_PATH_MAX,
    VERSION,
    WRITE_TIMEOUT,
)
from pbx_zrtp.relay.control.protocol import encode as _encode
from pbx_zrtp.relay.control.protocol import error as _error
from pbx_zrtp.relay.control.protocol import reply as _reply
from pbx_zrtp.relay.core import Relay, Subscription

log = logging.getLogger("pbx_zrtp.relay.control")


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


class ControlSocketError(OSError, ValueError):
    """The control socket's path cannot be used (too long, not a socket): an error of
    the setup, said in one line (an OSError, as the CLI reports those)."""


class ControlSocketBusy(OSError, RuntimeError):
    """Another process (a relay already running) serves the control socket."""


class ControlServer:
    """Serves the control protocol for one relay on a Unix socket and/or TCP."""

    def __init__(
        self,
        relay: Relay,
        *,
        token: str | None = None,
        write_timeout: float = WRITE_TIMEOUT,
        max_clients: int = MAX_CLIENTS,
    ) -> None:
        if token is not None and not token:
            raise ValueError("the control token must not be empty (use None for no token)")
        self.relay = relay
        self._token = token.encode("utf-8") if token is not None else None
        self.write_timeout = write_timeout
        self.max_clients = max_clients
        self._servers: list[asyncio.Server] = []
        self._connections: set[_Connection] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._unix_paths: list[tuple[str, int, int]] = []  # (path, st_dev, st_ino)
        self._closing = False

    @property
    def client_count(self) -> int:
        """Connections currently open."""
        return len(self._connections)

    async def start_unix(self, path: str, mode: int = 0o600) -> None:
        """Listen on the Unix socket ``path`` with permissions ``mode``.

        The parent directory is created 0700 if it does not exist (an existing
        one is left as it is). A stale socket file is replaced; a live one (a
        relay answers on it) or a file that is not a socket is an error. The
        socket gets its mode before it appears under ``path``: there is no
        moment when it is reachable with the process umask's permissions.
        """
        path = os.path.abspath(path)
        directory = os.path.dirname(path)
        # Bound under a temporary name, then renamed: 14 bytes after the directory.
        temporary = os.path.join(directory, f".{secrets.token_hex(4)}.tmp")
        if max(len(os.fsencode(path)), len(os.fsencode(temporary))) > UNIX_PATH_MAX:
            raise ControlSocketError(
                f"control socket path {path!r} is too long for a Unix socket (at most"
                f" {UNIX_PATH_MAX} bytes, in a directory of at most {UNIX_PATH_MAX - 14})"
            )
        if not os.path.isdir(directory):
            os.makedirs(directory, mode=0o700, exist_ok=True)
        self._check_stale(path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        bound = temporary
        try:
            sock.bind(temporary)
            os.chmod(temporary, mode)
            os.rename(temporary, path)  # atomically replaces a stale socket
            bound = path
            sock.setblocking(False)
            server = await asyncio.start_unix_server(
                lambda r, w: self._serve(r, w, tcp=False), sock=sock, limit=MAX_LINE
            )
        except BaseException:
            sock.close()
            with contextlib.suppress(OSError):
                os.unlink(bound)
            raise
        info = os.stat(path)
        self._unix_paths.append((path, info.st_dev, info.st_ino))
        self._servers.append(server)
        log.info("control API on unix:%s (mode %o)", path, mode)

    @staticmethod
    def _check_stale(path: str) -> None:
        try:
            info = os.lstat(path)
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(info.st_mode):
            raise ControlSocketError(f"{path!r} exists and is not a socket: refusing to replace it")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        probe.settimeout(1.0)
        try:
            probe.connect(path)
        except OSError:
            return  # nobody listens: a stale socket from an earlier run
        finally:
            probe.close()
        raise ControlSocketBusy(
            f"another process is serving the control socket {path!r} (is a relay running?)"
        )

    async def start_tcp(self, host: str, port: int) -> int:
        """Listen on TCP ``host:port`` (0: any free port); returns the bound port.

        TCP requires a token: any local user can connect to a TCP port, even on
        loopback, so the Unix socket's file permissions have no equivalent there.
        """
        if self._token is None:
            raise ValueError(
                "the control API refuses to listen on TCP without a token:"
                " any local user can connect to a TCP port, even on loopback"
            )
        if len(self._token) < MIN_TOKEN_LENGTH:
            raise ValueError(
                f"the control token is too short for TCP (at least {MIN_TOKEN_LENGTH} characters)"
            )
        with contextlib.suppress(ValueError):
            if not ipaddress.ip_address(host).is_loopback:
                log.warning(
                    "control API listens on %s, not loopback: requests (and the token)"
                    " travel unencrypted",
                    host,
                )
        server = await asyncio.start_server(
            lambda r, w: self._serve(r, w, tcp=True), host, port, limit=MAX_LINE
        )
        self._servers.append(server)
        bound = int(server.sockets[0].getsockname()[1])
        log.info("control API on tcp:%s:%d", host, bound)
        return bound

    async def close(self) -> None:
        """Stop listening, disconnect every client, remove the socket files."""
        self._closing = True
        for server in self._servers:
            server.close()
        for connection in list(self._connections):
            connection.abort()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=5.0)
        for server in self._servers:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(server.wait_closed(), 5.0)
        self._servers.clear()
        for path, device, inode in self._unix_paths:
            with contextlib.suppress(OSError):
                info = os.lstat(path)
                if (info.st_dev, info.st_ino) == (device, inode):
                    os.unlink(path)  # ours, not a successor's
        self._unix_paths.clear()

    async def _serve(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, tcp: bool
    ) -> None:
        task = asyncio.current_task()
        connection = _Connection(self, reader, writer, tcp=tcp)
        if task is not None:
            self._tasks.add(task)
        self._connections.add(connection)
        try:
            if self._closing:
                return
            if len(self._connections) > self.max_clients:
                log.warning("control client %s refused: too many connections", connection.peer)
                await connection.send(_error(None, "too many control connections", UNAVAILABLE))
                return
            await connection.run()
        except asyncio.CancelledError:
            pass  # the server is closing
        except Exception:
            log.exception("control connection %s failed", connection.peer)
        finally:
            await connection.shutdown()
            self._connections.discard(connection)
            if task is not None:
                self._tasks.discard(task)

    def _check_token(self, token: str) -> bool:
        if self._token is None:
            return True
        return hmac.compare_digest(token.encode("utf-8"), self._token)


class _Connection:
    """One client: reads requests in order, writes replies and events (an ops.Session)."""

    def __init__(
        self,
        server: ControlServer,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        tcp: bool,
    ) -> None:
        self.server = server
        self.relay = server.relay
        self.reader = reader
        self.writer = writer
        self.tcp = tcp
        self.auth_required = tcp
        self.authenticated = False
        self.closed = False
        self.close_after_reply = False
        self.subscription: Subscription | None = None
        self.forwarder: asyncio.Task[None] | None = None
        self._write_lock = asyncio.Lock()
        if tcp:
            peer = writer.get_extra_info("peername")
            self.peer = f"tcp:{peer[0]}:{peer[1]}" if peer else "tcp:?"
        else:
            self.peer = "unix"

    # -------------------------------------------------------------- I/O

    async def send(self, message: dict[str, Any]) -> bool:
        """Write one message; False (and the client dropped) if it does not read."""
        data = _encode(message)
        async with self._write_lock:
            if self.closed:
                return False
            try:
                self.writer.write(data)
                await asyncio.wait_for(self.writer.drain(), self.server.write_timeout)
            except TimeoutError:
                log.warning(
                    "control client %s has not read for %g s: disconnected",
                    self.peer,
                    self.server.write_timeout,
                )
                self.abort()
                return False
            except (ConnectionError, OSError, RuntimeError):
                self.abort()
                return False
        return True

    def abort(self) -> None:
        """Drop the connection now, whatever is still buffered."""
        if not self.closed:
            self.closed = True
            self.writer.transport.abort()

    async def linger(self) -> None:
        """Close our side after an error reply, reading (and discarding) what the
        client still sends for a moment: closing a TCP socket with unread input
        resets the connection, and the client could lose the reply."""
        if self.closed:
            return
        with contextlib.suppress(OSError, RuntimeError):
            if self.writer.can_write_eof():
                self.writer.write_eof()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + LINGER_TIME
        discarded = 0
        with contextlib.suppress(TimeoutError, ConnectionError, OSError):
            while discarded < LINGER_BYTES:
                data = await asyncio.wait_for(
                    self.reader.read(65536), max(deadline - loop.time(), 0)
                )
                if not data:
                    break
                discarded += len(data)

    async def shutdown(self) -> None:
        forwarder, self.forwarder = self.forwarder, None
        if forwarder is not None:
            forwarder.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await forwarder
        if self.subscription is not None:
            self.subscription.close()
            self.subscription = None
        if not self.closed:
            self.closed = True
            self.writer.close()
            try:
                await asyncio.wait_for(self.writer.wait_closed(), self.server.write_timeout)
            except (TimeoutError, ConnectionError, OSError):
                self.writer.transport.abort()

    async def run(self) -> None:
        hello = {
            "type": "hello",
            "service": SERVICE,
            "version": VERSION,
            "auth_required": self.auth_required,
        }
        if not await self.send(hello):
            return
        while not self.closed:
            waiting_for_auth = self.auth_required and not self.authenticated
            try:
                line = await asyncio.wait_for(
                    self.reader.readuntil(b"\n"), AUTH_TIMEOUT if waiting_for_auth else None
                )
            except asyncio.IncompleteReadError:
                return  # the client closed (a last line without a newline is ignored)
            except asyncio.LimitOverrunError:
                message = f"request line longer than {MAX_LINE} bytes: closing"
                if await self.send(_error(None, message)):
                    await self.linger()
                return
            except TimeoutError:
                await self.send(_error(None, "authentication timed out: closing"))
                return
            except (ConnectionError, OSError):
                return
            reply = await self._handle(line)
            if reply is not None:
                try:
                    sent = await self.send(reply)
                except (TypeError, ValueError):  # a result JSON cannot carry
                    log.exception("control reply to %s cannot be encoded", self.peer)
                    sent = await self.send(
                        _error(reply["id"], "internal error: unencodable", INTERNAL)
                    )
                if not sent:
                    return
            if self.close_after_reply:
                await self.linger()
                return
            if self.subscription is not None and self.forwarder is None:
                self.forwarder = asyncio.create_task(self._forward(self.subscription))

    def check_token(self, token: str) -> bool:
        return self.server._check_token(token)

    async def _handle(self, line: bytes) -> dict[str, Any] | None:
        text = line.rstrip(b"\r\n")
        if not text.strip():
            return None  # blank lines are allowed (e.g. typed by hand) and ignored
        try:
            request = json.loads(text.decode("utf-8"), parse_constant=_reject_constant)
        except UnicodeDecodeError:
            return _error(None, "malformed request: not UTF-8")
        except RecursionError:
            return _error(None, "malformed JSON: nested too deeply")
        except ValueError as exc:
            return _error(None, f"malformed JSON: {exc}")
        if not isinstance(request, dict):
            return _error(None, f"a request must be a JSON object, got {kind_of(request)}")
        request_id = request.pop("id", None)
        if not isinstance(request_id, str | int | float | bool | type(None)):
            return _error(
                None,
                f"field 'id' must be a string, number, boolean or null, got {kind_of(request_id)}",
            )
        if isinstance(request_id, float) and not math.isfinite(request_id):
            return _error(None, "field 'id' must be a finite number")
        op = request.pop("op", None)
        if op is None:
            return _error(request_id, "missing field 'op'")
        if not isinstance(op, str):
            return _error(request_id, f"field 'op' must be a string, got {kind_of(op)}")
        if self.auth_required and not self.authenticated and op != "auth":
            self.close_after_reply = True
            return _error(request_id, "authentication required: send op 'auth' first; closing")
        handler = OPS.get(op)
        if handler is None:
            return _error(request_id, f"unknown op {short(op)}")
        try:
            result = await handler(self, Request(op, request))
        except NoSuchCall as exc:
            return _error(request_id, str(exc), NO_SUCH_CALL)
        except RelayError as exc:
            return _error(request_id, str(exc))
        except Exception:
            log.exception("control op %r from %s failed", op, self.peer)
            return _error(
                request_id, f"internal error in op {op!r} (see the relay's log)", INTERNAL
            )
        return _reply(request_id, result)

    async def _forward(self, subscription: Subscription) -> None:
        """Events of the relay to this client, until it goes or falls behind."""
        try:
            # Not ``async for``: a subscription that overflowed may never see its end
            # marker (the queue is full), so its flag is checked before each wait.
            while not subscription.overflowed:
                event = await subscription.queue.get()
                if event is None:
                    break
                if not await self.send({"type": "event", **event}):
                    return
            if subscription.overflowed:
                log.warning("control client %s fell behind on events: disconnected", self.peer)
                await self.send(
                    {
                        "type": "event",
                        "event": "end",
                        "reason": "this client fell behind and events were lost:"
                        " reconnect, subscribe and list to resynchronise",
                    }
                )
                self.abort()
            else:
                await self.send(
                    {"type": "event", "event": "end", "reason": "the relay ended the stream"}
                )
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("event stream to control client %s failed", self.peer)
            self.abort()
        finally:
            subscription.close()
            if self.subscription is subscription:
                self.subscription = None
                self.forwarder = None  # a later subscribe starts afresh
