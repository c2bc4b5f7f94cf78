"""One bounded HTTP exchange with an EHR, shared by discovery, tokens and JWKS.

Every back-channel request the core makes goes through :func:`fetch`, so that
all of them get the same protections: a total deadline (httpx's ``timeout`` is
per network operation, so a server that drips one byte a second would never
time out without it), a cap on the body size (a hostile or broken server
cannot exhaust memory), and no redirects (a 3xx from a token endpoint must not
carry our form to another host). Callers map the few exceptions here to their
own :class:`~jupyterhub_smart.smart.errors.SMARTError` subclasses.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson

from .tls import untrusted_certificate

__all__ = ["BodyTooLarge", "FetchTimeout", "Fetched", "fetch", "transport_failure"]

#: Default cap on a response body: far above any real SMART document or token response.
DEFAULT_MAX_BYTES = 1 << 20


class FetchTimeout(Exception):
    """The exchange did not complete before the deadline."""


class BodyTooLarge(Exception):
    """The response body is larger than the cap."""


@dataclass(frozen=True)
class Fetched:
    """A completed response: status, content type and body bytes."""

    status: int
    content_type: str
    body: bytes = field(repr=False)
    headers: Mapping[str, str] = field(default_factory=dict, repr=False)

    def json(self) -> Any:
        """The body parsed as JSON; ``ValueError`` if it is not JSON."""
        try:
            return orjson.loads(self.body)
        except orjson.JSONDecodeError as exc:
            raise ValueError("body is not JSON") from exc

    @property
    def media_type(self) -> str:
        """The content type without parameters, lower-cased (``text/html``)."""
        return self.content_type.split(";", 1)[0].strip().lower() or "no content-type"


async def fetch(
    http: httpx.AsyncClient,
    method: str,
    url: str,
    *,
    headers: Mapping[str, str] | None = None,
    data: Mapping[str, str] | None = None,
    timeout: float = 10.0,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> Fetched:
    """Send one request and read the whole (bounded) response.

    Raises :class:`FetchTimeout`, :class:`BodyTooLarge` or ``httpx.HTTPError``
    (connection refused, reset, protocol errors). Never follows redirects.
    """

    async def exchange() -> Fetched:
        async with http.stream(
            method,
            url,
            headers=dict(headers or {}),
            data=dict(data) if data is not None else None,
            timeout=timeout,
            follow_redirects=False,
        ) as response:
            declared = response.headers.get("content-length")
            if declared and declared.isdigit() and int(declared) > max_bytes:
                raise BodyTooLarge()
            chunks: list[bytes] = []
            size = 0
            async for chunk in response.aiter_bytes():
                size += len(chunk)
                if size > max_bytes:
                    raise BodyTooLarge()
                chunks.append(chunk)
            return Fetched(
                status=response.status_code,
                content_type=response.headers.get("content-type", ""),
                body=b"".join(chunks),
                headers=dict(response.headers),
            )

    try:
        if sys.version_info >= (3, 11):
            # The deadline cancels the calling task itself, from a timer: no second task, so a
            # refresh a stopping hub lets finish (hub.shutdown) finishes its request too.
            async with asyncio.timeout(timeout):
                return await exchange()
        return await asyncio.wait_for(exchange(), timeout)
    except (asyncio.TimeoutError, httpx.TimeoutException):
        raise FetchTimeout() from None


def transport_failure(exc: BaseException) -> str:
    """What to say about a request that never got an answer, in words safe to show and log.

    The exception's class name, unless the EHR's TLS certificate was refused:
    then the reason, and where trust is configured (an EHR whose certificate
    comes from a hospital's internal CA is the usual case).
    """
    reason = untrusted_certificate(exc)
    if reason is None:
        return type(exc).__name__
    return (
        f"its TLS certificate is not trusted: {reason}; for an EHR whose certificate comes from "
        "an internal CA, set SMARTAuthenticator.ehr_ca_bundle to that CA's PEM file"
    )
