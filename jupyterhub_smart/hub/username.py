"""Usernames for SMART users: valid for JupyterHub, stable, unique per issuer.

JupyterHub refuses ``/`` in usernames and lower-cases them, while a SMART
identity is ``fhirUser`` (``Practitioner/123``, case-sensitive id) or ``sub``
at one EHR. The default mapping is::

    Practitioner/123 at https://ehr.example.org/fhir -> practitioner-123@ehr.example.org-fhir

* resource type and id lower-cased and joined by ``-``;
* when lower-casing or replacing characters changed the id, 8 hex digits of
  a hash of the exact id are appended (``patient-abc-1f2e3d4c@...``), so that
  ``Abc`` and ``abc`` stay two users;
* ``sub`` is used when there is no ``fhirUser``: ``user-<sub>@...``;
* the suffix names the issuer (host, port when not default, path), so that
  ``Practitioner/1`` at two EHRs are two users.

The same inputs always give the same name (a returning user keeps their
server and files). ``SMARTAuthenticator.username_mapper`` replaces it.

The issuer part is unique only among the issuers a hub is configured with:
:func:`colliding_issuers` finds configured issuers that would share it
(``/R4`` and ``/r4``, ``/fhir/r4`` and ``/fhir-r4``, a difference after 120
characters), and the hub refuses to start with such a pair. Two ids differing
only in case or in replaced characters are told apart by 8 hex digits of
SHA-256, so two such ids of one EHR share a name only if those 32 bits
collide.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from urllib.parse import urlsplit

__all__ = ["colliding_issuers", "default_username", "issuer_slug"]

_UNSAFE = re.compile(r"[^a-z0-9._-]+")
_MAX_PART = 100
#: What a hashed slug ends with; an id kept as it is must not end like that.
_HASHED = re.compile(r"-[0-9a-f]{8}$")


def _hash8(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:8]


def _slug(text: str) -> str:
    """Lower-case, unsafe runs replaced by ``-``; hash suffix when that lost information."""
    lowered = text.lower()
    slug = _UNSAFE.sub("-", lowered).strip("-.") or "x"
    if slug != text or len(slug) > _MAX_PART or _HASHED.search(slug):
        slug = f"{slug[:_MAX_PART]}-{_hash8(text)}"
    return slug


def issuer_slug(issuer: str) -> str:
    """``https://ehr.example.org:8443/r4/fhir`` -> ``ehr.example.org-8443-r4-fhir``."""
    parts = urlsplit(issuer)
    pieces = [parts.hostname or "ehr"]
    if parts.port and parts.port not in (80, 443):
        pieces.append(str(parts.port))
    pieces.extend(p for p in parts.path.split("/") if p)
    slug = _UNSAFE.sub("-", "-".join(pieces).lower()).strip("-.")
    return slug[:120] or "ehr"


def colliding_issuers(issuers: Iterable[str]) -> list[tuple[str, str]]:
    """Pairs of issuers whose users would share usernames (the same :func:`issuer_slug`)."""
    seen: dict[str, str] = {}
    pairs = []
    for issuer in issuers:
        slug = issuer_slug(issuer)
        if slug in seen:
            pairs.append((seen[slug], issuer))
        else:
            seen[slug] = issuer
    return pairs


def default_username(issuer: str, fhir_user: str | None, sub: str | None) -> str:
    """The default JupyterHub username for a SMART identity (see the module docstring)."""
    if fhir_user and "/" in fhir_user:
        rtype, rid = fhir_user.split("/", 1)
        rtype_part = _UNSAFE.sub("-", rtype.lower()) or "resource"
        local = f"{rtype_part}-{_slug(rid)}"
    elif sub:
        local = f"user-{_slug(sub)}"
    else:
        raise ValueError("neither fhirUser nor sub identifies the user")
    return f"{local}@{issuer_slug(issuer)}"
