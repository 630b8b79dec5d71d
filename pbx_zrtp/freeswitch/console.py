"""``zrtp …`` at fs_cli: the words, the stored per-extension policies, the replies.

fs_cli sends every line with ``console_execute: true``, so FreeSWITCH expands
aliases: ``alias stickyadd zrtp lua pbx_zrtp_admin.lua`` (once; sticky aliases live
in FreeSWITCH's core database and survive restarts) makes ``zrtp show calls`` run
``dialplan/freeswitch/pbx_zrtp_admin.lua``, which fires CUSTOM ``pbx_zrtp::admin``
(``pbx_zrtp_request``: an id, ``pbx_zrtp_command``: the words) and prints the
adapter's CUSTOM ``pbx_zrtp::admin_reply`` (``pbx_zrtp_reply``, percent-encoded:
one header holds every line). The adapter's side is ``FreeswitchAdapter._admin``.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from urllib.parse import quote

from pbx_zrtp.calls import Policy

REQUEST = "pbx_zrtp::admin"
REPLY = "pbx_zrtp::admin_reply"

USAGE = """usage: zrtp show calls | zrtp show call <uuid> | zrtp verify <uuid> |
  zrtp unverify <uuid> | zrtp policy <extension> [off|optional|required|auto] |
  zrtp enroll <uuid> confirm|remove"""

#: An extension (or endpoint) a policy may be stored for: what a global variable's
#: name can carry (pbx_zrtp_policy_<extension>).
EXTENSION = re.compile(r"[A-Za-z0-9_.+*#-]{1,64}")


def encode_reply(text: str) -> str:
    """One header value: every byte but letters, digits and ``-_.~ `` percent-encoded
    (pbx_zrtp_admin.lua decodes it)."""
    return quote(text.rstrip("\n"), safe=" ")


class StoredPolicies:
    """Per-extension policies set at fs_cli, kept in ``path`` (JSON) so they survive a
    FreeSWITCH restart (the adapter writes them back as globals after every ESL
    connect) and a pbx-zrtp restart. No path: kept in memory only."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.policies: dict[str, str] = load_policies(path) if path else {}

    def set(self, extension: str, policy: Policy | None) -> None:
        if policy is None:
            self.policies.pop(extension, None)
        else:
            self.policies[extension] = policy.value
        if self.path:
            target = Path(self.path)
            temporary = target.with_name(target.name + ".tmp")
            temporary.write_text(json.dumps(self.policies, indent=1, sort_keys=True) + "\n")
            os.replace(temporary, target)


def load_policies(path: str) -> dict[str, str]:
    """The stored policies; {} when the file does not exist yet. ValueError (one
    line, naming the file and the fix) when it cannot be used."""
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror}") from None
    try:
        data = json.loads(text)
    except ValueError:
        raise ValueError(f"{path} is not JSON: fix it or remove it") from None
    if not isinstance(data, dict) or not all(
        isinstance(k, str) and EXTENSION.fullmatch(k) and v in {p.value for p in Policy}
        for k, v in data.items()
    ):
        raise ValueError(
            f'{path} must map extensions to off, optional or required ({{"9400": "required"}})'
        )
    return {str(k): str(v) for k, v in data.items()}
