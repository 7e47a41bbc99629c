"""The egress guard: a target reaches public addresses only.

A URL is checked when a target is created or changed (`url_check`, for the services) and again
each time the worker opens a connection (delivery/client.py): the host is resolved once,
every answer must be public (or inside OUTBOX_ALLOWED_TARGET_NETWORKS), and the socket goes to
one of exactly those answers. There is no second lookup for a rebinding DNS server to answer
differently. Metadata services are refused whatever the allowance says.
"""

from __future__ import annotations

import functools
import ipaddress
import socket
from urllib.parse import urlsplit

from outbox import conf

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
ALLOWED_SCHEMES = ("http", "https")
REFUSED = "target_url_not_allowed"  # the error code, and the fixed text of a refused send

# Cloud metadata and host agents: refused even inside an allowed network (AWS IMDS and ECS/EKS
# agents, AWS IMDS over IPv6, Alibaba, Azure's wire server, which sits on a public address).
METADATA_NETWORKS = tuple(
    ipaddress.ip_network(net)
    for net in (
        "169.254.169.254/32",
        "169.254.170.2/32",
        "169.254.170.23/32",
        "fd00:ec2::254/128",
        "fd00:ec2::23/128",
        "100.100.100.200/32",
        "168.63.129.16/32",
    )
)

# Not public, on top of what `is_global` says (Python 3.11's `is_global` still calls multicast,
# NAT64, 6to4, site-local and 192.0.0.0/24 global).
NOT_PUBLIC_NETWORKS = tuple(
    ipaddress.ip_network(net)
    for net in (
        "0.0.0.0/8",  # "this network", 0.0.0.0 included
        "10.0.0.0/8",
        "100.64.0.0/10",  # carrier-grade NAT (Tailscale and friends live here)
        "127.0.0.0/8",
        "169.254.0.0/16",
        "172.16.0.0/12",
        "192.0.0.0/24",  # IETF protocol assignments
        "192.0.2.0/24",  # documentation
        "192.88.99.0/24",  # 6to4 relay anycast
        "192.168.0.0/16",
        "198.18.0.0/15",  # benchmarking
        "198.51.100.0/24",  # documentation
        "203.0.113.0/24",  # documentation
        "224.0.0.0/4",  # multicast
        "240.0.0.0/4",  # reserved, broadcast included
        "::/8",  # unspecified, loopback, IPv4-compatible (mapped ones are unwrapped first)
        "64:ff9b:1::/48",  # local-use NAT64
        "100::/64",  # discard
        "2001::/23",  # IETF protocol assignments (Teredo, ORCHID…)
        "2001:db8::/32",  # documentation
        "3fff::/20",  # documentation
        "5f00::/16",  # segment routing
        "fc00::/7",  # unique local
        "fe80::/10",  # link-local
        "fec0::/10",  # site-local (deprecated)
        "ff00::/8",  # multicast
    )
)
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


class EgressRefused(Exception):
    """A target URL or address the guard refuses. Not an OSError (the client tries the next
    address on those): the send records it as a permanent failure."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def embedded_ipv4(address: IPAddress) -> IPAddress:
    """The IPv4 address an IPv6 one carries (mapped, NAT64, 6to4), else the address itself:
    ::ffff:127.0.0.1 reaches 127.0.0.1 and must be judged as such."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return address.ipv4_mapped
        if address.sixtofour is not None:
            return address.sixtofour
        if address in _NAT64:
            return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return address


def address_is_public(address: IPAddress) -> bool:
    address = embedded_ipv4(address)
    return address.is_global and not any(address in net for net in NOT_PUBLIC_NETWORKS)


@functools.lru_cache(maxsize=16)
def _networks(allowed: tuple[str, ...]) -> tuple:
    return tuple(ipaddress.ip_network(net, strict=False) for net in allowed)


def allowed_networks() -> tuple:
    return _networks(tuple(conf.get("OUTBOX_ALLOWED_TARGET_NETWORKS") or ()))


def address_refusal(address: IPAddress) -> str | None:
    """Why a connection to this address is refused, or None when it may go."""
    candidates = {address, embedded_ipv4(address)}
    if any(a in net for a in candidates for net in METADATA_NETWORKS if a.version == net.version):
        return "metadata_address"
    if address_is_public(address):
        return None
    allowed = allowed_networks()
    if any(a in net for a in candidates for net in allowed if a.version == net.version):
        return None
    return "private_address"


def resolve_checked(host: str, port: int | None) -> list[tuple[int, tuple]]:
    """Resolve once; refuse unless every answer may be connected to. Returns the answers
    (family, sockaddr) to connect to, in the resolver's order."""
    answers = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    checked: list[tuple[int, tuple]] = []
    for family, _type, _proto, _name, sockaddr in answers:
        address = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
        reason = address_refusal(address)
        if reason is not None:
            raise EgressRefused(reason)
        checked.append((family, sockaddr))
    return checked


def url_check(url: str) -> None:
    """The check at create/change time. A name that does not resolve (yet) passes: there is
    nothing to connect to, and the connect-time check judges whatever it resolves to later."""
    try:
        parts = urlsplit(url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as exc:
        raise EgressRefused("invalid_url") from exc
    if parts.scheme not in ALLOWED_SCHEMES:
        raise EgressRefused("scheme_not_allowed")
    if not parts.hostname:
        raise EgressRefused("invalid_url")
    try:
        resolve_checked(parts.hostname, port)
    except (socket.gaierror, UnicodeError):
        return
