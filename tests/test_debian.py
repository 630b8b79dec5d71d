"""The Debian package: ``bash debian/build-deb.sh`` builds it (lintian: no errors),
and the unpacked tree carries everything an admin expects and runs a secured call
with no compiler reachable.

The build takes one to two minutes (dh-virtualenv installs the dependencies from
PyPI); ``bash install.sh --dev`` installs its tools (debhelper, dh-virtualenv,
lintian).
"""

from __future__ import annotations

import os
import pathlib
import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from pbx_zrtp import __version__
from tests.install_check import clean_env, run, running_relay, secured_call

# builds in subprocesses take minutes on a loaded machine
pytestmark = pytest.mark.timeout(1500)

ROOT = pathlib.Path(__file__).resolve().parent.parent
VENV = "usr/lib/pbx-zrtp"
UNITS = ("pbx-zrtp", "pbx-zrtp-relay", "pbx-zrtp-asterisk", "pbx-zrtp-freeswitch")


@dataclass
class Deb:
    path: pathlib.Path
    tree: pathlib.Path
    build_log: str

    @property
    def command(self) -> list[str]:
        # the tree's own environment; its scripts' #! names /usr/lib/pbx-zrtp, so run
        # the interpreter of the tree on the script of the tree
        bin_dir = self.tree / VENV / "bin"
        return [str(bin_dir / "python"), str(bin_dir / "pbx-zrtp")]

    def field(self, name: str) -> str:
        return subprocess.run(
            ["dpkg-deb", "-f", str(self.path), name], capture_output=True, text=True, check=True
        ).stdout.strip()


def _tools() -> str | None:
    for tool in ("dpkg-buildpackage", "dh_virtualenv", "lintian", "dpkg-deb"):
        if shutil.which(tool) is None:
            return f"{tool} is missing (bash install.sh --dev installs it)"
    check = subprocess.run(["dpkg-checkbuilddeps"], cwd=ROOT, capture_output=True, text=True)
    if check.returncode != 0:
        return check.stderr.strip()
    return None


@pytest.fixture(scope="module")
def deb(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deb]:
    why = _tools()
    if why is not None:
        if os.environ.get("CI"):
            pytest.fail(f"the Debian package must build in CI: {why}")
        pytest.skip(why)
    work = tmp_path_factory.mktemp("deb")
    proc = subprocess.run(
        ["bash", str(ROOT / "debian" / "build-deb.sh"), str(work / "out")],
        capture_output=True,
        text=True,
        timeout=1200,
        check=False,
        env=clean_env(),
    )
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-5000:]  # lintian --fail-on error is part of it
    (path,) = (work / "out").glob("*.deb")
    tree = work / "tree"
    subprocess.run(["dpkg-deb", "-x", str(path), str(tree)], check=True)
    # What the installed system provides: its python3.11 (the package depends on it).
    # Relative links in the tree (bin/python3.11 -> ../../../bin/python3.11) then
    # resolve inside the tree, and Python finds the environment next to them.
    (tree / "usr" / "bin" / "python3.11").symlink_to("/usr/bin/python3.11")
    yield Deb(path, tree, log)


def test_built_with_lintian_clean_of_errors(deb: Deb) -> None:
    assert deb.path.name == f"pbx-zrtp_{__version__}_amd64.deb"
    assert not re.search(r"^E: ", deb.build_log, re.MULTILINE), deb.build_log[-3000:]
    depends = deb.field("Depends")
    assert "python3.11" in depends
    for build_only in ("gcc", "build-essential", "libsrtp2-dev", "python3-dev", "cc"):
        assert not re.search(rf"\b{re.escape(build_only)}\b", depends), depends


def test_the_tree_has_what_an_admin_expects(deb: Deb) -> None:
    tree = deb.tree
    assert os.readlink(tree / "usr/bin/pbx-zrtp") == "../lib/pbx-zrtp/bin/pbx-zrtp"
    assert (tree / "etc/pbx-zrtp/relay.toml").read_text() == (
        ROOT / "examples/relay.toml"
    ).read_text()
    control = tree.parent / "control"
    subprocess.run(["dpkg-deb", "-e", str(deb.path), str(control)], check=True)
    assert "/etc/pbx-zrtp/relay.toml" in (control / "conffiles").read_text().split()
    sysusers = (tree / "usr/lib/sysusers.d/pbx-zrtp.conf").read_text()
    assert re.search(r"^u pbx-zrtp .* /var/lib/pbx-zrtp", sysusers, re.MULTILINE)
    tmpfiles = (tree / "usr/lib/tmpfiles.d/pbx-zrtp.conf").read_text()
    assert "d /var/lib/pbx-zrtp 0700 pbx-zrtp pbx-zrtp" in tmpfiles
    assert "d /run/pbx-zrtp 0700 pbx-zrtp pbx-zrtp" in tmpfiles
    postinst = (control / "postinst").read_text()
    assert "systemd-sysusers" in postinst and "systemd-tmpfiles" in postinst
    for unit in UNITS:
        text = (tree / f"lib/systemd/system/{unit}.service").read_text()
        assert text == (ROOT / f"examples/systemd/{unit}.service").read_text()
        assert "Type=notify" in text and "User=pbx-zrtp" in text
        assert "ExecStart=/usr/bin/pbx-zrtp " in text
        assert "MemoryDenyWriteExecute=yes" in text and "CapabilityBoundingSet=\n" in text
    # the native worker is in, already built; no C source, nothing to compile
    site = tree / VENV / "lib/python3.11/site-packages"
    assert (site / "pbx_zrtp/relay/_fastpath_lib.abi3.so").is_file()
    assert not list(site.glob("pbx_zrtp/**/*.c"))
    # the extras are in: one package serves Asterisk, FreeSWITCH and a shared cache
    for module in ("panoramisk", "greenswitch", "gevent", "psycopg"):
        assert (site / module).is_dir(), module


def test_the_unpacked_tree_runs_a_secured_call_without_a_compiler(
    deb: Deb, tmp_path: pathlib.Path
) -> None:
    env = clean_env(PATH="/nonexistent")  # no gcc, cc or pkg-config to be found
    version = run(deb.command, "--version", env=env)
    assert version.stdout == f"pbx-zrtp {__version__} (native fast path)\n", version.stderr
    with running_relay(deb.command, tmp_path, env) as relay:
        assert "fast path on" in relay.text()
        secured_call(deb.command, relay, env)
    assert "Traceback" not in relay.text()


def test_the_units_verify(deb: Deb, tmp_path: pathlib.Path) -> None:
    """systemd-analyze verify, the tree's pbx-zrtp standing in for /usr/bin's."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    units = []
    for unit in UNITS:
        text = (deb.tree / f"lib/systemd/system/{unit}.service").read_text()
        units.append(tmp_path / f"{unit}.service")
        units[-1].write_text(text.replace("/usr/bin/pbx-zrtp", str(deb.tree / "usr/bin/pbx-zrtp")))
    proc = subprocess.run([analyze, "verify", *map(str, units)], capture_output=True, text=True)
    assert proc.returncode == 0 and not proc.stderr.strip(), proc.stdout + proc.stderr
