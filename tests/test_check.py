"""``--check`` finds what ``run`` would stop at, not only syntax: secret files, a relay
address that is not this host's, ports and the metrics port in use, the cache's
directory, port ranges that cannot or should not work."""

from __future__ import annotations

import pathlib
import signal
import socket
import subprocess
import sys

from tests.install_check import clean_env, relay_config, running_relay
from tests.relay.helpers import RELAY_HOST, free_even_port

ROOT = pathlib.Path(__file__).resolve().parent.parent
CLI = [sys.executable, "-m", "pbx_zrtp.cli"]


def _check(config: pathlib.Path, command: str = "relay") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, command, "--config", str(config), "--check"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=clean_env(PYTHONPATH=str(ROOT)),
        cwd="/",
    )


def _config(
    tmp_path: pathlib.Path, extra: str = "", port: int | None = None, **replace: str
) -> pathlib.Path:
    config = relay_config(tmp_path, port or free_even_port())
    text = config.read_text()
    for old, new in replace.items():
        text = text.replace(old, new)
    config.write_text(text + extra)
    return config


def test_a_sound_configuration_passes(tmp_path: pathlib.Path) -> None:
    result = _check(_config(tmp_path))
    assert result.returncode == 0 and result.stdout == "configuration OK\n", result.stderr
    assert result.stderr == ""


def test_a_relay_address_of_another_host(tmp_path: pathlib.Path) -> None:
    config = _config(tmp_path, **{f'address = "{RELAY_HOST}"': 'address = "192.0.2.1"'})
    result = _check(config)
    assert result.returncode == 2
    assert "pbx-zrtp: check failed: relay.address: 192.0.2.1 is not an address of this host" in (
        result.stderr
    )


def test_ports_and_the_metrics_port_in_use(tmp_path: pathlib.Path) -> None:
    port = free_even_port()
    with socket.socket() as metrics, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as rtp:
        metrics.bind(("127.0.0.1", 0))
        metrics.listen()
        busy = metrics.getsockname()[1]
        rtp.bind((RELAY_HOST, port + 1))  # the RTCP port of a pre-bound pair
        config = _config(tmp_path, f'\n[metrics]\nlisten = "127.0.0.1:{busy}"\n', port)
        text = config.read_text().replace('[metrics]\nlisten = ""\n', "", 1)
        text = text.replace("fastpath =", f'prebind = "{port}-{port}"\nfastpath =')
        config.write_text(text)
        result = _check(config)
    assert result.returncode == 2, result.stderr
    assert f"metrics.listen: 127.0.0.1:{busy} is in use" in result.stderr
    assert f"relay.prebind: {RELAY_HOST}:{port + 1} is in use" in result.stderr


def test_port_ranges_that_cannot_or_should_not_work(tmp_path: pathlib.Path) -> None:
    def ranged(value: str) -> subprocess.CompletedProcess[str]:
        config = _config(tmp_path)
        text = config.read_text()
        start = text.index("ports = ")
        end = text.index("\n", start)
        config.write_text(text[:start] + f"ports = {value}" + text[end:])
        return _check(config)

    odd = ranged('"30001-30001"')
    assert odd.returncode == 2
    assert "relay.ports: 30001-30001 holds no even port" in odd.stderr
    bare = ranged("30000")  # an integer, not a range
    assert bare.returncode == 0
    assert "pbx-zrtp: warning: relay.ports: one port (30000)" in bare.stderr
    sip = ranged('"5000-6000"')
    assert "pbx-zrtp: warning: relay.ports: 5000-6000 includes SIP's port 5060" in sip.stderr
    assert "includes SIP's port 5061" in sip.stderr


def test_secret_files_and_the_cache_directory(tmp_path: pathlib.Path) -> None:
    token = tmp_path / "token"
    token.write_text("tok3n\n")
    token.chmod(0o600)
    loose = tmp_path / "pg.password"
    loose.write_text("a-long-enough-password\n")
    loose.chmod(0o644)
    config = _config(
        tmp_path,
        f'\n[control]\ntcp = "127.0.0.1:0"\ntoken_file = "{token}"\n',
        **{f'path = "{tmp_path}/cache.db"': 'path = "/dev/null/x/cache.db"'},
    )
    text = config.read_text().replace(f'[control]\nsocket = "{tmp_path}/control.sock"\n', "")
    config.write_text(text.replace("[control]\n", f'[control]\nsocket = "{tmp_path}/c.sock"\n'))
    result = _check(config)
    assert result.returncode == 2, result.stderr
    assert "control.token_file:" in result.stderr and "tok3n" not in result.stderr
    assert "cache.path: cannot create /dev/null/x/cache.db" in result.stderr
    # the adapter alone checks the token it will present too
    config.write_text(config.read_text() + '\n[asterisk]\nsecret = "s"\n')
    adapter = _check(config, "asterisk")
    assert adapter.returncode == 2 and "control.token_file:" in adapter.stderr
    # the password file is read only as its owner can
    url = tmp_path / "url.toml"
    url.write_text(
        f'[cache]\nurl = "postgresql://u@127.0.0.1/db"\npassword_file = "{loose}"\n'
        f'[control]\nsocket = "{tmp_path}/d.sock"\n[metrics]\nlisten = ""\n'
    )
    result = _check(url)
    assert result.returncode == 2
    assert "readable by other users" in result.stderr


def test_check_beside_the_running_relay_skips_what_it_holds(tmp_path: pathlib.Path) -> None:
    env = clean_env(PYTHONPATH=str(ROOT))
    with running_relay(CLI, tmp_path, env) as relay:
        result = _check(relay.config)
    assert result.returncode == 0, result.stderr
    assert f"warning: a relay serves {tmp_path}/control.sock" in result.stderr


def test_run_judges_the_port_range_as_check_does(tmp_path: pathlib.Path) -> None:
    """``run`` refuses a range without an even port and warns (in the log, at warning
    priority) of one port or SIP's ports, as ``--check`` does."""

    def ranged(value: str, name: str) -> pathlib.Path:
        directory = tmp_path / name
        directory.mkdir()
        config = _config(directory)
        text = config.read_text()
        start = text.index("ports = ")
        end = text.index("\n", start)
        config.write_text(text[:start] + f"ports = {value}" + text[end:])
        return config

    odd = subprocess.run(
        [*CLI, "run", "--config", str(ranged('"30001-30001"', "odd"))],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=clean_env(PYTHONPATH=str(ROOT)),
        cwd="/",
    )
    assert odd.returncode == 2, odd.stderr
    assert odd.stderr.splitlines() == [
        "pbx-zrtp: configuration error: relay.ports: 30001-30001 holds no even port"
        " (RTP uses even ports, RTCP the next)"
    ]
    for value, name, warning in (
        ("30000", "bare", "WARNING pbx_zrtp: relay.ports: one port (30000)"),
        ('"5000-6000"', "sip", "WARNING pbx_zrtp: relay.ports: 5000-6000 includes SIP's port 5060"),
    ):
        process = subprocess.Popen(
            [*CLI, "relay", "--config", str(ranged(value, name))],
            stderr=subprocess.PIPE,
            text=True,
            env=clean_env(PYTHONPATH=str(ROOT)),
            cwd="/",
        )
        assert process.stderr is not None
        seen: list[str] = []
        for line in process.stderr:
            seen.append(line)
            if "relay ready" in line:
                break
        process.send_signal(signal.SIGINT)
        seen += process.communicate(timeout=30)[1].splitlines()
        assert any(warning in line for line in seen), seen
        # SIGINT just after "relay ready" may come before the relay's own handler
        assert process.returncode in (0, 130) and "Traceback" not in "".join(seen), seen


def test_check_names_each_secret_files_mode_and_length(tmp_path: pathlib.Path) -> None:
    """The control token: owner-only and at least 16 characters; the AMI secret and the
    ESL password files: owner-only. Each error names the setting, never the secret."""

    def secret(name: str, text: str, mode: int) -> pathlib.Path:
        path = tmp_path / name
        path.write_text(text + "\n")
        path.chmod(mode)
        return path

    def with_token(token: pathlib.Path) -> subprocess.CompletedProcess[str]:
        config = _config(tmp_path)
        config.write_text(
            config.read_text().replace(
                "[control]\n", f'[control]\ntcp = "127.0.0.1:0"\ntoken_file = "{token}"\n'
            )
        )
        return _check(config)

    open_token = with_token(secret("open", "t" * 20, 0o644))
    assert open_token.returncode == 2
    assert f"control.token_file: {tmp_path}/open is readable by other users (chmod 600)" in (
        open_token.stderr
    )
    short = with_token(secret("short", "t" * 15, 0o600))
    assert short.returncode == 2
    assert f"control.token_file: the secret in {tmp_path}/short is shorter than 16" in (
        short.stderr
    )
    assert with_token(secret("good", "t" * 16, 0o600)).returncode == 0
    for section, key in (("asterisk", "secret_file"), ("freeswitch", "password_file")):
        path = secret(f"{section}.secret", "s3cr3t-value", 0o640)
        config = _config(tmp_path, f'\n[{section}]\n{key} = "{path}"\n')
        result = _check(config, section)
        assert result.returncode == 2, result.stderr
        assert f"{section}.{key}: {path} is readable by other users (chmod 600)" in result.stderr
        assert "s3cr3t-value" not in result.stderr + result.stdout
        assert "Traceback" not in result.stderr
