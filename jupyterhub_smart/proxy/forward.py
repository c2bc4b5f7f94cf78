"""Sending a request to the EHR and opening its answer as a stream.

One ``httpx.AsyncClient`` per process (connection pooling to the EHRs),
redirects never followed (the EHR token must not travel to wherever a
``Location`` points: :func:`redirect_target` decides what the caller sees), TLS
verified, no proxy settings from the environment. The answer is opened with
``stream=True``: the body is read chunk by chunk by the caller and never held.
"""

from __future__ import annotations

from urllib.parse import urljoin, urlsplit

import httpx

from .errors import ProxyError

__all__ = ["Upstream", "on_base", "redirect_target"]


def on_base(url: str, base: str) -> bool:
    """True when ``url`` is the FHIR ``base`` or below it (same scheme, host, port)."""
    u, b = urlsplit(url), urlsplit(base)
    if (u.scheme.lower(), (u.hostname or "").lower(), u.port) != (
        b.scheme.lower(),
        (b.hostname or "").lower(),
        b.port,
    ):
        return False
    base_path = b.path.rstrip("/")
    return u.path == base_path or u.path.startswith(base_path + "/")


def redirect_target(response: httpx.Response, base: str) -> str | None:
    """Where a 3xx points if that is under the FHIR base; None for no redirect.

    A redirect anywhere else (another host, another path on the EHR's host,
    a presigned storage URL) raises :class:`ProxyError` 502: the proxy does not
    follow it with the token, nor hand the caller a way around the audit.
    """
    if not 300 <= response.status_code < 400 or response.status_code == 304:
        return None
    location = response.headers.get("location")
    if not location:
        return None
    target = urljoin(str(response.request.url), location)
    if on_base(target, base):
        return target
    host = urlsplit(target).hostname or "?"
    raise ProxyError(
        502,
        "redirect_refused",
        f"The EHR redirected this request to {host}, outside its FHIR base; the proxy does "
        "not follow redirects away from the FHIR server (the EHR token would go with it).",
    )


class Upstream:
    """The proxy's HTTP client towards the EHRs."""

    def __init__(self, timeout: float, *, max_connections: int = 200) -> None:
        self.http = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout),
            follow_redirects=False,
            trust_env=False,
            limits=httpx.Limits(
                max_connections=max_connections, max_keepalive_connections=max_connections
            ),
        )

    async def open(
        self,
        method: str,
        url: str,
        headers: dict[str, str],
        body: bytes | None,
        access_token: str,
    ) -> httpx.Response:
        """Send the request with the EHR token; the answer's body is still unread."""
        request = self.http.build_request(
            method,
            url,
            headers={**headers, "Authorization": f"Bearer {access_token}"},
            content=body if body else None,
        )
        host = urlsplit(url).hostname or "?"
        try:
            return await self.http.send(request, stream=True)
        except httpx.TimeoutException:
            raise ProxyError(
                504, "ehr_timeout", f"The EHR ({host}) did not answer in time; retry later."
            ) from None
        except httpx.HTTPError as exc:
            raise ProxyError(
                502,
                "ehr_unreachable",
                f"The EHR ({host}) could not be reached ({type(exc).__name__}); retry later.",
            ) from None

    async def aclose(self) -> None:
        await self.http.aclose()
