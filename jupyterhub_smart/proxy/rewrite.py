"""Rewriting the EHR's base URL to the proxy's, in a body that is never held whole.

Paging works unchanged through the proxy only if ``Bundle.link[].url``,
``entry[].fullUrl`` and ``Location`` point at the proxy, not at the EHR (which
the kernel holds no token for). A Bundle can be 100 MB, so it is not parsed:
the proxy substitutes the bytes of the FHIR base URL in JSON bodies as they
stream, wherever they stand (links, fullUrls, absolute references), and only
where the base is followed by ``/``, ``?``, ``#``, ``"`` or the end (so
``.../fhir2`` stays). The cost is four ``bytes.replace`` passes per chunk (one
per following character, in C; a regex with a Python step per match cost five
times as much on a page of 1,000 entries, each with its ``fullUrl``); the
memory is one chunk plus the base URL's length, carried from one chunk to the
next so a URL split across two chunks is still found. A server that escapes ``/`` as
``\\/`` in JSON is not rewritten (none of the EHRs we know does).
"""

from __future__ import annotations

import re

__all__ = ["BodyRewriter", "rewrite_text"]


def _pattern(base: bytes, at_end: bool) -> re.Pattern[bytes]:
    follow = rb'(?=[/?#"]|$)' if at_end else rb'(?=[/?#"])'
    return re.compile(re.escape(base) + follow)


def rewrite_text(text: str, base: str, replacement: str) -> str:
    """``text`` with the base URL (followed by ``/ ? # "`` or the end) replaced."""
    if not base:
        return text
    return re.sub(re.escape(base) + r'(?=[/?#"]|$)', lambda _m: replacement, text)


class BodyRewriter:
    """Feed chunks, get rewritten chunks; :meth:`finish` returns what was held back."""

    def __init__(self, base: str, replacement: str) -> None:
        self._base = base.encode("utf-8")
        self._replacement = replacement.encode("utf-8")
        self._inner = _pattern(self._base, at_end=False)
        self._final = _pattern(self._base, at_end=True)
        self._keep = len(self._base)
        self._carry = b""
        #: (base + c, replacement + c) for each character that may follow the base.
        self._pairs = [(self._base + c, self._replacement + c) for c in (b"/", b"?", b"#", b'"')]
        #: Replacing pass after pass is the same as one pass unless a replacement
        #: can itself contain the base (then the regex, which never rescans, is used).
        self._plain = self._base not in self._replacement

    def feed(self, chunk: bytes) -> bytes:
        """The part of ``carry + chunk`` that is decided, rewritten.

        A match starting before ``len(buf) - len(base)`` has its following
        byte in the buffer, so the regex decides it here; anything later waits
        for the next chunk.
        """
        buf = self._carry + chunk if self._carry else chunk
        limit = len(buf) - self._keep
        if limit <= 0:
            self._carry = buf
            return b""
        if self._plain:
            return self._replace(buf, limit)
        out: list[bytes] = []
        pos = 0
        for match in self._inner.finditer(buf, 0, len(buf)):
            if match.start() >= limit:
                break
            out.append(buf[pos : match.start()])
            out.append(self._replacement)
            pos = match.end()
        cut = max(pos, limit)
        out.append(buf[pos:cut])
        self._carry = buf[cut:]
        return b"".join(out)

    def _replace(self, buf: bytes, limit: int) -> bytes:
        """:meth:`feed` with ``bytes.replace``: cut where no occurrence of the base straddles.

        An occurrence starting at ``s`` is decided with its following byte at
        ``s + len(base)``; one that starts in ``[cut - len(base), cut)`` would be
        cut off from that byte, so the cut moves to its start and it waits.
        """
        base, cut = self._base, limit
        while (s := buf.find(base, max(0, cut - len(base)), cut + len(base))) >= 0 and s < cut:
            cut = s
        region = buf[:cut]
        for old, new in self._pairs:  # "/" first: almost every occurrence; often the only one
            if base not in region:
                break
            region = region.replace(old, new)
        self._carry = buf[cut:]
        return region

    def finish(self) -> bytes:
        """The held-back tail, rewritten (the body has ended)."""
        tail, self._carry = self._carry, b""
        return self._final.sub(lambda _m: self._replacement, tail)
