"""The relay's control API: newline-delimited JSON over a Unix socket or TCP
(protocol version 1, ``docs/control-api.md``). PBX adapters and admins
(``pbx-zrtp ctl``) drive the relay through it.

- ``protocol``: messages, limits, error codes, addresses (shared);
- ``ops``: the operations, one table;
- ``server``: ``ControlServer`` (imports the relay);
- ``client``: ``ControlClient`` (imports only ``protocol``).

Importing this package loads the protocol and the client only (``pbx-zrtp ctl``
needs no relay); ``ControlServer`` (``server``, which imports the relay) is
loaded when first named, so ``from pbx_zrtp.relay.control import ControlServer``
keeps working.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pbx_zrtp.relay.control.client import ControlClient
from pbx_zrtp.relay.control.protocol import (
    MAX_LINE,
    SERVICE,
    VERSION,
    ControlConnectionError,
    ControlError,
    parse_control_address,
)

if TYPE_CHECKING:
    from pbx_zrtp.relay.control.server import ControlServer


def __getattr__(name: str) -> object:
    if name == "ControlServer":
        from pbx_zrtp.relay.control.server import ControlServer

        return ControlServer
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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
