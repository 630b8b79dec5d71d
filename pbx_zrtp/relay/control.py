"""The relay's control API: newline-delimited JSON over a Unix socket or TCP.

PBX adapters and admins (``pbx-zrtp ctl``) drive the relay through it. The
protocol (version 1) is specified in ``docs/control-api.md``; in short, the
server greets with a ``hello``, each request is one JSON object on one line with
an ``op`` and an ``id``, and each gets exactly one ``reply`` with the same id.
After ``subscribe`` the server also writes ``event`` lines as calls change state.

Nothing a client sends can raise out of a connection handler, and no client can
block the relay or another client: a client that stops reading is disconnected
once a write has waited ``write_timeout`` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import ipaddress
import itertools
import json
import logging
import math
import os
import secrets
import socket
import stat
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from pbx_zrtp.relay.core import Relay, RelayError, Subscription
from pbx_zrtp.relay.mirror import Address, CallReport, Policy

log = logging.getLogger("pbx_zrtp.relay.control")

SERVICE = "pbx-zrtp-control"
VERSION = 1
#: Longest request line, in bytes, not counting the newline.
MAX_LINE = 64 * 1024
#: Seconds a write may wait for a client to read before the client is disconnected.
WRITE_TIMEOUT = 5.0
#: Seconds a client that must authenticate has to do so.
AUTH_TIMEOUT = 10.0
#: Delay before answering a wrong token (slows down guessing).
AUTH_FAILURE_DELAY = 0.2
#: Shortest token ``start_tcp`` accepts.
MIN_TOKEN_LENGTH = 16
#: After an error that closes a connection: how long, and how much, to read and discard.
LINGER_TIME = 1.0
LINGER_BYTES = 1024 * 1024
#: Connections served at once; more are refused with an error.
MAX_CLIENTS = 64
#: Longest line the client accepts from the server (replies to ``list`` can be long).
CLIENT_MAX_LINE = 16 * 1024 * 1024
#: Events the client buffers before it stops reading (the server then drops it).
CLIENT_EVENT_BUFFER = 1000
#: Longest path ``bind()`` accepts for a Unix socket on Linux (sun_path minus the NUL).
UNIX_PATH_MAX = 107

_POLICIES = ", ".join(repr(p.value) for p in Policy)


class ControlSocketError(OSError, ValueError):
    """The control socket's path cannot be used (too long, not a socket): an error of
    the setup, said in one line (an OSError, as the CLI reports those)."""


class ControlSocketBusy(OSError, RuntimeError):
    """Another process (a relay already running) serves the control socket."""


class ControlError(Exception):
    """A request the relay refused, or a control connection that failed."""


class ControlConnectionError(ControlError):
    """The control socket cannot be reached, or the connection was lost."""


class _BadRequest(Exception):
    """A request that does not follow the protocol; the message names the field."""


# ---------------------------------------------------------------------- validation


def _short(value: str, limit: int = 40) -> str:
    """A client-supplied name, shortened for an error message."""
    return repr(value if len(value) <= limit else value[:limit] + "...")


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _has_control_characters(value: str) -> bool:
    return any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in value)


class _Args:
    """The fields of one request, taken one by one; leftovers are an error."""

    def __init__(self, op: str, fields: dict[str, Any]) -> None:
        self.op = op
        self.fields = fields

    def _take(self, name: str, required: bool) -> Any:
        if name not in self.fields:
            if required:
                raise _BadRequest(f"missing field {name!r} for op {self.op!r}")
            return None
        value = self.fields.pop(name)
        if value is None and not required:
            return None  # an explicit null means "not given" for optional fields
        return value

    def string(
        self, name: str, *, required: bool = False, max_length: int = 200, text: bool = True
    ) -> str | None:
        value = self._take(name, required)
        if value is None:
            if required:
                raise _BadRequest(f"field {name!r} must be a string, got null")
            return None
        if not isinstance(value, str):
            raise _BadRequest(f"field {name!r} must be a string, got {_json_type(value)}")
        if len(value) > max_length:
            raise _BadRequest(f"field {name!r} is longer than {max_length} characters")
        if text and _has_control_characters(value):
            raise _BadRequest(f"field {name!r} must not contain control characters")
        return value

    def call_id(self) -> str:
        value = self.string("call_id", required=True)
        assert value is not None
        if not value:
            raise _BadRequest("field 'call_id' must not be empty")
        return value

    def integer(self, name: str, *, low: int, high: int, required: bool = False) -> int | None:
        value = self._take(name, required)
        if value is None:
            if required:
                raise _BadRequest(f"field {name!r} must be an integer, got null")
            return None
        if type(value) is not int:  # bool is an int in Python, not in JSON
            raise _BadRequest(f"field {name!r} must be an integer, got {_json_type(value)}")
        if not low <= value <= high:
            raise _BadRequest(f"field {name!r} must be {low}-{high}")
        return value

    def boolean(self, name: str, default: bool) -> bool:
        value = self._take(name, False)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise _BadRequest(f"field {name!r} must be true or false, got {_json_type(value)}")
        return value

    def policy(self, *, required: bool = True) -> Policy | None:
        value = self._take("policy", required)
        if value is None:
            if required:
                raise _BadRequest(f"field 'policy' must be one of {_POLICIES}, got null")
            return None
        if not isinstance(value, str):
            raise _BadRequest(f"field 'policy' must be a string, got {_json_type(value)}")
        try:
            return Policy(value)
        except ValueError:
            raise _BadRequest(f"field 'policy' must be one of {_POLICIES}") from None

    def ip_address(self, name: str, family_of: str | None) -> str | None:
        value = self.string(name, max_length=64)
        if value is None:
            return None
        try:
            address = ipaddress.ip_address(value)
        except ValueError:
            raise _BadRequest(f"field {name!r} must be an IP address (not a host name)") from None
        if family_of is not None:
            try:
                version = ipaddress.ip_address(family_of).version
            except ValueError:
                version = address.version  # the relay's address is a name: cannot tell
            if version != address.version:
                raise _BadRequest(
                    f"field {name!r} must be an IPv{version} address, like the relay's own"
                )
        return str(address)  # canonical: the relay compares it with packet sources

    def finish(self) -> None:
        if self.fields:
            names = ", ".join(_short(name) for name in sorted(self.fields)[:5])
            raise _BadRequest(f"unknown field {names} for op {self.op!r}")


# ---------------------------------------------------------------------- server


def _encode(message: dict[str, Any]) -> bytes:
    return (json.dumps(message, separators=(",", ":"), allow_nan=False) + "\n").encode("ascii")


def _reply(request_id: Any, result: Any) -> dict[str, Any]:
    return {"type": "reply", "id": request_id, "ok": True, "result": result}


def _error(request_id: Any, message: str) -> dict[str, Any]:
    return {"type": "reply", "id": request_id, "ok": False, "error": message}


def _report(report: CallReport) -> dict[str, Any]:
    return report.as_dict()


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


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
                await connection.send(_error(None, "too many control connections"))
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
    """One client: reads requests in order, writes replies and events."""

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
        self._ops: dict[str, Callable[[_Args], Awaitable[Any]]] = {
            "auth": self._op_auth,
            "ping": self._op_ping,
            "create": self._op_create,
            "update": self._op_update,
            "delete": self._op_delete,
            "show": self._op_show,
            "list": self._op_list,
            "verify": self._op_verify,
            "enroll": self._op_enroll,
            "unenroll": self._op_unenroll,
            "enrolled": self._op_enrolled,
            "stats": self._op_stats,
            "subscribe": self._op_subscribe,
        }

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
                    sent = await self.send(_error(reply["id"], "internal error: unencodable"))
                if not sent:
                    return
            if self.close_after_reply:
                await self.linger()
                return
            if self.subscription is not None and self.forwarder is None:
                self.forwarder = asyncio.create_task(self._forward(self.subscription))

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
            return _error(None, f"a request must be a JSON object, got {_json_type(request)}")
        request_id = request.pop("id", None)
        if not isinstance(request_id, str | int | float | bool | type(None)):
            return _error(
                None,
                f"field 'id' must be a string, number, boolean or null, got"
                f" {_json_type(request_id)}",
            )
        if isinstance(request_id, float) and not math.isfinite(request_id):
            return _error(None, "field 'id' must be a finite number")
        op = request.pop("op", None)
        if op is None:
            return _error(request_id, "missing field 'op'")
        if not isinstance(op, str):
            return _error(request_id, f"field 'op' must be a string, got {_json_type(op)}")
        if self.auth_required and not self.authenticated and op != "auth":
            self.close_after_reply = True
            return _error(request_id, "authentication required: send op 'auth' first; closing")
        handler = self._ops.get(op)
        if handler is None:
            return _error(request_id, f"unknown op {_short(op)}")
        args = _Args(op, request)
        try:
            result = await handler(args)
        except _BadRequest as exc:
            return _error(request_id, str(exc))
        except RelayError as exc:
            return _error(request_id, str(exc))
        except Exception:
            log.exception("control op %r from %s failed", op, self.peer)
            return _error(request_id, f"internal error in op {op!r} (see the relay's log)")
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

    # -------------------------------------------------------------- ops

    async def _op_auth(self, args: _Args) -> Any:
        token = args.string("token", required=True, max_length=4096, text=False)
        args.finish()
        assert token is not None
        if self.server._check_token(token):
            self.authenticated = True
            return "authenticated"
        log.warning("control client %s sent a wrong token: disconnected", self.peer)
        await asyncio.sleep(AUTH_FAILURE_DELAY)
        self.close_after_reply = True
        raise _BadRequest("authentication failed: closing")

    async def _op_ping(self, args: _Args) -> Any:
        args.finish()
        return "pong"

    async def _op_create(self, args: _Args) -> Any:
        call_id = args.call_id()
        port = args.integer("port", low=1, high=65535, required=True)
        policy = args.policy()
        relay_host = self.relay.layout.relay_host
        pbx_host = args.ip_address("pbx_host", relay_host)
        # The PBX's RTCP goes to pbx_port + 1, which must be a port too.
        pbx_port = args.integer("pbx_port", low=1, high=65534)
        self_uri = args.string("self_uri", max_length=1024) or ""
        peer_uri = args.string("peer_uri", max_length=1024) or ""
        payload_type = args.integer("payload_type", low=0, high=127)
        phone_host = args.ip_address("phone_host", None)
        phone_port = args.integer("phone_port", low=1, high=65535)
        bridge = args.string("bridge", max_length=200) or ""
        enroll = args.boolean("enroll", False)
        args.finish()
        assert port is not None and policy is not None
        if (phone_host is None) != (phone_port is None):
            raise _BadRequest("fields 'phone_host' and 'phone_port' go together: give both or none")
        phone_hint: Address | None = None
        if phone_host is not None and phone_port is not None:
            phone_hint = (phone_host, phone_port)
        report = await self.relay.create(
            call_id,
            port,
            policy,
            pbx_host=pbx_host,
            pbx_port=pbx_port,
            self_uri=self_uri,
            peer_uri=peer_uri,
            payload_type=payload_type if payload_type is not None else 0,
            phone_hint=phone_hint,
            bridge=bridge,
            enroll=enroll,
        )
        return _report(report)

    async def _op_update(self, args: _Args) -> Any:
        call_id = args.call_id()
        policy = args.policy()
        args.finish()
        return _report(self.relay.update(call_id, policy=policy))

    async def _op_delete(self, args: _Args) -> Any:
        call_id = args.call_id()
        reason = args.string("reason", max_length=200)
        args.finish()
        return _report(self.relay.delete(call_id, reason or "hangup"))

    async def _op_show(self, args: _Args) -> Any:
        call_id = args.call_id()
        args.finish()
        return _report(self.relay.get(call_id))

    async def _op_list(self, args: _Args) -> Any:
        args.finish()
        return [_report(report) for report in self.relay.calls()]

    async def _op_verify(self, args: _Args) -> Any:
        call_id = args.call_id()
        verified = args.boolean("verified", True)
        args.finish()
        self.relay.verify(call_id, verified)
        return _report(await self.relay.stored(call_id))

    async def _op_enroll(self, args: _Args) -> Any:
        call_id = args.call_id()
        args.finish()
        return _report(await self.relay.enroll(call_id))

    async def _op_unenroll(self, args: _Args) -> Any:
        call_id = args.string("call_id", max_length=200)
        peer_zid = args.string("peer_zid", max_length=24)
        args.finish()
        if (call_id is None) == (peer_zid is None):
            raise _BadRequest("unenroll takes 'call_id' or 'peer_zid' (24 hex digits), not both")
        zid: bytes | None = None
        if peer_zid is not None:
            try:
                zid = bytes.fromhex(peer_zid)
            except ValueError:
                zid = b""
            if len(zid) != 12:
                raise _BadRequest("field 'peer_zid' must be 24 hex digits")
        return {"erased": await self.relay.unenroll(call_id=call_id, peer_zid=zid)}

    async def _op_enrolled(self, args: _Args) -> Any:
        args.finish()
        return [
            {"self_zid": own.hex(), "peer_zid": peer.hex(), "expires": expires}
            for own, peer, expires in await self.relay.enrolled_phones()
        ]

    async def _op_stats(self, args: _Args) -> Any:
        args.finish()
        return self.relay.stats()

    async def _op_subscribe(self, args: _Args) -> Any:
        args.finish()
        if self.subscription is not None:
            raise _BadRequest("this connection is already subscribed")
        self.subscription = self.relay.subscribe()  # events queue up until the reply is out
        return "subscribed"


# ---------------------------------------------------------------------- client


def parse_control_address(value: str) -> tuple[str, str, int]:
    """``unix:/path`` (or a bare absolute path) or ``tcp:host:port`` ->
    (kind, path or host, port); IPv6 hosts as ``tcp:[::1]:5097``."""
    if value.startswith("unix:"):
        path = value[5:]
        if not path:
            raise ValueError(f"{value!r}: the Unix socket path is empty")
        return "unix", path, 0
    if value.startswith("/"):
        return "unix", value, 0
    if value.startswith("tcp:"):
        host, sep, port = value[4:].rpartition(":")
        host = host.strip("[]")
        if not sep or not host:
            raise ValueError(f"{value!r} is not tcp:HOST:PORT")
        try:
            number = int(port)
        except ValueError:
            raise ValueError(f"{value!r}: port {port!r} is not a number") from None
        if not 1 <= number <= 65535:
            raise ValueError(f"{value!r}: port must be 1-65535")
        return "tcp", host, number
    raise ValueError(f"{value!r} is neither unix:/PATH nor tcp:HOST:PORT")


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
            self._writer.write(_encode({"id": request_id, "op": op, **args}))
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
            raise ControlError(str(reply.get("error", "the relay refused the request")))
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


__all__ = [
    "MAX_LINE",
    "SERVICE",
    "VERSION",
    "ControlClient",
    "ControlConnectionError",
    "ControlError",
    "ControlServer",
    "parse_control_address",
]
