"""The house plan (docs/architecture.md): layers import only downward, naming a
policy or checking a configuration loads neither the media path nor a PBX's
client library, and a configuration's problems are all reported at once by the
one parser ``--check`` and ``run`` share."""

from __future__ import annotations

import ast
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "pbx_zrtp"

#: Lower numbers are lower layers; a module imports from its own layer or below.
LAYERS = {
    "pbx_zrtp.calls": 0,
    "pbx_zrtp.config": 0,
    "pbx_zrtp.zrtp": 0,
    "pbx_zrtp.cache": 0,
    "pbx_zrtp.srtp": 1,
    "pbx_zrtp.storehost": 1,
    "pbx_zrtp.enginehost": 1,
    "pbx_zrtp.relay": 2,
    "pbx_zrtp.endpoint": 2,
    "pbx_zrtp.pbx": 3,
    "pbx_zrtp.asterisk": 3,
    "pbx_zrtp.freeswitch": 3,
    "pbx_zrtp.app": 4,
    "pbx_zrtp.cli": 4,
}
MEDIA_PATH = {"cffi", "_cffi_backend", "pylibsrtp", "pbx_zrtp.relay.fastpath", "pbx_zrtp.srtp"}
PBX_CLIENTS = {"panoramisk", "greenswitch", "gevent"}


def _layer(module: str) -> int | None:
    for prefix, layer in LAYERS.items():
        if module == prefix or module.startswith(prefix + "."):
            return layer
    return None


def _imports(path: pathlib.Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def test_every_import_points_down() -> None:
    upward = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        own = _layer(module)
        if own is None:
            continue
        for imported in _imports(path):
            theirs = _layer(imported)
            if theirs is not None and theirs > own:
                upward.append(f"{module} -> {imported}")
    assert not upward, upward


def _loaded_after(code: str) -> set[str]:
    proc = subprocess.run(
        [sys.executable, "-c", f"import sys\n{code}\nprint('\\n'.join(sys.modules))"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return set(proc.stdout.split())


def test_checking_an_asterisk_section_loads_neither_media_path_nor_panoramisk() -> None:
    loaded = _loaded_after(
        "from pbx_zrtp.asterisk.config import parse_asterisk\nparse_asterisk({'secret': 's'})"
    )
    assert not loaded & (MEDIA_PATH | PBX_CLIENTS), sorted(loaded & (MEDIA_PATH | PBX_CLIENTS))


def test_help_loads_no_pbx_client_library() -> None:
    loaded = _loaded_after(
        "import contextlib, io\nfrom pbx_zrtp import cli\n"
        "with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n"
        "    cli.main(['--help'])"
    )
    assert not loaded & PBX_CLIENTS, sorted(loaded & PBX_CLIENTS)


def test_check_reports_every_problem_of_every_section_at_once(tmp_path: pathlib.Path) -> None:
    config = tmp_path / "pbx.toml"
    config.write_text(
        '[relay]\nports = "1-2"\nrtcp = "yes"\n'
        '[asterisk]\nport = 0\ncolour = "red"\n'
        "[freeswitch]\nhangup_failed_after = 99\n"
    )
    proc = subprocess.run(
        [sys.executable, "-m", "pbx_zrtp.cli", "run", "--config", str(config), "--check"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert proc.returncode == 2
    for setting in (
        "relay.ports:",
        "relay.rtcp: true or false",
        "asterisk.port: the AMI TCP port",
        "asterisk.colour: unknown setting",
        "asterisk.secret_file: needed to log in to AMI",
        "freeswitch.hangup_failed_after: seconds, 0-60",
    ):
        assert f"pbx-zrtp: configuration error: {setting}" in proc.stderr, proc.stderr


def test_check_and_run_read_a_file_with_the_same_parser(tmp_path: pathlib.Path) -> None:
    """What --check accepts is what run gets: one load_settings for both."""
    from pbx_zrtp.app import load_settings
    from pbx_zrtp.asterisk.config import AsteriskConfig

    config = tmp_path / "pbx.toml"
    config.write_text(
        '[relay]\naddress = "127.0.0.5"\n[asterisk]\nsecret = "s"\nhangup_failed_after = 0\n'
    )
    settings = load_settings(config)
    assert settings.relay.relay_address == "127.0.0.5"
    asterisk = settings.pbxs["asterisk"]
    assert isinstance(asterisk, AsteriskConfig) and asterisk.hangup_failed_after == 0.0
    assert list(settings.pbxs) == ["asterisk"]
