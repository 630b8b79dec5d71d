"""Secret files: passwords and tokens are read from owner-only files, never from
the configuration file itself (configuration files are often world-readable)."""

from __future__ import annotations

import os
import stat

from pbx_zrtp.config.fields import ConfigError, Converter, Invalid

#: Longest secret file read (a password or token is a line, not a file system).
MAX_SECRET_FILE = 4096


def read_secret_file(name: str, path: object, *, min_length: int = 1) -> str:
    """The first line of a secret file (password, token) that only its owner can read.

    One reader for every secret file, so each refuses the same things: a path that is
    not a regular file (``/dev/zero`` would never end), a file others can read, more
    than MAX_SECRET_FILE bytes, non-UTF-8 text, an empty or short secret. Errors name
    the setting ``name`` and never contain the secret.
    """
    try:
        return _read_secret(path, min_length)
    except Invalid as exc:
        raise ConfigError(f"{name}: {exc}") from None


def secret_file(*, min_length: int = 1) -> Converter[str]:
    """A field naming a secret file: the secret it holds (see ``read_secret_file``)."""

    def convert(path: object) -> str:
        return _read_secret(path, min_length)

    return convert


def _read_secret(path: object, min_length: int) -> str:
    if not isinstance(path, str) or not path:
        raise Invalid("a file path")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise Invalid(f"cannot read {path}: {exc.strerror}") from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise Invalid(f"{path} is not a regular file")
        if mode & 0o077:
            raise Invalid(f"{path} is readable by other users (chmod 600)")
        data = os.read(fd, MAX_SECRET_FILE + 1)
    except OSError as exc:
        raise Invalid(f"cannot read {path}: {exc.strerror}") from None
    finally:
        os.close(fd)
    if len(data) > MAX_SECRET_FILE:
        raise Invalid(f"{path} is longer than {MAX_SECRET_FILE} bytes")
    try:
        lines = data.decode("utf-8").splitlines()
    except UnicodeDecodeError:
        raise Invalid(f"{path} is not UTF-8 text") from None
    secret = lines[0].strip() if lines else ""
    if not secret:
        raise Invalid(f"{path} is empty")
    if len(secret) < min_length:
        raise Invalid(f"the secret in {path} is shorter than {min_length} characters")
    return secret
