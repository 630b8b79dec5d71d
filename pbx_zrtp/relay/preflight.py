"""What ``--check`` verifies beyond the file's syntax: everything ``run`` would refuse.

Parsing tells whether a setting is well-formed; this probes the host the way the
relay will use it, without keeping anything: the secret files (mode, length), that
``relay.address`` is an address of this host and the ports it binds can be bound,
that the metrics port is free, that the control socket is not served by another
relay, that the cache's directory is writable. Port ranges that cannot work (no
even port) are errors; ranges that probably should not (one port, SIP's 5060/5061)
are warnings. While a relay already serves the configured control socket (an admin
checking an edit before ``systemctl reload``), the ports it holds are not probed:
that relay holds them.
"""

from __future__ import annotations

import errno
import os
import socket
import stat
from dataclasses import dataclass, field
from pathlib import Path

from pbx_zrtp.relay.config import ConfigError, RelayConfig, read_password_file
from pbx_zrtp.relay.service import read_token

SIP_PORTS = (5060, 5061)


@dataclass
class Findings:
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def _bindable(family: int, kind: int, host: str, port: int) -> str | None:
    """None if ``host:port`` can be bound now, else why not."""
    with socket.socket(family, kind) as probe:
        if kind == socket.SOCK_STREAM:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as asyncio does
        try:
            probe.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRNOTAVAIL:
                return f"{host} is not an address of this host"
            if exc.errno == errno.EADDRINUSE:
                return f"{host}:{port} is in use"
            return f"{host}:{port}: {exc.strerror or exc}"
    return None


def _family(host: str) -> int:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def _served(path: str | None) -> bool:
    """A process answers on the control socket ``path``."""
    if not path:
        return False
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(1.0)
        try:
            probe.connect(path)
        except OSError:
            return False
    return True


def port_range(config: RelayConfig) -> Findings:
    """What is wrong with ``relay.ports`` itself: ``--check`` and ``run`` alike."""
    found = Findings()
    _range(config, found)
    return found


def _range(config: RelayConfig, found: Findings) -> None:
    low, high = config.port_min, config.port_max
    even = [p for p in (low, low + 1) if p % 2 == 0 and p <= high]
    if not even:
        found.errors.append(
            f"relay.ports: {low}-{high} holds no even port (RTP uses even ports, RTCP the next)"
        )
    elif low == high:
        found.warnings.append(
            f"relay.ports: one port ({low}); a range LOW-HIGH equal to the PBX's RTP range "
            'is meant (e.g. "10000-20000")'
        )
    for sip in SIP_PORTS:
        if low <= sip <= high:
            found.warnings.append(
                f"relay.ports: {low}-{high} includes SIP's port {sip}: the relay could take it"
            )


def _ports(config: RelayConfig, found: Findings, *, running: bool) -> None:
    _range(config, found)
    low, high = config.port_min, config.port_max
    even = [p for p in (low, low + 1) if p % 2 == 0 and p <= high]
    host = config.relay_address
    why = _bindable(_family(host), socket.SOCK_DGRAM, host, 0)
    if why is not None:
        found.errors.append(f"relay.address: {why}")
        return
    if running:
        return
    # every pre-bound port (RTP and RTCP) is bound at start; of the range, the first pair
    wanted = [p for port in config.prebind for p in (port, port + 1)]
    if even and not config.prebind:
        wanted = [even[0], even[0] + 1] if even[0] + 1 <= 65535 else [even[0]]
    for port in wanted:
        why = _bindable(_family(host), socket.SOCK_DGRAM, host, port)
        if why is not None:
            setting = "relay.prebind" if config.prebind else "relay.ports"
            found.errors.append(f"{setting}: {why}")


def _control(config: RelayConfig, found: Findings, *, running: bool) -> None:
    path = config.control_socket
    if path and not running:
        directory = Path(path).parent
        if directory.is_dir() and not os.access(directory, os.W_OK | os.X_OK):
            found.errors.append(f"control.socket: cannot create a socket in {directory}")
        try:
            info = os.lstat(path)
        except OSError:
            info = None
        if info is not None and not stat.S_ISSOCK(info.st_mode):
            found.errors.append(f"control.socket: {path} exists and is not a socket")
    if config.control_tcp and not running:
        host, port = config.control_tcp
        why = _bindable(_family(host), socket.SOCK_STREAM, host, port)
        if why is not None:
            found.errors.append(f"control.tcp: {why}")
    if config.control_token_file:
        try:
            read_token(config.control_token_file)
        except ConfigError as exc:
            found.errors.append(str(exc))


def _metrics(config: RelayConfig, found: Findings, *, running: bool) -> None:
    if config.metrics and not running:
        host, port = config.metrics
        why = _bindable(_family(host), socket.SOCK_STREAM, host, port)
        if why is not None:
            found.errors.append(f"metrics.listen: {why}")


def _cache(config: RelayConfig, found: Findings) -> None:
    if config.cache_password_file:
        try:
            read_password_file(config.cache_password_file)
        except ConfigError as exc:
            found.errors.append(str(exc))
    if config.cache_url or not config.cache_path:
        return
    path = Path(config.cache_path)
    if path.exists():
        if not os.access(path, os.R_OK | os.W_OK):
            found.errors.append(f"cache.path: {path} is not readable and writable by this user")
        return
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent  # created at start: the nearest existing directory decides
    if not os.access(parent, os.W_OK | os.X_OK):
        found.errors.append(f"cache.path: cannot create {path} ({parent} is not writable)")


def check(config: RelayConfig) -> Findings:
    """Every problem ``pbx-zrtp relay``/``run`` would stop at, probed now."""
    found = Findings()
    running = _served(config.control_socket)
    if running:
        found.warnings.append(
            f"a relay serves {config.control_socket}: the ports, control and metrics "
            "addresses it holds were not probed (stop it to probe them)"
        )
    _ports(config, found, running=running)
    _control(config, found, running=running)
    _metrics(config, found, running=running)
    _cache(config, found)
    return found
