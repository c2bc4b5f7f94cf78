"""Who can sign in, and how people are shown on the sandbox's pages.

Users of the sandbox EHR are the FHIR store's Practitioners and Patients: a
clinician signs in as a Practitioner, a patient-facing app's user as a
Patient. Their ``fhirUser`` is the resource's relative reference.
"""

from __future__ import annotations

from typing import Any, Protocol

from .. import scopes

USER_TYPES = ("Practitioner", "Patient")


class PeopleStore(Protocol):
    """The part of the FHIR store the authorization server reads."""

    def list_patients(self, limit: int = 100, offset: int = 0) -> list[dict[str, Any]]: ...

    def list_practitioners(self) -> list[dict[str, Any]]: ...

    def read(self, resource_type: str, resource_id: str) -> dict[str, Any] | None: ...


def display_name(resource: dict[str, Any]) -> str:
    """``Given Family`` from the first HumanName, else the resource id."""
    names = resource.get("name") or []
    if names and isinstance(names[0], dict):
        name = names[0]
        if name.get("text"):
            return str(name["text"])
        parts = [*(name.get("prefix") or []), *(name.get("given") or []), name.get("family") or ""]
        text = " ".join(str(p) for p in parts if p)
        if text:
            return text
    return str(resource.get("id", "?"))


def mrn(resource: dict[str, Any]) -> str:
    """The medical record number among a Patient's identifiers, if any."""
    for identifier in resource.get("identifier") or []:
        codings = ((identifier.get("type") or {}).get("coding")) or []
        if (
            any(c.get("code") == "MR" for c in codings)
            or "mrn" in str(identifier.get("system", "")).lower()
        ):
            return str(identifier.get("value", ""))
    return ""


def parse_user_reference(value: str) -> tuple[str, str] | None:
    """``("Practitioner", "p1")`` from ``"Practitioner/p1"``; ``None`` if malformed."""
    resource_type, _, resource_id = value.partition("/")
    if (
        resource_type not in USER_TYPES
        or not resource_id
        or "/" in resource_id
        or len(resource_id) > 64
    ):
        return None
    return resource_type, resource_id


def user_exists(store: PeopleStore, reference: str) -> bool:
    parsed = parse_user_reference(reference)
    return parsed is not None and store.read(*parsed) is not None


def default_practitioner(store: PeopleStore) -> str:
    """The first Practitioner: the user ``--auto-approve`` approves as."""
    practitioners = store.list_practitioners()
    if not practitioners:
        raise RuntimeError("the FHIR store has no Practitioner to approve as")
    return f"Practitioner/{practitioners[0]['id']}"


def patient_from_hint(store: PeopleStore, hint: str | None) -> str | None:
    """A patient id named by ``login_hint`` (``Patient/ID`` or ``ID``), if it exists."""
    if not hint:
        return None
    patient_id = hint.removeprefix("Patient/")
    if not patient_id or "/" in patient_id or len(patient_id) > 64:
        return None
    return patient_id if store.read("Patient", patient_id) is not None else None


_PLAIN_SCOPE_TEXT = {
    "openid": "Confirm your identity to the app",
    "fhirUser": "Tell the app which FHIR user record is yours",
    "profile": "Share your basic profile",
    "launch": "Use the context of this EHR session (patient, encounter)",
    "launch/patient": "Know the patient you selected",
    "launch/encounter": "Know the encounter you selected",
    "offline_access": "Keep access after you sign out (refresh token)",
    "online_access": "Keep access while you stay signed in (refresh token)",
}
_PERMISSION_WORDS = {"c": "create", "r": "read", "u": "update", "d": "delete", "s": "search"}
_CONTEXT_WORDS = {
    "patient": "of the selected patient",
    "user": "that you can see",
    "system": "of every patient",
}


def describe_scope(scope: str) -> str:
    """Plain words for a scope on the consent page (the scope itself is shown too)."""
    if scope in _PLAIN_SCOPE_TEXT:
        return _PLAIN_SCOPE_TEXT[scope]
    parsed = scopes.parse_resource_scope(scope)
    if parsed is None:
        return scope
    verbs = [word for letter, word in _PERMISSION_WORDS.items() if letter in parsed.permissions]
    what = "all records" if parsed.resource_type == "*" else f"{parsed.resource_type} records"
    action = verbs[0] if len(verbs) == 1 else f"{', '.join(verbs[:-1])} and {verbs[-1]}"
    text = f"{action.capitalize()} {what} {_CONTEXT_WORDS[parsed.context]}"
    if parsed.params:
        text += " (only " + ", ".join(f"{k} {v}" for k, v in parsed.params) + ")"
    return text
