"""What an adapter needs from its PBX's management connection (AMI, ESL, ...).

A PBX link stays connected by itself (reconnecting with a back-off) and calls its
owner's ``on_connect`` after every (re)connection, so the owner can resync. Every
action has a time-out; a failed one raises ``PbxError`` (the message is safe to
log: it never holds a secret). ``Ami`` and ``Esl`` implement it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol


class PbxError(Exception):
    """A PBX action failed or timed out, or the link is down; the message is safe to log."""


@dataclass(frozen=True)
class LiveChannel:
    """A channel the PBX has up right now."""

    key: str  # the PBX's id for it (Asterisk Uniqueid, FreeSWITCH UUID)
    name: str  # what actions address (Asterisk channel name; FreeSWITCH: the UUID)
    exten: str = ""  # where it is in the dialplan, when the PBX says


class PbxLink(Protocol):
    @property
    def connected(self) -> bool: ...

    @property
    def connections(self) -> int:
        """How many times the link (re)connected: tests and resync watch it."""

    @property
    def address(self) -> str:
        """host:port, for log lines."""

    async def start(self, wait: float = 5.0) -> bool:
        """Connect (and keep reconnecting); True if connected within ``wait`` s."""

    async def close(self) -> None: ...

    async def get_var(self, channel: str, name: str) -> str:
        """A channel variable; "" when it is unset."""

    async def set_var(self, channel: str, name: str, value: str) -> None: ...

    async def set_vars(self, channel: str, values: Mapping[str, str]) -> None:
        """Several variables, in this order (values hold no newline or ';')."""

    async def hang_up(self, channel: str, cause: str) -> None:
        """Hang the channel up with a cause the PBX understands (Q.850 number or name)."""

    async def notify(self, name: str, headers: Mapping[str, str]) -> None:
        """Tell other consumers of the PBX's events (AMI UserEvent, ESL CUSTOM event)."""

    async def live_channels(self) -> list[LiveChannel]: ...
