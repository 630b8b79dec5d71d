"""``[[<pbx>.relays]]``: the relays a PBX adapter spreads its calls over, and
``<pbx>.relay_grace``. Every PBX section takes them (``pbx_zrtp.relay.pool``
serves them)."""

from __future__ import annotations

from dataclasses import dataclass, field

from pbx_zrtp.config.fields import FieldReader, ip_address, number, parse_section, text
from pbx_zrtp.config.secrets import secret_file

DEFAULT_GROUP = "default"
#: How long a relay may stay unreachable before its calls are reported failed.
DEFAULT_GRACE = 2.0

_NAME = r"[A-Za-z0-9_.-]{1,32}"
_NAMES = "1-32 letters, digits, '.', '_' or '-'"


@dataclass
class RelayEntry:
    """One ``[[<pbx>.relays]]`` table."""

    name: str
    control: str  # unix:PATH or tcp:HOST:PORT
    address: str  # R, what the PBX advertises for calls on this relay
    group: str = DEFAULT_GROUP
    weight: float = 1.0
    token: str | None = field(default=None, repr=False)


def read_relays(pbx: FieldReader, section: str) -> list[RelayEntry]:
    """``<section>.relays`` of the section ``pbx`` reads (an empty list if absent)."""
    where = f"{section}.relays"
    value = pbx.raw("relays")
    if value is None:
        return []
    if not isinstance(value, list) or not value:
        pbx.problem("relays", f"one [[{where}]] table per relay")
        return []
    entries: list[RelayEntry] = []
    for index, item in enumerate(value):
        if not isinstance(item, dict):
            pbx.problem(
                f"relays[{index}]", "a table with control, address (and name, group, weight)"
            )
            continue
        entry = _read_entry(pbx.nested(f"relays[{index}]", item), index)
        if entry is None:
            continue
        if any(e.name == entry.name for e in entries):
            pbx.problem(f"relays[{index}].name", f"{entry.name!r} is used twice")
            continue
        entries.append(entry)
    return entries


def _read_entry(table: FieldReader, index: int) -> RelayEntry | None:
    name = table.take("name", text(pattern=_NAME), f"relay{index + 1}", fix=_NAMES)
    where = "the relay's control API, unix:PATH or tcp:HOST:PORT"
    control = table.take("control", text(pattern=r"(unix|tcp):.*"), "", fix=where, missing=where)
    what = "the relay's address R (an IP address)"
    address = table.take("address", ip_address(), "", fix=what, missing=what)
    group = table.take("group", text(pattern=_NAME), DEFAULT_GROUP, fix=_NAMES)
    weight = table.take("weight", number(0, 1000), 1.0, fix="a number above 0, at most 1000")
    if weight <= 0:
        table.problem("weight", "a number above 0, at most 1000")
    token = None
    if table.has("token_file"):
        token = table.take("token_file", secret_file(min_length=16), None)
    elif control.startswith("tcp:"):
        table.problem("token_file", "needed for a tcp: control address")
    table.raw("token_file")
    table.finish()
    if table.failed:
        return None
    return RelayEntry(name, control, address, group, weight, token)


def parse_relays(section: str, value: object) -> list[RelayEntry]:
    """``<section>.relays`` alone; ConfigError lists all its problems."""
    return parse_section(section, {"relays": value}, lambda table: read_relays(table, section))


def read_grace(pbx: FieldReader) -> float:
    return pbx.take("relay_grace", number(0, 60), DEFAULT_GRACE, fix="seconds, 0-60")
