"""The relay's control API: newline-delimited JSON over a Unix socket or TCP
(protocol version 1, ``docs/control-api.md``). PBX adapters and admins
(``pbx-zrtp ctl``) drive the relay through it.

- ``protocol``: messages, limits, error codes, addresses (shared);
- ``ops``: the operations, one table;
- ``server``: ``ControlServer`` (imports the relay);
- ``client``: ``ControlClient`` (imports only ``protocol``).

Importing this package loads the protocol and the client only (``pbx-zrtp ctl``
needs no relay); the server is ``pbx_zrtp.relay.control.server.ControlServer``.
"""

from __future__ import annotations

from pbx_zrtp.relay.control.client import ControlClient
from pbx_zrtp.relay.control.protocol import (
    MAX_LINE,
    SERVICE,
    VERSION,
    ControlConnectionError,
    ControlError,
    parse_control_address,
)

__all__ = [
    "MAX_LINE",
    "SERVICE",
    "VERSION",
    "ControlClient",
    "ControlConnectionError",
    "ControlError",
    "parse_control_address",
]
