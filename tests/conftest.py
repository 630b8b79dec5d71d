"""Fixtures shared across test directories: a throwaway PostgreSQL server; IPv6
relay tests re-run in a network namespace (``tests/netns.py``)."""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator

import pytest

from tests import netns
from tests.postgres_server import PostgresServer, find_bindir, start_server


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    """A test marked ``ipv6_netns`` runs its body in a child pytest inside a network
    namespace with the IPv6 lab addresses; here it passes or fails as the child did."""
    if pyfuncitem.get_closest_marker("ipv6_netns") is None or netns.inside():
        return None
    why = netns.unavailable()
    if why is not None:
        if os.environ.get("CI"):
            pytest.fail(f"IPv6 relay tests must run in CI: {why}")
        pytest.skip(f"IPv6 lab unavailable: {why}")
    marker = pyfuncitem.get_closest_marker("timeout")
    timeout = float(marker.args[0]) if marker and marker.args else 110.0
    status, output = netns.run(pyfuncitem.nodeid, timeout - 10)
    if status != 0 or " passed" not in output or " skipped" in output:
        pytest.fail(f"in the IPv6 namespace (exit {status}):\n{output[-6000:]}", pytrace=False)
    return True


_databases = itertools.count()


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PostgresServer]:
    """One PostgreSQL server for the session (Unix socket only), stopped at the end."""
    if find_bindir() is None:
        pytest.skip(
            "PostgreSQL server binaries absent (/usr/lib/postgresql/*/bin): "
            "bash install.sh --dev installs Debian's postgresql"
        )
    server = start_server()
    yield server
    server.stop()


@pytest.fixture
def pg_dsn(pg_server: PostgresServer) -> Iterator[str]:
    """A fresh, empty database on the session's server."""
    import psycopg

    name = f"t{os.getpid()}_{next(_databases)}"
    with psycopg.connect(pg_server.dsn(), autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name}")  # type: ignore[arg-type]
    yield pg_server.dsn(name)
    with psycopg.connect(pg_server.dsn(), autocommit=True) as admin:
        admin.execute(f"DROP DATABASE {name} WITH (FORCE)")  # type: ignore[arg-type]
