"""Which requests may leave the proxy: FHIR REST paths under the base, nothing else.

The proxy sends the EHR token to ``<FHIR base>/<path>``. A path a server could
read as leaving the base would carry the token elsewhere on the EHR's host, so
the raw request target is checked before anything else, by allow-list rather
than by normalising: a FHIR REST path needs only letters, digits and
``- . _ $`` in ``/``-separated segments (types, ids, ``_history``,
``_search``, ``$operation``, ``metadata``, Bulk Data status and file paths).
That refuses, without having to think of each spelling, ``..`` and ``.``
segments, Tomcat-style ``..;`` path parameters, percent-encoding of any kind
(encoded slashes, dots, double encoding, control characters), backslashes,
empty segments (``//``) and absolute-form targets (``GET http://other/ HTTP/1.1``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..smart.issuer_key import KEY_PATTERN
from .errors import ProxyError

__all__ = ["Target", "parse_target"]

_SEGMENT = re.compile(r"[A-Za-z0-9._$-]{1,256}")
#: A query string as sent on the wire: printable ASCII without space, ``#`` or quotes.
_QUERY = re.compile(r"[!$%&'()*+,\-./0-9:;=?@A-Z\[\]^_`a-z{|}~]*")
MAX_TARGET = 8192


@dataclass(frozen=True)
class Target:
    """A checked request target: issuer key, FHIR path segments, raw query."""

    key: str
    segments: tuple[str, ...]
    query: str

    @property
    def path(self) -> str:
        """The FHIR path relative to the base (``Observation/123``)."""
        return "/".join(self.segments)


def _bad_path(why: str) -> ProxyError:
    return ProxyError(
        400,
        "invalid_path",
        f"Not forwarded: {why}. The proxy forwards only FHIR REST paths under the EHR's base: "
        "segments of letters, digits, '-', '.', '_' and '$' separated by single '/', "
        "without percent-encoding or dot segments.",
    )


def parse_target(uri: str, prefix: str) -> Target | None:
    """Check a raw request target; None for the proxy's own pages (``prefix`` itself).

    ``prefix`` is the service's path prefix (``/services/smart-fhir/``). Raises
    :class:`ProxyError` (400) for anything that is not ``<prefix><key>/<FHIR
    path>[?query]``; the message says what, never echoing the target itself.
    """
    if len(uri) > MAX_TARGET:
        raise ProxyError(414, "uri_too_long", f"The request target exceeds {MAX_TARGET} bytes.")
    if not uri.startswith("/"):
        raise _bad_path("the request target is not a path (absolute-form or authority-form)")
    if "#" in uri:
        raise _bad_path("the request target holds a fragment ('#')")
    path, _, query = uri.partition("?")
    if not path.startswith(prefix):
        raise ProxyError(404, "not_found", f"The FHIR proxy serves only {prefix}<EHR>/...")
    rest = path[len(prefix) :]
    if rest == "":
        return None
    if not _QUERY.fullmatch(query):
        raise ProxyError(
            400,
            "invalid_query",
            "Not forwarded: the query string holds characters that must be percent-encoded "
            "(spaces, quotes, control characters, non-ASCII).",
        )
    key, _, fhir_path = rest.partition("/")
    if not KEY_PATTERN.fullmatch(key):
        if key.startswith("_"):
            return Target(key, (), query)  # the proxy's own endpoints (_context)
        raise _bad_path("the first segment is not an EHR key")
    segments = tuple(fhir_path.split("/")) if fhir_path else ()
    if "\\" in fhir_path:
        raise _bad_path("the path holds a backslash")
    if "%" in fhir_path:
        raise _bad_path("the path is percent-encoded")
    for segment in segments:
        if segment == "":
            raise _bad_path("the path has an empty segment ('//' or a trailing '/')")
        if segment.strip(".") == "":
            raise _bad_path("the path has a dot segment ('.' or '..')")
        if not _SEGMENT.fullmatch(segment):
            raise _bad_path("a path segment holds a character FHIR paths do not use")
    return Target(key, segments, query)
