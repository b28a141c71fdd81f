"""The outbound address policy applied to the network: DNS lookups of the names tenants supply.

``sansio.outbound_address`` decides which addresses are refused; this module looks names up (gevent's
resolver in the platform's processes) and hands every address found to it, when a URL is saved and
again each time the platform connects, so a name that later resolves elsewhere (DNS rebinding)
cannot get around the check. The connection then goes to the address that was checked:

- webhooks: ``core.webhook_http`` connects to it while naming the host (Host header, TLS SNI);
- bot proxies: ``checked_proxy`` returns the proxy URL with the checked address in place of the name
  (``socks5://`` and ``http://``); an ``https://`` proxy keeps its name, which its certificate must
  match, and is dialed by it after the check.

A name that does not resolve is ``Unresolved`` (a refusal when saving; a network fault, retried, when
connecting); any other refusal is ``AddressRefused`` and says why.
"""

from __future__ import annotations

import socket
from typing import Any

import gevent

from sansio import outbound_address
from sansio.outbound_address import AddressRefused

LOOKUP_TIMEOUT = 10.0  # seconds a lookup may take before the attempt counts as failed


class Unresolved(AddressRefused):
    """The name did not resolve (or not in time): nothing to judge yet."""


def resolve(host: str, port: int, *, allow_private: bool) -> list[str]:
    """The addresses to connect to for ``host``, each allowed by the policy; raises AddressRefused
    (``Unresolved`` when the name does not resolve)."""
    literal = outbound_address.literal_address(host)
    if literal is not None:
        found = [literal]
    else:
        late = Unresolved(f"{host} could not be resolved (no answer in {LOOKUP_TIMEOUT:g} s)")
        try:
            # Raised as ``late`` itself (an Exception), never as gevent's Timeout (a BaseException).
            with gevent.Timeout(LOOKUP_TIMEOUT, late):
                infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (OSError, UnicodeError) as exc:  # socket.gaierror
            raise Unresolved(f"{host} could not be resolved ({exc})") from None
        found = [str(info[4][0]) for info in infos]
    return outbound_address.check_addresses(host, found, allow_private=allow_private)


def proxy_address(value: Any) -> str:
    """The URL of a bot's ``transport_options.proxy`` (a URL, or a dict with ``address``)."""
    if isinstance(value, dict):
        return str(value.get("address") or value.get("proxy_address") or "")
    return str(value or "")


def checked_proxy(value: Any, *, allow_private: bool) -> Any:
    """A bot's proxy setting with its address checked (and pinned where the scheme allows); raises
    AddressRefused or Unresolved."""
    url = proxy_address(value)
    target = outbound_address.proxy_target(url)
    addresses = resolve(target.host, target.port, allow_private=allow_private)
    if target.scheme == "https":
        return value  # TLS to the proxy checks its name; the name was checked just now
    pinned = outbound_address.pin_proxy(url, addresses[0])
    return {**value, "address": pinned} if isinstance(value, dict) else pinned
