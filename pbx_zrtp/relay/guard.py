"""The PBX host's egress guard: nftables rules that keep the PBX's relayed RTP ports
talking to the relays only.

Why: the relay can only stop what passes through it. After a re-INVITE (hold/resume,
a codec change, a transfer) Asterisk resets each stream's RTP target to the address
in the phone's SDP and sends its next packets there, in the clear, until its symmetric
RTP latches back onto the relay (``ast_rtp_instance_set_requested_target_address``
in every SDP negotiation). Those packets never reach the relay. The guard drops them
in the PBX host's kernel:

- **egress**: UDP from the PBX's RTP address A, from a port of the relayed range
  (RTP and the RTCP port above it), to anything but a relay address: dropped;
- **ingress**: UDP to A on those ports from anything but a relay address: dropped
  (the PBX's symmetric RTP can latch onto the relay only).

The relay binds R:P where the PBX uses A:P, so the relay's own packets (from R) are
never matched. The rules are one nftables table, replaced as a whole each time it is
loaded (``pbx-zrtp guard --config F | nft -f -``).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

#: The nftables table the guard owns (family inet: IPv4 and IPv6 in one table).
TABLE = "pbx_zrtp_guard"

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class GuardError(ValueError):
    """A guard that would not protect anything, or would cut the relay off."""


@dataclass(frozen=True)
class EgressGuard:
    """What the guard needs: A, the relays' addresses, the relayed RTP port range."""

    pbx_address: IpAddress
    relay_addresses: tuple[IpAddress, ...]
    port_min: int
    port_max: int
    table: str = TABLE

    @classmethod
    def build(
        cls,
        pbx_address: str,
        relay_addresses: Iterable[str],
        ports: tuple[int, int],
        *,
        table: str = TABLE,
    ) -> EgressGuard:
        """Parse and check; GuardError names the setting that is wrong."""
        try:
            pbx = ipaddress.ip_address(pbx_address)
        except ValueError:
            raise GuardError(f"relay.pbx_address: {pbx_address!r} is not an IP address") from None
        if pbx.is_unspecified:
            raise GuardError(
                f"relay.pbx_address: {pbx} matches every address: bind the PBX's SIP transport"
                " (and so its RTP) to its own address A and give that"
            )
        relays: list[IpAddress] = []
        for text in relay_addresses:
            try:
                address = ipaddress.ip_address(text)
            except ValueError:
                raise GuardError(f"relay address {text!r} is not an IP address") from None
            if address.version != pbx.version:
                continue  # the PBX's RTP in this family never goes there
            if address == pbx:
                raise GuardError(
                    f"relay.address: {address} is the PBX's own RTP address: the relay needs"
                    " an address of its own (R ≠ A)"
                )
            if address not in relays:
                relays.append(address)
        if not relays:
            raise GuardError(
                f"no relay address of the PBX's family (IPv{pbx.version}): the guard would"
                " cut the PBX's relayed RTP off from every relay"
            )
        low, high = ports
        if not 1 <= low <= high <= 65534:
            raise GuardError(f"relay.ports: {low}-{high} is not a port range")
        if not table.replace("_", "").isalnum():
            raise GuardError(f"table name {table!r}: letters, digits and _ only")
        return cls(pbx, tuple(relays), low, high, table)

    def nft_ruleset(self) -> str:
        """The table for ``nft -f``: replaces an older copy of itself, nothing else."""
        family = "ip" if self.pbx_address.version == 4 else "ip6"
        relays = ", ".join(str(address) for address in self.relay_addresses)
        # RTCP rides on the port above each RTP port: the range's last RTP port too
        ports = f"{self.port_min}-{self.port_max + 1}"
        a = self.pbx_address
        return "\n".join(
            [
                f"# pbx_zrtp egress guard: the PBX's RTP on {a}, ports {ports},",
                "# talks to the relays only (see pbx-zrtp guard --help).",
                f"table inet {self.table}",
                f"delete table inet {self.table}",
                f"table inet {self.table} {{",
                "\tchain egress {",
                "\t\ttype filter hook output priority filter; policy accept;",
                f"\t\t{family} saddr {a} udp sport {ports} {family} daddr != {{ {relays} }}"
                ' counter drop comment "PBX RTP past the relay"',
                "\t}",
                "\tchain ingress {",
                "\t\ttype filter hook input priority filter; policy accept;",
                f"\t\t{family} daddr {a} udp dport {ports} {family} saddr != {{ {relays} }}"
                ' counter drop comment "RTP to the PBX past the relay"',
                "\t}",
                "}",
                "",
            ]
        )
