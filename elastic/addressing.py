"""MAC <-> IPv4 (OpenNebula style) and address leases. Pure.

A node's MAC is a two-octet prefix (``02:00`` by default: locally administered, unicast)
followed by the four octets of its IPv4 address in hex: 10.0.0.5 -> 02:00:0a:00:00:05.
The same rule is implemented in shell in ``contextualization/``; both are tested against
``tests/data/mac-vectors.txt``.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re

DEFAULT_MAC_PREFIX = "02:00"

_PREFIX_RE = re.compile(r"^[0-9a-fA-F]{2}:[0-9a-fA-F]{2}$")
_MAC_RE = re.compile(r"^([0-9a-fA-F]{2}:){5}[0-9a-fA-F]{2}$")


def valid_mac_prefix(prefix: str) -> bool:
    """Two hex octets; the first must be unicast (its lowest bit clear)."""
    return bool(_PREFIX_RE.match(prefix)) and int(prefix[:2], 16) & 1 == 0


def valid_mac(mac: str) -> bool:
    return bool(_MAC_RE.match(mac)) and int(mac[:2], 16) & 1 == 0


def ip_to_mac(ip: str, prefix: str = DEFAULT_MAC_PREFIX) -> str:
    """10.0.0.5 -> 02:00:0a:00:00:05"""
    parts = ip.split(".")
    octets = [int(p) for p in parts] if len(parts) == 4 and all(p.isdigit() for p in parts) else []
    if len(octets) != 4 or any(o > 255 for o in octets):
        raise ValueError(f"not an IPv4 address: {ip!r}")
    return prefix.lower() + ":" + ":".join(f"{o:02x}" for o in octets)


def mac_to_ip(mac: str) -> str:
    """02:00:0a:00:00:05 -> 10.0.0.5 (the prefix is ignored: the last four octets are the address)."""
    parts = mac.split(":")
    if len(parts) != 6:
        raise ValueError(f"not a MAC address: {mac!r}")
    return ".".join(str(int(p, 16)) for p in parts[2:])


def hashed_mac(seed: str, prefix: str = DEFAULT_MAC_PREFIX) -> str:
    """A stable MAC for an interface without an address (DHCP): prefix + 4 bytes of a hash."""
    digest = hashlib.sha256(seed.encode()).digest()[:4]
    return prefix.lower() + ":" + ":".join(f"{b:02x}" for b in digest)


class RangeExhausted(Exception):
    """No free address is left in a network's range."""


class LeasePool:
    """Addresses of one network: fixed leases are reserved first, then ``auto`` takes the
    lowest free address of the range at or after a start (OpenNebula ranged network).

    Works on integers so that leasing thousands of addresses stays linear.
    """

    def __init__(self, first: str, last: str, exclude: tuple[str, ...] = ()) -> None:
        self.first = int(ipaddress.IPv4Address(first))
        self.last = int(ipaddress.IPv4Address(last))
        self._used: set[int] = {int(ipaddress.IPv4Address(a)) for a in exclude}
        self._cursor: dict[int, int] = {}

    @property
    def size(self) -> int:
        return self.last - self.first + 1

    def in_range(self, ip: str) -> bool:
        return self.first <= int(ipaddress.IPv4Address(ip)) <= self.last

    def is_used(self, ip: str) -> bool:
        return int(ipaddress.IPv4Address(ip)) in self._used

    def reserve(self, ip: str) -> bool:
        """Take a fixed address. False if it was already taken."""
        n = int(ipaddress.IPv4Address(ip))
        if n in self._used:
            return False
        self._used.add(n)
        return True

    def lease(self, start: str | None = None) -> str:
        """The lowest free address of the range at or after ``start``."""
        begin = self.first if start is None else max(self.first, int(ipaddress.IPv4Address(start)))
        n = max(begin, self._cursor.get(begin, begin))
        while n <= self.last and n in self._used:
            n += 1
        if n > self.last:
            raise RangeExhausted()
        self._used.add(n)
        self._cursor[begin] = n + 1
        return str(ipaddress.IPv4Address(n))
