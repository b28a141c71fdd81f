"""The addresses of one-time links (set a password, accept an invite, reset), as people open them:
under ``PUBLIC_URL`` when it is set, else the address the request came to (the dashboard) or
``http://HOST:PORT`` (the CLI)."""

from __future__ import annotations

from typing import Any


def base_url(settings: Any, request_host_url: str | None = None) -> str:
    if settings.public_url:
        return settings.public_url
    if request_host_url:
        return request_host_url.rstrip("/")
    host = "127.0.0.1" if settings.host in ("0.0.0.0", "::", "") else settings.host
    host = f"[{host}]" if ":" in host else host
    return f"http://{host}:{settings.port}"


def link_url(settings: Any, token: str, request_host_url: str | None = None) -> str:
    return f"{base_url(settings, request_host_url)}/auth/link/{token}"
