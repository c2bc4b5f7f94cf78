"""Launch context and the approval it turns into.

An EHR launch creates a :class:`LaunchContext` (patient, encounter, who
launched). The authorization step turns it, or a standalone sign-in, into a
:class:`GrantContext`: the person who approved, the context, and the scopes
granted. That object travels with the authorization code into every token of
the grant (refreshes included), so that the token response, introspection and
the FHIR server all see the same context.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

import orjson

EHR_LAUNCH = "ehr"
STANDALONE_LAUNCH = "standalone"


@dataclass(frozen=True)
class LaunchContext:
    """What ``/ehr/launch`` recorded behind an opaque ``launch`` value."""

    #: The client the launch was made for; several when they share the app URL's origin.
    client_ids: tuple[str, ...]
    patient: str | None = None
    encounter: str | None = None
    #: Practitioner id of the EHR user who clicked Launch, if known.
    practitioner: str | None = None
    #: Extra ``fhirContext`` items, e.g. ``{"reference": "Observation/1"}``.
    fhir_context: tuple[dict[str, Any], ...] = ()


@dataclass(frozen=True)
class GrantContext:
    """An approved authorization: who, in which context, with which scopes.

    Authlib hands it around as the grant's "user"; its ``sub`` is the OpenID
    subject and ``fhir_user`` the relative reference of the signed-in person.
    """

    sub: str
    fhir_user: str
    scope: str = ""
    patient: str | None = None
    encounter: str | None = None
    fhir_context: tuple[dict[str, Any], ...] = field(default=())
    need_patient_banner: bool = True
    auth_time: int = 0
    launch: str = STANDALONE_LAUNCH

    def get_user_id(self) -> str:
        """Authlib asks users for an id in a few places."""
        return self.sub

    def with_scope(self, scope: str) -> GrantContext:
        return replace(self, scope=scope)

    def to_json(self) -> bytes:
        return orjson.dumps(asdict(self))

    @classmethod
    def from_json(cls, data: bytes | str) -> GrantContext:
        raw = orjson.loads(data)
        raw["fhir_context"] = tuple(raw.get("fhir_context") or ())
        return cls(**raw)

    def token_fields(self, style_url: str) -> dict[str, Any]:
        """The SMART launch-context fields of a token response."""
        fields: dict[str, Any] = {}
        if self.patient:
            fields["patient"] = self.patient
            fields["need_patient_banner"] = self.need_patient_banner
        if self.encounter:
            fields["encounter"] = self.encounter
        if self.fhir_context:
            fields["fhirContext"] = [dict(item) for item in self.fhir_context]
        fields["smart_style_url"] = style_url
        return fields
