"""Log lines for a terminal or for the systemd journal.

Under systemd (``JOURNAL_STREAM`` names the device and inode of our stderr) the
journal stamps each line itself, so pbx-zrtp writes no timestamp of its own and
starts every line with its syslog priority (``<4>`` for a warning, sd-daemon(3)):
``journalctl -p warning -u pbx-zrtp`` then shows exactly the warnings and errors.
A multi-line message (a traceback) carries the prefix on each line, so none of it
is filed as informational. Elsewhere lines carry a timestamp and the level name.

Call lines start with :func:`call_tag`, ``[CALLID port N]``, as rtpengine's do, so
``journalctl -g 'port 10002'`` follows one call. Code handling a call says so once,
``with tagged(call_id, port):``; every line logged in it (in this task, whichever
module logs it: adapter, relay pool, relay) gets the tag from the handler's
:class:`CallTagFilter`, unless the line starts with a tag of its own.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import TextIO

#: The call being handled in this context (task): (call id, port or None).
_CALL: ContextVar[tuple[str, int | None] | None] = ContextVar("pbx_zrtp_call", default=None)

#: logging level -> syslog priority
_PRIORITY = {
    logging.CRITICAL: 2,
    logging.ERROR: 3,
    logging.WARNING: 4,
    logging.INFO: 6,
    logging.DEBUG: 7,
}

TERMINAL_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
JOURNAL_FORMAT = "%(name)s: %(message)s"


def priority(levelno: int) -> int:
    """The syslog priority of a logging level (levels in between round down)."""
    for level in sorted(_PRIORITY, reverse=True):
        if levelno >= level:
            return _PRIORITY[level]
    return 7


class JournalFormatter(logging.Formatter):
    """No timestamp; ``<priority>`` before every line of the record."""

    def __init__(self) -> None:
        super().__init__(JOURNAL_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        prefix = f"<{priority(record.levelno)}>"
        return "\n".join(prefix + line for line in super().format(record).splitlines())


def under_journal(stream: TextIO) -> bool:
    """True if ``stream`` is the journal stream systemd gave us (sd_journal_stream_fd,
    ``JOURNAL_STREAM=DEV:INODE``), not merely a process started by a service."""
    value = os.environ.get("JOURNAL_STREAM", "")
    device, sep, inode = value.partition(":")
    if not sep:
        return False
    try:
        info = os.fstat(stream.fileno())
    except (OSError, ValueError, AttributeError):
        return False
    return f"{info.st_dev}:{info.st_ino}" == f"{device}:{inode}"


def setup(level: str, stream: TextIO | None = None) -> logging.Handler:
    """Configure the root logger for ``pbx-zrtp`` services (replacing earlier handlers)."""
    out = stream if stream is not None else sys.stderr
    handler = logging.StreamHandler(out)
    if under_journal(out):
        handler.setFormatter(JournalFormatter())
    else:
        handler.setFormatter(logging.Formatter(TERMINAL_FORMAT))
    handler.addFilter(CallTagFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    return handler


def set_level(level: str) -> None:
    """Change the level of a running service (SIGHUP reload)."""
    logging.getLogger().setLevel(level.upper())


def call_tag(call_id: str | None, port: int | None) -> str:
    """``[CALLID port N]``: the tag every call line starts with."""
    parts = [call_id or "-"]
    if port is not None:
        parts.append(f"port {port}")
    return "[" + " ".join(parts) + "]"


@contextmanager
def tagged(call_id: str, port: int | None = None) -> Iterator[None]:
    """Lines logged inside are about this call (in this task and those it starts)."""
    token = _CALL.set((call_id, port))
    try:
        yield
    finally:
        _CALL.reset(token)


def retag(call_id: str, port: int | None) -> None:
    """Inside :func:`tagged`: the call's port is known now (undone when it exits)."""
    _CALL.set((call_id, port))


class CallTagFilter(logging.Filter):
    """Starts each record logged while a call is handled with the call's tag."""

    def filter(self, record: logging.LogRecord) -> bool:
        call = _CALL.get()
        if call is not None:
            message = record.getMessage()
            if not message.startswith("["):  # tagged already (a mirror's own lines)
                record.msg = f"{call_tag(*call)} {message}"
                record.args = None
        return True
