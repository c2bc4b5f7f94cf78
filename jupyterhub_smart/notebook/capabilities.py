"""What the FHIR server says it can do: its CapabilityStatement, read once per client.

A request the server does not declare is refused here, before anything is
sent, with the list of what it does declare (``OperationNotDeclared``):
better than a bare 400/404 from the server, and some servers answer an
unknown operation with a misleading 200 (a search that ignored the
``$operation`` segment). The statement is read at the first call that needs
it (``GET [base]/metadata``) and kept for the client's life.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from .errors import OperationNotDeclared, TerminologyUnavailable

__all__ = ["Capabilities", "CapabilityCache"]


def _names(items: Any, key: str) -> list[str]:
    return [str(i[key]) for i in items or [] if isinstance(i, dict) and isinstance(i.get(key), str)]


class Capabilities:
    """The server part (``rest[mode=server]``) of a CapabilityStatement, as sets."""

    def __init__(self, statement: dict[str, Any]) -> None:
        self.statement = statement
        rest = [r for r in statement.get("rest") or [] if isinstance(r, dict)]
        server = next((r for r in rest if r.get("mode") == "server"), rest[0] if rest else {})
        self.resources: dict[str, dict[str, Any]] = {
            r["type"]: r
            for r in server.get("resource") or []
            if isinstance(r, dict) and isinstance(r.get("type"), str)
        }
        self.system_interactions = set(_names(server.get("interaction"), "code"))
        self.system_operations = set(_names(server.get("operation"), "name"))

    def interactions(self, resource_type: str) -> set[str]:
        return set(_names(self.resources.get(resource_type, {}).get("interaction"), "code"))

    def operations(self, resource_type: str) -> set[str]:
        return set(_names(self.resources.get(resource_type, {}).get("operation"), "name"))

    def includes(self, resource_type: str, reverse: bool = False) -> list[str]:
        element = "searchRevInclude" if reverse else "searchInclude"
        values = self.resources.get(resource_type, {}).get(element) or []
        return [v for v in values if isinstance(v, str)]

    def has_operation(self, resource_type: str, name: str) -> bool:
        return name in self.operations(resource_type)

    def _declared(self, resource_type: str) -> list[str]:
        return sorted(self.interactions(resource_type)) + sorted(
            f"${o}" for o in self.operations(resource_type)
        )

    def require_interaction(self, resource_type: str, code: str) -> None:
        """Refuse ``code`` (``update``, ``history-instance``...) unless declared for the type."""
        if code in self.interactions(resource_type):
            return
        declared = self._declared(resource_type)
        raise OperationNotDeclared(
            f"Not sent: the FHIR server does not declare '{code}' for {resource_type} in its "
            f"CapabilityStatement; for {resource_type} it declares "
            f"{', '.join(declared) if declared else 'nothing (the type is not listed)'}.",
            declared=declared,
        )

    def require_system(self, code: str) -> None:
        """Refuse a system-level interaction (``transaction``, ``batch``) unless declared."""
        if code in self.system_interactions:
            return
        declared = sorted(self.system_interactions)
        raise OperationNotDeclared(
            f"Not sent: the FHIR server does not declare '{code}' at its base; it declares "
            f"{', '.join(declared) if declared else 'no system-level interactions'}.",
            declared=declared,
        )

    def require_operation(self, resource_type: str, name: str) -> None:
        """Refuse ``$name`` on a type unless declared there (or at system level)."""
        if name in self.operations(resource_type) or name in self.system_operations:
            return
        declared = self._declared(resource_type)
        error = (
            TerminologyUnavailable
            if resource_type in ("CodeSystem", "ValueSet")
            else OperationNotDeclared
        )
        what = (
            "this FHIR server has no terminology service, or does not declare it: "
            if error is TerminologyUnavailable
            else ""
        )
        raise error(
            f"Not sent: {what}the server's CapabilityStatement does not declare ${name} on "
            f"{resource_type}; for {resource_type} it declares "
            f"{', '.join(declared) if declared else 'nothing (the type is not listed)'}.",
            declared=declared,
        )

    def require_include(self, resource_type: str, value: str, reverse: bool) -> None:
        """Refuse an ``_include``/``_revinclude`` the server does not list for the type.

        A server that lists none for the type is not judged (many leave the
        element out); one that lists some is taken at its word.
        """
        target_type = value.split(":", 1)[0] if reverse else resource_type
        declared = self.includes(resource_type, reverse)
        if not declared or ":".join(value.split(":")[:2]) in declared:
            return
        name = "_revinclude" if reverse else "_include"
        raise OperationNotDeclared(
            f"Not sent: {name}={value} is not among the {name}s the server declares for "
            f"{resource_type} searches ({', '.join(declared)}); {target_type} resources may "
            "still be searched on their own.",
            declared=declared,
        )


class CapabilityCache:
    """The client's one read of ``metadata`` (thread-safe; retried after a failure)."""

    def __init__(self, fetch: Callable[[], dict[str, Any]]) -> None:
        self._fetch = fetch
        self._value: Capabilities | None = None
        self._lock = threading.Lock()

    def get(self) -> Capabilities:
        with self._lock:
            if self._value is None:
                self._value = Capabilities(self._fetch())
            return self._value
