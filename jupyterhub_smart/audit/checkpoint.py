"""Signed checkpoints: the hub's signature on the chain head, kept where the log is not.

The hash chain proves that lines were not edited, removed or reordered *unless*
someone with write access rewrites the whole chain, recomputing every hash: the
result verifies. A checkpoint closes that gap. At an interval the hub signs the
chain head ``{log_id, seq, hash, time}`` as a compact JWS with its private key
(the ``private_key_jwt`` key, or one of its own) and

* appends the JWS, one a line, to a checkpoint file (keep it on other storage);
* records it in the trail as an ``audit-checkpoint`` event, so every sink (the
  FHIR server, the SIEM over syslog) receives it in order with the records.

``jupyterhub-smart audit verify --checkpoints FILE|URL --jwks FILE|URL`` then
checks each checkpoint's signature against the hub's published JWK Set and the
log's line hash at the checkpoint's seq: a rewritten chain no longer has the
signed hash there, a shortened one ends before a signed seq. What it proves is
bounded by the key: someone who can also read the hub's private key can sign
checkpoints of their own.

In the trail the JWS is stored as its three parts in separate details (a
compact JWS in one string would be redacted as a credential by
:func:`.events.sanitize`); :func:`checkpoints_in` joins them again, so a SIEM's
copy of the trail serves as a checkpoint source too.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
from joserfc import jws
from joserfc.errors import JoseError
from joserfc.jwk import KeySet

from ..smart.keys import SigningKey, default_alg, thumbprint_kid
from .events import ACTION_SYSTEM, hub_event

log = logging.getLogger(__name__)

#: ``typ`` of a checkpoint JWS.
CHECKPOINT_TYP = "audit-checkpoint+jws"
ALGORITHMS = ("RS384", "ES384")
_COMPACT = re.compile(r"^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$")
_DETAIL_PARTS = ("jws-protected", "jws-payload", "jws-signature")


class CheckpointError(ValueError):
    """A checkpoint that cannot be trusted (bad signature, unknown key, malformed)."""


@dataclass(frozen=True)
class Checkpoint:
    """A verified statement by the hub: log ``log_id`` had line hash ``hash`` at ``seq``."""

    log_id: str
    seq: int
    hash: str
    time: str
    kid: str


def sign(key: SigningKey, *, log_id: str, seq: int, hash: str, time: str) -> str:
    """A compact JWS of the chain head, signed with ``key`` (RS384 or ES384)."""
    header = {"alg": default_alg(key), "kid": key.kid or thumbprint_kid(key), "typ": CHECKPOINT_TYP}
    payload = orjson.dumps(
        {"log_id": log_id, "seq": seq, "hash": hash, "time": time}, option=orjson.OPT_SORT_KEYS
    )
    return jws.serialize_compact(header, payload, key, algorithms=ALGORITHMS)


def checkpoint_event(
    token: str, description: str, action: str = "audit-checkpoint"
) -> dict[str, Any]:
    """The ``audit-checkpoint`` (or ``audit-retention``) event carrying ``token``, in 3 parts."""
    event = dict(hub_event(action, description=description))
    parts = token.split(".")
    detail = [
        {"type": name, "valueString": part} for name, part in zip(_DETAIL_PARTS, parts, strict=True)
    ]
    event["entity"] = [
        {
            "type": {
                "system": "http://terminology.hl7.org/CodeSystem/audit-entity-type",
                "code": "2",
                "display": "System Object",
            },
            "description": "signed checkpoint of the audit chain head (JWS)",
            "detail": detail,
        }
    ]
    return event


def checkpoints_in(text: str) -> list[str]:
    """Compact JWS checkpoints found in ``text``, one a line.

    A line is either a compact JWS (the checkpoint file), or JSON holding an
    ``audit-checkpoint`` event: a log record, an exported AuditEvent, or a
    syslog message whose payload is one (a SIEM's copy of the trail).
    """
    found: list[str] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if _COMPACT.match(line):
            found.append(line)
            continue
        start = line.find("{")
        if start < 0:
            continue
        try:
            obj = orjson.loads(line[start:])
        except orjson.JSONDecodeError:
            continue
        token = _token_of(obj) if isinstance(obj, dict) else None
        if token:
            found.append(token)
    return found


def _token_of(event: Mapping[str, Any]) -> str | None:
    """The JWS an ``audit-checkpoint`` or ``audit-retention`` event carries, if any."""
    actions = {
        c.get("code")
        for c in event.get("subtype") or ()
        if isinstance(c, Mapping) and c.get("system") == ACTION_SYSTEM
    }
    if not actions & {"audit-checkpoint", "audit-retention"}:
        return None
    for entity in event.get("entity") or ():
        detail = {d.get("type"): d.get("valueString") for d in entity.get("detail") or ()}
        parts = [detail.get(name) for name in _DETAIL_PARTS]
        if all(isinstance(p, str) and p for p in parts):
            return ".".join(str(p) for p in parts)
    return None


def load_text(source: str, *, timeout: float = 10.0) -> str:
    """The text of a file path or an http(s) URL (``ValueError`` saying what failed)."""
    if source.startswith(("https://", "http://")):
        try:
            response = httpx.get(source, timeout=timeout, follow_redirects=True)
        except httpx.HTTPError as exc:
            raise ValueError(f"could not fetch {source}: {type(exc).__name__}") from None
        if response.status_code != 200:
            raise ValueError(f"could not fetch {source}: HTTP {response.status_code}")
        return response.text
    try:
        return Path(source).read_text(encoding="utf-8")
    except OSError as exc:
        raise ValueError(f"could not read {source}: {exc.strerror or type(exc).__name__}") from None


def load_jwks(source: str) -> KeySet:
    """The hub's public JWK Set from a file or URL (e.g. ``{hub}/hub/smart/jwks.json``)."""
    try:
        data = orjson.loads(load_text(source))
        keys = KeySet.import_key_set(data)
    except (orjson.JSONDecodeError, JoseError, ValueError, TypeError, KeyError) as exc:
        if isinstance(exc, ValueError) and str(exc).startswith("could not"):
            raise
        raise ValueError(f"{source} is not a JWK Set") from None
    if any(key.is_private for key in keys.keys):
        raise ValueError(f"{source} holds private keys: give the public JWK Set")
    return keys


def verify_token(token: str, keys: KeySet) -> Checkpoint:
    """Check one checkpoint's signature and shape; :class:`CheckpointError` says why not."""
    try:
        signed = jws.deserialize_compact(token, keys, algorithms=ALGORITHMS)
    except (JoseError, ValueError, KeyError) as exc:
        raise CheckpointError(
            f"checkpoint signature does not verify with the given JWK Set ({type(exc).__name__})"
        ) from None
    if signed.headers().get("typ") != CHECKPOINT_TYP:
        raise CheckpointError("not an audit checkpoint (typ)")
    try:
        payload = orjson.loads(signed.payload)
        checkpoint = Checkpoint(
            log_id=str(payload["log_id"]),
            seq=int(payload["seq"]),
            hash=str(payload["hash"]),
            time=str(payload["time"]),
            kid=str(signed.headers().get("kid", "")),
        )
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        raise CheckpointError("checkpoint payload is malformed") from None
    if checkpoint.seq < 1:
        raise CheckpointError("checkpoint payload is malformed (seq)")
    return checkpoint


def _signed_by(token: str, keys: KeySet) -> bool:
    """Whether the token names a key of ``keys`` (a SIEM's feed holds other hubs' too)."""
    try:
        kid = jws.extract_compact(token.encode("ascii")).headers().get("kid")
        keys.get_by_kid(kid)
    except (JoseError, ValueError, KeyError, TypeError, UnicodeError):
        return False
    return True


def verify_all(tokens: Iterable[str], keys: KeySet) -> list[Checkpoint]:
    """The checkpoints signed by a key of ``keys``, verified, de-duplicated, by seq.

    A checkpoint naming another key is another hub's and is left out; one that
    names a key of ``keys`` but whose signature does not verify raises.
    """
    seen: dict[tuple[str, int], Checkpoint] = {}
    tokens = list(tokens)
    ours = [token for token in tokens if _signed_by(token, keys)]
    if tokens and not ours:
        raise CheckpointError(
            f"none of the {len(tokens)} checkpoint(s) is signed by a key of the given JWK Set"
        )
    for index, token in enumerate(ours, start=1):
        try:
            checkpoint = verify_token(token, keys)
        except CheckpointError as exc:
            raise CheckpointError(f"checkpoint {index}: {exc}") from None
        other = seen.get((checkpoint.log_id, checkpoint.seq))
        if other is not None and other.hash != checkpoint.hash:
            raise CheckpointError(
                f"two signed checkpoints disagree about seq {checkpoint.seq} (key misuse?)"
            )
        seen[(checkpoint.log_id, checkpoint.seq)] = checkpoint
    return sorted(seen.values(), key=lambda c: (c.log_id, c.seq))


class Checkpointer:
    """Signs the head of an :class:`~.log.AuditLog` every ``interval`` seconds.

    Listed among the log's sinks so that it is closed with the log; signing and
    recording happen on its own thread, never the writer's. ``interval`` 0:
    no periodic checkpoints, only those asked for (:meth:`checkpoint`, e.g. by
    retention before it deletes files).
    """

    def __init__(
        self,
        key: SigningKey,
        interval: float,
        file: str | os.PathLike[str] | None = None,
    ) -> None:
        if interval < 0:
            raise ValueError("checkpoint interval must be 0 (off) or a number of seconds")
        default_alg(key)  # RS384 or ES384 keys only: refuse others at start-up
        if not key.is_private:
            raise ValueError("checkpoints need the hub's private key")
        self.key = key
        self.interval = interval
        self.file = Path(file) if file else None
        self.log: Any = None
        self._signed_seq = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="audit-checkpoints", daemon=True)

    def attach(self, audit_log: Any) -> None:
        """Sign the head of ``audit_log`` from now on (list this among its sinks too)."""
        self.log = audit_log
        if self.interval:
            self._thread.start()

    # ---------------------------------------------------------- as a sink
    def accept(self, records: Any) -> None:
        """Nothing to do per batch: the head is read when a checkpoint is due."""

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(10)

    # ---------------------------------------------------------- signing
    def checkpoint(
        self,
        *,
        seq: int | None = None,
        hash: str | None = None,
        action: str = "audit-checkpoint",
        description: str | None = None,
    ) -> str | None:
        """Sign the head now (or ``seq`` with line ``hash``); file it and record it.

        Returns the JWS, or None when nothing was written since the last
        checkpoint (only the checkpoint record itself).
        """
        audit_log = self.log
        if audit_log is None:
            raise RuntimeError("the checkpointer is not attached to a log")
        from .log import utc_now

        with self._lock:
            if seq is None or hash is None:
                seq, hash = audit_log.head
                if seq == 0 or seq <= self._signed_seq:
                    return None
            token = sign(self.key, log_id=audit_log.log_id, seq=seq, hash=hash, time=utc_now())
            if self.file is not None:
                self._append(token)
            text = description or f"signed checkpoint of seq {seq}"
            recorded = audit_log.record_sync(checkpoint_event(token, text, action))
            if action == "audit-checkpoint":
                self._signed_seq = max(self._signed_seq, recorded)
        log.info("Audit checkpoint signed: log %s seq %d", audit_log.log_id, seq)
        return token

    def _append(self, token: str) -> None:
        assert self.file is not None
        self.file.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.file, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            os.write(fd, token.encode("ascii") + b"\n")
            os.fsync(fd)
        finally:
            os.close(fd)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.checkpoint()
            except Exception as exc:  # the log closed, the disk refused...: try next time
                if self._stop.is_set():
                    return
                log.error("Audit checkpoint not written: %s", type(exc).__name__)
