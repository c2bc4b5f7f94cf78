"""SQLite storage of codes, tokens, launches and assertion ids, under ``--data-dir``.

Every secret handle (code, access token, refresh token, launch) is stored only
as its SHA-256, so a copy of the database lets nobody call the FHIR server.
Single-use rules are enforced with conditional ``UPDATE``s, so two threads
redeeming the same code or refresh token cannot both win.

Tokens of one authorization form a *family* (the code, and every access and
refresh token rotated from it); replaying a used code or a rotated refresh
token revokes the whole family, as RFC 6749 §4.1.2 and RFC 9700 §4.14 advise.
"""

from __future__ import annotations

import hashlib
import secrets
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from authlib.oauth2.rfc6749 import AuthorizationCodeMixin, TokenMixin

from .context import GrantContext, LaunchContext

_SCHEMA = """
CREATE TABLE IF NOT EXISTS codes (
    code_hash TEXT PRIMARY KEY,
    client_id TEXT NOT NULL,
    redirect_uri TEXT NOT NULL,
    scope TEXT NOT NULL,
    nonce TEXT,
    code_challenge TEXT NOT NULL,
    code_challenge_method TEXT NOT NULL,
    grant_json BLOB NOT NULL,
    family_id TEXT NOT NULL,
    expires_at REAL NOT NULL,
    used INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS codes_nonce ON codes (client_id, nonce);
CREATE TABLE IF NOT EXISTS tokens (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    access_hash TEXT NOT NULL UNIQUE,
    refresh_hash TEXT UNIQUE,
    client_id TEXT NOT NULL,
    scope TEXT NOT NULL,
    grant_json BLOB,
    family_id TEXT NOT NULL,
    issued_at REAL NOT NULL,
    expires_at REAL NOT NULL,
    refresh_expires_at REAL,
    access_revoked INTEGER NOT NULL DEFAULT 0,
    -- 'active', 'rotated' (used once, must never work again) or 'revoked'
    refresh_state TEXT
);
CREATE INDEX IF NOT EXISTS tokens_family ON tokens (family_id);
CREATE TABLE IF NOT EXISTS launches (
    launch_hash TEXT PRIMARY KEY,
    context_json BLOB NOT NULL,
    -- JSON list: the client the launch was made for, or every client on the app's origin
    client_ids BLOB NOT NULL,
    expires_at REAL NOT NULL,
    used INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS assertion_ids (
    client_id TEXT NOT NULL,
    jti TEXT NOT NULL,
    expires_at REAL NOT NULL,
    PRIMARY KEY (client_id, jti)
);
"""


#: Expired rows are kept this long (replay detection, the EHR's sessions page).
PURGE_GRACE_SECONDS = 24 * 3600
PURGE_EVERY_WRITES = 1000


def digest(secret: str) -> str:
    """SHA-256 hex of a secret handle: what the database keeps instead of it."""
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()


def new_family_id() -> str:
    return secrets.token_hex(16)


@dataclass
class CodeRecord(AuthorizationCodeMixin):
    """A stored authorization code (Authlib's AuthorizationCodeMixin)."""

    code_hash: str
    client_id: str
    redirect_uri: str
    scope: str
    nonce: str | None
    code_challenge: str
    code_challenge_method: str
    grant: GrantContext
    family_id: str
    expires_at: float
    used: bool

    def get_redirect_uri(self) -> str:
        return self.redirect_uri

    def get_scope(self) -> str:
        return self.scope

    def get_nonce(self) -> str | None:
        return self.nonce

    def get_auth_time(self) -> int:
        return self.grant.auth_time

    def get_acr(self) -> None:
        return None

    def get_amr(self) -> None:
        return None


@dataclass
class TokenRecord(TokenMixin):
    """A stored token pair (Authlib's TokenMixin)."""

    id: int
    client_id: str
    scope: str
    grant: GrantContext | None
    family_id: str
    issued_at: float
    expires_at: float
    refresh_expires_at: float | None
    access_revoked: bool
    refresh_state: str | None
    #: Which handle found this record: ``access_token`` or ``refresh_token``.
    matched: str = "access_token"

    def check_client(self, client: Any) -> bool:
        return bool(self.client_id == client.get_client_id())

    def get_scope(self) -> str:
        return self.scope

    def get_expires_in(self) -> int:
        return int(self.expires_at - self.issued_at)

    def is_expired(self) -> bool:
        now = time.time()
        if self.matched == "refresh_token":
            return self.refresh_expires_at is None or now >= self.refresh_expires_at
        return now >= self.expires_at

    def is_revoked(self) -> bool:
        if self.matched == "refresh_token":
            return self.refresh_state != "active"
        return self.access_revoked

    def get_user(self) -> GrantContext | None:
        return self.grant

    def get_client(self) -> Any:  # pragma: no cover - Authlib hook we do not use
        raise NotImplementedError


class AuthStorage:
    """Thread-safe access to the authorization server's SQLite file."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
        self._writes = 0
        self.purge_expired()

    def purge_expired(self, grace: float = PURGE_GRACE_SECONDS) -> int:
        """Delete what expired more than ``grace`` seconds ago; returns rows deleted.

        Used codes and rotated refresh tokens are kept through the grace period,
        long after they could be replayed, so replays are still recognised.
        """
        cutoff = time.time() - grace
        with self._tx() as db:
            deleted = db.execute("DELETE FROM codes WHERE expires_at < ?", (cutoff,)).rowcount
            deleted += db.execute("DELETE FROM launches WHERE expires_at < ?", (cutoff,)).rowcount
            deleted += db.execute(
                "DELETE FROM tokens WHERE expires_at < ?"
                " AND (refresh_expires_at IS NULL OR refresh_expires_at < ?)",
                (cutoff, cutoff),
            ).rowcount
            deleted += db.execute(
                "DELETE FROM assertion_ids WHERE expires_at < ?", (time.time(),)
            ).rowcount
        return deleted

    def _count_write(self) -> None:
        """Purge now and then, so a long-running sandbox's database stays small."""
        self._writes += 1
        if self._writes % PURGE_EVERY_WRITES == 0:
            self.purge_expired()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    # -- launches -----------------------------------------------------------------
    def create_launch(self, context: LaunchContext, lifetime: float) -> str:
        handle = secrets.token_urlsafe(24)
        payload = orjson.dumps(
            {
                "client_ids": list(context.client_ids),
                "patient": context.patient,
                "encounter": context.encounter,
                "practitioner": context.practitioner,
                "fhir_context": list(context.fhir_context),
            }
        )
        with self._tx() as db:
            db.execute(
                "INSERT INTO launches VALUES (?, ?, ?, ?, 0)",
                (
                    digest(handle),
                    payload,
                    orjson.dumps(list(context.client_ids)),
                    time.time() + lifetime,
                ),
            )
        return handle

    def check_launch(self, handle: str, client_id: str) -> str | None:
        """Why ``handle`` cannot be used by ``client_id`` now, or ``None`` if it can."""
        with self._lock:
            row = self._db.execute(
                "SELECT client_ids, expires_at, used FROM launches WHERE launch_hash = ?",
                (digest(handle),),
            ).fetchone()
        return _launch_problem(row, client_id)

    def consume_launch(self, handle: str, client_id: str) -> LaunchContext | None:
        """Mark a launch used and return its context; ``None`` if not usable."""
        with self._tx() as db:
            row = db.execute(
                "SELECT client_ids, expires_at, used, context_json FROM launches"
                " WHERE launch_hash = ?",
                (digest(handle),),
            ).fetchone()
            if _launch_problem(row, client_id) is not None:
                return None
            db.execute("UPDATE launches SET used = 1 WHERE launch_hash = ?", (digest(handle),))
        raw = orjson.loads(row["context_json"])
        raw["fhir_context"] = tuple(raw.get("fhir_context") or ())
        raw["client_ids"] = tuple(raw.get("client_ids") or ())
        return LaunchContext(**raw)

    # -- authorization codes --------------------------------------------------------
    def save_code(
        self,
        code: str,
        *,
        client_id: str,
        redirect_uri: str,
        scope: str,
        nonce: str | None,
        code_challenge: str,
        code_challenge_method: str,
        grant: GrantContext,
        lifetime: float,
    ) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO codes VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 0)",
                (
                    digest(code),
                    client_id,
                    redirect_uri,
                    scope,
                    nonce,
                    code_challenge,
                    code_challenge_method,
                    grant.to_json(),
                    new_family_id(),
                    time.time() + lifetime,
                ),
            )
        self._count_write()

    def find_code(self, code: str) -> CodeRecord | None:
        with self._lock:
            row = self._db.execute(
                "SELECT * FROM codes WHERE code_hash = ?", (digest(code),)
            ).fetchone()
        if row is None:
            return None
        return CodeRecord(
            code_hash=row["code_hash"],
            client_id=row["client_id"],
            redirect_uri=row["redirect_uri"],
            scope=row["scope"],
            nonce=row["nonce"],
            code_challenge=row["code_challenge"],
            code_challenge_method=row["code_challenge_method"],
            grant=GrantContext.from_json(row["grant_json"]),
            family_id=row["family_id"],
            expires_at=row["expires_at"],
            used=bool(row["used"]),
        )

    def claim_code(self, code_hash: str) -> bool:
        """Mark a code used; ``False`` if another request used it first."""
        with self._tx() as db:
            cursor = db.execute(
                "UPDATE codes SET used = 1 WHERE code_hash = ? AND used = 0", (code_hash,)
            )
            return cursor.rowcount == 1

    def nonce_seen(self, client_id: str, nonce: str) -> bool:
        with self._lock:
            row = self._db.execute(
                "SELECT 1 FROM codes WHERE client_id = ? AND nonce = ?", (client_id, nonce)
            ).fetchone()
        return row is not None

    # -- tokens -----------------------------------------------------------------------
    def save_token(
        self,
        *,
        access_token: str,
        refresh_token: str | None,
        client_id: str,
        scope: str,
        grant: GrantContext | None,
        family_id: str,
        expires_in: float,
        refresh_lifetime: float,
    ) -> None:
        now = time.time()
        with self._tx() as db:
            db.execute(
                "INSERT INTO tokens (access_hash, refresh_hash, client_id, scope, grant_json,"
                " family_id, issued_at, expires_at, refresh_expires_at, refresh_state)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    digest(access_token),
                    digest(refresh_token) if refresh_token else None,
                    client_id,
                    scope,
                    grant.to_json() if grant else None,
                    family_id,
                    now,
                    now + expires_in,
                    now + refresh_lifetime if refresh_token else None,
                    "active" if refresh_token else None,
                ),
            )
        self._count_write()

    def find_token(self, value: str, kind: str | None = None) -> TokenRecord | None:
        """Find by access token (``kind='access_token'``), refresh token, or either."""
        kinds = [kind] if kind else ["access_token", "refresh_token"]
        for which in kinds:
            column = "access_hash" if which == "access_token" else "refresh_hash"
            with self._lock:
                row = self._db.execute(
                    f"SELECT * FROM tokens WHERE {column} = ?",  # noqa: S608 - fixed column names
                    (digest(value),),
                ).fetchone()
            if row is not None:
                return _token_record(row, which)
        return None

    def rotate_refresh(self, token_id: int) -> bool:
        """Mark a refresh token used; ``False`` if it was not active any more."""
        with self._tx() as db:
            cursor = db.execute(
                "UPDATE tokens SET refresh_state = 'rotated' WHERE id = ? AND refresh_state = 'active'",
                (token_id,),
            )
            return cursor.rowcount == 1

    def revoke_access(self, token_id: int) -> None:
        with self._tx() as db:
            db.execute("UPDATE tokens SET access_revoked = 1 WHERE id = ?", (token_id,))

    def revoke_family(self, family_id: str) -> int:
        """Revoke every token of an authorization; returns how many rows changed."""
        with self._tx() as db:
            cursor = db.execute(
                "UPDATE tokens SET access_revoked = 1,"
                " refresh_state = CASE WHEN refresh_state IS NULL THEN NULL ELSE 'revoked' END"
                " WHERE family_id = ?",
                (family_id,),
            )
            return cursor.rowcount

    def active_families(self) -> list[dict[str, Any]]:
        """One row per authorization that still has a usable token (EHR sessions page)."""
        now = time.time()
        with self._lock:
            rows = self._db.execute(
                "SELECT family_id, client_id, scope, grant_json, MIN(issued_at) AS first,"
                " MAX(issued_at) AS last FROM tokens"
                " WHERE (access_revoked = 0 AND expires_at > ?)"
                " OR (refresh_state = 'active' AND refresh_expires_at > ?)"
                " GROUP BY family_id ORDER BY last DESC",
                (now, now),
            ).fetchall()
        result = []
        for row in rows:
            grant = GrantContext.from_json(row["grant_json"]) if row["grant_json"] else None
            result.append(
                {
                    "family_id": row["family_id"],
                    "client_id": row["client_id"],
                    "scope": row["scope"],
                    "grant": grant,
                    "first_issued": row["first"],
                    "last_issued": row["last"],
                }
            )
        return result

    # -- client assertion ids ----------------------------------------------------------
    def remember_jti(self, client_id: str, jti: str, expires_at: float) -> bool:
        """Record an assertion id until it expires; ``False`` if it was seen before."""
        now = time.time()
        with self._tx() as db:
            db.execute("DELETE FROM assertion_ids WHERE expires_at < ?", (now,))
            cursor = db.execute(
                "INSERT OR IGNORE INTO assertion_ids VALUES (?, ?, ?)",
                (client_id, jti, max(expires_at, now)),
            )
            return cursor.rowcount == 1


def _launch_problem(row: sqlite3.Row | None, client_id: str) -> str | None:
    if row is None:
        return "The 'launch' value is unknown to this EHR."
    if row["used"]:
        return "The 'launch' value was already used; launch the app again from the EHR."
    if time.time() >= row["expires_at"]:
        return "The 'launch' value has expired; launch the app again from the EHR."
    if client_id not in orjson.loads(row["client_ids"]):
        return "The 'launch' value was issued for another client."
    return None


def _token_record(row: sqlite3.Row, matched: str) -> TokenRecord:
    return TokenRecord(
        id=row["id"],
        client_id=row["client_id"],
        scope=row["scope"],
        grant=GrantContext.from_json(row["grant_json"]) if row["grant_json"] else None,
        family_id=row["family_id"],
        issued_at=row["issued_at"],
        expires_at=row["expires_at"],
        refresh_expires_at=row["refresh_expires_at"],
        access_revoked=bool(row["access_revoked"]),
        refresh_state=row["refresh_state"],
        matched=matched,
    )
