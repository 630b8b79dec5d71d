"""Rendering the Short Authentication String (RFC 6189 §5.1.6)."""

from __future__ import annotations

from functools import cache
from importlib import resources

_B32_ALPHABET = "ybndrfg8ejkmcpqxot1uwisza345h769"


@cache
def pgp_words() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The PGP word list as (even words, odd words), 256 each."""
    even: list[str] = []
    odd: list[str] = []
    text = resources.files("pbx_zrtp.zrtp").joinpath("pgp-wordlist.txt").read_text("utf-8")
    for line in text.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        value, even_word, odd_word = line.split()
        if int(value, 16) != len(even):
            raise RuntimeError("PGP word list is out of order")
        even.append(even_word)
        odd.append(odd_word)
    if len(even) != 256:
        raise RuntimeError("PGP word list must have 256 rows")
    return tuple(even), tuple(odd)


def render_sas(sas_type: bytes, sas_value: bytes) -> str:
    """Render the 32-bit sasvalue (leftmost bits of sashash) as the user sees it.

    B32: four base32 characters from the leftmost 20 bits. B256: two PGP words
    from the leftmost 16 bits (even word, then odd word), separated by a space.
    """
    if len(sas_value) < 4:
        raise ValueError("sasvalue is 32 bits")
    bits = int.from_bytes(sas_value[:4], "big")
    if sas_type == b"B32 ":
        return "".join(_B32_ALPHABET[(bits >> shift) & 31] for shift in (27, 22, 17, 12))
    if sas_type == b"B256":
        even, odd = pgp_words()
        return f"{even[sas_value[0]]} {odd[sas_value[1]]}"
    raise ValueError(f"unsupported SAS type {sas_type!r}")
