"""Who may see what: bearer token -> grant -> scopes -> SQL visibility filter.

Every FHIR request passes here first. The result of :func:`authorize` is an
:class:`Access` whose :meth:`Access.clauses` restrict any query to what the
token may see. Reads and searches use the same clauses, so a resource a search
would hide can never be read by id (one rule, one implementation):

- ``user/`` and ``system/`` scopes see every resource of the type;
- ``patient/`` scopes see only the launched patient's compartment (the Patient
  itself and resources whose subject is that patient); without a ``patient``
  in the token's context they see nothing;
- v2 query restrictions (``?category=vital-signs``) become search filters;
  restrictions on a parameter the sandbox cannot search for that type (or
  other than ``category``/``code``, the ones SMART defines examples for)
  grant nothing, failing closed.

Several scopes allowing the same interaction are OR-ed.

What each refusal answers, and why:

- no, malformed, unknown, expired or revoked token: 401 with
  ``WWW-Authenticate: Bearer`` (the client should refresh or sign in again);
- no scope allows the interaction on the type: 403 with an OperationOutcome
  naming the scopes that would (the client asked for too little);
- the scope allows the type but not this resource (another patient's, or
  outside a v2 ``?category=`` restriction): **404**, word for word the answer
  for an id that does not exist. A 403 here would confirm that the other
  patient's record exists; a patient-scoped token must not learn even that.
  :func:`jupyterhub_smart.sandbox.fhir.api.create_fhir_blueprint` applies it
  with the same :meth:`Access.clauses` as search.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from ..access_grant import AccessGrant, GrantLookup
from ..scopes import (
    ResourceScope,
    needed_scope_hint,
    resource_matches_params,
    resource_scopes,
    scopes_allowing,
)
from .indexing import named_patients
from .outcome import FHIRError
from .search import FALSE, SEARCH_PARAMS, Clause, filter_clause

log = logging.getLogger(__name__)

#: v2 query restrictions the sandbox enforces (others fail closed).
RESTRICTABLE = ("category", "code")
INTERACTION_NAMES = {"r": "read", "s": "search", "c": "create", "u": "update", "d": "delete"}
MAX_TOKEN_LENGTH = 4096


@dataclass(frozen=True)
class Access:
    """An authorized request's grant and the scopes that allow its interaction."""

    grant: AccessGrant
    scopes: tuple[ResourceScope, ...]
    resource_type: str
    fhir_base: str

    def clauses(self) -> list[Clause]:
        """SQL conditions (AND-ed) limiting ``resources r`` to what the token may see."""
        alternatives: list[list[Clause]] = []
        for scope in self.scopes:
            parts: list[Clause] = []
            if scope.context == "patient":
                if not self.grant.patient:
                    continue
                parts.append(Clause("r.patient = ?", (self.grant.patient,)))
            restriction = self._restriction(scope)
            if restriction is None:
                continue
            parts.extend(restriction)
            if not parts:
                return []  # one unrestricted scope: everything of the type is visible
            alternatives.append(parts)
        if not alternatives:
            return [FALSE]
        if len(alternatives) == 1:
            return alternatives[0]
        sql = " OR ".join(
            "(" + " AND ".join(f"({c.sql})" for c in alt) + ")" for alt in alternatives
        )
        args: list[object] = []
        for alt in alternatives:
            for c in alt:
                args.extend(c.args)
        return [Clause(sql, tuple(args))]

    def _restriction(self, scope: ResourceScope) -> list[Clause] | None:
        """Clauses of a scope's v2 query; ``None`` when it cannot be enforced here."""
        supported = SEARCH_PARAMS.get(self.resource_type, {})
        clauses = []
        for name, value in scope.params:
            if name not in RESTRICTABLE or name not in supported:
                return None
            try:
                clauses.append(filter_clause(self.resource_type, name, None, value, self.fhir_base))
            except FHIRError:
                return None
        return clauses

    def permits(self, resource: dict[str, Any], patient: str | None) -> bool:
        """Python twin of :meth:`clauses` for one resource (history entries, written resources).

        ``patient`` is the resource's compartment. A ``patient/`` scope needs it
        to be the launched patient, and the resource to name no other patient
        anywhere (a reference, a contained Patient); a v2 restriction needs the
        resource to match it, and one the sandbox cannot enforce matches nothing.
        """
        for scope in self.scopes:
            if scope.context == "patient":
                if not self.grant.patient or patient != self.grant.patient:
                    continue
                if not named_patients(resource) <= {self.grant.patient}:
                    continue
            if scope.params:
                supported = SEARCH_PARAMS.get(self.resource_type, {})
                if any(n not in RESTRICTABLE or n not in supported for n, _ in scope.params):
                    continue
                if not resource_matches_params(resource, scope.params):
                    continue
            return True
        return False

    @property
    def patient_only(self) -> bool:
        """True when every allowing scope is a ``patient/`` scope."""
        return all(s.context == "patient" for s in self.scopes)


def bearer_token(authorization: str | None) -> str:
    """The token of an ``Authorization: Bearer`` header, or a 401 explaining what is wrong."""
    if not authorization:
        raise FHIRError(
            401,
            "this request needs an access token: send 'Authorization: Bearer <token>'",
            headers={"WWW-Authenticate": 'Bearer realm="sandbox"'},
        )
    scheme, _, token = authorization.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or len(token) > MAX_TOKEN_LENGTH:
        raise FHIRError(
            401,
            "the Authorization header must be 'Bearer <token>'",
            headers={"WWW-Authenticate": 'Bearer realm="sandbox", error="invalid_request"'},
        )
    return token


def grant_of(authorization: str | None, lookup_grant: GrantLookup) -> AccessGrant:
    """The live grant of a request's bearer token, or a 401 saying to refresh or sign in."""
    token = bearer_token(authorization)
    grant = lookup_grant(token)
    if grant is None or grant.expires_at <= time.time():
        log.info("FHIR: refused an unknown, expired or revoked access token")
        raise FHIRError(
            401,
            "the access token is unknown, expired or revoked: refresh it or sign in again",
            headers={"WWW-Authenticate": 'Bearer realm="sandbox", error="invalid_token"'},
        )
    return grant


def scoped(
    grant: AccessGrant, resource_type: str, interaction: str, fhir_base: str
) -> Access | None:
    """The grant's access to ``interaction`` on a type, or None (no scope, or no patient).

    For what a request reaches beyond its own type (included resources, the
    types of ``$everything``): those are filtered out, not refused.
    """
    allowing = scopes_allowing(resource_scopes(grant.scopes), resource_type, interaction)
    if not grant.patient:
        allowing = [s for s in allowing if s.context != "patient"]
    return Access(grant, tuple(allowing), resource_type, fhir_base) if allowing else None


def authorize(
    authorization: str | None,
    lookup_grant: GrantLookup,
    resource_type: str,
    interaction: str,
    fhir_base: str,
) -> Access:
    """Check the bearer token and its scopes for ``interaction`` (a letter of ``cruds``)."""
    return require(grant_of(authorization, lookup_grant), resource_type, interaction, fhir_base)


def require(grant: AccessGrant, resource_type: str, interaction: str, fhir_base: str) -> Access:
    """The grant's access to ``interaction`` on ``resource_type``, or a 403 naming the scopes."""
    allowing = scopes_allowing(resource_scopes(grant.scopes), resource_type, interaction)
    if not allowing:
        needed = [
            needed_scope_hint(c, resource_type, interaction) for c in ("patient", "user", "system")
        ]
        action = INTERACTION_NAMES.get(interaction, interaction)
        log.info(
            "FHIR: client %s lacks a scope for %s of %s", grant.client_id, action, resource_type
        )
        raise FHIRError(
            403,
            f"the token's scopes do not allow {action} of {resource_type}: requires "
            f"{needed[0]}, {needed[1]} or {needed[2]} (or a v1 .read/.write equivalent)",
            headers={
                "WWW-Authenticate": f'Bearer realm="sandbox", error="insufficient_scope", '
                f'scope="{needed[0]} {needed[1]} {needed[2]}"'
            },
        )
    if not grant.patient and all(s.context == "patient" for s in allowing):
        # Seeing nothing would hide the client's bug; say what is missing instead.
        raise FHIRError(
            403,
            f"patient/ scopes need a patient in the launch context, and this token has none: "
            f"request launch/patient (standalone launch) or launch (EHR launch), or use "
            f"{needed_scope_hint('user', resource_type, interaction)}",
        )
    return Access(grant, tuple(allowing), resource_type, fhir_base)
