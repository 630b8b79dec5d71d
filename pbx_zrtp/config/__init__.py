"""Reading settings: one field reader (``fields``), secret files, the relays a PBX
section lists, and the TOML file itself.

It sits at the bottom with ``pbx_zrtp.calls``: each layer declares its own
sections with it (``relay.config``, ``asterisk.config``...), and
``pbx_zrtp.app.load_settings`` reads a whole file once for both ``--check`` and
``run``.
"""

from __future__ import annotations

import os
import tomllib
from typing import Any

from pbx_zrtp.config.fields import ConfigError, FieldReader, Problems, section
from pbx_zrtp.config.secrets import read_secret_file, secret_file


def read_toml(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The file's tables; ConfigError names the file and what is wrong with it."""
    try:
        with open(path, "rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such configuration file") from None
    except OSError as exc:  # a directory, no permission...
        raise ConfigError(f"{path}: cannot read the configuration: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    except UnicodeDecodeError as exc:  # found by fuzzing: TOML must be UTF-8
        raise ConfigError(f"{path}: not valid TOML: not UTF-8 at octet {exc.start}") from None


__all__ = [
    "ConfigError",
    "FieldReader",
    "Problems",
    "read_secret_file",
    "read_toml",
    "secret_file",
    "section",
]
