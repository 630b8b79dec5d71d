"""The [asterisk] section of the configuration, and Asterisk-style extension patterns."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from pbx_zrtp.relay.config import ConfigError, read_secret_file
from pbx_zrtp.relay.mirror import Policy
from pbx_zrtp.relay.pool import DEFAULT_GRACE, RelayEntry, parse_grace, parse_relays

_KEYS = {
    "relays",
    "relay_grace",
    "host",
    "port",
    "username",
    "secret",
    "secret_file",
    "default_policy",
    "policies",
    "hangup_failed_after",
    "event",
    "restrict_phone_to_sip_address",
}


@dataclass
class AsteriskConfig:
    host: str = "127.0.0.1"
    port: int = 5038
    username: str = "pbx-zrtp"
    secret: str = field(default="", repr=False)
    #: Policy for ``Gosub(pbx-zrtp,s,1(auto))`` when no AstDB key or pattern matches.
    default_policy: Policy = Policy.OPTIONAL
    #: Extension patterns (Asterisk syntax, first match wins) -> policy.
    policies: list[tuple[str, Policy]] = field(default_factory=list)
    #: Safety net: hang up a `required` call still up this long after it failed.
    hangup_failed_after: float = 3.0
    #: The UserEvent name the dialplan raises (extensions_pbx_zrtp.conf).
    event: str = "PbxZrtp"
    #: Accept the phone's media only from the IP of its SIP signalling.
    restrict_phone_to_sip_address: bool = False

    #: Several relays (``[[asterisk.relays]]``); empty: the one relay of ``pbx-zrtp run``
    #: or ``--relay``.
    relays: list[RelayEntry] = field(default_factory=list)
    #: How long a relay may be unreachable before its calls are reported failed.
    relay_grace: float = DEFAULT_GRACE


def parse_asterisk(data: dict[str, Any]) -> AsteriskConfig:
    config = AsteriskConfig()
    for key in data:
        if key not in _KEYS:
            raise ConfigError(
                f"asterisk.{key}: unknown setting (known: {', '.join(sorted(_KEYS))})"
            )
    if "host" in data:
        if not isinstance(data["host"], str) or not data["host"]:
            raise ConfigError("asterisk.host: the AMI host name or address")
        config.host = data["host"]
    if "port" in data:
        port = data["port"]
        if not isinstance(port, int) or isinstance(port, bool) or not 1 <= port <= 65535:
            raise ConfigError("asterisk.port: the AMI TCP port (manager.conf, usually 5038)")
        config.port = port
    if "username" in data:
        if not isinstance(data["username"], str) or not data["username"]:
            raise ConfigError("asterisk.username: the manager.conf user")
        config.username = data["username"]
    if "secret" in data and "secret_file" in data:
        raise ConfigError("asterisk.secret: give secret or secret_file, not both")
    if "secret" in data:
        if not isinstance(data["secret"], str) or not data["secret"]:
            raise ConfigError("asterisk.secret: the manager.conf secret (prefer secret_file)")
        config.secret = data["secret"]
    if "secret_file" in data:
        config.secret = read_secret_file("asterisk.secret_file", data["secret_file"])
    if not config.secret:
        raise ConfigError("asterisk.secret_file: needed to log in to AMI (or asterisk.secret)")
    if "default_policy" in data:
        config.default_policy = _policy("asterisk.default_policy", data["default_policy"])
    if "policies" in data:
        table = data["policies"]
        if not isinstance(table, dict):
            raise ConfigError('asterisk.policies: a table of "pattern" = "policy"')
        for pattern, policy in table.items():
            try:
                compile_pattern(pattern)
            except ValueError as exc:
                raise ConfigError(f"asterisk.policies.{pattern}: {exc}") from None
            config.policies.append((pattern, _policy(f"asterisk.policies.{pattern}", policy)))
    if "hangup_failed_after" in data:
        value = data["hangup_failed_after"]
        if not isinstance(value, int | float) or isinstance(value, bool) or not 0 <= value <= 60:
            raise ConfigError("asterisk.hangup_failed_after: seconds, 0-60 (0 disables)")
        config.hangup_failed_after = float(value)
    if "event" in data:
        if not isinstance(data["event"], str) or not re.fullmatch(r"[A-Za-z0-9_]+", data["event"]):
            raise ConfigError("asterisk.event: a UserEvent name (letters, digits, _)")
        config.event = data["event"]
    if "restrict_phone_to_sip_address" in data:
        if not isinstance(data["restrict_phone_to_sip_address"], bool):
            raise ConfigError("asterisk.restrict_phone_to_sip_address: true or false")
        config.restrict_phone_to_sip_address = data["restrict_phone_to_sip_address"]
    if "relays" in data:
        config.relays = parse_relays("asterisk", data["relays"])
    if "relay_grace" in data:
        config.relay_grace = parse_grace("asterisk", data["relay_grace"])
    return config


def _policy(name: str, value: object) -> Policy:
    try:
        return Policy(value)
    except ValueError:
        raise ConfigError(f"{name}: {value!r} is not one of off, optional, required") from None


@lru_cache(maxsize=256)
def compile_pattern(pattern: str) -> re.Pattern[str]:
    """An Asterisk extension pattern as a regex: "600" literally; "_6XX", "_NXXNXXXXXX",
    "_[1-5]." with X=0-9, Z=1-9, N=2-9, [..] a set, "." one or more, "!" zero or more."""
    if not pattern:
        raise ValueError("empty pattern")
    if not pattern.startswith("_"):
        return re.compile(re.escape(pattern))
    out = []
    body = pattern[1:]
    i = 0
    while i < len(body):
        ch = body[i]
        if ch in "Xx":
            out.append("[0-9]")
        elif ch in "Zz":
            out.append("[1-9]")
        elif ch in "Nn":
            out.append("[2-9]")
        elif ch == ".":
            out.append(".+")
        elif ch == "!":
            out.append(".*")
        elif ch == "[":
            end = body.find("]", i)
            if end < 0:
                raise ValueError("unclosed [ in pattern")
            content = body[i + 1 : end]
            if not content or not re.fullmatch(r"[0-9A-Za-z*#+\-]+", content):
                raise ValueError(f"bad character set [{content}]")
            out.append("[" + content.replace("\\", "") + "]")
            i = end
        elif ch == "-":
            pass  # Asterisk ignores dashes in patterns
        else:
            out.append(re.escape(ch))
        i += 1
    return re.compile("".join(out))


def match_policy(config: AsteriskConfig, extension: str) -> Policy | None:
    for pattern, policy in config.policies:
        if compile_pattern(pattern).fullmatch(extension):
            return policy
    return None
