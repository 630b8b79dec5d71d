"""The [freeswitch] section of the configuration."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from pbx_zrtp.relay.config import ConfigError, read_secret_file
from pbx_zrtp.relay.mirror import Policy
from pbx_zrtp.relay.pool import DEFAULT_GRACE, RelayEntry, parse_grace, parse_relays

_KEYS = {
    "relays",
    "relay_grace",
    "host",
    "port",
    "password",
    "password_file",
    "default_policy",
    "hangup_failed_after",
    "hangup_cause",
    "require_advertised_relay",
}


@dataclass
class FreeswitchConfig:
    host: str = "127.0.0.1"
    port: int = 8021
    password: str = field(default="ClueCon", repr=False)
    #: Policy for calls that ask with `pbx_zrtp_policy=auto` and match no
    #: `pbx_zrtp_policy_<destination>` global variable.
    default_policy: Policy = Policy.OPTIONAL
    #: Hang up a `required` call this long after it failed (the dialplan may first).
    hangup_failed_after: float = 1.0
    hangup_cause: str = "BEARERCAPABILITY_NOTAVAIL"
    #: Refuse (report failed) a ZRTP call whose rtp_adv_audio_ip is not the relay.
    require_advertised_relay: bool = True

    #: Several relays (``[[freeswitch.relays]]``); empty: the one relay of ``pbx-zrtp run``
    #: or ``--relay``.
    relays: list[RelayEntry] = field(default_factory=list)
    #: How long a relay may be unreachable before its calls are reported failed.
    relay_grace: float = DEFAULT_GRACE


def parse_freeswitch(data: dict[str, Any]) -> FreeswitchConfig:
    config = FreeswitchConfig()
    for key in data:
        if key not in _KEYS:
            known = ", ".join(sorted(_KEYS))
            raise ConfigError(f"freeswitch.{key}: unknown setting (known: {known})")
    if "host" in data:
        if not isinstance(data["host"], str) or not data["host"]:
            raise ConfigError("freeswitch.host: the event socket host")
        config.host = data["host"]
    if "port" in data:
        port = data["port"]
        if not isinstance(port, int) or isinstance(port, bool) or not 1 <= port <= 65535:
            raise ConfigError(
                "freeswitch.port: the event socket port (event_socket.conf.xml, 8021)"
            )
        config.port = port
    if "password" in data and "password_file" in data:
        raise ConfigError("freeswitch.password: give password or password_file, not both")
    if "password" in data:
        if not isinstance(data["password"], str) or not data["password"]:
            raise ConfigError("freeswitch.password: the event socket password")
        config.password = data["password"]
    if "password_file" in data:
        config.password = read_secret_file("freeswitch.password_file", data["password_file"])
    if "default_policy" in data:
        try:
            config.default_policy = Policy(data["default_policy"])
        except ValueError:
            raise ConfigError("freeswitch.default_policy: one of off, optional, required") from None
    if "hangup_failed_after" in data:
        value = data["hangup_failed_after"]
        if not isinstance(value, int | float) or isinstance(value, bool) or not 0 <= value <= 60:
            raise ConfigError("freeswitch.hangup_failed_after: seconds, 0-60")
        config.hangup_failed_after = float(value)
    if "hangup_cause" in data:
        cause = data["hangup_cause"]
        if not isinstance(cause, str) or not re.fullmatch(r"[A-Z_]+", cause):
            raise ConfigError(
                "freeswitch.hangup_cause: a FreeSWITCH cause name, e.g. BEARERCAPABILITY_NOTAVAIL"
            )
        config.hangup_cause = cause
    if "require_advertised_relay" in data:
        if not isinstance(data["require_advertised_relay"], bool):
            raise ConfigError("freeswitch.require_advertised_relay: true or false")
        config.require_advertised_relay = data["require_advertised_relay"]
    if "relays" in data:
        config.relays = parse_relays("freeswitch", data["relays"])
    if "relay_grace" in data:
        config.relay_grace = parse_grace("freeswitch", data["relay_grace"])
    return config
