"""Which addresses the platform may connect to on a tenant's behalf; pure.

A tenant supplies URLs the platform dials (webhook endpoints today). Without a policy a tenant could
make the platform call the cloud metadata service, its own database or anything else on the
operator's network. ``refusal(address)`` answers why an IP address is refused (``None``: allowed);
``check_addresses`` applies it to every address a name resolved to — all must pass, since the
connection may go to any of them — and is called when a URL is saved and again after the DNS lookup
of every connection, so a name that later resolves elsewhere (DNS rebinding) cannot get around it.
The connection is then made to the address that was checked, never to the name.

Refused: loopback, private (RFC 1918, IPv6 unique-local), link-local (the metadata services live
there: 169.254.169.254, fd00:ec2::254 is unique-local), CGNAT (100.64.0.0/10), multicast,
unspecified, reserved, and anything else not globally routable; an IPv4-mapped IPv6 address
(``::ffff:127.0.0.1``) is judged as the IPv4 address it carries. ``allow_private`` (the operator's
switch, for tests and closed networks) allows them all.
"""

from __future__ import annotations

import ipaddress
import urllib.parse
from collections.abc import Iterable
from typing import NamedTuple

METADATA = frozenset({ipaddress.ip_address("169.254.169.254"), ipaddress.ip_address("fd00:ec2::254"),
                      ipaddress.ip_address("100.100.100.200")})
CGNAT = ipaddress.ip_network("100.64.0.0/10")

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class AddressRefused(ValueError):
    """A URL or address the policy refuses; the message says why in the user's words."""


def refusal(address: str | IpAddress) -> str | None:
    """Why the platform must not connect to ``address``, or None when it may."""
    try:
        ip = ipaddress.ip_address(address) if isinstance(address, str) else address
    except ValueError:
        return f"{address!r} is not an IP address"
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip in METADATA:
        return f"{ip} is a cloud metadata address"
    for test, name in ((ip.is_loopback, "a loopback"), (ip.is_unspecified, "an unspecified"),
                       (ip.is_link_local, "a link-local"), (ip.is_multicast, "a multicast")):
        if test:
            return f"{ip} is {name} address"
    if isinstance(ip, ipaddress.IPv4Address) and ip in CGNAT:
        return f"{ip} is a shared (CGNAT) address"
    if ip.is_reserved:
        return f"{ip} is a reserved address, not a public one"
    if ip.is_private:
        return f"{ip} is a private address"
    if not ip.is_global:
        return f"{ip} is not a public address"
    return None


def check_addresses(host: str, addresses: Iterable[str], *, allow_private: bool) -> list[str]:
    """The addresses ``host`` resolved to, once every one of them is allowed; raises AddressRefused."""
    found = list(dict.fromkeys(addresses))
    if not found:
        raise AddressRefused(f"{host} did not resolve to any address")
    if not allow_private:
        for address in found:
            why = refusal(address)
            if why is not None:
                shown = "" if host == address else f"{host} resolves to "
                raise AddressRefused(f"{shown}{why}; the platform only connects to public addresses")
    return found


class Target(NamedTuple):
    """A URL as the platform will dial it."""

    scheme: str  # 'https' or 'http'
    host: str  # a name or a literal address (IPv6 without brackets)
    port: int
    path: str  # path and query, at least '/'
    host_header: str  # what the Host header says (with the port when not the scheme's default)


def parse_url(url: str, *, allow_http: bool, max_length: int = 2000) -> Target:
    """Check the form of a URL the platform is to call; raises AddressRefused saying what is wrong."""
    if not isinstance(url, str) or not url.strip():
        raise AddressRefused("must be a URL")
    if len(url) > max_length:
        raise AddressRefused(f"must be at most {max_length} characters")
    if any(c.isspace() or ord(c) < 32 for c in url):
        raise AddressRefused("must not contain spaces or control characters")
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise AddressRefused(f"is not a valid URL ({exc})") from None
    scheme = parts.scheme.lower()
    if scheme not in ("https", "http"):
        raise AddressRefused("must be an https:// URL")
    if scheme == "http" and not allow_http:
        raise AddressRefused("must be an https:// URL (plain http is off: WEBHOOKS_ALLOW_HTTP)")
    if parts.username is not None or parts.password is not None:
        raise AddressRefused("must not carry credentials (user:password@); verify the signature instead")
    if parts.fragment:
        raise AddressRefused("must not have a #fragment")
    host = parts.hostname
    if not host:
        raise AddressRefused("must name a host")
    default = 443 if scheme == "https" else 80
    port = port or default
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    netloc_host = f"[{host}]" if ":" in host else host
    host_header = netloc_host if port == default else f"{netloc_host}:{port}"
    return Target(scheme, host, port, path, host_header)


def literal_address(host: str) -> str | None:
    """``host`` when it is an IP address literal (no lookup needed), else None."""
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return None


# -- proxies ---------------------------------------------------------------------------------------

PROXY_DEFAULT_PORTS = {"socks5": 1080, "http": 80, "https": 443}


class ProxyTarget(NamedTuple):
    """A bot's proxy as the platform dials it."""

    scheme: str  # 'socks5', 'http' or 'https'
    host: str  # a name or a literal address (IPv6 without brackets)
    port: int


def proxy_target(url: str) -> ProxyTarget:
    """The scheme, host and port of a proxy URL (``scheme://[user:password@]host[:port]``); raises
    AddressRefused when it names none."""
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise AddressRefused(f"is not a valid proxy URL ({exc})") from None
    scheme = parts.scheme.lower()
    if scheme not in PROXY_DEFAULT_PORTS:
        raise AddressRefused("must be a socks5://, http:// or https:// URL")
    if not parts.hostname:
        raise AddressRefused("must name a host")
    return ProxyTarget(scheme, parts.hostname, port or PROXY_DEFAULT_PORTS[scheme])


def pin_proxy(url: str, address: str) -> str:
    """``url`` with its host replaced by ``address`` (checked by the policy) and the port made
    explicit, credentials kept: the proxy is then dialed at the address that was checked, not at
    whatever its name resolves to by then."""
    parts = urllib.parse.urlsplit(url)
    target = proxy_target(url)
    userinfo = parts.netloc.rpartition("@")[0]
    host = f"[{address}]" if ":" in address else address
    netloc = f"{userinfo}@{host}:{target.port}" if userinfo else f"{host}:{target.port}"
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
