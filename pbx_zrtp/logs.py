"""Log lines for a terminal or for the systemd journal.

Under systemd (``JOURNAL_STREAM`` names the device and inode of our stderr) the
journal stamps each line itself, so pbx-zrtp writes no timestamp of its own and
starts every line with its syslog priority (``<4>`` for a warning, sd-daemon(3)):
``journalctl -p warning -u pbx-zrtp`` then shows exactly the warnings and errors.
A multi-line message (a traceback) carries the prefix on each line, so none of it
is filed as informational. Elsewhere lines carry a timestamp and the level name.

Call lines start with :func:`call_tag`, ``[CALLID port N]``, as rtpengine's do, so
``journalctl -g 'port 10002'`` follows one call.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import TextIO

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
