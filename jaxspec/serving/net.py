"""Network helpers shared by the server and its clients (standard library only)."""

from __future__ import annotations

import ipaddress


def is_loopback(host: str | None) -> bool:
    """True for "localhost" and loopback IP addresses (127.0.0.0/8, ::1); False otherwise, names included.

    >>> is_loopback("127.0.0.1"), is_loopback("localhost"), is_loopback("::1"), is_loopback("0.0.0.0")
    (True, True, True, False)
    >>> is_loopback("example.com"), is_loopback(None)
    (False, False)
    """
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host or "").is_loopback
    except ValueError:
        return False
