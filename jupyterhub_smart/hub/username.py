"""Usernames for SMART users: valid for JupyterHub, stable, and never shared by two identities.

JupyterHub refuses ``/`` in usernames and lower-cases them, while a SMART
identity is ``fhirUser`` (``Practitioner/123``, a case-sensitive id) or
``sub`` at one EHR. The default mapping is::

    Practitioner/123 at https://ehr.example.org/fhir -> practitioner-123@ehr.example.org-fhir
    Practitioner/Abc                                 -> practitioner-_abc@...
    sub "a_b c"                                      -> user-a__b_32.c@...

It is injective: the identity can be read back from the name (:func:`decode_part`),
except for over-long parts, which carry 128 bits of SHA-256 instead. Each part
(resource type, id or ``sub``) is written with a reversible escape:

* ``a``-``z``, ``0``-``9``, ``.`` and ``-`` stay as they are, so plain lower-case
  ids read as before;
* ``_`` is the escape character and is itself written ``__``;
* a capital is ``_`` and the letter: ``A`` -> ``_a``;
* any other character is ``_``, its code point in decimal, and ``.``: ``/`` -> ``_47.``.

The resource type has its first letter lower-cased before escaping (FHIR
types start with a capital: ``Practitioner`` -> ``practitioner``,
``RelatedPerson`` -> ``related_person``); an identity from ``sub`` is
``user-<sub>``, and the one type that would also read ``user`` is written
``_user``. A type never contains ``-``, so the first ``-`` ends it.

A part whose escaped form is longer than 64 characters becomes its first 32
escaped characters, ``-`` and 32 hex digits of SHA-256 of the exact part: 65
characters, longer than any part kept whole, so a shortened part never equals
a whole one, and two shortened parts are equal only if 128 bits of SHA-256
collide.

The issuer part names the EHR (host, port when not default, path), lower-cased
with ``-`` for other characters, and shortened the same way past 120
characters. It is unique only among the issuers a hub is configured with:
:func:`colliding_issuers` finds configured issuers that would share it
(``/R4`` and ``/r4``, ``/fhir/r4`` and ``/fhir-r4``), and the hub refuses to start
with such a pair. ``@`` appears in no part, so it splits the name.

The same inputs always give the same name (a returning user keeps their server
and files). ``SMARTAuthenticator.username_mapper`` replaces the mapping.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from urllib.parse import urlsplit

__all__ = ["colliding_issuers", "decode_part", "default_username", "encode_part", "issuer_slug"]

_UNSAFE = re.compile(r"[^a-z0-9._-]+")
_KEPT = frozenset("abcdefghijklmnopqrstuvwxyz0123456789.-")
_RESOURCE_TYPE = re.compile(r"[A-Z][A-Za-z]*")
#: Longest escaped part kept whole; a longer one is shortened to _MAX_PART + 1 characters.
_MAX_PART = 64
_MAX_ISSUER = 120
_HASH_HEX = 32  # 128 bits


def _sha256_hex(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:_HASH_HEX]


def encode_part(text: str) -> str:
    """``text`` in the reversible escape of the module docstring (no length limit)."""
    out = []
    for char in text:
        if char in _KEPT:
            out.append(char)
        elif char == "_":
            out.append("__")
        elif "A" <= char <= "Z":
            out.append("_" + char.lower())
        else:
            out.append(f"_{ord(char)}.")
    return "".join(out)


def decode_part(encoded: str) -> str:
    """The text :func:`encode_part` wrote as ``encoded``; ValueError if it wrote no such thing."""
    out = []
    i = 0
    while i < len(encoded):
        char = encoded[i]
        if char in _KEPT:
            out.append(char)
            i += 1
            continue
        if char != "_" or i + 1 >= len(encoded):
            raise ValueError(f"not an escaped username part: {encoded!r}")
        following = encoded[i + 1]
        if following == "_":
            out.append("_")
            i += 2
        elif "a" <= following <= "z":
            out.append(following.upper())
            i += 2
        elif following.isdigit():
            end = encoded.find(".", i + 1)
            digits = encoded[i + 1 : end] if end > 0 else ""
            code = int(digits) if digits.isdigit() and digits.isascii() else -1
            if not 0 <= code <= 0x10FFFF or digits != str(code) or chr(code) in _KEPT:
                raise ValueError(f"not an escaped username part: {encoded!r}")
            if chr(code) == "_" or "A" <= chr(code) <= "Z":
                raise ValueError(f"not an escaped username part: {encoded!r}")
            out.append(chr(code))
            i = end + 1
        else:
            raise ValueError(f"not an escaped username part: {encoded!r}")
    return "".join(out)


def _bounded(text: str, encoded: str) -> str:
    """``encoded``, or when over-long its head and 128 bits of SHA-256 of ``text``."""
    if len(encoded) <= _MAX_PART:
        return encoded
    return f"{encoded[: _MAX_PART - _HASH_HEX]}-{_sha256_hex(text)}"


def _type_part(rtype: str) -> str:
    if not _RESOURCE_TYPE.fullmatch(rtype):
        raise ValueError("fhirUser's resource type is not a FHIR resource type name")
    lowered = rtype[0].lower() + rtype[1:]
    return "_user" if lowered == "user" else _bounded(rtype, encode_part(lowered))


def issuer_slug(issuer: str) -> str:
    """``https://ehr.example.org:8443/r4/fhir`` -> ``ehr.example.org-8443-r4-fhir``."""
    parts = urlsplit(issuer)
    pieces = [parts.hostname or "ehr"]
    if parts.port and parts.port not in (80, 443):
        pieces.append(str(parts.port))
    pieces.extend(p for p in parts.path.split("/") if p)
    slug = _UNSAFE.sub("-", "-".join(pieces).lower()).strip("-.") or "ehr"
    if len(slug) > _MAX_ISSUER:
        slug = f"{slug[: _MAX_ISSUER - _HASH_HEX - 1]}-{_sha256_hex(issuer)}"
    return slug


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
        local = f"{_type_part(rtype)}-{_bounded(rid, encode_part(rid))}"
    elif sub:
        local = f"user-{_bounded(sub, encode_part(sub))}"
    else:
        raise ValueError("neither fhirUser nor sub identifies the user")
    return f"{local}@{issuer_slug(issuer)}"
