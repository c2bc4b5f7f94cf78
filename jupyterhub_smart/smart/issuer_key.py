"""The short name of an EHR in the FHIR proxy's URLs: ``/services/smart-fhir/<key>/...``.

Both the hub (which tells single-user servers the proxy URL) and the proxy
(which routes by it) compute it here, from the issuer (the EHR's FHIR base URL),
so the two cannot disagree. Readable on purpose: an admin reading an access log
sees which EHR a request went to.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from urllib.parse import urlsplit

__all__ = ["KEY_PATTERN", "issuer_key", "issuer_keys"]

_UNSAFE = re.compile(r"[^a-z0-9]+")
#: What a key looks like (so a path segment can be checked before any lookup).
KEY_PATTERN = re.compile(r"[a-z0-9][a-z0-9-]{0,119}")


def issuer_key(issuer: str) -> str:
    """``https://EHR.example.org:8443/r4/fhir`` -> ``ehr-example-org-8443-r4-fhir``."""
    parts = urlsplit(issuer)
    text = "-".join(
        p for p in (parts.hostname or "ehr", str(parts.port or ""), parts.path) if p
    ).lower()
    return _UNSAFE.sub("-", text).strip("-")[:120] or "ehr"


def issuer_keys(issuers: Iterable[str]) -> dict[str, str]:
    """``{key: issuer}`` for the configured issuers; ValueError if two share a key."""
    keys: dict[str, str] = {}
    for issuer in issuers:
        key = issuer_key(issuer)
        if key in keys and keys[key] != issuer:
            raise ValueError(
                f"the FHIR proxy would name the EHRs {keys[key]!r} and {issuer!r} alike "
                f"({key!r}); configure only one of them for proxy mode"
            )
        keys[key] = issuer
    return keys
