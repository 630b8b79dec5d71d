"""The [asterisk] section of the configuration, and Asterisk-style extension patterns."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache

from pbx_zrtp.calls import Policy
from pbx_zrtp.config.fields import (
    FieldReader,
    Invalid,
    flag,
    integer,
    number,
    parse_section,
    text,
)
from pbx_zrtp.config.relays import DEFAULT_GRACE, RelayEntry, read_grace, read_relays
from pbx_zrtp.config.secrets import secret_file


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
    #: ``[asterisk.phone_policies]``: endpoint names or patterns -> the policy of calls
    #: from and to that phone (an `auto` call takes the strongest that applies).
    phone_policies: list[tuple[str, Policy]] = field(default_factory=list)
    #: Safety net: hang up a `required` call still up this long after it failed.
    hangup_failed_after: float = 3.0
    #: The UserEvent name the dialplan raises (extensions_pbx_zrtp.conf).
    event: str = "PbxZrtp"
    #: Accept the phone's media only from the IP of its SIP signalling.
    restrict_phone_to_sip_address: bool = False
    #: Seconds between two looks (one AMI Getvar per audio-only call) for a video stream
    #: a re-INVITE added to a call (AMI has no event for it); 0: never look.
    video_watch: float = 2.0

    #: Several relays (``[[asterisk.relays]]``); empty: the one relay of ``pbx-zrtp run``
    #: or ``--relay``.
    relays: list[RelayEntry] = field(default_factory=list)
    #: How long a relay may be unreachable before its calls are reported failed.
    relay_grace: float = DEFAULT_GRACE


def read(table: FieldReader) -> AsteriskConfig:
    """The section's settings; problems go to ``table``'s reporter."""
    d = AsteriskConfig()
    host = table.take("host", text(empty=False), d.host, fix="the AMI host name or address")
    port = table.take(
        "port", integer(1, 65535), d.port, fix="the AMI TCP port (manager.conf, usually 5038)"
    )
    username = table.take("username", text(empty=False), d.username, fix="the manager.conf user")
    if table.has("secret") and table.has("secret_file"):
        table.problem("secret", "give secret or secret_file, not both")
    given = table.has("secret") or table.has("secret_file")
    secret = table.take(
        "secret", text(empty=False), "", fix="the manager.conf secret (prefer secret_file)"
    )
    secret = table.take("secret_file", secret_file(), secret)
    if not given:
        table.problem("secret_file", "needed to log in to AMI (or asterisk.secret)")
    config = AsteriskConfig(
        host=host,
        port=port,
        username=username,
        secret=secret,
        default_policy=table.take("default_policy", _policy, d.default_policy),
        policies=_read_policies(table),
        phone_policies=_read_policies(table, "phone_policies"),
        hangup_failed_after=table.take(
            "hangup_failed_after",
            number(0, 60),
            d.hangup_failed_after,
            fix="seconds, 0-60 (0 disables)",
        ),
        event=table.take(
            "event",
            text(pattern=r"[A-Za-z0-9_]+"),
            d.event,
            fix="a UserEvent name (letters, digits, _)",
        ),
        restrict_phone_to_sip_address=table.take(
            "restrict_phone_to_sip_address",
            flag(),
            d.restrict_phone_to_sip_address,
            fix="true or false",
        ),
        video_watch=table.take(
            "video_watch",
            number(0, 60),
            d.video_watch,
            fix="seconds, 0-60 (0: video added by a re-INVITE is never mirrored)",
        ),
        relays=read_relays(table, "asterisk"),
        relay_grace=read_grace(table),
    )
    table.finish()
    return config


def parse(data: Mapping[str, object]) -> AsteriskConfig:
    """The section alone; ConfigError lists all its problems."""
    return parse_section("asterisk", data, read)


parse_asterisk = parse


def _policy(value: object) -> Policy:
    try:
        return Policy.named(value)
    except ValueError:
        raise Invalid(f"{value!r} is not one of off, optional, required") from None


def _read_policies(table: FieldReader, key: str = "policies") -> list[tuple[str, Policy]]:
    """``[asterisk.policies]`` (or ``.phone_policies``): "pattern" = "policy", first
    match wins."""
    value = table.raw(key)
    if value is None:
        return []
    if not isinstance(value, dict):
        table.problem(key, 'a table of "pattern" = "policy"')
        return []
    policies = []
    for pattern, wanted in value.items():
        try:
            compile_pattern(pattern)
            policies.append((pattern, _policy(wanted)))
        except ValueError as exc:
            table.problem(f"{key}.{pattern}", str(exc))
    return policies


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


def match_policy(
    config: AsteriskConfig, extension: str, table: list[tuple[str, Policy]] | None = None
) -> Policy | None:
    for pattern, policy in config.policies if table is None else table:
        if compile_pattern(pattern).fullmatch(extension):
            return policy
    return None
