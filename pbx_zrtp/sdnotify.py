"""systemd's readiness protocol (sd_notify), without libsystemd.

Under ``Type=notify`` systemd sets ``NOTIFY_SOCKET`` (a path, or ``@name`` for an
abstract socket) and waits for a datagram saying ``READY=1`` before it counts the
service as started; ``systemctl start`` and units ordered after it wait until then.
pbx-zrtp sends it once the control socket and the metrics endpoint listen (and the
adapters have started), ``RELOADING=1`` / ``READY=1`` around a SIGHUP reload and
``STOPPING=1`` when it drains. Without ``NOTIFY_SOCKET`` every call is a no-op;
a failure to send is logged once and never stops the service.
"""

from __future__ import annotations

import logging
import os
import socket
import time

log = logging.getLogger("pbx_zrtp")

_warned = False


def _address() -> str | None:
    path = os.environ.get("NOTIFY_SOCKET", "")
    if path.startswith("@"):
        return "\0" + path[1:]
    if path.startswith("/"):
        return path
    return None  # unset, or a transport this does not speak (vsock)


def notify(*fields: str) -> bool:
    """Send ``fields`` (``"READY=1"``, ``"STATUS=…"``) to systemd; False if not under
    systemd's ``Type=notify`` or the message could not be sent."""
    global _warned
    address = _address()
    if address is None:
        return False
    message = "\n".join(fields).encode()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(message)
    except OSError as exc:
        if not _warned:
            _warned = True
            log.warning("cannot notify systemd through NOTIFY_SOCKET: %s", exc)
        return False
    return True


def ready(status: str) -> bool:
    return notify("READY=1", f"STATUS={status}")


def reloading() -> bool:
    """Before a reload; systemd wants the monotonic time with it (systemd >= 253)."""
    usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    return notify("RELOADING=1", f"MONOTONIC_USEC={usec}")


def stopping(status: str) -> bool:
    return notify("STOPPING=1", f"STATUS={status}")
