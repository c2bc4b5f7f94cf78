"""Scope awareness: refuse, before sending, a request the granted scopes cannot cover.

An EHR may grant less than was asked. Without this check the researcher sees
a bare 403 (or, worse, an empty result) and has to guess why; with it they
read which scope they hold and which one the request would need.

What is checked (SMART App Launch 2.x scopes, parsed by
:mod:`jupyterhub_smart.smart.scopes`):

* resource type and interaction (``read`` = ``r``, ``search`` = ``s``);
* v2 restrictions such as ``patient/Observation.rs?category=...|laboratory``:
  such a grant covers a search only when it asks for the same restriction
  (``category=laboratory`` or ``category=<system>|laboratory``);
* the patient compartment: ``patient/`` scopes cover only the launched
  patient, so a search naming another patient, or a read of another Patient,
  needs a ``user/`` or ``system/`` scope. Without a patient in the context
  ``patient/`` scopes cover nothing.

The check errs on the side of letting the server decide: a read of a
non-Patient resource by id cannot be placed in a compartment before it is
fetched, and an empty grant list (a plain token of unknown scopes) skips the
check entirely.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..smart.fhir_rules import PATIENT_SEARCH_PARAMS, parse_reference
from ..smart.scopes import find_covering, satisfied_restrictions
from .errors import ScopeNotGranted

__all__ = ["check_scopes"]

_NAMES = {"r": "read", "s": "search"}


def _patient_id(value: str) -> str:
    """``Patient/123``, ``https://ehr/fhir/Patient/123`` or ``123`` -> ``123``.

    Anything else comes back as it is, and so never equals the launched patient.
    """
    value = value.strip()
    reference = parse_reference(value, "Patient")
    return reference.id if reference is not None else value


def _targets_other_patient(
    resource_type: str,
    interaction: str,
    params: Sequence[tuple[str, str]],
    resource_id: str | None,
    patient: str | None,
) -> bool:
    if resource_type == "Patient":
        if interaction == "r":
            return resource_id != patient
        ids = [v for k, v in params if k == "_id"]
        return any(_patient_id(v) != patient for i in ids for v in i.split(","))
    named = [v for k, v in params if k in PATIENT_SEARCH_PARAMS]
    return any(_patient_id(v) != patient for value in named for v in value.split(","))


def check_scopes(
    granted: Sequence[str],
    resource_type: str,
    interaction: str,
    params: Sequence[tuple[str, str]] = (),
    *,
    resource_id: str | None = None,
    patient: str | None = None,
) -> None:
    """Raise :class:`ScopeNotGranted` unless a granted scope covers the request.

    ``interaction`` is ``"r"`` (read) or ``"s"`` (search); ``patient`` is the
    launch context's patient (``None`` if there is none).
    """
    if not granted:
        return
    resource_scopes = [s for s in granted if s.startswith(("patient/", "user/", "system/"))]
    other = patient is None or _targets_other_patient(
        resource_type, interaction, params, resource_id, patient
    )
    contexts = ("user", "system") if other else ("patient", "user", "system")
    if find_covering(
        granted, contexts, resource_type, interaction, satisfied_restrictions(granted, params)
    ):
        return
    letter = "rs" if interaction == "s" else interaction
    needed = [f"{c}/{resource_type}.{letter}" for c in contexts]
    action = _NAMES.get(interaction, interaction)
    reason = ""
    if other and patient is not None:
        reason = (
            f" This request reaches beyond the launched patient ({patient}), which patient/ "
            "scopes cannot cover."
        )
    elif patient is None and any(s.startswith("patient/") for s in resource_scopes):
        reason = " Your patient/ scopes cover nothing because this session has no patient."
    restricted = [s for s in resource_scopes if "?" in s]
    if restricted:
        reason += (
            " Restricted scopes (" + ", ".join(restricted) + ") cover only searches that ask "
            "for the same restriction, e.g. category=<value>."
        )
    raise ScopeNotGranted(
        f"Not sent: {action} of {resource_type} needs one of "
        f"{', '.join(needed)}; this session was granted "
        f"{', '.join(resource_scopes) if resource_scopes else 'no resource scopes'}.{reason} "
        "Ask your hub admin (or the EHR) for the scope, or narrow the request.",
        needed=needed,
        granted=resource_scopes,
    )
