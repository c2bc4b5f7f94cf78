"""What the FHIR server learns from a bearer token: the grant behind an access token.

The authorization server issues tokens; the FHIR server only needs to know,
for one bearer token, who it was issued to and what it may see. This small
contract keeps the two halves of the sandbox apart: the FHIR server receives a
``GrantLookup`` and never touches the token tables itself.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class AccessGrant:
    """An active (issued, unexpired, unrevoked) access token's meaning."""

    client_id: str
    #: Granted scopes, exactly as in the token response's ``scope``.
    scopes: tuple[str, ...]
    #: Launch context patient id (``patient`` in the token response), if any.
    patient: str | None
    #: Launch context encounter id, if any.
    encounter: str | None
    #: ``fhirUser`` of the person who approved, e.g. ``Practitioner/practitioner-1``;
    #: ``None`` for backend services (``client_credentials``).
    fhir_user: str | None
    #: Unix time at which the token stops working.
    expires_at: float


#: Returns the grant of an active token, or ``None`` when the token is unknown,
#: expired or revoked (all three answer 401 at the FHIR server).
GrantLookup = Callable[[str], AccessGrant | None]
