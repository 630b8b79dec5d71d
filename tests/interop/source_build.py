"""Build a ZRTP library from a source tree in the test setup (never vendored).

libzrtp and GNU ZRTP are not Debian packages. A developer fetches their public
sources, names the tree in an environment variable, and the interop fixtures
build them here: into the install prefix named by the matching ``*_PREFIX``
variable when set (e.g. ``/opt/libzrtp``), otherwise into a cache directory
keyed by the tree's contents, so a second run reuses the build. A prefix that
already holds a build is used as is. Without either, the tests skip and say so.
"""

from __future__ import annotations

import hashlib
import os
import pathlib
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass

#: A finished install carries this file; a half-built prefix is rebuilt.
DONE_MARK = ".pbx-zrtp-interop-build"


class BuildError(RuntimeError):
    """The library could not be built; the message ends with the log's tail."""


def cache_root() -> pathlib.Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(pathlib.Path.home() / ".cache")
    return pathlib.Path(base) / "pbx_zrtp" / "interop"


def tree_key(source: pathlib.Path, *extra: str) -> str:
    """A short digest of every file's path, size and mtime (and ``extra``)."""
    digest = hashlib.sha256("\0".join(extra).encode())
    for path in sorted(source.rglob("*")):
        if path.is_file():
            stat = path.stat()
            digest.update(
                f"{path.relative_to(source)}\0{stat.st_size}\0{stat.st_mtime_ns}\0".encode()
            )
    return digest.hexdigest()[:16]


def run(cmd: Sequence[str], cwd: pathlib.Path, log: pathlib.Path, timeout: float = 900) -> None:
    """Run one build step, appending its output to ``log``; BuildError on failure."""
    with log.open("a") as out:
        out.write(f"\n$ {' '.join(cmd)}  (in {cwd})\n")
        out.flush()
        try:
            proc = subprocess.run(
                list(cmd),
                cwd=cwd,
                stdout=out,
                stderr=subprocess.STDOUT,
                timeout=timeout,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise BuildError(f"{cmd[0]} failed: {exc}") from None
    if proc.returncode != 0:
        tail = log.read_text(errors="replace")[-3000:]
        raise BuildError(f"`{' '.join(cmd)}` exited {proc.returncode}; log {log}:\n{tail}")


def replace_in_file(path: pathlib.Path, old: str, new: str) -> None:
    """A documented source fix; BuildError when the text is not there (other snapshot)."""
    text = path.read_text()
    if old not in text:
        raise BuildError(f"{path}: expected text for the build fix not found: {old!r}")
    path.write_text(text.replace(old, new))


def missing_tools(*tools: str) -> str | None:
    absent = [tool for tool in tools if shutil.which(tool) is None]
    return f"missing build tools: {', '.join(absent)}" if absent else None


def ensure_built(
    name: str,
    prefix: pathlib.Path,
    source: pathlib.Path | None,
    build: Callable[[pathlib.Path, pathlib.Path, pathlib.Path], None],
    complete: Callable[[pathlib.Path], bool],
) -> pathlib.Path:
    """Return ``prefix`` once it holds a complete install, building it from
    ``source`` if needed with ``build(work_copy, prefix, log)``."""
    if complete(prefix) and (prefix / DONE_MARK).exists():
        return prefix
    if complete(prefix) and source is None:
        return prefix  # installed by hand (or by an earlier helper version)
    if source is None:
        raise BuildError(f"{name} is not installed in {prefix} and no source tree was given")
    prefix.mkdir(parents=True, exist_ok=True)
    log = prefix / "build.log"
    log.write_text(f"building {name} from {source}\n")
    with tempfile.TemporaryDirectory(prefix=f"{name}-build-") as tmp:
        work = pathlib.Path(tmp) / "src"
        shutil.copytree(source, work, symlinks=True)
        build(work, prefix, log)
    if not complete(prefix):
        raise BuildError(f"{name} build finished but {prefix} is incomplete; see {log}")
    (prefix / DONE_MARK).write_text(f"{source}\n")
    return prefix


def compile_peer(cmd: Sequence[str], output: pathlib.Path) -> None:
    """Compile a peer program (cmd writes ``output``.tmp); BuildError with gcc's message."""
    proc = subprocess.run(list(cmd), capture_output=True, text=True, check=False, timeout=300)
    tmp = pathlib.Path(str(output) + ".tmp")
    if proc.returncode != 0:
        tmp.unlink(missing_ok=True)
        raise BuildError(f"compiling {output.name} failed:\n{proc.stderr[-3000:]}")
    os.replace(tmp, output)


Found = tuple[pathlib.Path | None, str | None, bool]


@dataclass(frozen=True)
class SourceLibrary:
    """A ZRTP library built from its public sources: where to find or build it.

    ``locate`` is the one routine every such library follows: a source tree named
    by ``src_env`` is checked, the install prefix is ``prefix_env`` (plus
    ``suffix`` for a variant), else ``default_prefix`` when it already holds a
    build or no source was given, else a cache directory keyed by the tree; a
    complete prefix is used as is, otherwise the tree is built there.
    """

    name: str
    title: str  # for messages, e.g. "GNU ZRTP"
    repository: str  # the public repository, for the skip reason
    src_env: str
    prefix_env: str
    default_prefix: pathlib.Path
    recipe: str  # bumped when the build steps change, so cached builds are redone
    marker: str  # a file every source tree of the library has
    tools: tuple[str, ...]
    complete: Callable[[pathlib.Path], bool]
    build: Callable[[pathlib.Path, pathlib.Path, pathlib.Path], None]

    def locate(self, suffix: str = "") -> Found:
        """(prefix, None, source_given) when usable, else (None, reason, source_given)."""
        src = os.environ.get(self.src_env)
        source = pathlib.Path(src) if src else None
        given = source is not None
        if source is not None and not (source / self.marker).is_file():
            return None, f"{self.src_env}={src} is not a {self.title} tree (no {self.marker})", True
        default = pathlib.Path(f"{self.default_prefix}{suffix}")
        if os.environ.get(self.prefix_env):
            prefix = pathlib.Path(os.environ[self.prefix_env] + suffix)
        elif self.complete(default) or source is None:
            prefix = default
        else:
            prefix = cache_root() / f"{self.name}{suffix}-{tree_key(source, self.recipe)}"
        if source is None and not self.complete(prefix):
            return (
                None,
                f"{self.title} not found in {prefix}: set {self.src_env} to a {self.title} "
                f"source tree (public repository {self.repository}) to build it (docs/zrtp.md)",
                False,
            )
        reason = missing_tools(*self.tools)
        if reason is not None and source is not None and not self.complete(prefix):
            return None, reason, True
        try:
            built = ensure_built(self.name + suffix, prefix, source, self.build, self.complete)
        except BuildError as exc:
            return None, str(exc), given
        return built, None, given


def build_peer(
    found: Found,
    out_dir: pathlib.Path,
    name: str,
    command: Callable[[pathlib.Path, pathlib.Path], list[str]],
) -> pathlib.Path:
    """Compile a peer program against the library ``found`` where; ``command(prefix,
    output)`` is the compiler line. BuildError (with the skip reason) if impossible."""
    prefix, reason, _ = found
    if prefix is None:
        raise BuildError(reason or f"{name}: its library is unavailable")
    out_dir.mkdir(parents=True, exist_ok=True)
    binary = out_dir / name
    compile_peer(command(prefix, pathlib.Path(f"{binary}.tmp")), binary)
    return binary
