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
* the row has not expired and still has its OAuth client.

Anything else falls back to JupyterHub's own ``find``. The key is the
SHA-256 of the token, never the token. The one thing only a query would see
is a token deleted by *another* process writing the hub's database (tooling,
an admin's SQL): the hub then accepts it for at most ``ttl`` seconds more, 10
by default. A query by primary key on every call would close that window, but
profiled at 300 requests/s it took 17 % of the hub's CPU, as much as the rest
of JupyterHub's authentication. Each find costs about 2.5 ms of the hub's CPU
on PostgreSQL: with 200 users at 500 requests/s (``BENCH_DB=postgresql python
-m bench production``) a 5 s ttl made 40 finds a second, and two runs had 7
and 22 of 30,000 calls wait out ``refresh_wait`` in the refresh waves, where
one run each with 10 s and with 30 s had none (few runs, wide spread).
JupyterHub's own single-user servers keep a token they checked for 5 minutes.
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from typing import Any

from jupyterhub import orm
from sqlalchemy import inspect

__all__ = ["APITokenLookup"]


class APITokenLookup:
    """Recently found API tokens, checked again on every use (module docstring)."""

    def __init__(self, ttl: float = 10.0, max_entries: int = 10000) -> None:
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
        return expires_at is None or expires_at >= orm.APIToken.now()
