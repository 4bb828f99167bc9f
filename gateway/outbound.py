"""No outbound connection the config does not name.

The daemon installs :class:`AllowlistResolver` as trio's hostname resolver for its run: every
client in the process (the shared httpx client, python-telegram-bot's, the model SDKs' httpx2
through anyio) resolves names through it, so a library that tries to reach a host nobody
configured (telemetry, an update check) fails to resolve it, and the refusal is logged.

Allowed by default: every host named by a URL in the config (defaults included, such as
``api_base = "https://api.telegram.org"``) plus localhost. ``[gateway] outbound_hosts`` adds more
(``"*.example.com"`` matches subdomains). Numeric addresses do not go through a resolver; they can
only come from a URL someone wrote into the config.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit

import httpx
import trio

log = logging.getLogger("gateway.outbound")

ALWAYS = frozenset({"localhost", "localhost.localdomain", "ip6-localhost", "127.0.0.1", "::1"})


def hosts_in(values: Iterable[Any]) -> set[str]:
    """Hosts of the http(s)/ws(s) URLs among ``values`` (nested lists and dicts included)."""
    found: set[str] = set()
    stack = list(values)
    while stack:
        value = stack.pop()
        if isinstance(value, dict):
            stack.extend(value.values())
        elif isinstance(value, list | tuple | set):
            stack.extend(value)
        elif isinstance(value, str) and "://" in value:
            parts = urlsplit(value)
            if parts.scheme in ("http", "https", "ws", "wss") and parts.hostname:
                found.add(parts.hostname.lower().rstrip("."))
    return found


class AllowlistResolver(trio.abc.HostnameResolver):
    def __init__(self, allowed: Iterable[str]) -> None:
        self.allowed = {h.lower().rstrip(".") for h in allowed} | ALWAYS
        self.refused: list[str] = []

    def permits(self, host: str) -> bool:
        host = host.lower().rstrip(".")
        if host in self.allowed:
            return True
        return any(
            rule.startswith("*.") and (host.endswith(rule[1:]) or host == rule[2:])
            for rule in self.allowed
        )

    async def getaddrinfo(
        self,
        host: bytes | None,
        port: bytes | str | int | None,
        family: int = 0,
        type: int = 0,
        proto: int = 0,
        flags: int = 0,
    ) -> Any:
        name = host.decode("idna") if isinstance(host, bytes) else (host or "")
        if not self.permits(name):
            self.refused.append(name)
            log.warning(
                "outbound connection to %s refused: no URL in the config names it "
                "(add it to [gateway] outbound_hosts if it is wanted)",
                name,
            )
            raise socket.gaierror(
                socket.EAI_NONAME,
                f"{name} is not an allowed outbound host ([gateway] outbound_hosts)",
            )
        return await trio.to_thread.run_sync(
            socket.getaddrinfo, host, port, family, type, proto, flags, abandon_on_cancel=True
        )

    async def check_request(self, request: httpx.Request) -> None:
        """An httpx request hook for the daemon's shared client. trio hands an IP literal
        straight to the socket without asking the resolver, so a numeric host is checked here
        against the same allowlist (config URLs and ``outbound_hosts`` may name IPs)."""
        host = request.url.host
        try:
            ipaddress.ip_address(host)
        except ValueError:
            return  # a name: the resolver decides
        if not self.permits(host):
            self.refused.append(host)
            log.warning("outbound connection to %s refused: no URL in the config names it", host)
            raise httpx.ConnectError(
                f"{host} is not an allowed outbound host ([gateway] outbound_hosts)",
                request=request,
            )

    async def getnameinfo(self, sockaddr: Any, flags: int) -> tuple[str, str]:
        return await trio.to_thread.run_sync(
            socket.getnameinfo, sockaddr, flags, abandon_on_cancel=True
        )


def media_host_allowed(url: str, patterns: list[str]) -> bool:
    """PUBLIC. Is ``url`` on one of ``patterns`` ("https://*.fbcdn.net", "http://127.0.0.1:8080")?"""
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    for pattern in patterns:
        want = urlsplit(pattern)
        rule = (want.hostname or "").lower()
        if want.scheme != parts.scheme or (want.port is not None and want.port != parts.port):
            continue
        if host == rule or (
            rule.startswith("*.") and (host.endswith(rule[1:]) or host == rule[2:])
        ):
            return True
    return False
