"""A throwaway PostgreSQL server for tests and bench/cache.py, from Debian's ``postgresql``.

initdb + pg_ctl from /usr/lib/postgresql/*/bin into a temporary directory; the
server listens only on a Unix socket in that directory (no TCP port at all), so
parallel runs cannot collide and nothing outside can reach it. PostgreSQL refuses
to run as root, so as root the server runs as the ``postgres`` system user.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

SUPERUSER = "postgres"
#: A role that must log in with a password (scram-sha-256), for password tests.
PASSWORD_ROLE = "relay"


def find_bindir() -> str | None:
    """The newest installed PostgreSQL server's bin directory, or None."""
    candidates = [
        d
        for d in glob.glob("/usr/lib/postgresql/*/bin")
        if os.path.exists(os.path.join(d, "initdb")) and os.path.exists(os.path.join(d, "pg_ctl"))
    ]
    if not candidates:
        return None
    return max(candidates, key=lambda d: int(Path(d).parent.name.split(".")[0]))


@dataclass
class PostgresServer:
    bindir: str
    base: str
    run_as: str | None

    @property
    def socket_dir(self) -> str:
        return self.base

    def dsn(self, dbname: str = "postgres", user: str = SUPERUSER) -> str:
        return f"host={self.base} port=5432 dbname={dbname} user={user}"

    def _cmd(self, *args: str) -> list[str]:
        cmd = [os.path.join(self.bindir, args[0]), *args[1:]]
        return ["runuser", "-u", self.run_as, "--", *cmd] if self.run_as else cmd

    def start(self, *, fsync: bool = False) -> None:
        data = os.path.join(self.base, "data")
        pwfile = os.path.join(self.base, "pw")
        Path(pwfile).write_text("unused-superuser-password\n")
        if self.run_as:
            entry = pwd.getpwnam(self.run_as)
            for path in (self.base, pwfile):
                os.chown(path, entry.pw_uid, entry.pw_gid)
        subprocess.run(
            self._cmd(
                "initdb", "-D", data, "-U", SUPERUSER, "--auth-local=trust", "--auth-host=reject",
                "-E", "UTF8", "--locale=C.UTF-8", "--pwfile", pwfile,
            ),
            check=True,
            capture_output=True,
            timeout=120,
        )  # fmt: skip
        # Trust the superuser only; every other role must give its password.
        Path(data, "pg_hba.conf").write_text(
            f"local all {SUPERUSER} trust\nlocal all all scram-sha-256\n"
        )
        options = (
            f"-c listen_addresses='' -c unix_socket_directories='{self.base}' -c port=5432"
            f" -c fsync={'on' if fsync else 'off'} -c max_connections=60"
            " -c shared_buffers=16MB"
        )
        subprocess.run(
            self._cmd(
                "pg_ctl", "-D", data, "-l", os.path.join(self.base, "server.log"),
                "-o", options, "-w", "-t", "60", "start",
            ),
            check=True,
            capture_output=True,
            timeout=90,
        )  # fmt: skip

    def stop(self) -> None:
        subprocess.run(
            self._cmd("pg_ctl", "-D", os.path.join(self.base, "data"), "-m", "immediate", "stop"),
            capture_output=True,
            timeout=60,
        )
        shutil.rmtree(self.base, ignore_errors=True)

    def add_password_role(self, dbname: str, password: str) -> str:
        """Let :data:`PASSWORD_ROLE` (password login) own ``dbname``'s schema; its DSN."""
        import psycopg
        from psycopg import sql

        role, db = sql.Identifier(PASSWORD_ROLE), sql.Identifier(dbname)
        with psycopg.connect(self.dsn(), autocommit=True) as admin:
            exists = admin.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (PASSWORD_ROLE,))
            verb = "ALTER" if exists.fetchone() else "CREATE"
            admin.execute(
                sql.SQL(verb + " ROLE {} LOGIN PASSWORD {}").format(role, sql.Literal(password))
            )
            admin.execute(sql.SQL("GRANT ALL ON DATABASE {} TO {}").format(db, role))
        with psycopg.connect(self.dsn(dbname), autocommit=True) as admin:
            admin.execute(sql.SQL("GRANT ALL ON SCHEMA public TO {}").format(role))
        return self.dsn(dbname, user=PASSWORD_ROLE)

    def log(self) -> str:
        try:
            return Path(self.base, "server.log").read_text()
        except OSError:
            return ""


def start_server(*, fsync: bool = False) -> PostgresServer:
    """Start a server; raise RuntimeError when the binaries are absent."""
    bindir = find_bindir()
    if bindir is None:
        raise RuntimeError(
            "PostgreSQL server binaries not found in /usr/lib/postgresql/*/bin "
            "(install the Debian package postgresql, e.g. bash install.sh --dev)"
        )
    run_as = None
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            raise RuntimeError("running as root but there is no postgres system user") from None
        run_as = "postgres"
    # The socket path must stay under ~107 bytes: a short directory in /tmp.
    base = tempfile.mkdtemp(prefix="pgz-", dir="/tmp")
    server = PostgresServer(bindir, base, run_as)
    try:
        server.start(fsync=fsync)
    except BaseException:
        shutil.rmtree(base, ignore_errors=True)
        raise
    return server
