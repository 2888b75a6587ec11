"""Sizes, durations and addresses as users write them. Pure; each parser raises ValueError
with a message fit to show next to the file and line."""

from __future__ import annotations

import ipaddress
import re

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?\s*$", re.IGNORECASE)
_SIZE_FACTOR = {"K": 1 / 1024, "": 1, "M": 1, "G": 1024, "T": 1024 * 1024}

_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_DURATION_FACTOR = {"ms": 0.001, "s": 1, None: 1, "m": 60, "h": 3600, "d": 86400}


def parse_size(value: object) -> int:
    """'128M' -> 128, '2G' -> 2048, 512 -> 512 (MiB). Rounds up to whole MiB."""
    if isinstance(value, bool):
        raise ValueError(f"expected a size such as 128M or 2G, not {value!r}")
    if isinstance(value, (int, float)):
        if value < 0:
            raise ValueError(f"a size cannot be negative ({value})")
        return int(-(-value // 1))
    if not isinstance(value, str):
        raise ValueError(f"expected a size such as 128M or 2G, not {type(value).__name__}")
    m = _SIZE_RE.match(value)
    if not m:
        raise ValueError(f"bad size '{value}' (use a number with K, M, G or T, e.g. 128M or 2G)")
    mib = float(m.group(1)) * _SIZE_FACTOR[m.group(2).upper()]
    return int(-(-mib // 1))


def parse_duration(value: object) -> float:
    """'5s' -> 5.0, '2m' -> 120.0, 30 -> 30.0 (seconds)."""
    if isinstance(value, bool):
        raise ValueError(f"expected a duration such as 30s or 5m, not {value!r}")
    if isinstance(value, (int, float)):
        if value < 0:
            raise ValueError(f"a duration cannot be negative ({value})")
        return float(value)
    if not isinstance(value, str):
        raise ValueError(f"expected a duration such as 30s or 5m, not {type(value).__name__}")
    m = _DURATION_RE.match(value)
    if not m:
        raise ValueError(f"bad duration '{value}' (use a number with ms, s, m, h or d, e.g. 30s)")
    return float(m.group(1)) * _DURATION_FACTOR[m.group(2)]


def parse_ipv4(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected an IPv4 address, not {type(value).__name__}")
    try:
        return str(ipaddress.IPv4Address(value.strip()))
    except ValueError:
        raise ValueError(f"'{value}' is not an IPv4 address") from None


def parse_cidr(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected a network such as 10.0.0.0/24, not {type(value).__name__}")
    if "/" not in value:
        raise ValueError(f"'{value}' has no prefix length (write it as e.g. {value}/24)")
    try:
        return str(ipaddress.IPv4Network(value.strip()))
    except ValueError as e:
        if "host bits set" in str(e):
            net = ipaddress.IPv4Network(value.strip(), strict=False)
            raise ValueError(f"'{value}' has host bits set (did you mean {net}?)") from None
        raise ValueError(f"'{value}' is not an IPv4 network") from None


def parse_netmask(value: object) -> int:
    """'255.255.255.0', '/24', '24' or 24 -> 24."""
    if isinstance(value, bool):
        raise ValueError(f"expected a netmask, not {value!r}")
    if isinstance(value, int):
        prefix = value
    elif isinstance(value, str):
        text = value.strip().lstrip("/")
        if text.isdigit():
            prefix = int(text)
        else:
            try:
                prefix = ipaddress.IPv4Network(f"0.0.0.0/{text}").prefixlen
            except ValueError:
                raise ValueError(f"'{value}' is not a netmask") from None
    else:
        raise ValueError(f"expected a netmask, not {type(value).__name__}")
    if not 0 <= prefix <= 32:
        raise ValueError(f"a prefix length is 0..32, not {prefix}")
    return prefix
