"""Scale-out: two relays sharing one PostgreSQL cache, and the [cache] url settings."""

from __future__ import annotations

import asyncio
import os
import pathlib
import subprocess
import sys
import urllib.parse
from typing import Any

import psycopg
import pytest

from pbx_zrtp.cache.base import CacheKey
from pbx_zrtp.cache.memory import MemorySecretCache
from pbx_zrtp.config import ConfigError
from pbx_zrtp.endpoint import EndpointOptions, run_endpoint
from pbx_zrtp.relay.config import apply, load_config
from pbx_zrtp.relay.control import ControlClient
from pbx_zrtp.relay.service import RelayService
from pbx_zrtp.zrtp.config import ZrtpConfiguration
from tests.postgres_server import PASSWORD_ROLE, PostgresServer
from tests.relay.helpers import PBX_HOST, PHONE_HOST, RELAY_HOST, EchoPbx, free_even_port

PHONE_ZID = b"M" * 12


def _password_file(tmp_path: pathlib.Path, password: str, mode: int = 0o600) -> str:
    path = tmp_path / "pg.password"
    path.write_text(password + "\n")
    os.chmod(path, mode)
    return str(path)


def _relay_config(tmp_path: pathlib.Path, name: str, cache: dict[str, Any]) -> Any:
    config = load_config(None)
    apply(
        config,
        {
            "relay": {"address": RELAY_HOST, "pbx_address": PBX_HOST, "ports": "1024-65534"},
            "cache": cache,
            "control": {"socket": str(tmp_path / f"{name}.sock")},
            "metrics": {"listen": ""},
        },
    )
    return config


async def _call(
    client: ControlClient, call_id: str, phone_cache: MemorySecretCache
) -> tuple[dict[str, Any], dict[str, Any]]:
    """One secured call from the phone through the relay behind ``client``."""
    port = free_even_port()
    pbx = EchoPbx(port)
    await pbx.start()
    try:
        await client.request(
            "create",
            call_id=call_id,
            port=port,
            policy="required",
            self_uri="sip:100@pbx",
            peer_uri="sip:p@lan",
        )
        phone = await run_endpoint(
            ZrtpConfiguration(zid=PHONE_ZID),
            EndpointOptions(
                bind=(PHONE_HOST, 0), peer=(RELAY_HOST, port), srtp_count=3, timeout=10
            ),
            cache=phone_cache,
        )
        shown = await client.request("show", call_id=call_id)
    finally:
        pbx.close()
    return phone, shown


def test_a_phone_keeps_continuity_across_relays_sharing_postgres(
    tmp_path: pathlib.Path, pg_server: PostgresServer, pg_dsn: str
) -> None:
    dbname = str(psycopg.conninfo.conninfo_to_dict(pg_dsn)["dbname"])
    pg_server.add_password_role(dbname, "relay-password-1")
    host = urllib.parse.quote(pg_server.socket_dir, safe="")
    cache = {
        "url": f"postgresql://{PASSWORD_ROLE}@{host}:5432/{dbname}",
        "password_file": _password_file(tmp_path, "relay-password-1"),
    }
    phone_cache = MemorySecretCache()

    async def scenario() -> None:
        relay_a = RelayService(_relay_config(tmp_path, "a", cache))
        relay_b = RelayService(_relay_config(tmp_path, "b", cache))
        assert relay_a.zid == relay_b.zid  # one PBX identity for the phone
        await relay_a.start()
        await relay_b.start()
        try:
            # Call 1 through relay A: first contact; the user verifies the SAS there.
            async with ControlClient(f"unix:{tmp_path / 'a.sock'}") as client:
                phone, shown = await _call(client, "c1", phone_cache)
                assert shown["state"] == "secure" and not shown["previously_verified"]
                assert (await client.request("verify", call_id="c1"))["sas_verified"] is True
                await client.request("delete", call_id="c1")
            assert not phone["cache_mismatch"]
            # ...and on the phone too (its user read the same SAS): V is set on both ends.
            phone_cache.set_sas_verified(CacheKey(PHONE_ZID, relay_a.zid), True)
            # Call 2 through relay B: B finds A's rs1 and verified flag in the shared cache.
            async with ControlClient(f"unix:{tmp_path / 'b.sock'}") as client:
                phone, shown = await _call(client, "c2", phone_cache)
                assert shown["state"] == "secure"
                assert shown["cache_mismatch"] is False
                assert shown["previously_verified"] is True
                await client.request("delete", call_id="c2")
            assert phone["cache_mismatch"] is False and phone["previously_verified"] is True
            key = CacheKey(relay_a.zid, PHONE_ZID, "sip:100@pbx", "sip:p@lan")
            relay_entry = relay_a.cache.lookup(key)
            phone_entry = phone_cache.lookup(CacheKey(PHONE_ZID, relay_a.zid))
            # Both sides rotated in step: the same rs1, and rs2 from call 1.
            assert relay_entry.rs1 is not None and relay_entry.rs1 == phone_entry.rs1
            assert relay_entry.rs2 is not None and relay_entry.rs2 == phone_entry.rs2
            assert relay_entry.sas_verified
        finally:
            await relay_a.close()
            await relay_b.close()

    asyncio.run(asyncio.wait_for(scenario(), 90))


# --- [cache] url / password_file -----------------------------------------------------


def test_url_replaces_path(tmp_path: pathlib.Path) -> None:
    config = load_config(None)
    apply(config, {"cache": {"url": "postgresql://relay@db.example:5432/zrtp?sslmode=verify-full"}})
    assert config.cache_url == "postgresql://relay@db.example:5432/zrtp?sslmode=verify-full"
    assert config.cache_path is None and config.cache_password_file is None
    password = _password_file(tmp_path, "pw")
    apply(config, {"cache": {"url": "postgres:///zrtp", "password_file": password}})
    assert config.cache_password_file == password


@pytest.mark.parametrize(
    ("cache", "message"),
    [
        ({"url": 5}, "cache.url: a PostgreSQL URL"),
        ({"url": ""}, "cache.url: a PostgreSQL URL"),
        ({"url": "mysql://db/zrtp"}, 'cache.url: must start with "postgresql://"'),
        ({"url": "postgresql://db:99999/zrtp"}, "cache.url: not a valid URL"),
        ({"url": "postgresql://relay:hunter2@db/zrtp"}, "cache.url: must not contain the password"),
        ({"url": "postgresql://db/zrtp?password=hunter2"}, "cache.url: must not contain"),
        ({"url": "postgresql://db/zrtp", "path": "/x.db"}, "cache.url: set either"),
        ({"password_file": "/etc/pw"}, "cache.password_file: only used with cache.url"),
        ({"url": "postgresql://db/z", "password_file": ""}, "cache.password_file: a path"),
        ({"url": "postgresql://db/z", "password_file": "/nonexistent/pw"}, "cannot read"),
    ],
)
def test_bad_cache_settings_name_the_setting(cache: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")) as excinfo:
        apply(load_config(None), {"cache": cache})
    assert "hunter2" not in str(excinfo.value)


@pytest.mark.parametrize(("mode", "text"), [(0o640, "pw"), (0o604, "pw"), (0o600, "")])
def test_password_file_must_be_private_and_not_empty(
    tmp_path: pathlib.Path, mode: int, text: str
) -> None:
    path = _password_file(tmp_path, text, mode)
    expected = "readable by other users" if mode != 0o600 else "is empty"
    with pytest.raises(ConfigError, match=f"cache.password_file: .*{expected}"):
        apply(load_config(None), {"cache": {"url": "postgresql:///z", "password_file": path}})


def test_relay_with_an_unreachable_database_exits_with_a_clear_error(
    tmp_path: pathlib.Path,
) -> None:
    config = tmp_path / "relay.toml"
    config.write_text(
        f'[relay]\naddress = "{RELAY_HOST}"\npbx_address = "{PBX_HOST}"\n'
        f'[cache]\nurl = "postgresql://relay@%2Fnonexistent%2Fpg:5432/zrtp"\n'
        f'password_file = "{_password_file(tmp_path, "hunter2-password")}"\n'
        f'[control]\nsocket = "{tmp_path / "c.sock"}"\n[metrics]\nlisten = ""\n'
    )
    proc = subprocess.run(
        [sys.executable, "-m", "pbx_zrtp.cli", "relay", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 1, proc.stderr
    assert "cannot start the relay: PostgresSecretCache(" in proc.stderr
    assert "cannot open" in proc.stderr and "Traceback" not in proc.stderr
    assert "hunter2" not in proc.stderr + proc.stdout
