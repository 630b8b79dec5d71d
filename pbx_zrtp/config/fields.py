"""One reader for every table of settings: the configuration file's sections and
the control API's requests.

A ``FieldReader`` takes the fields of one table one by one, each with a typed
converter (``integer(1, 65535)``, ``flag()``, ``policy()``...) and a default;
what is left at ``finish`` is an unknown key, an error too (a typo must not fall
back to a default silently). A converter raises ``Invalid`` with what is wrong
with the value; the reader prefixes the field's name (``asterisk.port: ...`` in a
configuration, ``field 'port' ...`` in a request) or, when the field has one,
says its ``fix`` instead. A configuration's reader collects every problem of
every section (``Problems``) and reports them all at once; a request's reader
stops at the first.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterable, Mapping
from typing import TypeVar

from pbx_zrtp.calls import Policy

T = TypeVar("T")
Converter = Callable[[object], T]


class ConfigError(ValueError):
    """Configuration problems; each names its setting (``section.key``) and the fix."""

    def __init__(self, *problems: str) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


class Invalid(ValueError):
    """A value a converter refuses; the message says why, without the field's name."""


class Problems:
    """Every problem found in a configuration, to report them all at once."""

    def __init__(self) -> None:
        self.items: list[str] = []

    def add(self, message: str) -> None:
        self.items.append(message)

    def check(self) -> None:
        """Raise ConfigError with every problem, if there is any."""
        if self.items:
            raise ConfigError(*self.items)


def kind_of(value: object) -> str:
    """A value's type in JSON/TOML words, for messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


# ---------------------------------------------------------------------- converters


def text(
    *,
    max_length: int | None = None,
    empty: bool = True,
    pattern: str | None = None,
    control_characters: bool = True,
) -> Converter[str]:
    """A string; ``control_characters=False`` refuses ASCII controls (log injection)."""
    compiled = re.compile(pattern) if pattern is not None else None

    def convert(value: object) -> str:
        if not isinstance(value, str):
            raise Invalid(f"must be a string, got {kind_of(value)}")
        if max_length is not None and len(value) > max_length:
            raise Invalid(f"is longer than {max_length} characters")
        if not value and not empty:
            raise Invalid("must not be empty")
        if not control_characters and any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
            raise Invalid("must not contain control characters")
        if compiled is not None and not compiled.fullmatch(value):
            raise Invalid(f"{value!r} is not valid here")
        return value

    return convert


def integer(low: int, high: int) -> Converter[int]:
    def convert(value: object) -> int:
        if type(value) is not int:  # bool is an int in Python, not in JSON or TOML
            raise Invalid(f"must be an integer, got {kind_of(value)}")
        if not low <= value <= high:
            raise Invalid(f"must be {low}-{high}")
        return value

    return convert


def number(low: float, high: float) -> Converter[float]:
    def convert(value: object) -> float:
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise Invalid(f"must be a number, got {kind_of(value)}")
        if not low <= value <= high:
            raise Invalid(f"must be between {low:g} and {high:g}")
        return float(value)

    return convert


def flag() -> Converter[bool]:
    def convert(value: object) -> bool:
        if not isinstance(value, bool):
            raise Invalid(f"must be true or false, got {kind_of(value)}")
        return value

    return convert


def choice(*values: str) -> Converter[str]:
    names = ", ".join(values)

    def convert(value: object) -> str:
        if not isinstance(value, str) or value not in values:
            raise Invalid(f"{value!r} is not one of {names}")
        return value

    return convert


_POLICIES = ", ".join(repr(p.value) for p in Policy)


def policy() -> Converter[Policy]:
    def convert(value: object) -> Policy:
        if not isinstance(value, str):
            raise Invalid(f"must be a string, got {kind_of(value)}")
        try:
            return Policy(value)
        except ValueError:
            raise Invalid(f"must be one of {_POLICIES}") from None

    return convert


def ip_address(*, specific: bool = False, like: str | None = None) -> Converter[str]:
    """An IP address (not a name), in canonical form: packets are matched on their
    source address. ``specific`` refuses 0.0.0.0/::; ``like`` wants its family."""

    def convert(value: object) -> str:
        if not isinstance(value, str):
            raise Invalid(f"must be an IP address as a string, got {kind_of(value)}")
        try:
            address = ipaddress.ip_address(value)
        except ValueError:
            raise Invalid(f"{value!r} is not an IP address") from None
        if specific and address.is_unspecified:
            raise Invalid(f"must be a specific address, not {value}")
        if like is not None:
            try:
                version = ipaddress.ip_address(like).version
            except ValueError:
                version = address.version  # the reference is a name: cannot tell
            if version != address.version:
                raise Invalid(f"must be an IPv{version} address, like the relay's own")
        return str(address)

    return convert


# ---------------------------------------------------------------------- the reader


class FieldReader:
    """The fields of one table, taken one by one (see the module docstring)."""

    def __init__(
        self,
        data: Mapping[str, object],
        *,
        label: Callable[[str], str],
        problems: Problems | None = None,
        error: Callable[[str], Exception] = ConfigError,
        absent: Callable[[str], str] | None = None,
    ) -> None:
        """``label(key)`` starts a message about ``key`` ("asterisk.port: ");
        without ``problems`` the first problem raises ``error(message)``;
        ``absent(key)``, if given, is the whole message for a required field left out."""
        self._data = dict(data)
        self._label = label
        self._problems = problems
        self._error = error
        self._absent = absent
        self._known: list[str] = []
        self.failed = False

    def nested(self, prefix: str, data: Mapping[str, object]) -> FieldReader:
        """A reader for a table inside this one (``relays[0]``), reporting alike."""
        label = self._label
        return FieldReader(
            data,
            label=lambda key: label(f"{prefix}.{key}"),
            problems=self._problems,
            error=self._error,
        )

    def problem(self, key: str, message: str) -> None:
        """Report a problem with ``key`` (also for checks across fields)."""
        self._report(self._label(key) + message)

    def _report(self, text: str) -> None:
        self.failed = True
        if self._problems is None:
            raise self._error(text)
        self._problems.add(text)

    def has(self, key: str) -> bool:
        """Whether ``key`` is given (an explicit null counts as absent)."""
        return self._data.get(key) is not None

    def take(
        self,
        key: str,
        convert: Converter[T],
        default: T,
        *,
        fix: str | None = None,
        missing: str | None = None,
    ) -> T:
        """The field's converted value, or ``default`` when absent (or bad, when
        collecting problems). ``missing``: the field is required, and this says so.
        An explicit null is absent for an optional field; for a required one it is
        converted (the converter says what it wanted instead)."""
        if key not in self._known:
            self._known.append(key)
        if key not in self._data:
            if missing is not None:
                if self._absent is not None:
                    self._report(self._absent(key))
                else:
                    self.problem(key, missing)
            return default
        value = self._data.pop(key)
        if value is None and missing is None:
            return default
        try:
            return convert(value)
        except Invalid as exc:
            self.problem(key, fix if fix is not None else str(exc))
            return default

    def raw(self, key: str) -> object:
        """The field as given (None if absent), for a converter of the caller's own."""
        if key not in self._known:
            self._known.append(key)
        return self._data.pop(key, None)

    @property
    def known(self) -> list[str]:
        return list(self._known)

    def leftovers(self) -> list[str]:
        return sorted(self._data)

    def finish(self, unknown: Callable[[str, Iterable[str]], str] | None = None) -> None:
        """Every key not taken is a problem: ``unknown(key, known)`` says so."""
        for key in self.leftovers():
            if unknown is not None:
                message = unknown(key, self._known)
            else:
                message = f"unknown setting (known: {', '.join(sorted(self._known))})"
            self.problem(key, message)


def section(name: str, data: Mapping[str, object], problems: Problems) -> FieldReader:
    """A configuration section's reader: messages start ``name.key: ``."""
    return FieldReader(data, label=lambda key: f"{name}.{key}: ", problems=problems)


def parse_section(name: str, data: Mapping[str, object], read: Callable[[FieldReader], T]) -> T:
    """One section on its own: ``read`` it, then raise ConfigError with all its problems."""
    problems = Problems()
    result = read(section(name, data, problems))
    problems.check()
    return result
