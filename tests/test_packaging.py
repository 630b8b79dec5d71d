"""The Python packages: an sdist that carries the native worker's C source, a wheel
built from it with the worker compiled in, installed into a fresh venv without any
extra, and a build without a C compiler or libsrtp2's headers that still installs
and runs (in Python) and says why.

These build in subprocesses with pip's build isolation (setuptools and cffi come
from the package index, as for any user).
"""

from __future__ import annotations

import os
import pathlib
import shutil
import socket
import subprocess
import sys
import tarfile
import tomllib
import urllib.request
import venv
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from prometheus_client.parser import text_string_to_metric_families

from pbx_zrtp import __version__
from tests import netns
from tests.install_check import (
    PHONE_HOST,
    clean_env,
    relay_config,
    run,
    running_relay,
    secured_call,
)
from tests.relay.helpers import PBX_HOST, RELAY_HOST, free_even_port

# builds in subprocesses take minutes on a loaded machine
pytestmark = pytest.mark.timeout(900)

ROOT = pathlib.Path(__file__).resolve().parent.parent
NATIVE = "pbx_zrtp/relay/_fastpath_lib.abi3.so"


def _pip(python: str | pathlib.Path, *args: str, env: dict[str, str] | None = None) -> str:
    proc = subprocess.run(
        [str(python), "-m", "pip", *args],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        env=env or clean_env(),
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout + proc.stderr


def _wheel(sdist: pathlib.Path, out: pathlib.Path, env: dict[str, str]) -> tuple[str, str]:
    """pip wheel from the sdist (verbose: the build's own messages); (wheel path, log)."""
    out.mkdir()
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-v", "--no-deps", "-w", str(out), str(sdist)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        env=env,
    )
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    (wheel,) = out.glob("*.whl")
    return str(wheel), log


@dataclass
class Built:
    sdist: pathlib.Path
    wheel: pathlib.Path
    venv: pathlib.Path

    @property
    def command(self) -> list[str]:
        return [str(self.venv / "bin" / "pbx-zrtp")]


#: Set for the IPv6 namespace's child pytest (no network there to build in): the
#: artifacts the parent built, "SDIST:WHEEL:VENV".
BUILT_ENV = "PBX_ZRTP_TEST_BUILT"


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Built]:
    if netns.inside() and os.environ.get(BUILT_ENV):
        paths = [pathlib.Path(part) for part in os.environ[BUILT_ENV].split(":")]
        yield Built(*paths)
        return
    if shutil.which("cc") is None and shutil.which("gcc") is None:
        pytest.skip("no C compiler (bash install.sh installs build-essential)")
    work = tmp_path_factory.mktemp("packaging")
    subprocess.run(
        [sys.executable, "-m", "build", "--sdist", "-o", str(work / "sdist"), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
        env=clean_env(),
    )
    (sdist,) = (work / "sdist").glob("*.tar.gz")
    wheel, _ = _wheel(sdist, work / "wheel", clean_env())
    env_dir = work / "venv"
    venv.EnvBuilder(with_pip=True, clear=True).create(env_dir)
    _pip(env_dir / "bin" / "python", "install", "-q", wheel)  # no extras
    os.environ[BUILT_ENV] = f"{sdist}:{wheel}:{env_dir}"  # for an IPv6 test's child
    try:
        yield Built(sdist, pathlib.Path(wheel), env_dir)
    finally:
        os.environ.pop(BUILT_ENV, None)


def test_sdist_carries_the_c_source_the_license_and_the_shipped_files(built: Built) -> None:
    with tarfile.open(built.sdist) as tar:
        names = {name.split("/", 1)[1] for name in tar.getnames() if "/" in name}
    for needed in (
        "pbx_zrtp/relay/_fastpath.c",
        "pbx_zrtp/relay/_fastpath_build.py",
        "setup.py",
        "LICENSE",
        "docs/deployment.md",
        "dialplan/asterisk/extensions_pbx_zrtp.conf",
        "examples/systemd/pbx-zrtp.service",
        "examples/relay.toml",
    ):
        assert needed in names, needed


def test_the_wheel_has_the_worker_built_and_no_compiler_step_left(built: Built) -> None:
    # one wheel for CPython 3.11 and later (the module uses the stable ABI)
    assert built.wheel.name == f"pbx_zrtp-{__version__}-cp311-abi3-linux_x86_64.whl"
    with zipfile.ZipFile(built.wheel) as wheel:
        names = set(wheel.namelist())
        metadata = wheel.read(f"pbx_zrtp-{__version__}.dist-info/METADATA").decode()
    assert NATIVE in names
    assert "pbx_zrtp/relay/_fastpath.c" not in names  # nothing is compiled at run time
    assert f"pbx_zrtp-{__version__}.dist-info/licenses/LICENSE" in names
    assert "pbx_zrtp/_share/examples/systemd/pbx-zrtp.service" in names
    assert "pbx_zrtp/_share/dialplan/freeswitch/pbx_zrtp_wait.lua" in names
    assert "License-Expression: GPL-3.0-or-later" in metadata
    requires = [line for line in metadata.splitlines() if line.startswith("Requires-Dist:")]
    for dependency in ("cffi", "cryptography", "pylibsrtp", "crc32c", "prometheus-client"):
        assert any(line.split()[1].startswith(dependency) for line in requires), dependency
    assert f"Version: {__version__}" in metadata


def test_installed_wheel_runs_natively_without_extras(built: Built, tmp_path: pathlib.Path) -> None:
    env = clean_env()
    version = run(built.command, "--version", env=env)
    assert version.returncode == 0, version.stderr
    assert version.stdout == f"pbx-zrtp {__version__} (native fast path)\n"
    helped = run(built.command, "--help", env=env)  # no panoramisk, greenswitch, gevent
    assert helped.returncode == 0 and "samples" in helped.stdout, helped.stderr
    assert "panoramisk" not in _pip(built.venv / "bin" / "python", "list")
    with running_relay(built.command, tmp_path, env) as relay:
        assert "fast path on" in relay.text()
        secured_call(built.command, relay, env)
        # forwarded by the built worker: no compiler, no cache directory was used
        stats = run(built.command, "ctl", "--control", relay.control, "--json", "stats", env=env)
        assert stats.returncode == 0, stats.stderr
    assert "Traceback" not in relay.text()


def _scrape(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {
        sample.name + str(sorted(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


@pytest.mark.parametrize("cipher", ["AES1", "AES3"])
@pytest.mark.parametrize("family", ["ipv4", pytest.param("ipv6", marks=pytest.mark.ipv6_netns)])
def test_the_installed_wheels_worker_forwards_secured_calls(
    built: Built, tmp_path: pathlib.Path, family: str, cipher: str
) -> None:
    """The artifact CI ships, not the checkout: ``pbx-zrtp run`` from the wheel's venv
    says "fast path on" and its built worker (no compiler at run time) forwards a
    secured call, IPv4 and IPv6, AES-128 and AES-256 SRTP (the metrics say the worker
    holds the call)."""
    v6 = family == "ipv6"
    host, pbx, phone = (
        (netns.RELAY6, netns.PBX6, netns.PHONE6) if v6 else (RELAY_HOST, PBX_HOST, PHONE_HOST)
    )
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        metrics = probe.getsockname()[1]
    env = clean_env(XDG_CACHE_HOME=str(tmp_path / "no-cache"))  # nothing compiled there
    with running_relay(
        built.command, tmp_path, env, metrics=metrics, host=host, pbx_host=pbx
    ) as relay:
        assert "fast path on" in relay.text()
        assert "fast path unavailable" not in relay.text()
        secured_call(built.command, relay, env, phone_host=phone, cipher=cipher)
        samples = _scrape(metrics)
    assert samples["pbx_zrtp_fastpath_calls[]"] == 1, samples
    build = next(k for k in samples if k.startswith("pbx_zrtp_build_info"))
    assert "('fastpath', 'native')" in build
    assert samples["pbx_zrtp_packets_total[('direction', 'phone_in')]"] >= 20
    assert not (tmp_path / "no-cache").exists()
    assert "Traceback" not in relay.text()


@pytest.mark.parametrize(
    ("section", "extra", "library"),
    [
        (
            '[asterisk]\nhost = "127.0.0.1"\nusername = "u"\nsecret = "s"\n',
            "asterisk",
            "panoramisk",
        ),
        ('[freeswitch]\nhost = "127.0.0.1"\npassword = "p"\n', "freeswitch", "greenswitch"),
        ('[cache]\nurl = "postgresql://u@127.0.0.1/db"\n', "postgres", ""),
    ],
)
def test_a_missing_extra_is_one_line_naming_the_pip_install(
    built: Built, tmp_path: pathlib.Path, section: str, extra: str, library: str
) -> None:
    """Checked before anything starts; gevent is never imported to find out."""
    config = tmp_path / "relay.toml"
    config.write_text(section)
    commands = [["run"], ["run", "--check"]]
    if extra != "postgres":
        commands += [[extra], [extra, "--check"]]
    for args in commands:
        result = run(built.command, *args, "--config", str(config), env=clean_env())
        assert result.returncode == 2, (args, result.stdout, result.stderr)
        assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr, result.stderr
        assert library in result.stderr
        assert f"pip install 'pbx-zrtp[{extra}]'" in result.stderr


def test_samples_from_the_installed_wheel(built: Built, tmp_path: pathlib.Path) -> None:
    env = clean_env()
    listed = run(built.command, "samples", "list", env=env)
    assert listed.returncode == 0, listed.stderr
    names = listed.stdout.split()
    assert "examples/systemd/pbx-zrtp.service" in names and "docs/deployment.md" in names
    shown = run(built.command, "samples", "show", "examples/relay.toml", env=env)
    assert shown.stdout == (ROOT / "examples" / "relay.toml").read_text()
    copied = run(built.command, "samples", "copy", "dialplan/asterisk", str(tmp_path), env=env)
    assert copied.returncode == 0, copied.stderr
    target = tmp_path / "extensions_pbx_zrtp.conf"
    assert target.read_text() == (ROOT / "dialplan/asterisk/extensions_pbx_zrtp.conf").read_text()
    again = run(built.command, "samples", "copy", "dialplan/asterisk", str(tmp_path), env=env)
    assert again.returncode == 2 and "exists" in again.stderr  # never overwrites silently
    missing = run(built.command, "samples", "show", "docs/nothing.md", env=env)
    assert missing.returncode == 2 and missing.stderr.count("\n") == 1


def _pure_install(
    built: Built, wheel: str, target: pathlib.Path
) -> tuple[list[str], dict[str, str]]:
    """The wheel unpacked into ``target``, run by the venv's Python (its dependencies)."""
    _pip(
        built.venv / "bin" / "python", "install", "-q", "--no-deps", "--target", str(target), wheel
    )
    command = [str(built.venv / "bin" / "python"), "-m", "pbx_zrtp.cli"]
    return command, clean_env(PYTHONPATH=str(target))


def _check_pure(built: Built, wheel: str, tmp_path: pathlib.Path) -> None:
    assert pathlib.Path(wheel).name == f"pbx_zrtp-{__version__}-py3-none-any.whl"
    with zipfile.ZipFile(wheel) as archive:
        assert NATIVE not in archive.namelist()
    command, env = _pure_install(built, wheel, tmp_path / "site")
    version = run(command, "--version", env=env)
    assert "no native fast path: this installation was built without the native worker" in (
        version.stdout
    ), version.stdout + version.stderr
    # fastpath = "on" refuses to start, in one line
    on = relay_config(tmp_path, free_even_port(), fastpath="on")
    refused = run(command, "run", "--config", str(on), env=env)
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert refused.stderr.count("\n") == 1 and "Traceback" not in refused.stderr
    assert "relay.fastpath: on, but the fast path is unavailable" in refused.stderr
    # "auto" (the default) runs, in Python, and carries a secured call
    (tmp_path / "run").mkdir()
    with running_relay(command, tmp_path / "run", env, fastpath="auto") as relay:
        assert "fast path unavailable" in relay.text()
        secured_call(command, relay, env)


def test_no_compiler_builds_a_pure_wheel_that_works_in_python(
    built: Built, tmp_path: pathlib.Path
) -> None:
    wheel, log = _wheel(built.sdist, tmp_path / "wheel", clean_env(CC="/bin/false"))
    assert "building WITHOUT the native fast path (compiling it failed" in log
    _check_pure(built, wheel, tmp_path)


def test_no_libsrtp_headers_builds_a_pure_wheel_with_a_clear_message(
    built: Built, tmp_path: pathlib.Path
) -> None:
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("hiding /usr/include/srtp2 needs root and unshare (a mount namespace)")
    out = tmp_path / "wheel"
    out.mkdir()
    script = (
        "mount -t tmpfs none /usr/include/srtp2 && "
        f"PKG_CONFIG_PATH=/nonexistent PKG_CONFIG_LIBDIR=/nonexistent "
        f"{sys.executable} -m pip wheel -v --no-deps -w {out} {built.sdist}"
    )
    proc = subprocess.run(
        ["unshare", "-m", "--propagation", "private", "sh", "-c", script],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        env=clean_env(),
    )
    log = proc.stdout + proc.stderr
    if proc.returncode != 0 and "mount" in log and "permission denied" in log.lower():
        pytest.skip(f"no mount namespace here: {log[-300:]}")
    assert proc.returncode == 0, log[-4000:]
    assert "libsrtp2's headers were not found: srtp2/srtp.h" in log
    (wheel,) = out.glob("*.whl")
    _check_pure(built, str(wheel), tmp_path)


def test_a_build_that_requires_the_worker_fails_without_it(
    built: Built, tmp_path: pathlib.Path
) -> None:
    out = tmp_path / "wheel"
    out.mkdir()
    env = clean_env(CC="/bin/false", PBX_ZRTP_REQUIRE_FASTPATH="1")
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-v", "--no-deps", "-w", str(out), str(built.sdist)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        env=env,
    )
    assert proc.returncode != 0
    assert "cannot build the native fast path" in proc.stdout + proc.stderr
    assert not list(out.glob("*.whl"))


def test_one_version_source() -> None:
    """pbx_zrtp.__version__ is the version (the wheel's metadata is checked above)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert "version" not in project and "version" in project["dynamic"]


def test_a_checkout_is_told_when_its_built_worker_is_older_than_its_c(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """pip install -e . built the worker once; C changed since would test stale code."""
    from pbx_zrtp.relay import fastpath

    assert fastpath.built_from_current_source() is not False, fastpath.STALE
    if fastpath.built_from_current_source() is None:
        pytest.skip("no built worker in this checkout")
    changed = tmp_path / "_fastpath.c"
    changed.write_bytes(fastpath._SOURCE.read_bytes() + b"\n/* changed */\n")
    monkeypatch.setattr(fastpath, "_SOURCE", changed)
    assert fastpath.built_from_current_source() is False
    with pytest.raises(OSError, match="changed since the native worker was built"):
        fastpath._open_built()
