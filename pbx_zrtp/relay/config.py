"""The relay's sections of the TOML configuration, with embedded defaults.

Read with the one field reader (``pbx_zrtp.config.fields``): every problem names
its setting (``section.key: what is wrong``), unknown keys are errors (a typo must
not silently fall back to a default), and all problems are reported at once.
The PBX sections are their packages' (``pbx_zrtp.app.load_settings`` reads a
whole file).
"""

from __future__ import annotations

import importlib.util
import os
import urllib.parse
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from pbx_zrtp.cache.base import NEVER_EXPIRES
from pbx_zrtp.calls import Policy
from pbx_zrtp.config import read_toml
from pbx_zrtp.config.fields import (
    ConfigError,
    FieldReader,
    Invalid,
    Problems,
    choice,
    flag,
    integer,
    ip_address,
    number,
    policy,
    section,
    text,
)
from pbx_zrtp.config.secrets import read_secret_file, secret_file
from pbx_zrtp.zrtp.config import (
    DEFAULT_CIPHERS,
    DEFAULT_HASHES,
    DEFAULT_KEY_AGREEMENTS,
    ZrtpConfiguration,
    parse_algorithm_list,
)


def _default_state_dir() -> Path:
    if os.geteuid() == 0:
        return Path("/var/lib/pbx-zrtp")
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "pbx-zrtp"


def _default_runtime_dir() -> Path:
    if os.geteuid() == 0:
        return Path("/run/pbx-zrtp")
    base = os.environ.get("XDG_RUNTIME_DIR")
    return Path(base) / "pbx-zrtp" if base else Path(f"/tmp/pbx-zrtp-{os.getuid()}")


@dataclass
class ZrtpSettings:
    # the engine's own defaults (zrtp/config.py), written once
    key_agreements: tuple[bytes, ...] = DEFAULT_KEY_AGREEMENTS
    hashes: tuple[bytes, ...] = DEFAULT_HASHES
    ciphers: tuple[bytes, ...] = DEFAULT_CIPHERS
    #: The relay prefers the full 80-bit tag (the engine's default lists HS32 first).
    auth_tags: tuple[bytes, ...] = (b"HS80", b"HS32")
    sas: tuple[bytes, ...] = (b"B32 ", b"B256")
    client_id: str = "pbx_zrtp relay"
    cache_expiration: int = NEVER_EXPIRES
    #: D flag (§11): set it when this PBX records calls or hands keys or audio to a
    #: third party; phones then show that the call is not private.
    disclosure: bool = False
    #: Refuse every call whose key agreement is not post-quantum (a KEM hybrid).
    pq_required: bool = False

    def configuration(self, zid: bytes, self_uri: str, peer_uri: str) -> ZrtpConfiguration:
        """The per-call engine configuration: the relay is a trusted MiTM (M flag)."""
        return ZrtpConfiguration(
            zid=zid,
            client_id=self.client_id.encode("ascii")[:16].ljust(16),
            key_agreement_types=self.key_agreements,
            hash_types=self.hashes,
            cipher_types=self.ciphers,
            auth_tag_types=self.auth_tags,
            sas_types=self.sas,
            mitm=True,
            disclosure=self.disclosure,
            pq_required=self.pq_required,
            cache_expiration=self.cache_expiration,
            self_uri=self_uri,
            peer_uri=peer_uri,
        )


@dataclass
class RelayConfig:
    relay_address: str = "127.0.0.2"
    pbx_address: str = "127.0.0.1"
    port_min: int = 10000
    port_max: int = 20000
    prebind: tuple[int, ...] = ()
    prebind_policy: Policy = Policy.REQUIRED
    rtcp: bool = True
    #: Native forwarding of secured calls: "auto" (when it can be built), "on", "off".
    fastpath: str = "auto"
    #: Native worker threads (each can use its own core): 0 = one per CPU but one.
    fastpath_workers: int = 0
    #: The event loop: "asyncio" (what the native fast path needs: its UDP transports
    #: can pause reading while the worker owns a socket) or "uvloop" (faster for
    #: media forwarded in Python; then no fast path).
    event_loop: str = "asyncio"
    zrtp: ZrtpSettings = field(default_factory=ZrtpSettings)
    cache_path: str | None = None  # None: in memory (no key continuity across restarts)
    #: A PostgreSQL URL instead of cache_path: a cache shared by several relays.
    cache_url: str | None = None
    #: The PostgreSQL password (a 0600 file); without it libpq's PGPASSWORD/PGPASSFILE.
    cache_password_file: str | None = None
    #: Seconds between two purges of expired secrets from the store.
    cache_purge_interval: float = 3600.0
    optional_timeout: float = 5.0
    required_timeout: float = 10.0
    #: On SIGTERM (systemctl stop/restart): no new calls, those in progress keep
    #: flowing up to this long, then the relay stops. 0: at once.
    drain_timeout: float = 30.0
    control_socket: str | None = None
    control_tcp: tuple[str, int] | None = None
    control_token_file: str | None = None
    metrics: tuple[str, int] | None = ("127.0.0.1", 9597)
    log_level: str = "info"

    @classmethod
    def defaults(cls) -> RelayConfig:
        config = cls()
        config.cache_path = str(_default_state_dir() / "cache.db")
        config.control_socket = str(_default_runtime_dir() / "control.sock")
        return config


#: The relay's sections; a file's other sections belong to the PBX adapters.
SECTIONS = ("relay", "zrtp", "cache", "timeouts", "control", "metrics", "log")


def load_config(
    path: str | os.PathLike[str] | None, *, others: Collection[str] = ()
) -> RelayConfig:
    """Read ``path`` (None: embedded defaults only); ``others``: sections that are not
    the relay's but someone else's to read (e.g. the PBX adapters')."""
    config = RelayConfig.defaults()
    if path is None:
        return config
    problems = Problems()
    config = read(read_toml(path), problems, others=others, base=config)
    problems.check()
    return config


def apply(config: RelayConfig, data: Mapping[str, object]) -> RelayConfig:
    """``data``'s settings over ``config`` (in place); ConfigError lists every problem."""
    problems = Problems()
    read(data, problems, base=config)
    problems.check()
    return config


def read(
    data: Mapping[str, object],
    problems: Problems,
    *,
    others: Collection[str] = (),
    base: RelayConfig | None = None,
) -> RelayConfig:
    """The relay's sections of ``data`` over ``base`` (the defaults when None)."""
    config = base if base is not None else RelayConfig.defaults()
    known = ", ".join(sorted([*SECTIONS, *others]))
    tables: dict[str, FieldReader] = {}
    for name, values in data.items():
        if name not in SECTIONS and name not in others:
            problems.add(f"[{name}]: unknown section (known: {known})")
        elif not isinstance(values, dict):
            problems.add(f"{name}: must be a table [{name}]")
        elif name in SECTIONS:
            tables[name] = section(name, values, problems)
    empty = {name: section(name, {}, problems) for name in SECTIONS}
    _read_relay(tables.get("relay", empty["relay"]), config)
    _read_zrtp(tables.get("zrtp", empty["zrtp"]), config.zrtp)
    _read_cache(tables.get("cache", empty["cache"]), config)
    _read_timeouts(tables.get("timeouts", empty["timeouts"]), config)
    _read_control(tables.get("control", empty["control"]), config)
    _read_metrics(tables.get("metrics", empty["metrics"]), config)
    _read_log(tables.get("log", empty["log"]), config)
    for table in tables.values():
        table.finish()
    if not problems.items:  # checks across sections, on settings that are each valid
        _validate(config, problems)
    return config


def _read_relay(t: FieldReader, c: RelayConfig) -> None:
    c.relay_address = t.take("address", ip_address(specific=True), c.relay_address)
    c.pbx_address = t.take("pbx_address", ip_address(specific=True), c.pbx_address)
    c.port_min, c.port_max = t.take("ports", _port_range, (c.port_min, c.port_max))
    if t.has("prebind"):
        low, high = t.take("prebind", _port_range, (0, -1))
        c.prebind = tuple(p for p in range(low, high + 1) if p % 2 == 0)
    else:
        t.raw("prebind")
    c.prebind_policy = t.take("prebind_policy", policy(), c.prebind_policy)
    c.rtcp = t.take("rtcp", flag(), c.rtcp, fix="true or false")
    c.fastpath = t.take(
        "fastpath", choice("auto", "on", "off"), c.fastpath, fix='"auto", "on" or "off"'
    )
    c.fastpath_workers = t.take(
        "fastpath_workers",
        integer(0, 64),
        c.fastpath_workers,
        fix="0 (one per CPU but one) to 64",
    )
    c.event_loop = t.take(
        "event_loop", choice("asyncio", "uvloop"), c.event_loop, fix='"asyncio" or "uvloop"'
    )


_ALGORITHMS = {
    "key_agreements": "key agreement",
    "hashes": "hash",
    "ciphers": "cipher",
    "auth_tags": "auth tag",
    "sas": "SAS",
}


def _read_zrtp(t: FieldReader, z: ZrtpSettings) -> None:
    for key in _ALGORITHMS:
        setattr(z, key, t.take(key, _algorithms, getattr(z, key)))
    z.client_id = t.take(
        "client_id",
        text(pattern=r"[\x00-\x7f]{1,16}"),
        z.client_id,
        fix="must be 1-16 ASCII characters",
    )
    z.cache_expiration = t.take(
        "cache_expiration",
        integer(0, 0xFFFFFFFF),
        z.cache_expiration,
        fix="seconds, 0-4294967295 (4294967295 = never)",
    )
    z.disclosure = t.take(
        "disclosure", flag(), z.disclosure, fix="true or false (true when calls are recorded)"
    )
    z.pq_required = t.take("pq_required", flag(), z.pq_required, fix="true or false")


def _read_cache(t: FieldReader, c: RelayConfig) -> None:
    with_path = t.has("path")
    path = t.take(
        "path",
        text(empty=False),
        "",
        fix='a file path, or "memory" for no persistent cache',
    )
    if with_path and path:
        c.cache_path = None if path == "memory" else path
    if t.has("url"):
        if with_path:
            t.problem("url", "set either cache.path (SQLite) or cache.url, not both")
        c.cache_url = t.take("url", _postgres_url, c.cache_url)
        c.cache_path = None
    else:
        t.raw("url")
    if t.has("password_file"):
        if c.cache_url is None:
            t.problem("password_file", "only used with cache.url (PostgreSQL)")
            t.raw("password_file")
        else:
            path_given = t.raw("password_file")
            if not isinstance(path_given, str) or not path_given:
                t.problem("password_file", "a path")
            else:
                try:
                    secret_file()(path_given)  # readable, owner-only: checked now
                    c.cache_password_file = path_given
                except Invalid as exc:
                    t.problem("password_file", str(exc))
    else:
        t.raw("password_file")
    c.cache_purge_interval = t.take(
        "purge_interval",
        number(60, 86400),
        c.cache_purge_interval,
        fix="seconds between purges of expired secrets, 60-86400",
    )


def _read_timeouts(t: FieldReader, c: RelayConfig) -> None:
    for key in ("optional", "required"):
        current = getattr(c, f"{key}_timeout")
        value = t.take(key, number(0.5, 120), current, fix="seconds between 0.5 and 120")
        setattr(c, f"{key}_timeout", value)
    c.drain_timeout = t.take(
        "drain", number(0, 3600), c.drain_timeout, fix="seconds between 0 and 3600"
    )


def _read_control(t: FieldReader, c: RelayConfig) -> None:
    if t.has("socket"):
        socket = t.take("socket", text(), "", fix='a path, or "" to disable the Unix socket')
        c.control_socket = socket or None
    else:
        t.raw("socket")
    c.control_tcp = t.take("tcp", _listen, c.control_tcp)
    c.control_token_file = t.take(
        "token_file", text(empty=False), c.control_token_file, fix="a path"
    )
    if c.control_tcp is not None and c.control_token_file is None:
        t.problem("tcp", "needs control.token_file (any local user can reach TCP)")


def _read_metrics(t: FieldReader, c: RelayConfig) -> None:
    if t.has("listen"):
        listen = t.raw("listen")
        try:
            c.metrics = None if listen == "" else _listen(listen)
        except Invalid as exc:
            t.problem("listen", str(exc))
    else:
        t.raw("listen")


def _read_log(t: FieldReader, c: RelayConfig) -> None:
    c.log_level = t.take(
        "level",
        choice("debug", "info", "warning", "error"),
        c.log_level,
        fix="one of debug, info, warning, error",
    )


def validate(config: RelayConfig) -> None:
    """Checks across settings; ConfigError lists every problem."""
    problems = Problems()
    _validate(config, problems)
    problems.check()


def _validate(config: RelayConfig, problems: Problems) -> None:
    from pbx_zrtp.srtp import SUPPORTED_CIPHERS  # only when a file is checked: not for --help

    if config.relay_address == config.pbx_address:
        problems.add(
            "relay.address: must differ from relay.pbx_address, or the relay would take the"
            " PBX's own RTP ports (bind the PBX's SIP/RTP to its own address)"
        )
    if config.event_loop == "uvloop" and config.fastpath == "on":
        problems.add(
            "relay.event_loop: uvloop cannot hand sockets to the native fast path"
            ' (relay.fastpath = "on"): use "asyncio", or fastpath = "off"'
        )
    for port in config.prebind:
        if not config.port_min <= port <= config.port_max:
            problems.add(f"relay.prebind: port {port} is outside relay.ports")
            break
    for cipher in config.zrtp.ciphers:
        if cipher.decode() not in SUPPORTED_CIPHERS:
            problems.add(
                f"zrtp.ciphers: {cipher.decode()} cannot be used for SRTP here"
                f" (supported: {', '.join(SUPPORTED_CIPHERS)})"
            )
    try:
        ZrtpSettings.configuration(config.zrtp, b"\x00" * 12, "", "")
    except ValueError as exc:
        problems.add(f"zrtp: {exc}")


def read_password_file(path: str) -> str:
    """The PostgreSQL password of ``cache.password_file``."""
    return read_secret_file("cache.password_file", path)


# ---------------------------------------------------------------------- converters


def _postgres_url(value: object) -> str:
    """A libpq URL without a password (config files are often world-readable)."""
    if not isinstance(value, str) or not value:
        raise Invalid('a PostgreSQL URL such as "postgresql://relay@db.example/zrtp"')
    try:
        parts = urllib.parse.urlsplit(value)
        query = urllib.parse.parse_qs(parts.query)
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError:
        raise Invalid("not a valid URL") from None
    if parts.scheme not in ("postgresql", "postgres"):
        raise Invalid(f'must start with "postgresql://" (got "{parts.scheme}:")')
    if parts.password is not None or "password" in query:
        raise Invalid(
            "must not contain the password; put it in cache.password_file (mode 0600)"
            " or libpq's PGPASSFILE"
        )
    if importlib.util.find_spec("psycopg") is None:
        raise Invalid("PostgreSQL support is not installed: pip install 'pbx-zrtp[postgres]'")
    return value


def _port_range(value: object) -> tuple[int, int]:
    text = str(value) if isinstance(value, str | int) and not isinstance(value, bool) else None
    parts = text.split("-") if text is not None else []
    try:
        low, high = (int(parts[0]), int(parts[-1])) if len(parts) in (1, 2) else (0, -1)
    except ValueError:
        low, high = 0, -1
    if not 1024 <= low <= high <= 65534:
        raise Invalid(f"{value!r} is not a port range LOW-HIGH within 1024-65534")
    return low, high


def _algorithms(value: object) -> tuple[bytes, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise Invalid('a list of type names such as ["X255", "DH3k"]')
    try:
        return parse_algorithm_list(",".join(value))
    except ValueError as exc:
        raise Invalid(str(exc)) from None


def _listen(value: object) -> tuple[str, int]:
    if not isinstance(value, str) or ":" not in value:
        raise Invalid("HOST:PORT")
    host, _, port = value.rpartition(":")
    host = host.strip("[]")
    try:
        number = int(port)
        ip_address()(host)
    except (ValueError, Invalid):
        raise Invalid(f"{value!r} is not HOST:PORT with an IP address") from None
    if not 0 <= number <= 65535:
        raise Invalid("port out of range")
    return host, number


__all__ = [
    "SECTIONS",
    "ConfigError",
    "RelayConfig",
    "ZrtpSettings",
    "apply",
    "load_config",
    "read",
    "read_password_file",
    "validate",
]
