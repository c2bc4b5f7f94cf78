"""The per-request gate every FHIR route passes: known type, live token, scopes.

Shared by the route modules (read/search in :mod:`.api`, :mod:`.writes`,
:mod:`.history`, :mod:`.bundles`, the operations) so that each refuses in
the same words and names the client in the sandbox's access log.
"""

from __future__ import annotations

from dataclasses import dataclass

from flask import Response, request

from ..access_grant import AccessGrant, GrantLookup
from ..auth.tokens import CLIENT_ID_ENVIRON_KEY
from .access import Access, grant_of, require
from .outcome import FHIR_JSON, FHIRError
from .search import SEARCH_PARAMS


def known_type(resource_type: str) -> None:
    """404 naming the supported types unless the sandbox serves ``resource_type``."""
    if resource_type not in SEARCH_PARAMS:
        raise FHIRError(
            404,
            f"resource type {resource_type!r} is not supported by this server; "
            f"supported: {', '.join(SEARCH_PARAMS)}",
            code="not-supported",
        )


def fhir_response(body: bytes, status: int = 200, **headers: str) -> Response:
    """A FHIR JSON response; ``Last_Modified=...`` becomes the ``Last-Modified`` header."""
    response = Response(body, status=status, mimetype=FHIR_JSON)
    for name, value in headers.items():
        response.headers[name.replace("_", "-")] = value
    return response


@dataclass(frozen=True)
class Guard:
    """Token lookup and FHIR base of one sandbox's FHIR server."""

    lookup_grant: GrantLookup
    fhir_base: str

    def grant(self) -> AccessGrant:
        """The request's live grant (401 otherwise); names its client in the access log."""
        grant = grant_of(request.headers.get("Authorization"), self.lookup_grant)
        request.environ[CLIENT_ID_ENVIRON_KEY] = grant.client_id
        return grant

    def access(self, resource_type: str, interaction: str) -> Access:
        """The request's access to ``interaction`` on a known type (401/403/404 otherwise)."""
        known_type(resource_type)
        return self.require(self.grant(), resource_type, interaction)

    def require(self, grant: AccessGrant, resource_type: str, interaction: str) -> Access:
        known_type(resource_type)
        return require(grant, resource_type, interaction, self.fhir_base)
