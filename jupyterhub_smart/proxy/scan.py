"""What a streamed answer held, for the audit record: resources and patients.

The record of a request names how many resources came back and which
patients' compartments they touched, from the bytes actually returned, without
holding the body: each chunk is scanned with C-level regular expressions as it
passes (a chunk plus a 1 KiB carry in memory).

* a Bundle (JSON): one resource per ``"resource": {`` (Bundle entries); a
  single resource: one; NDJSON (Bulk Data files): one per non-empty line;
* patients: every ``Patient/<id>`` in the body: references (``subject``,
  ``patient``, ``beneficiary``... whatever the field, relative or absolute), the
  ``fullUrl`` of a Patient entry, and (rarely) the same text in a narrative,
  which errs towards naming a patient too many, never too few; and every Patient resource's own ``id`` when
  ``"resourceType": "Patient"`` directly precedes it (how FHIR servers
  serialise). A Patient compartment is defined by such references, so this is
  the compartment membership of what was returned, read without parsing.
"""

from __future__ import annotations

import re

__all__ = ["BodyScanner"]

_ENTRY = re.compile(rb'"resource"\s{0,8}:\s{0,8}\{')
#: A literal prefix, so the regex engine jumps between candidates at C speed; ids are
#: collected with ``findall`` and deduplicated as a set, never visited one by one.
_PATIENT_REF = re.compile(rb"Patient/([A-Za-z0-9.\-]{1,64})")
_PATIENT_SELF = re.compile(
    rb'"resourceType"\s{0,8}:\s{0,8}"Patient"\s{0,8},\s{0,8}"id"\s{0,8}:\s{0,8}"([A-Za-z0-9.\-]{1,64})"'
)
#: The same two markers as serialised without spaces (what FHIR servers send): counted with
#: ``bytes.count``/``find``, several times faster than the regular expressions.
_ENTRY_COMPACT = b'"resource":{'
_PATIENT_SELF_COMPACT = b'"resourceType":"Patient","id":"'
_ID = re.compile(rb"[A-Za-z0-9.\-]{1,64}")
_KEEP = 1024  # longer than any match above
MAX_PATIENTS = 1000
#: Distinct ids remembered to skip repeats (about 8 MB at most).
MAX_SEEN = 100_000


class BodyScanner:
    """Counts resources and collects patient ids over a stream of chunks."""

    def __init__(self, content_type: str) -> None:
        media = content_type.split(";", 1)[0].strip().lower()
        self.ndjson = media in (
            "application/fhir+ndjson",
            "application/ndjson",
            "application/x-ndjson",
        )
        self.json = media in ("application/fhir+json", "application/json") or media.endswith(
            "+json"
        )
        self._carry = b""
        self._entries = 0
        self._lines = 0
        self._last_byte = b"\n"
        self._bundle: bool | None = None
        #: Serialised without spaces after ':' and ',' (decided on the first bytes).
        self._compact: bool | None = None
        self._seen: set[bytes] = set()
        self._any = False
        self.patients: set[str] = set()
        self.patients_omitted = 0

    def _patient(self, pid: bytes) -> None:
        if not _ID.fullmatch(pid):
            return
        text = pid.decode("ascii")
        if text in self.patients:
            return
        if len(self.patients) < MAX_PATIENTS:
            self.patients.add(text)
        else:
            self.patients_omitted += 1

    def _scan(self, buf: bytes, limit: int) -> None:
        for pid in set(_PATIENT_REF.findall(buf, 0, limit)) - self._seen:
            if len(self._seen) < MAX_SEEN:  # bounded memory; past it repeats may be counted
                self._seen.add(pid)
            self._patient(pid)
        if self._compact:
            marker = _PATIENT_SELF_COMPACT
            end = limit + len(marker) - 1  # a marker starting before limit
            at = buf.find(marker, 0, end)
            while at >= 0:
                start = at + len(marker)
                close = buf.find(b'"', start, start + 65)
                if close > start:
                    self._patient(buf[start:close])
                at = buf.find(marker, start, end)
            if self.json:
                self._entries += buf.count(_ENTRY_COMPACT, 0, limit + len(_ENTRY_COMPACT) - 1)
            return
        for match in _PATIENT_SELF.finditer(buf):
            if match.start() >= limit:
                break
            self._patient(match.group(1))
        if self.json:
            for match in _ENTRY.finditer(buf):
                if match.start() >= limit:
                    break
                self._entries += 1

    def feed(self, chunk: bytes) -> None:
        if not chunk or not (self.json or self.ndjson):
            return
        self._any = True
        if self.ndjson:
            self._lines += chunk.count(b"\n")
            self._last_byte = chunk[-1:]
        if self._bundle is None and self.json:
            head = (self._carry + chunk)[:512]
            if b'"resourceType"' in head:
                self._bundle = re.search(rb'"resourceType"\s*:\s*"Bundle"', head) is not None
        buf = self._carry + chunk if self._carry else chunk
        if self._compact is None and len(buf) >= 64:
            head = buf[:4096]
            self._compact = not re.search(rb'"\s*:\s+|"\s+:|,\s+"', head)
        limit = max(0, len(buf) - _KEEP)
        # No Patient reference may straddle the cut (its id would be read short).
        straddling = buf.rfind(b"Patient/", max(0, limit - 80), limit)
        if straddling >= 0:
            limit = straddling
        self._scan(buf, limit)
        self._carry = buf[limit:]

    def finish(self) -> int | None:
        """Resources returned (None when the body is not FHIR JSON/NDJSON)."""
        if self._carry:
            self._scan(self._carry, len(self._carry))
            self._carry = b""
        if self.ndjson:
            return self._lines + (0 if self._last_byte == b"\n" or not self._any else 1)
        if not self.json or not self._any:
            return None if not self.json else 0
        if self._bundle:
            return self._entries
        return 1
