"""FHIR R4 syntax that the hub, the audit trail and the notebook check the same way.

What is a resource id, a resource type name, a reference, a search parameter
name, and which hosts are this machine (where plain HTTP is acceptable). Every
client-side module asks here, so that a value one part accepts is never
refused by another: the notebook's reporter, for instance, only sends the hub
what the hub's audit endpoint will take.

Kernels import this module, so it uses the standard library only. The sandbox
EHR keeps its own implementation of these rules on purpose: it is the
independent reference the tests check this side against.

Rules (FHIR R4, https://hl7.org/fhir/R4/datatypes.html#id and
https://hl7.org/fhir/R4/references.html#literal):

- id: ``[A-Za-z0-9\\-.]{1,64}``. Ids made only of dots are refused as well:
  ``Patient/..`` in a request URL is a path traversal, not a patient.
- resource type: the shape of an R4 resource type name, ``[A-Z][A-Za-z]{1,63}``
  (``Observation``). The shape, not R4's list: servers speak R4B and R5 too,
  whose lists differ, and the server is the one to say a type is unknown.
- reference: relative ``Type/id`` or ``Type/id/_history/vid``, or the same
  after an absolute ``http(s)`` service base URL.
- search parameter name: a code (``value-quantity``) or ``_``-prefixed
  standard name, with modifiers and chains (``code:text``, ``subject:Patient``,
  ``subject.name``, ``_has:Observation:patient:code``); up to 100 characters.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from urllib.parse import urlsplit

__all__ = [
    "PATIENT_SEARCH_PARAMS",
    "Reference",
    "is_fhir_id",
    "is_loopback_host",
    "is_loopback_hostname",
    "is_resource_type",
    "is_search_param_name",
    "parse_reference",
    "patient_id",
]

_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")
_RESOURCE_TYPE = re.compile(r"[A-Z][A-Za-z]{1,63}")
_SEARCH_PARAM_NAME = re.compile(r"_?[A-Za-z][A-Za-z0-9\-_.:]{0,99}")
_MAX_REFERENCE = 4096
#: Search parameters whose value names the patient a search is about (with the
#: ``_id`` of a Patient search, which callers check by resource type).
PATIENT_SEARCH_PARAMS = frozenset({"patient", "subject", "patient:Patient", "subject:Patient"})


def is_fhir_id(value: object) -> bool:
    """True when ``value`` is a string in FHIR ``id`` syntax, and not only dots."""
    return isinstance(value, str) and _ID.fullmatch(value) is not None and value.strip(".") != ""


def is_resource_type(value: object) -> bool:
    """True when ``value`` has the shape of a FHIR resource type name (``Observation``)."""
    return isinstance(value, str) and _RESOURCE_TYPE.fullmatch(value) is not None


def is_search_param_name(value: object) -> bool:
    """True when ``value`` is a search parameter name, possibly with modifier or chain.

    Only the name: a value (``code=8867-4``) is not a name, which is what keeps
    clinical data out of the audit trail's list of parameter names.
    """
    return (
        isinstance(value, str)
        and _SEARCH_PARAM_NAME.fullmatch(value) is not None
        and len(value) <= 100
    )


@dataclass(frozen=True)
class Reference:
    """A literal FHIR reference, split into its parts."""

    resource_type: str
    id: str
    #: The ``_history`` version, if the reference names one.
    version: str | None = None
    #: The service base URL of an absolute reference (no trailing slash), else None.
    base: str | None = None

    @property
    def relative(self) -> str:
        """``Type/id``: the resource, whatever the version and the server."""
        return f"{self.resource_type}/{self.id}"


def parse_reference(value: object, resource_type: str | None = None) -> Reference | None:
    """The parts of a literal reference, or None when ``value`` is not one.

    Relative (``Patient/123``, ``Patient/123/_history/2``) or absolute
    (``https://ehr.example.org/fhir/Patient/123``). A query or fragment makes
    it no reference. With ``resource_type``, a reference to another type is
    None too.
    """
    if not isinstance(value, str) or not value or len(value) > _MAX_REFERENCE:
        return None
    base: str | None = None
    if "://" in value:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            return None
        if parts.query or parts.fragment or "?" in value or "#" in value:
            return None
        segments = parts.path.split("/")
        versioned = len(segments) >= 5 and segments[-2] == "_history"
        path = "/".join(segments[-4:] if versioned else segments[-2:])
        base_path = parts.path[: len(parts.path) - len(path)].rstrip("/")
        base = f"{parts.scheme}://{parts.netloc}{base_path}"
    else:
        path = value
    segments = path.split("/")
    if len(segments) == 4 and segments[2] == "_history" and is_fhir_id(segments[3]):
        version: str | None = segments[3]
    elif len(segments) == 2:
        version = None
    else:
        return None
    rtype, rid = segments[0], segments[1]
    if not is_resource_type(rtype) or not is_fhir_id(rid):
        return None
    if resource_type is not None and rtype != resource_type:
        return None
    return Reference(rtype, rid, version, base)


def patient_id(value: object) -> str | None:
    """The id in ``"123"`` or ``"Patient/123"`` (how a patient is named in events), else None."""
    if isinstance(value, str) and value.startswith("Patient/"):
        value = value.removeprefix("Patient/")
    return value if isinstance(value, str) and is_fhir_id(value) else None


def is_loopback_hostname(host: str) -> bool:
    """True when ``host`` is this machine: ``localhost``, 127.0.0.0/8 or ``::1``.

    An IPv4 loopback address written as IPv6 (``::ffff:127.0.0.2``) counts.
    Other names do not, not even ``x.localhost`` or ``localhost.``: whether
    they reach this machine depends on the resolver, which may ask DNS.
    """
    host = host.lower().removeprefix("[").removesuffix("]")
    if host == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


def is_loopback_host(url: str) -> bool:
    """True when the host of ``url`` is this machine (see :func:`is_loopback_hostname`)."""
    try:
        host = urlsplit(url).hostname
    except ValueError:
        return False
    return is_loopback_hostname(host or "")
