"""``everything()``: a patient's whole record (``Patient/$everything``), paged, into frames.

The result pages through ``Patient/{id}/$everything`` like a search (same
paging safety, same prefetching, same data-access events, reported as an
operation) and ``to_frames()`` flattens each resource type through its
built-in view into one DataFrame per type, keyed by type name, each with a
``key`` column (``Encounter/123``) to join references on.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from datetime import date, datetime
from typing import TYPE_CHECKING, Any

from ..smart.fhir_rules import is_resource_type
from .errors import NoPatientInContext
from .search import SearchResult, build_frames
from .searchcontrols import range_params

if TYPE_CHECKING:
    import pandas as pd

    from .client import SMARTClient

__all__ = ["EverythingResult"]


class EverythingResult(SearchResult):
    """Every resource of one patient's record: iterate, ``to_frames()``, ``counts()``."""

    def _page_resources(self, bundle: dict[str, Any], url: str) -> Iterator[dict[str, Any]]:
        for _kind, resource in self._typed_entries(bundle, url):
            yield resource

    def _typed_entries(
        self, bundle: dict[str, Any], url: str
    ) -> Iterator[tuple[str, dict[str, Any]]]:
        for entry in bundle.get("entry") or []:
            resource = entry.get("resource") if isinstance(entry, dict) else None
            kind = resource.get("resourceType") if isinstance(resource, dict) else None
            search = entry.get("search") if isinstance(entry, dict) else None
            mode = search.get("mode") if isinstance(search, dict) else None
            if (
                isinstance(kind, str)
                and kind != "OperationOutcome"
                and mode in (None, "match", "include")
            ):
                yield kind, resource  # type: ignore[misc]

    def to_frames(self, *, strict: bool | None = None) -> dict[str, pd.DataFrame]:
        """One DataFrame per resource type present, through the built-in views (see :mod:`.flatten`)."""
        return build_frames("", self._walk(strict), self._typed_entries)

    def to_pandas(self, *args: Any, **kwargs: Any) -> pd.DataFrame:
        raise TypeError("a patient's record holds many resource types: use .to_frames()[type]")


def everything(
    client: SMARTClient,
    patient: str | None,
    since: str | date | datetime | None,
    types: Iterable[str] | None,
) -> EverythingResult:
    from .client import _check_id

    info = client.provider.get()
    who = patient or info.patient
    if who is None:
        raise NoPatientInContext("everything()")
    _check_id(who)
    params = range_params("_since", since) if since is not None else []
    if types is not None:
        wanted = [types] if isinstance(types, str) else list(types)
        bad = [t for t in wanted if not is_resource_type(t)]
        if bad or not wanted:
            raise ValueError(
                f"types must be resource type names (e.g. ['Observation']), not {bad[:3]}"
            )
        params.append(("_type", ",".join(wanted)))
    if client.page_size is not None:
        params.append(("_count", str(client.page_size)))
    client.capabilities.require_operation("Patient", "everything")
    client._check(info, "Patient", "r", resource_id=who)
    return EverythingResult(
        client._search_get("Patient", params),
        "Patient",
        params,
        progress=client.progress,
        max_pages=client.max_pages,
        path=f"Patient/{who}/$everything",
        action="operation",
    )
