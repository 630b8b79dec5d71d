"""The files an admin copies out of pbx_zrtp: docs, dialplan snippets, example units.

A built package carries them as package data under ``pbx_zrtp/_share/`` (setup.py's
build_py); a checkout or an editable install reads them where they are in the
repository. ``pbx-zrtp samples list|show|copy`` uses this.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

#: The top-level directories shipped, as in the repository.
SHARED = ("docs", "dialplan", "examples")


class SampleError(Exception):
    """No such sample, or a copy that would overwrite a file."""


def root() -> Path:
    """Where the shipped files are: the package's copy, else the checkout's."""
    package = Path(__file__).resolve().parent
    shipped = package / "_share"
    if shipped.is_dir():
        return shipped
    return package.parent


def names() -> list[str]:
    """Every shipped file, as a relative POSIX path (``dialplan/asterisk/...``)."""
    base = root()
    found: list[str] = []
    for top in SHARED:
        for folder, dirs, files in os.walk(base / top):
            dirs[:] = sorted(d for d in dirs if not d.startswith((".", "__")))
            for file in sorted(files):
                found.append((Path(folder) / file).relative_to(base).as_posix())
    return found


def _select(name: str) -> list[str]:
    """A file's name, or a directory's (every file under it)."""
    clean = PurePosixPath(name.strip("/")).as_posix()
    every = names()
    if clean in every:
        return [clean]
    under = [n for n in every if n.startswith(f"{clean}/")]
    if not under or clean in ("", "."):
        raise SampleError(f"no sample named {name!r} (pbx-zrtp samples list)")
    return under


def read(name: str) -> bytes:
    """One file's contents."""
    files = _select(name)
    if files != [PurePosixPath(name.strip("/")).as_posix()]:
        raise SampleError(f"{name!r} is a directory: pbx-zrtp samples list {name}")
    return (root() / files[0]).read_bytes()


@dataclass(frozen=True)
class Copied:
    name: str
    target: Path


def copy(selection: list[str], destination: str, *, force: bool = False) -> list[Copied]:
    """Copy files into the directory ``destination`` (a directory's files go there
    with the layout below it, like ``cp -r dir/. destination``); never overwrites
    unless ``force``."""
    dest = Path(destination)
    plan: list[Copied] = []
    for name in selection:
        clean = PurePosixPath(name.strip("/"))
        files = _select(name)
        base = clean.parent if files == [clean.as_posix()] else clean
        plan += [Copied(f, dest / PurePosixPath(f).relative_to(base)) for f in files]
    if not force:
        existing = [c.target for c in plan if c.target.exists()]
        if existing:
            raise SampleError(f"{existing[0]} exists (--force to overwrite)")
    shipped = root()
    for item in plan:
        item.target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shipped / item.name, item.target)
    return plan
