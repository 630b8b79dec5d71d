"""The [freeswitch] section of the configuration."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from pbx_zrtp.calls import Policy
from pbx_zrtp.config.fields import FieldReader, flag, integer, number, parse_section, policy, text
from pbx_zrtp.config.relays import DEFAULT_GRACE, RelayEntry, read_grace, read_relays
from pbx_zrtp.config.secrets import secret_file
from pbx_zrtp.freeswitch.console import load_policies


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

    #: Where ``zrtp policy <extension> <policy>`` (fs_cli) keeps its policies, so they
    #: survive restarts; "" keeps them in memory only.
    policy_file: str = ""

    #: Several relays (``[[freeswitch.relays]]``); empty: the one relay of ``pbx-zrtp run``
    #: or ``--relay``.
    relays: list[RelayEntry] = field(default_factory=list)
    #: How long a relay may be unreachable before its calls are reported failed.
    relay_grace: float = DEFAULT_GRACE


def read(table: FieldReader) -> FreeswitchConfig:
    """The section's settings; problems go to ``table``'s reporter."""
    d = FreeswitchConfig()
    host = table.take("host", text(empty=False), d.host, fix="the event socket host")
    port = table.take(
        "port",
        integer(1, 65535),
        d.port,
        fix="the event socket port (event_socket.conf.xml, 8021)",
    )
    if table.has("password") and table.has("password_file"):
        table.problem("password", "give password or password_file, not both")
    password = table.take(
        "password", text(empty=False), d.password, fix="the event socket password"
    )
    password = table.take("password_file", secret_file(), password)
    config = FreeswitchConfig(
        host=host,
        port=port,
        password=password,
        default_policy=table.take(
            "default_policy", policy(), d.default_policy, fix="one of off, optional, required"
        ),
        hangup_failed_after=table.take(
            "hangup_failed_after", number(0, 60), d.hangup_failed_after, fix="seconds, 0-60"
        ),
        hangup_cause=table.take(
            "hangup_cause",
            text(pattern=r"[A-Z_]+"),
            d.hangup_cause,
            fix="a FreeSWITCH cause name, e.g. BEARERCAPABILITY_NOTAVAIL",
        ),
        require_advertised_relay=table.take(
            "require_advertised_relay", flag(), d.require_advertised_relay, fix="true or false"
        ),
        policy_file=table.take(
            "policy_file",
            text(),
            d.policy_file,
            fix='a JSON file pbx-zrtp may write, e.g. "/var/lib/pbx-zrtp/freeswitch-policies.json"',
        ),
        relays=read_relays(table, "freeswitch"),
        relay_grace=read_grace(table),
    )
    if config.policy_file:
        try:
            load_policies(config.policy_file)
        except ValueError as exc:
            table.problem("policy_file", str(exc))
    table.finish()
    return config


def parse(data: Mapping[str, object]) -> FreeswitchConfig:
    """The section alone; ConfigError lists all its problems."""
    return parse_section("freeswitch", data, read)


parse_freeswitch = parse
