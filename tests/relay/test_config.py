"""The relay's TOML configuration: defaults, and errors that name the setting."""

from __future__ import annotations

import pathlib
import subprocess
import sys

import pytest

from pbx_zrtp.calls import Policy
from pbx_zrtp.config import ConfigError
from pbx_zrtp.relay.config import load_config


def write(tmp_path: pathlib.Path, text: str) -> pathlib.Path:
    path = tmp_path / "relay.toml"
    path.write_text(text)
    return path


def test_embedded_defaults_are_valid() -> None:
    config = load_config(None)
    assert config.relay_address != config.pbx_address
    assert config.control_socket and config.cache_path
    assert config.zrtp.ciphers == (b"AES1", b"AES3")  # AES3: AES_CM_256 SRTP


def test_aes3_alone_is_accepted_and_reaches_the_engine(tmp_path: pathlib.Path) -> None:
    config = load_config(write(tmp_path, '[zrtp]\nciphers = ["AES3"]\n'))
    assert config.zrtp.configuration(b"Z" * 12, "", "").cipher_types == (b"AES3",)


def test_a_full_file_is_read(tmp_path: pathlib.Path) -> None:
    config = load_config(
        write(
            tmp_path,
            """
[relay]
address = "10.0.0.2"
pbx_address = "10.0.0.1"
ports = "16384-16583"
prebind = "16384-16393"
prebind_policy = "optional"
[zrtp]
key_agreements = ["DH3k", "X255"]
sas = ["B256"]
[cache]
path = "memory"
[timeouts]
optional = 2
required = 8.5
[control]
socket = ""
tcp = "127.0.0.1:5097"
token_file = "/etc/pbx-zrtp/token"
[metrics]
listen = ""
""",
        )
    )
    assert (config.relay_address, config.pbx_address) == ("10.0.0.2", "10.0.0.1")
    assert (config.port_min, config.port_max) == (16384, 16583)
    assert config.prebind == (16384, 16386, 16388, 16390, 16392)  # even ports only
    assert config.prebind_policy is Policy.OPTIONAL
    assert config.zrtp.key_agreements == (b"DH3k", b"X255") and config.zrtp.sas == (b"B256",)
    assert config.cache_path is None and config.control_socket is None
    assert config.control_tcp == ("127.0.0.1", 5097) and config.metrics is None
    assert (config.optional_timeout, config.required_timeout) == (2.0, 8.5)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[relay]\naddress = "127.0.0.1"\n', "relay.address: must differ"),
        ('[relay]\naddress = "0.0.0.0"\n', "relay.address: must be a specific address"),
        ('[relay]\naddress = "pbx.local"\n', "relay.address: 'pbx.local' is not an IP address"),
        ('[relay]\nports = "9000-5000"\n', "relay.ports:"),
        ('[relay]\nports = "80-90"\n', "relay.ports:"),
        ('[relay]\nprebind = "30000-30010"\nports = "10000-20000"\n', "relay.prebind: port 30000"),
        ('[relay]\nprebind_policy = "maybe"\n', "relay.prebind_policy:"),
        ('[relay]\nrtcp = "yes"\n', "relay.rtcp: true or false"),
        ('[relay]\nadress = "1.2.3.4"\n', "relay.adress: unknown setting"),
        ("[relais]\n", "[relais]: unknown section"),
        ('[zrtp]\nkey_agreements = ["FOO"]\n', "unsupported key agreement type"),
        ('[zrtp]\nciphers = ["2FS3"]\n', "zrtp.ciphers: 2FS3 cannot be used for SRTP"),
        ("[zrtp]\nkey_agreements = 3\n", "zrtp.key_agreements: a list"),
        ("[zrtp]\ncache_expiration = -1\n", "zrtp.cache_expiration"),
        ('[zrtp]\nclient_id = "a very long client identifier"\n', "zrtp.client_id"),
        ('[zrtp]\ndisclosure = "yes"\n', "zrtp.disclosure: true or false"),
        ("[timeouts]\nrequired = 0\n", "timeouts.required"),
        ('[control]\ntcp = "127.0.0.1:5097"\n', "control.tcp: needs control.token_file"),
        ('[control]\ntcp = "localhost"\n', "control.tcp: HOST:PORT"),
        ('[metrics]\nlisten = "nowhere:99"\n', "metrics.listen"),
        ('[log]\nlevel = "loud"\n', "log.level"),
        ('[relay]\nevent_loop = "trio"\n', 'relay.event_loop: "asyncio" or "uvloop"'),
        (
            '[relay]\nevent_loop = "uvloop"\nfastpath = "on"\n',
            "relay.event_loop: uvloop cannot hand sockets to the native fast path",
        ),
        ("[relay\n", "not valid TOML"),
    ],
)
def test_bad_settings_are_named(tmp_path: pathlib.Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace(".", r"\.")):
        load_config(write(tmp_path, text))


def test_missing_file_and_cli_exit_status(tmp_path: pathlib.Path) -> None:
    with pytest.raises(ConfigError, match="no such configuration file"):
        load_config(tmp_path / "absent.toml")
    bad = write(tmp_path, '[relay]\nports = "1-2"\n')
    proc = subprocess.run(
        [sys.executable, "-m", "pbx_zrtp.cli", "relay", "--config", str(bad)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2 and "configuration error: relay.ports" in proc.stderr
    good = write(
        tmp_path,
        f'[cache]\npath = "memory"\n[control]\nsocket = "{tmp_path}/c.sock"\n'
        '[metrics]\nlisten = ""\n',  # --check probes them: nothing shared with other tests
    )
    proc = subprocess.run(
        [sys.executable, "-m", "pbx_zrtp.cli", "relay", "--config", str(good), "--check"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0 and "configuration OK" in proc.stdout


def test_disclosure_flag_reaches_the_engine_configuration(tmp_path: pathlib.Path) -> None:
    config = load_config(write(tmp_path, "[zrtp]\ndisclosure = true\n"))
    engine = config.zrtp.configuration(b"Z" * 12, "", "")
    assert engine.disclosure and engine.mitm
    assert not load_config(write(tmp_path, "")).zrtp.configuration(b"Z" * 12, "", "").disclosure


def test_every_secret_file_refuses_devices_huge_and_foreign_readable_files(
    tmp_path: pathlib.Path,
) -> None:
    from pbx_zrtp.config import read_secret_file

    with pytest.raises(ConfigError, match=r"x\.secret_file: /dev/zero is not a regular file"):
        read_secret_file("x.secret_file", "/dev/zero")  # would never end if read
    big = tmp_path / "big"
    big.write_text("a" * 5000)
    big.chmod(0o600)
    with pytest.raises(ConfigError, match="longer than 4096 bytes"):
        read_secret_file("x.secret_file", str(big))
    token = tmp_path / "token"
    token.write_text("short\n")
    token.chmod(0o600)
    with pytest.raises(ConfigError, match="shorter than 16 characters") as caught:
        read_secret_file("control.token_file", str(token), min_length=16)
    assert "short" not in str(caught.value).replace("shorter", "")  # the secret is not shown
    token.chmod(0o640)
    with pytest.raises(ConfigError, match="readable by other users"):
        read_secret_file("control.token_file", str(token))
    token.write_bytes(b"\xff\xfe\n")
    token.chmod(0o600)
    with pytest.raises(ConfigError, match="not UTF-8"):
        read_secret_file("x", str(token))
    token.write_text("  s3cret-value  \nsecond line\n")
    assert read_secret_file("x", str(token)) == "s3cret-value"


def test_the_event_loop_is_the_configurations_choice(tmp_path: pathlib.Path) -> None:
    """Not a consequence of whether gcc built the fast path: asyncio unless the
    file says uvloop (which then forwards secured media in Python)."""
    import asyncio

    import uvloop

    from pbx_zrtp.cli import event_loop_runner
    from pbx_zrtp.relay.service import open_fastpath

    assert load_config(None).event_loop == "asyncio"
    assert event_loop_runner("asyncio") is asyncio.run
    config = load_config(write(tmp_path, '[relay]\nevent_loop = "uvloop"\n'))
    assert config.event_loop == "uvloop" and config.fastpath == "auto"
    assert event_loop_runner(config.event_loop) is uvloop.run
    assert open_fastpath(config.fastpath, 1, config.event_loop) is None
