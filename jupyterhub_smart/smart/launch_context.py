"""Launch context from a token response: which patient, which encounter, what UI.

OAuthenticator stores the token response's ``patient`` and friends as they
came; here they are type-checked before the hub keeps them, because they end
up in FHIR request URLs (``Patient/{patient}``) and on screen. A malformed
value is the EHR's fault and refuses the login (502) rather than being
silently dropped: a notebook working on "no patient" when the clinician
launched on one would be worse than a clear error.

Ids, types and references follow :mod:`.fhir_rules`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from .errors import LaunchContextError, safe_text
from .fhir_rules import is_fhir_id, is_resource_type, parse_reference

__all__ = ["LaunchContext", "fhir_user_reference"]

_MAX_FHIR_CONTEXT_ITEMS = 100
_MAX_TEXT = 2048


def _id(raw: Mapping[str, Any], name: str) -> str | None:
    value = raw.get(name)
    if value is None:
        return None
    if not is_fhir_id(value):
        raise LaunchContextError(
            f"The EHR sent a launch context {name!r} that is not a FHIR id ({safe_text(value, 80)!r})."
        )
    return str(value)


def _text(raw: Mapping[str, Any], name: str) -> str | None:
    value = raw.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > _MAX_TEXT:
        raise LaunchContextError(
            f"The EHR sent a launch context {name!r} that is not a short string."
        )
    return value


def _fhir_context(raw: Mapping[str, Any]) -> tuple[dict[str, Any], ...]:
    """Validate ``fhirContext``: a list of objects with reference, canonical or identifier."""
    value = raw.get("fhirContext")
    if value is None:
        return ()
    if not isinstance(value, list) or len(value) > _MAX_FHIR_CONTEXT_ITEMS:
        raise LaunchContextError("The EHR sent a fhirContext that is not a list of items.")
    items: list[dict[str, Any]] = []
    for index, item in enumerate(value):
        where = f"fhirContext[{index}]"
        if not isinstance(item, dict):
            raise LaunchContextError(f"The EHR sent a {where} that is not an object.")
        if not any(k in item for k in ("reference", "canonical", "identifier")):
            raise LaunchContextError(
                f"The EHR sent a {where} without reference, canonical or identifier."
            )
        for key in ("reference", "canonical", "type", "role"):
            if key in item and (
                not isinstance(item[key], str) or not item[key] or len(item[key]) > _MAX_TEXT
            ):
                raise LaunchContextError(f"The EHR sent a {where}.{key} that is not a string.")
        if "identifier" in item and not isinstance(item["identifier"], dict):
            raise LaunchContextError(f"The EHR sent a {where}.identifier that is not an object.")
        if "type" in item and not is_resource_type(item["type"]):
            raise LaunchContextError(f"The EHR sent a {where}.type that is not a resource type.")
        items.append(dict(item))
    return tuple(items)


@dataclass(frozen=True)
class LaunchContext:
    """The validated launch context of one SMART launch."""

    patient: str | None
    encounter: str | None
    fhir_context: tuple[dict[str, Any], ...]
    need_patient_banner: bool
    smart_style_url: str | None
    intent: str | None
    tenant: str | None

    @classmethod
    def from_token_response(cls, raw: Mapping[str, Any]) -> LaunchContext:
        """Validate the context fields of a token response; LaunchContextError (502) if malformed.

        ``need_patient_banner`` defaults to true when a patient is in context
        and the EHR did not say: showing whose data this is is the safe side.
        """
        if not isinstance(raw, Mapping):
            raise LaunchContextError("The token response is not an object.")
        patient = _id(raw, "patient")
        banner = raw.get("need_patient_banner")
        if banner is None:
            banner = patient is not None
        elif not isinstance(banner, bool):
            raise LaunchContextError(
                "The EHR sent a need_patient_banner that is not true or false."
            )
        style = _text(raw, "smart_style_url")
        if style is not None:
            parts = urlsplit(style)
            if parts.scheme not in ("http", "https") or not parts.netloc:
                raise LaunchContextError(
                    "The EHR sent a smart_style_url that is not an http(s) URL."
                )
        return cls(
            patient=patient,
            encounter=_id(raw, "encounter"),
            fhir_context=_fhir_context(raw),
            need_patient_banner=banner,
            smart_style_url=style,
            intent=_text(raw, "intent"),
            tenant=_text(raw, "tenant"),
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable, with the SMART field names (for auth_state and the token API)."""
        return {
            "patient": self.patient,
            "encounter": self.encounter,
            "fhirContext": [dict(item) for item in self.fhir_context],
            "need_patient_banner": self.need_patient_banner,
            "smart_style_url": self.smart_style_url,
            "intent": self.intent,
            "tenant": self.tenant,
        }


def fhir_user_reference(claims: Mapping[str, Any]) -> str | None:
    """``"Practitioner/123"`` from an id_token's ``fhirUser`` (relative or absolute URL).

    Falls back to the SMART v1 ``profile`` claim. Returns None when absent or
    not a ``Type/id`` reference (``_history`` versions, queries and fragments are
    dropped): callers
    then fall back to ``sub``. The FHIR base of an absolute URL is not returned;
    usernames are made unique per issuer by the hub.
    """
    value = claims.get("fhirUser")
    if value is None:
        value = claims.get("profile")
    if not isinstance(value, str) or not value or len(value) > _MAX_TEXT:
        return None
    reference = parse_reference(value.split("#", 1)[0].split("?", 1)[0])
    return reference.relative if reference is not None else None
