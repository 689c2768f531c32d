"""The public address pool: a subnet with its gateway and name servers, and the range of
addresses the platform hands out (as IP resources, or temporarily to servers with
`nic:0:dhcp auto`).

Pure arithmetic: which addresses belong to the pool and which free one to hand out next. Who
holds what is the caller's business (the database knows).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network


class PoolError(ValueError):
    """The pool's configuration is inconsistent."""


@dataclass(frozen=True)
class AddressPool:
    """Addresses `first`..`last` of `subnet`, reached through `gateway`."""

    subnet: IPv4Network
    gateway: IPv4Address
    nameservers: tuple[IPv4Address, ...]
    first: IPv4Address
    last: IPv4Address

    def __post_init__(self) -> None:
        if self.gateway not in self.subnet:
            raise PoolError(f"gateway {self.gateway} is not in {self.subnet}")
        if not (self.first in self.subnet and self.last in self.subnet):
            raise PoolError(f"range {self.first}-{self.last} is not inside {self.subnet}")
        if self.first > self.last:
            raise PoolError(f"range {self.first}-{self.last} is empty")
        reserved = {self.subnet.network_address, self.subnet.broadcast_address, self.gateway}
        if any(self.first <= address <= self.last for address in reserved):
            raise PoolError(
                f"range {self.first}-{self.last} must leave out the network, broadcast and"
                f" gateway addresses of {self.subnet}"
            )

    @classmethod
    def parse(cls, subnet: str, gateway: str, nameservers: str, span: str) -> AddressPool:
        """A pool from its configuration text: `192.0.2.0/24`, `192.0.2.1`, name servers
        separated by spaces or commas, and the range `FIRST-LAST`."""
        try:
            network = IPv4Network(subnet.strip(), strict=True)
            first_text, dash, last_text = span.partition("-")
            if not dash:
                raise PoolError(f"range {span!r} must be FIRST-LAST")
            return cls(
                subnet=network,
                gateway=IPv4Address(gateway.strip()),
                nameservers=tuple(
                    IPv4Address(item) for item in nameservers.replace(",", " ").split()
                ),
                first=IPv4Address(first_text.strip()),
                last=IPv4Address(last_text.strip()),
            )
        except ValueError as error:  # ipaddress's own errors are ValueErrors too
            raise PoolError(f"invalid address pool: {error}") from None

    @property
    def netmask(self) -> str:
        return str(self.subnet.netmask)

    @property
    def size(self) -> int:
        return int(self.last) - int(self.first) + 1

    def __contains__(self, address: object) -> bool:
        """Whether `address` (text or IPv4Address) is one the pool hands out."""
        try:
            parsed = ipaddress.IPv4Address(str(address))
        except ValueError:
            return False
        return self.first <= parsed <= self.last

    def addresses(self) -> Iterator[IPv4Address]:
        for value in range(int(self.first), int(self.last) + 1):
            yield IPv4Address(value)

    def choose_free(self, used: Collection[str]) -> str | None:
        """The lowest address of the range not in `used`, or None when all are taken."""
        taken = {int(IPv4Address(address)) for address in used}
        for value in range(int(self.first), int(self.last) + 1):
            if value not in taken:
                return str(IPv4Address(value))
        return None
