"""The control API's wire protocol (version 1, ``docs/control-api.md``): newline-
delimited JSON objects, a ``hello`` from the server, one ``reply`` per request with
the same ``id``, ``event`` lines after ``subscribe``. Shared by the server and the
client; it knows nothing of the relay itself.
"""

from __future__ import annotations

import json
from typing import Any

from pbx_zrtp.calls import BadRequest, NoSuchCall, RelayError, RelayUnavailable

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

#: An error reply's ``code``: what kind of failure, for programs (the text is for humans).
NO_SUCH_CALL = "no_such_call"
BAD_REQUEST = "bad_request"
INTERNAL = "internal"
UNAVAILABLE = "unavailable"


class ControlError(Exception):
    """A request the relay refused, or a control connection that failed."""

    def __init__(self, message: str, code: str = "") -> None:
        super().__init__(message)
        self.code = code

    def as_relay_error(self) -> RelayError:
        """The same failure in the adapters' terms (``pbx_zrtp.calls``)."""
        if self.code == NO_SUCH_CALL:
            return NoSuchCall(str(self))
        if self.code == BAD_REQUEST:
            return BadRequest(str(self))
        return RelayUnavailable(str(self))


class ControlConnectionError(ControlError):
    """The control socket cannot be reached, or the connection was lost."""


def encode(message: dict[str, Any]) -> bytes:
    """One message as a line (ASCII: non-ASCII characters are escaped)."""
    return (json.dumps(message, separators=(",", ":"), allow_nan=False) + "\n").encode("ascii")


def reply(request_id: Any, result: Any) -> dict[str, Any]:
    return {"type": "reply", "id": request_id, "ok": True, "result": result}


def error(request_id: Any, message: str, code: str = BAD_REQUEST) -> dict[str, Any]:
    return {"type": "reply", "id": request_id, "ok": False, "error": message, "code": code}


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
