"""The client's IP address, as far as it can be trusted.

`X-Forwarded-For` is written by whoever sends the request, so only the part appended by our
own proxies means anything. With TRUSTED_PROXY_COUNT = N (0 by default: no proxy in front),
the client is the Nth address from the right of the header (each trusted proxy appends the
address it saw); anything further left was written by the client and is ignored. A header
shorter than the proxy chain, or an entry that is not an IP address, falls back to
REMOTE_ADDR (the peer that actually connected).
"""

from __future__ import annotations

import ipaddress

from django.conf import settings


def client_ip(request) -> str:
    remote = request.META.get("REMOTE_ADDR", "") or ""
    count = settings.TRUSTED_PROXY_COUNT
    if count <= 0:
        return remote
    forwarded = request.META.get("HTTP_X_FORWARDED_FOR", "")
    addresses = [part.strip() for part in forwarded.split(",")] if forwarded else []
    if len(addresses) < count:
        return remote
    candidate = addresses[-count]
    try:
        return str(ipaddress.ip_address(candidate))
    except ValueError:
        return remote
