"""Admin access policy: an optional bearer token and an allow-list of client addresses.

Core code (no FastAPI): the admin router passes the client address and the Authorization header in.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
from dataclasses import dataclass

from aiaa_server.errors import Forbidden, Unauthorized

log = logging.getLogger(__name__)

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
LOOPBACK_NAMES = {"localhost": ("127.0.0.0/8", "::1/128")}


def parse_hosts(spec: str, option: str = "admin_hosts") -> list[Network] | None:
    """`*` (anyone) → None; else a comma list of IPs, CIDRs or `localhost`. Raises ValueError on junk."""
    items = [item.strip() for item in spec.split(",") if item.strip()]
    if not items or "*" in items:
        return None
    networks: list[Network] = []
    for item in items:
        for cidr in LOOPBACK_NAMES.get(item.lower(), (item,)):
            try:
                networks.append(ipaddress.ip_network(cidr, strict=False))
            except ValueError as exc:
                raise ValueError(f"{option}: {item!r} is not an IP address or CIDR network") from exc
    return networks


def _client_address(host: str | None) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    if not host:
        return None
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


@dataclass(frozen=True)
class AdminPolicy:
    token: str | None = None
    networks: tuple[Network, ...] | None = None  # None: every client address

    @classmethod
    def build(cls, token: str | None, hosts: str) -> AdminPolicy:
        networks = parse_hosts(hosts)
        return cls(token=token or None, networks=tuple(networks) if networks is not None else None)

    @property
    def open_to_everyone(self) -> bool:
        return self.token is None and self.networks is None

    def host_allowed(self, host: str | None) -> bool:
        if self.networks is None:
            return True
        address = _client_address(host)
        return address is not None and any(address in network for network in self.networks)

    def token_valid(self, authorization: str | None) -> bool:
        if self.token is None:
            return True
        scheme, _, presented = (authorization or "").strip().partition(" ")
        if scheme.lower() != "bearer" or not presented.strip():
            return False
        return hmac.compare_digest(presented.strip().encode("utf-8"), self.token.encode("utf-8"))

    def authorize(self, host: str | None, authorization: str | None) -> None:
        """Raise Forbidden (address not allowed) or Unauthorized (missing/wrong token); else return."""
        if not self.host_allowed(host):
            raise Forbidden(f"admin endpoints are not open to client {host or 'unknown'} (see --admin_hosts)")
        if not self.token_valid(authorization):
            if not authorization:
                raise Unauthorized("admin endpoints need a token: send 'Authorization: Bearer <admin token>'")
            raise Unauthorized("invalid admin token")


def warn_if_exposed(policy: AdminPolicy, listen_host: str) -> None:
    loopback = listen_host in ("127.0.0.1", "::1", "localhost")
    if policy.open_to_everyone and not loopback:
        log.warning(
            "admin endpoints (upload/delete models, /logs) are open to every client on %s: set --admin_token "
            "(or AIAA_ADMIN_TOKEN) and --admin_hosts", listen_host,
        )
