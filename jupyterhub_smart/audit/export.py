"""Turn audit records into FHIR R4 AuditEvent resources and Bundles.

Records are stored already shaped like AuditEvents (see :mod:`.events`), so
conversion adds what the log kept separately: ``resourceType``, an ``id``
derived from the log and seq, ``recorded`` from ``time``, and an extension
carrying the chain fields so an auditor can tie every exported resource back to
its line (and re-check it) in the original log. Then :func:`.balp.conform`
moves fields to where the IHE BALP profile for the event's kind wants them and
names that profile in ``meta.profile``.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterable, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any

import orjson

from .balp import conform

#: Extension with the record's place in the hash chain.
CHAIN_EXTENSION = "urn:jupyterhub-smart:audit-chain"
_CHAIN_FIELDS = ("log_id", "seq", "time", "prev", "hash", "deferred")
_NAMESPACE = uuid.UUID("6f1e2b1c-5f1a-4d3e-9a58-5d0c7b1f4e21")


def to_audit_event(record: Mapping[str, Any]) -> dict[str, Any]:
    """The FHIR R4 AuditEvent resource for one log record, shaped after IHE BALP."""
    resource: dict[str, Any] = {
        "resourceType": "AuditEvent",
        "id": f"{record['log_id']}-{record['seq']}",
    }
    for key, value in record.items():
        if key not in _CHAIN_FIELDS:
            resource[key] = value
    resource["recorded"] = record["time"]
    chain: list[dict[str, Any]] = [
        {"url": "log_id", "valueString": record["log_id"]},
        {"url": "seq", "valueInteger": record["seq"]},
        {"url": "prev", "valueString": record["prev"]},
        {"url": "hash", "valueString": record["hash"]},
    ]
    deferred = record.get("deferred")
    if isinstance(deferred, Mapping):
        # Written late because the disk refused it at first; the caller was told so.
        chain.append({"url": "deferred-since", "valueDateTime": deferred.get("since")})
        chain.append({"url": "deferred-error", "valueString": deferred.get("error")})
    resource["extension"] = [{"url": CHAIN_EXTENSION, "extension": chain}]
    return conform(resource)


def _entry(record: Mapping[str, Any]) -> dict[str, Any]:
    resource = to_audit_event(record)
    full_url = f"urn:uuid:{uuid.uuid5(_NAMESPACE, resource['id'])}"
    return {"fullUrl": full_url, "resource": resource}


def bundle(records: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """A ``collection`` Bundle of AuditEvents (in memory; see :func:`write_bundle`)."""
    return {
        "resourceType": "Bundle",
        "type": "collection",
        "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "entry": [_entry(r) for r in records],
    }


def write_bundle(records: Iterable[Mapping[str, Any]], out: IO[bytes]) -> int:
    """Stream a Bundle to ``out`` entry by entry (constant memory); returns the count."""
    head = {
        "resourceType": "Bundle",
        "type": "collection",
        "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    out.write(orjson.dumps(head)[:-1] + b',"entry":[')
    count = 0
    for record in records:
        if count:
            out.write(b",")
        out.write(orjson.dumps(_entry(record)))
        count += 1
    out.write(b"]}\n")
    return count


def write_bundle_file(records: Iterable[Mapping[str, Any]], path: Path) -> int:
    """Write a Bundle to ``path`` atomically: no half-written export is left behind."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with tmp.open("wb") as out:
            count = write_bundle(records, out)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return count
