"""The optional parts (pip extras) and the libraries each needs.

``pip install pbx-zrtp`` alone runs the relay; an ``[asterisk]`` or ``[freeswitch]``
section needs its extra (a PostgreSQL cache too: ``cache.url`` checks that itself).
What would start is checked before anything starts, without importing the library
(gevent must only ever be imported in the ESL thread), so a missing one is one line
naming the ``pip install`` that fixes it, never a traceback or a thread that dies
while the process runs on.
"""

from __future__ import annotations

import importlib.util

#: extra -> the top-level modules it installs
EXTRAS: dict[str, tuple[str, ...]] = {
    "asterisk": ("panoramisk",),
    "freeswitch": ("greenswitch", "gevent"),
}


class MissingExtra(Exception):
    """A configured part's library is not installed."""


def missing(extra: str) -> str | None:
    """The first module of ``extra`` that is not installed, else None."""
    for module in EXTRAS[extra]:
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            return module
    return None


def require(extra: str, what: str) -> None:
    """Raise MissingExtra (one line, with the fix) if ``extra`` is not installed."""
    module = missing(extra)
    if module is not None:
        raise MissingExtra(
            f"{what} needs {module}, which is not installed: pip install 'pbx-zrtp[{extra}]'"
        )
