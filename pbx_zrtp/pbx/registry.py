"""The PBXs pbx_zrtp can serve, each imported only when configured.

A PBX is a package ``pbx_zrtp.<name>`` with two modules:

- ``config``: ``read(FieldReader) -> PbxConfig``, its ``[<name>]`` section (light:
  no client library, no media path; ``pbx-zrtp --check`` imports only this);
- ``adapter``: ``Adapter(config, relay) -> PbxAdapter``, the adapter (it imports
  the PBX's client library, e.g. panoramisk or greenswitch).

A third PBX of the same kind is then one such package and one line in ``KINDS``.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from pbx_zrtp.calls import RelayHandle
from pbx_zrtp.config.fields import Problems, section
from pbx_zrtp.config.relays import RelayEntry
from pbx_zrtp.pbx.link import PbxLink


class PbxConfig(Protocol):
    """What every PBX section says besides its own settings."""

    #: Several relays (``[[<name>.relays]]``); empty: the one relay of ``pbx-zrtp run``.
    relays: list[RelayEntry]
    #: How long a relay may be unreachable before its calls are reported failed.
    relay_grace: float


class PbxAdapter(Protocol):
    #: The session with the PBX (AMI, ESL): its ``connected`` is the adapter's health.
    link: PbxLink

    async def start(self) -> bool:
        """Connect (and keep reconnecting); True if connected in time."""

    async def close(self) -> None: ...

    def reconfigure(self, config: object) -> list[str]:
        """SIGHUP: take the re-read section (its own PbxConfig type) for calls from now
        on, calls in progress unaffected; returns the settings (``section.key``) that
        changed but apply only on a restart (the PBX link's address, credentials)."""


@dataclass(frozen=True)
class PbxKind:
    name: str  # the configuration section and the ``pbx-zrtp`` command
    title: str  # for help texts
    package: str

    def read(self, table: Mapping[str, object], problems: Problems) -> PbxConfig:
        """The ``[<name>]`` section; its problems go to ``problems``."""
        module = importlib.import_module(f"{self.package}.config")
        config: PbxConfig = module.read(section(self.name, table, problems))
        return config

    def adapter(self, config: PbxConfig, relay: RelayHandle) -> PbxAdapter:
        module = importlib.import_module(f"{self.package}.adapter")
        adapter: PbxAdapter = module.Adapter(config, relay)
        return adapter


KINDS = (
    PbxKind("asterisk", "Asterisk (AMI)", "pbx_zrtp.asterisk"),
    PbxKind("freeswitch", "FreeSWITCH (ESL)", "pbx_zrtp.freeswitch"),
)
BY_NAME = {kind.name: kind for kind in KINDS}
