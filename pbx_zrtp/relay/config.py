"""The relay's TOML configuration, with embedded defaults and precise errors.

Every problem is reported as ``ConfigError("section.key: what is wrong")`` so an
admin knows which line to fix. Unknown keys are errors too: a typo must not
silently fall back to a default.
"""

from __future__ import annotations

import importlib.util
import ipaddress
import os
import stat
import tomllib
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pbx_zrtp.relay.mirror import Policy
from pbx_zrtp.srtp import SUPPORTED_CIPHERS
from pbx_zrtp.zrtp.config import (
    DEFAULT_CIPHERS,
    DEFAULT_HASHES,
    DEFAULT_KEY_AGREEMENTS,
    ZrtpConfiguration,
    parse_algorithm_list,
)


class ConfigError(ValueError):
    """A configuration problem; the message names the setting."""


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
    key_agreements: tuple[bytes, ...] = DEFAULT_KEY_AGREEMENTS
    hashes: tuple[bytes, ...] = DEFAULT_HASHES
    ciphers: tuple[bytes, ...] = DEFAULT_CIPHERS
    auth_tags: tuple[bytes, ...] = (b"HS80", b"HS32")
    sas: tuple[bytes, ...] = (b"B32 ", b"B256")
    client_id: str = "pbx_zrtp relay"
    cache_expiration: int = 0xFFFFFFFF
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
    zrtp: ZrtpSettings = field(default_factory=ZrtpSettings)
    cache_path: str | None = None  # None: in memory (no key continuity across restarts)
    #: A PostgreSQL URL instead of cache_path: a cache shared by several relays.
    cache_url: str | None = None
    #: The PostgreSQL password (a 0600 file); without it libpq's PGPASSWORD/PGPASSFILE.
    cache_password_file: str | None = None
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
    #: Raw [asterisk] / [freeswitch] sections, checked by those adapters' own parsers.
    adapters: dict[str, dict[str, Any]] = field(default_factory=dict)

    @classmethod
    def defaults(cls) -> RelayConfig:
        config = cls()
        config.cache_path = str(_default_state_dir() / "cache.db")
        config.control_socket = str(_default_runtime_dir() / "control.sock")
        return config


_SCHEMA: dict[str, set[str]] = {
    "relay": {
        "address",
        "pbx_address",
        "ports",
        "prebind",
        "prebind_policy",
        "rtcp",
        "fastpath",
        "fastpath_workers",
    },
    "zrtp": {
        "key_agreements",
        "hashes",
        "ciphers",
        "auth_tags",
        "sas",
        "client_id",
        "cache_expiration",
        "disclosure",
        "pq_required",
    },
    "cache": {"path", "url", "password_file"},
    "timeouts": {"optional", "required", "drain"},
    "control": {"socket", "tcp", "token_file"},
    "metrics": {"listen"},
    "log": {"level"},
}


#: Sections that belong to the PBX adapters; they validate them themselves.
ADAPTER_SECTIONS = ("asterisk", "freeswitch")


def load_config(path: str | os.PathLike[str] | None) -> RelayConfig:
    """Read ``path`` (None: embedded defaults only)."""
    config = RelayConfig.defaults()
    if path is None:
        return config
    try:
        with open(path, "rb") as handle:
            data = tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such configuration file") from None
    except OSError as exc:  # a directory, no permission...
        raise ConfigError(f"{path}: cannot read the configuration: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    except UnicodeDecodeError as exc:  # found by fuzzing: TOML must be UTF-8
        raise ConfigError(f"{path}: not valid TOML: not UTF-8 at octet {exc.start}") from None
    apply(config, data)
    return config


def apply(config: RelayConfig, data: dict[str, Any]) -> RelayConfig:
    for section, values in data.items():
        if section in ADAPTER_SECTIONS:
            if not isinstance(values, dict):
                raise ConfigError(f"{section}: must be a table [{section}]")
            config.adapters[section] = values
            continue
        if section not in _SCHEMA:
            known = ", ".join(sorted([*_SCHEMA, *ADAPTER_SECTIONS]))
            raise ConfigError(f"[{section}]: unknown section (known: {known})")
        if not isinstance(values, dict):
            raise ConfigError(f"{section}: must be a table [{section}]")
        for key in values:
            if key not in _SCHEMA[section]:
                known = ", ".join(sorted(_SCHEMA[section]))
                raise ConfigError(f"{section}.{key}: unknown setting (known: {known})")
    relay = data.get("relay", {})
    if "address" in relay:
        config.relay_address = _ip("relay.address", relay["address"])
    if "pbx_address" in relay:
        config.pbx_address = _ip("relay.pbx_address", relay["pbx_address"])
    if "ports" in relay:
        config.port_min, config.port_max = _range("relay.ports", relay["ports"])
    if "prebind" in relay:
        low, high = _range("relay.prebind", relay["prebind"])
        config.prebind = tuple(p for p in range(low, high + 1) if p % 2 == 0)
    if "prebind_policy" in relay:
        config.prebind_policy = _policy("relay.prebind_policy", relay["prebind_policy"])
    if "rtcp" in relay:
        config.rtcp = _bool("relay.rtcp", relay["rtcp"])
    if "fastpath" in relay:
        value = relay["fastpath"]
        if value not in ("auto", "on", "off"):
            raise ConfigError('relay.fastpath: "auto", "on" or "off"')
        config.fastpath = value
    if "fastpath_workers" in relay:
        value = relay["fastpath_workers"]
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 64:
            raise ConfigError("relay.fastpath_workers: 0 (one per CPU but one) to 64")
        config.fastpath_workers = value
    zrtp = data.get("zrtp", {})
    names = {
        "key_agreements": "key agreement",
        "hashes": "hash",
        "ciphers": "cipher",
        "auth_tags": "auth tag",
        "sas": "SAS",
    }
    for key in names:
        if key in zrtp:
            setattr(config.zrtp, key, _algorithms(f"zrtp.{key}", zrtp[key]))
    if "client_id" in zrtp:
        value = zrtp["client_id"]
        if not isinstance(value, str) or not value.isascii() or not 1 <= len(value) <= 16:
            raise ConfigError("zrtp.client_id: must be 1-16 ASCII characters")
        config.zrtp.client_id = value
    if "cache_expiration" in zrtp:
        value = zrtp["cache_expiration"]
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 0xFFFFFFFF:
            raise ConfigError("zrtp.cache_expiration: seconds, 0-4294967295 (4294967295 = never)")
        config.zrtp.cache_expiration = value
    if "disclosure" in zrtp:
        if not isinstance(zrtp["disclosure"], bool):
            raise ConfigError("zrtp.disclosure: true or false (true when calls are recorded)")
        config.zrtp.disclosure = zrtp["disclosure"]
    if "pq_required" in zrtp:
        if not isinstance(zrtp["pq_required"], bool):
            raise ConfigError("zrtp.pq_required: true or false")
        config.zrtp.pq_required = zrtp["pq_required"]
    cache = data.get("cache", {})
    if "path" in cache:
        value = cache["path"]
        if not isinstance(value, str) or not value:
            raise ConfigError('cache.path: a file path, or "memory" for no persistent cache')
        config.cache_path = None if value == "memory" else value
    if "url" in cache:
        if "path" in cache:
            raise ConfigError("cache.url: set either cache.path (SQLite) or cache.url, not both")
        config.cache_url = _postgres_url("cache.url", cache["url"])
        config.cache_path = None
    if "password_file" in cache:
        value = cache["password_file"]
        if config.cache_url is None:
            raise ConfigError("cache.password_file: only used with cache.url (PostgreSQL)")
        if not isinstance(value, str) or not value:
            raise ConfigError("cache.password_file: a path")
        read_password_file(value)
        config.cache_password_file = value
    timeouts = data.get("timeouts", {})
    for key in ("optional", "required"):
        if key in timeouts:
            value = timeouts[key]
            if (
                not isinstance(value, int | float)
                or isinstance(value, bool)
                or not 0.5 <= value <= 120
            ):
                raise ConfigError(f"timeouts.{key}: seconds between 0.5 and 120")
            setattr(config, f"{key}_timeout", float(value))
    if "drain" in timeouts:
        value = timeouts["drain"]
        if not isinstance(value, int | float) or isinstance(value, bool) or not 0 <= value <= 3600:
            raise ConfigError("timeouts.drain: seconds between 0 and 3600")
        config.drain_timeout = float(value)
    control = data.get("control", {})
    if "socket" in control:
        value = control["socket"]
        if not isinstance(value, str):
            raise ConfigError('control.socket: a path, or "" to disable the Unix socket')
        config.control_socket = value or None
    if "tcp" in control:
        config.control_tcp = _listen("control.tcp", control["tcp"])
    if "token_file" in control:
        value = control["token_file"]
        if not isinstance(value, str) or not value:
            raise ConfigError("control.token_file: a path")
        config.control_token_file = value
    if config.control_tcp is not None and config.control_token_file is None:
        raise ConfigError("control.tcp: needs control.token_file (any local user can reach TCP)")
    metrics = data.get("metrics", {})
    if "listen" in metrics:
        value = metrics["listen"]
        config.metrics = None if value == "" else _listen("metrics.listen", value)
    log = data.get("log", {})
    if "level" in log:
        value = log["level"]
        if value not in ("debug", "info", "warning", "error"):
            raise ConfigError("log.level: one of debug, info, warning, error")
        config.log_level = value
    validate(config)
    return config


def validate(config: RelayConfig) -> None:
    if config.relay_address == config.pbx_address:
        raise ConfigError(
            "relay.address: must differ from relay.pbx_address, or the relay would take the"
            " PBX's own RTP ports (bind the PBX's SIP/RTP to its own address)"
        )
    for port in config.prebind:
        if not config.port_min <= port <= config.port_max:
            raise ConfigError(f"relay.prebind: port {port} is outside relay.ports")
    for cipher in config.zrtp.ciphers:
        if cipher.decode() not in SUPPORTED_CIPHERS:
            raise ConfigError(
                f"zrtp.ciphers: {cipher.decode()} cannot be used for SRTP here"
                f" (supported: {', '.join(SUPPORTED_CIPHERS)})"
            )
    try:
        ZrtpSettings.configuration(config.zrtp, b"\x00" * 12, "", "")
    except ValueError as exc:
        raise ConfigError(f"zrtp: {exc}") from None


def _postgres_url(name: str, value: object) -> str:
    """A libpq URL without a password (config files are often world-readable)."""
    if not isinstance(value, str) or not value:
        raise ConfigError(f'{name}: a PostgreSQL URL such as "postgresql://relay@db.example/zrtp"')
    try:
        parts = urllib.parse.urlsplit(value)
        query = urllib.parse.parse_qs(parts.query)
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError:
        raise ConfigError(f"{name}: not a valid URL") from None
    if parts.scheme not in ("postgresql", "postgres"):
        raise ConfigError(f'{name}: must start with "postgresql://" (got "{parts.scheme}:")')
    if parts.password is not None or "password" in query:
        raise ConfigError(
            f"{name}: must not contain the password; put it in cache.password_file (mode 0600)"
            " or libpq's PGPASSFILE"
        )
    if importlib.util.find_spec("psycopg") is None:
        raise ConfigError(
            f"{name}: PostgreSQL support is not installed: pip install 'pbx-zrtp[postgres]'"
        )
    return value


#: Longest secret file read (a password or token is a line, not a file system).
MAX_SECRET_FILE = 4096


def read_secret_file(name: str, path: object, *, min_length: int = 1) -> str:
    """The first line of a secret file (password, token) that only its owner can read.

    One reader for every secret file, so each refuses the same things: a path that is
    not a regular file (``/dev/zero`` would never end), a file others can read, more
    than MAX_SECRET_FILE bytes, non-UTF-8 text, an empty or short secret. Errors name
    the setting ``name`` and never contain the secret.
    """
    if not isinstance(path, str) or not path:
        raise ConfigError(f"{name}: a file path")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise ConfigError(f"{name}: cannot read {path}: {exc.strerror}") from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise ConfigError(f"{name}: {path} is not a regular file")
        if mode & 0o077:
            raise ConfigError(f"{name}: {path} is readable by other users (chmod 600)")
        data = os.read(fd, MAX_SECRET_FILE + 1)
    except OSError as exc:
        raise ConfigError(f"{name}: cannot read {path}: {exc.strerror}") from None
    finally:
        os.close(fd)
    if len(data) > MAX_SECRET_FILE:
        raise ConfigError(f"{name}: {path} is longer than {MAX_SECRET_FILE} bytes")
    try:
        lines = data.decode("utf-8").splitlines()
    except UnicodeDecodeError:
        raise ConfigError(f"{name}: {path} is not UTF-8 text") from None
    secret = lines[0].strip() if lines else ""
    if not secret:
        raise ConfigError(f"{name}: {path} is empty")
    if len(secret) < min_length:
        raise ConfigError(f"{name}: the secret in {path} is shorter than {min_length} characters")
    return secret


def read_password_file(path: str) -> str:
    """The PostgreSQL password of ``cache.password_file``."""
    return read_secret_file("cache.password_file", path)


def _ip(name: str, value: object) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"{name}: an IP address as a string")
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        raise ConfigError(f"{name}: {value!r} is not an IP address") from None
    if address.is_unspecified:
        raise ConfigError(f"{name}: must be a specific address, not {value}")
    return str(address)


def _range(name: str, value: object) -> tuple[int, int]:
    text = str(value) if isinstance(value, str | int) and not isinstance(value, bool) else None
    parts = text.split("-") if text is not None else []
    try:
        low, high = (int(parts[0]), int(parts[-1])) if len(parts) in (1, 2) else (0, -1)
    except ValueError:
        low, high = 0, -1
    if not 1024 <= low <= high <= 65534:
        raise ConfigError(f"{name}: {value!r} is not a port range LOW-HIGH within 1024-65534")
    return low, high


def _policy(name: str, value: object) -> Policy:
    try:
        return Policy(value)
    except ValueError:
        raise ConfigError(f"{name}: {value!r} is not one of off, optional, required") from None


def _bool(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{name}: true or false")
    return value


def _algorithms(name: str, value: object) -> tuple[bytes, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise ConfigError(f'{name}: a list of type names such as ["X255", "DH3k"]')
    try:
        return parse_algorithm_list(",".join(value))
    except ValueError as exc:
        raise ConfigError(f"{name}: {exc}") from None


def _listen(name: str, value: object) -> tuple[str, int]:
    if not isinstance(value, str) or ":" not in value:
        raise ConfigError(f"{name}: HOST:PORT")
    host, _, port = value.rpartition(":")
    host = host.strip("[]")
    try:
        number = int(port)
        ipaddress.ip_address(host)
    except ValueError:
        raise ConfigError(f"{name}: {value!r} is not HOST:PORT with an IP address") from None
    if not 0 <= number <= 65535:
        raise ConfigError(f"{name}: port out of range")
    return host, number
