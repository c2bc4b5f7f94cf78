"""``/hub/smart/audit``: the audit trail for admins and privacy officers, in the hub.

The same filters as ``jupyterhub-smart audit query`` (patient, user, issuer,
kind, time), newest first and paginated; the chain's status (the head the index
verified on this request, the writer's head, the last signed checkpoint from the
checkpoint file or, without one, from the trail's ``audit-checkpoint`` records);
a per-patient view (who accessed this patient) and a per-user view (which
patients this user touched); CSV export of a search.

Who may see it: holders of the ``admin-ui`` scope (hub admins) or of
``custom:smart:audit-read`` (:mod:`.scopes`), which an admin grants to a
privacy officer in ``load_roles``. Everyone else gets 403. The page only
reads: it answers GET alone (no form posts, so nothing for a cross-site
request to forge), and its answers are ``Cache-Control: no-store``.

The index is the one ``audit query`` uses (:mod:`..audit.index`), kept at
``SMARTAuthenticator.audit_index_path`` (default: beside the log); it is
brought up to date, and checked against the chain, on each request, in a
worker thread so the hub's event loop never waits on it.
"""

from __future__ import annotations

import asyncio
import base64
import io
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import orjson
from tornado import web

from ..audit.index import AuditIndex, IndexMismatch
from ..audit.query import Filters, count, parse_time, search
from ..audit.query_cli import write_csv
from .pages import MAX_PARAM, SMARTPageHandler
from .scopes import AUDIT_READ_SCOPE

__all__ = ["ADMIN_SCOPE", "PAGE_SIZE", "SMARTAuditPageHandler", "audit_page_handlers"]

#: JupyterHub's scope of the admin page: its holders see the audit page too.
ADMIN_SCOPE = "admin-ui"
PAGE_SIZE = 50
_FILTER_FIELDS = ("patient", "user", "issuer", "type", "since", "until")
_OUTCOME = {"0": "success", "4": "failure", "8": "failure", "12": "failure"}
#: Per-patient and per-user views: aggregates over the index (``where`` from Filters.where).
_BY_USER = (
    "SELECT user, fhir_user, COUNT(*), SUM(count), MIN(time), MAX(time) FROM events "
    "WHERE {where} GROUP BY user, fhir_user ORDER BY COUNT(*) DESC LIMIT 100"
)
_BY_PATIENT = (
    "SELECT patient, COUNT(*), SUM(count), MIN(time), MAX(time) FROM events "
    "WHERE {where} AND patient IS NOT NULL GROUP BY patient ORDER BY COUNT(*) DESC LIMIT 100"
)


class BadRequest(ValueError):
    """A filter the page cannot use; the message is shown to the reader."""


@dataclass
class PageQuery:
    filters: Filters
    raw: dict[str, str]
    page: int
    csv: bool


def _last_checkpoint(path: str) -> dict[str, Any] | None:
    """The last checkpoint in ``path`` (a JWS per line, or JSON): its seq, hash and time.

    Shown as claimed: ``jupyterhub-smart audit verify --checkpoints`` checks
    the signatures.
    """
    try:
        with open(path, "rb") as handle:
            lines = [line.strip() for line in handle.read().splitlines() if line.strip()]
    except OSError:
        return None
    if not lines:
        return None
    last = lines[-1]
    claims: Any = None
    if last.startswith(b"{"):  # plain JSON, or a JWS in its JSON serialisation
        try:
            claims = orjson.loads(last)
        except orjson.JSONDecodeError:
            claims = None
        if isinstance(claims, Mapping) and isinstance(claims.get("payload"), str):
            last, claims = claims["payload"].encode(), None
    if claims is None:  # a compact JWS (header.payload.signature) or its payload alone
        part = last.split(b".")[1] if last.count(b".") == 2 else last
        try:
            claims = orjson.loads(base64.urlsafe_b64decode(part + b"=" * (-len(part) % 4)))
        except (ValueError, orjson.JSONDecodeError):
            claims = None
    if not isinstance(claims, Mapping):
        return {"error": "the last checkpoint could not be read"}
    return {k: claims.get(k) for k in ("seq", "hash", "time", "iat") if k in claims}


#: Kinds of trail record that carry a signed checkpoint (the JWS in three ``jws-*`` details).
CHECKPOINT_ACTIONS = ("audit-checkpoint", "audit-retention")


def _checkpoint_in_trail(index: AuditIndex) -> dict[str, Any] | None:
    """The claims of the newest checkpoint recorded in the trail itself, if any."""
    found = next(search(index, Filters(types=CHECKPOINT_ACTIONS), limit=1, newest_first=True), None)
    if found is None:
        return None
    for entity in found.record.get("entity") or ():
        detail = {d.get("type"): d.get("valueString") for d in entity.get("detail") or ()}
        payload = detail.get("jws-payload")
        if isinstance(payload, str) and payload:
            try:
                claims = orjson.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
            except (ValueError, orjson.JSONDecodeError):
                break
            if isinstance(claims, Mapping):
                shown = {k: claims.get(k) for k in ("seq", "hash", "time", "iat") if k in claims}
                return {**shown, "record": found.seq}
    return {"error": f"the checkpoint recorded at seq {found.seq} could not be read"}


def _gather(
    log_path: Path, index_path: Path | None, query: PageQuery, writer_head: tuple[int, str] | None
) -> dict[str, Any]:
    """Everything the page shows, computed in a worker thread (SQLite and file reads)."""
    with AuditIndex(log_path, index_path) as index:
        index.update()
        if query.csv:
            out = io.StringIO()
            write_csv(search(index, query.filters), out)
            return {"csv": out.getvalue()}
        total = count(index, query.filters)
        offset = (query.page - 1) * PAGE_SIZE
        rows = []
        for match in search(
            index, query.filters, limit=PAGE_SIZE, offset=offset, newest_first=True
        ):
            row = dict(match.row)
            row["seq"] = match.seq
            row["outcome"] = _OUTCOME.get(str(row["outcome"]), row["outcome"])
            row["description"] = match.record.get("outcomeDesc") or ""
            rows.append(row)
        where, args = query.filters.where()
        by_user = by_patient = None
        if query.filters.patient:
            sql = _BY_USER.format(where=where)
            by_user = index.db.execute(sql, args).fetchall()
        if query.filters.user:
            sql = _BY_PATIENT.format(where=where)
            by_patient = index.db.execute(sql, args).fetchall()
        head_seq, head_hash = index.head
        return {
            "trail_checkpoint": _checkpoint_in_trail(index),
            "rows": rows,
            "total": total,
            "by_user": by_user,
            "by_patient": by_patient,
            "chain": {
                "log_id": index.log_id,
                "first_seq": index.first_seq,
                "head_seq": head_seq,
                "head_hash": head_hash,
                "writer_seq": writer_head[0] if writer_head else None,
            },
        }


class SMARTAuditPageHandler(SMARTPageHandler):
    """GET only: the audit trail, filtered and paginated, or a CSV export of a search."""

    #: An API token with the scope works too (a script fetching ``?format=csv``): this
    #: handler only reads, and the token's own scopes are what ``has_scope`` checks.
    _accept_token_auth = True

    def _query(self) -> PageQuery:
        raw: dict[str, str] = {}
        for name in (*_FILTER_FIELDS, "page", "format"):
            value = self.get_argument(name, "").strip()
            if len(value) > MAX_PARAM or any(ord(c) < 0x20 for c in value):
                raise BadRequest(f"the {name} filter is too long or holds control characters")
            raw[name] = value
        try:
            page = int(raw.pop("page") or "1")
        except ValueError:
            raise BadRequest("page must be a whole number") from None
        if not 1 <= page <= 1_000_000:
            raise BadRequest("page must be between 1 and 1000000")
        fmt = raw.pop("format")
        if fmt not in ("", "html", "csv"):
            raise BadRequest("format must be html or csv")
        try:
            filters = Filters(
                patient=raw["patient"] or None,
                user=raw["user"] or None,
                issuer=raw["issuer"] or None,
                types=[t.strip() for t in raw["type"].split(",") if t.strip()],
                since=parse_time(raw["since"]) if raw["since"] else None,
                until=parse_time(raw["until"], end=True) if raw["until"] else None,
            )
        except ValueError as exc:
            raise BadRequest(str(exc)) from None
        return PageQuery(filters, raw, page, fmt == "csv")

    def _paths(self) -> tuple[Path, Path | None]:
        auth = self.authenticator
        log_path = Path(getattr(auth, "audit_log_path", "jupyterhub-smart-audit.jsonl")).absolute()
        index = getattr(auth, "audit_index_path", "") or None
        return log_path, Path(index).absolute() if index else None

    def _writer_head(self) -> tuple[int, str] | None:
        getter = getattr(self.authenticator, "get_audit_log", None)
        try:
            return getter().head if callable(getter) else None
        except Exception:
            return None

    @web.authenticated
    async def get(self) -> None:
        self.set_header("Cache-Control", "no-store")
        if not (self.has_scope(AUDIT_READ_SCOPE) or self.has_scope(ADMIN_SCOPE)):
            self.log.warning(
                "Audit page refused to %s: no audit-read scope", self.current_user.name
            )
            await self._answer(
                403,
                error=(
                    f"The audit trail is for hub admins and holders of the {AUDIT_READ_SCOPE} "
                    "scope. Ask an admin to grant it to you (see docs/audit.md)."
                ),
            )
            return
        try:
            query = self._query()
        except BadRequest as exc:
            await self._answer(400, error=str(exc))
            return
        log_path, index_path = self._paths()
        try:
            data = await asyncio.to_thread(
                _gather, log_path, index_path, query, self._writer_head()
            )
        except FileNotFoundError:
            data = {"rows": [], "total": 0, "by_user": None, "by_patient": None, "chain": None}
            data["trail_checkpoint"] = None
        except IndexMismatch as exc:
            self.log.error("Audit page: the log does not verify against its index: %s", exc)
            await self._answer(
                500,
                query=query,
                error=f"The audit log does not verify: {exc}",
            )
            return
        if "csv" in data:
            self.set_header("Content-Type", "text/csv; charset=utf-8")
            self.set_header("Content-Disposition", 'attachment; filename="audit.csv"')
            self.set_header("X-Content-Type-Options", "nosniff")
            self.finish(data["csv"])
            return
        await self._answer(200, query=query, **data)

    async def _answer(
        self, status: int, *, query: PageQuery | None = None, error: str = "", **data: Any
    ) -> None:
        raw = query.raw if query else {}
        page = query.page if query else 1
        total = int(data.get("total") or 0)
        pages = max(1, -(-total // PAGE_SIZE))

        def link(**changes: Any) -> str:
            params = {k: v for k, v in {**raw, **changes}.items() if v not in ("", None)}
            return self.request.path + ("?" + urlencode(params) if params else "")

        checkpoint_file = getattr(self.authenticator, "audit_checkpoint_file", "") or ""
        checkpoint = _last_checkpoint(checkpoint_file) if checkpoint_file else None
        if checkpoint is None:
            checkpoint = data.get("trail_checkpoint")
        self.set_status(status)
        html = await self.render_smart(
            "smart_audit.html",
            no_spawner_check=True,  # the reader may be a service (no spawner)
            audit_denied=status == 403,
            audit_error=error,
            audit_filters=raw,
            audit_rows=data.get("rows") or [],
            audit_total=total,
            audit_page=page,
            audit_pages=pages,
            audit_by_user=data.get("by_user"),
            audit_by_patient=data.get("by_patient"),
            audit_chain=data.get("chain"),
            audit_checkpoint=checkpoint,
            audit_link=link,
            audit_csv_link=link(format="csv", page=""),
            audit_prev=link(page=page - 1) if page > 1 else "",
            audit_next=link(page=page + 1) if page < pages else "",
        )
        self.finish(html)


#: Handlers for the authenticator's ``get_handlers`` (JupyterHub adds the ``/hub`` prefix).
audit_page_handlers: list[tuple[str, type]] = [(r"/smart/audit", SMARTAuditPageHandler)]
