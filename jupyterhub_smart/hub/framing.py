"""Letting EHRs show the hub in an iframe: CSP ``frame-ancestors`` and cookie flags.

An EHR launch often opens the app inside the EHR's own page. JupyterHub's
default policy (``frame-ancestors 'none'``) forbids that, and browsers drop
``SameSite=Lax`` cookies inside a third-party iframe. For the origins an admin
lists, the hub allows framing by exactly those origins and marks its cookies
``SameSite=None; Secure``; nothing changes when the list is empty.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit

__all__ = ["allow_framing", "frame_ancestor_origins"]


def _origin_ok(origin: str) -> bool:
    """An origin for CSP frame-ancestors: ``https://host[:port]``, nothing else."""
    parts = urlsplit(origin)
    return (
        parts.scheme == "https"
        and bool(parts.hostname)
        and "*" not in origin
        and not parts.path
        and not parts.query
        and not parts.fragment
        and not parts.username
        and " " not in origin
        and ";" not in origin
    )


def frame_ancestor_origins(values: Iterable[str]) -> list[str]:
    """The configured origins without a trailing slash; ValueError names a bad one."""
    origins = [value.rstrip("/") for value in values]
    for origin in origins:
        if not _origin_ok(origin):
            raise ValueError(
                f"SMARTAuthenticator.frame_ancestors: {origin!r} is not an https origin "
                "(https://host[:port], no wildcard, no path)."
            )
    return origins


def allow_framing(tornado_settings: dict[str, Any], origins: list[str]) -> None:
    """CSP frame-ancestors for ``origins``, and cookies fit for a third-party iframe.

    An admin-set Content-Security-Policy in ``tornado_settings['headers']`` wins.
    """
    if not origins:
        return
    headers = tornado_settings.setdefault("headers", {})
    if "Content-Security-Policy" not in headers:
        headers["Content-Security-Policy"] = "frame-ancestors 'self' " + " ".join(origins)
    for key in ("cookie_options", "xsrf_cookie_kwargs"):
        options = tornado_settings.setdefault(key, {})
        options.setdefault("samesite", "None")
        options.setdefault("secure", True)
