"""JupyterHub's API-token lookup for the token API, without a database query on every call.

Kernels call the token API many times a minute with the same API token.
JupyterHub finds the token by a query on its prefix and a hash comparison
(``orm.APIToken.find``); profiled under load that query and the ORM rows it
builds were about 40 % of the hub's CPU per token API call. This keeps, per
token, the ``APIToken`` row JupyterHub found, for ``ttl`` seconds, and on the
next call checks the same things JupyterHub does, without the query:

* the row is still in JupyterHub's session (a token deleted through the REST
  API, by a logout or with its user is gone from it at the commit);
* the token matches the row's hash (``APIToken.match``, as JupyterHub checks);
* the row has not expired and still has its OAuth client;
* the row is still in the database: one query by primary key, with no ORM
  object built (a token deleted by *another* process writing the hub's
  database, e.g. ``jupyterhub token`` tooling or an admin's SQL, is refused
  at its next use).

Anything else falls back to JupyterHub's own ``find``. The key is the
SHA-256 of the token, never the token.
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from typing import Any

from jupyterhub import orm
from sqlalchemy import inspect, select

__all__ = ["APITokenLookup"]


class APITokenLookup:
    """Recently found API tokens, checked again on every use (module docstring)."""

    def __init__(self, ttl: float = 30.0, max_entries: int = 10000) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self._found: OrderedDict[str, tuple[Any, float]] = OrderedDict()

    def find(self, db: Any, token: str) -> Any:
        """JupyterHub's ``APIToken`` row for ``token``, or None (as ``APIToken.find``)."""
        key = hashlib.sha256(token.encode("utf-8")).hexdigest()
        now = time.monotonic()
        hit = self._found.get(key)
        if hit is not None:
            orm_token, until = hit
            if now < until and self._still_valid(db, orm_token, token):
                return orm_token
            del self._found[key]
        orm_token = orm.APIToken.find(db, token)
        if orm_token is not None:
            self._found[key] = (orm_token, now + self.ttl)
            while len(self._found) > self.max_entries:
                self._found.popitem(last=False)
        return orm_token

    @staticmethod
    def _still_valid(db: Any, orm_token: Any, token: str) -> bool:
        """What ``APIToken.find`` would check, on the row JupyterHub's session holds."""
        state = inspect(orm_token)
        if not state.persistent or state.session is not db:
            return False  # deleted (or the session was replaced)
        if not orm_token.client_id or not orm_token.match(token):
            return False
        expires_at = orm_token.expires_at
        if expires_at is not None and expires_at < orm.APIToken.now():
            return False
        still_there = select(orm.APIToken.id).where(orm.APIToken.id == orm_token.id)
        return db.execute(still_there).first() is not None
