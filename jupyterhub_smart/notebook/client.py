"""``SMARTClient`` (for notebooks) and ``AsyncSMARTClient`` (for concurrent code).

Both clients share everything except the waiting: the same request policy
(:mod:`.http`), the same scope check (:mod:`.scopecheck`), the same search
parameters and the same flattening. Inputs are validated before anything is
sent: a resource type must look like one (``Observation``), an id must be a
FHIR id (so ``read("Patient", "../admin")`` cannot climb out of the base).

Search parameter values: a list or tuple becomes a comma-separated value
(FHIR's OR: ``code=["8867-4", "29463-7"]``); ``datetime``/``date`` values are
written in ISO 8601; ``None`` values are left out. Names FHIR spells with
characters Python keywords cannot hold (``code:text``) go in ``params={...}``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import date, datetime
from typing import Any

import httpx

from ..smart.fhir_rules import is_fhir_id, is_resource_type, is_search_param_name
from . import everything as _everything
from . import lastn as _lastn
from . import terminology as _terminology
from . import versions as _versions
from . import writes as _writes
from .capabilities import Capabilities, CapabilityCache
from .context import PatientBanner, SMARTContext
from .errors import FHIRError, NoPatientInContext
from .events import DataAccessEvent, EventSink, emit, event_patient
from .http import (
    DEFAULT_MAX_RESPONSE_BYTES,
    DEFAULT_TIMEOUT,
    FHIRHTTP,
    AsyncFHIRHTTP,
    Fetched,
    Head,
    RetryPolicy,
)
from .scopecheck import check_scopes
from .search import DEFAULT_MAX_PAGES, AsyncSearchResult, SearchResult
from .searchcontrols import check_params, include_params, range_params
from .tokens import TokenInfo, TokenProvider

__all__ = ["AsyncSMARTClient", "SMARTClient", "search_params"]

log = logging.getLogger(__name__)


def _check_type(resource_type: str) -> str:
    if not is_resource_type(resource_type):
        raise ValueError(
            f"{str(resource_type)[:80]!r} is not a FHIR resource type (e.g. 'Observation')"
        )
    return resource_type


def _check_id(resource_id: str) -> str:
    if not is_fhir_id(resource_id):
        raise ValueError(
            f"{str(resource_id)[:80]!r} is not a FHIR id (1-64 of A-Z a-z 0-9 - ., not only dots)"
        )
    return resource_id


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    if isinstance(value, (list, tuple, set, frozenset)):
        return ",".join(_value(v) for v in value)
    if isinstance(value, (str, int, float)):
        return str(value)
    raise TypeError(
        f"search values must be text, numbers, dates or lists, not {type(value).__name__}"
    )


def search_params(
    params: Mapping[str, Any] | Iterable[tuple[str, Any]] | None, kwargs: Mapping[str, Any]
) -> list[tuple[str, str]]:
    """Search parameters as ``(name, value)`` pairs, validated and written as FHIR expects."""
    items: list[tuple[str, Any]] = []
    if params is not None:
        items.extend(params.items() if isinstance(params, Mapping) else params)
    items.extend(kwargs.items())
    out: list[tuple[str, str]] = []
    for name, value in items:
        if not is_search_param_name(name):
            raise ValueError(f"{str(name)[:80]!r} is not a search parameter name")
        if value is None:
            continue
        if name in ("_lastUpdated", "_since"):
            out.extend(range_params(name, value))  # a list is a range: each value its own
            continue
        text = _value(value)
        if text == "":
            raise ValueError(f"search parameter {name!r} has an empty value")
        out.append((name, text))
    check_params(out)
    return out


def _date_param(prefix: str, value: str | date | datetime) -> str:
    return prefix + (value.isoformat() if isinstance(value, (date, datetime)) else str(value))


class _Core:
    """What both clients share: options, scope checks, parameters, events."""

    def __init__(
        self,
        provider: TokenProvider,
        *,
        fhir_base_url: str | None,
        page_size: int | None,
        check_scopes: bool,
        event_sink: EventSink | None,
        progress: bool | None,
        max_pages: int,
    ) -> None:
        if page_size is not None and page_size < 1:
            raise ValueError("page_size must be at least 1 (or None for the server's default)")
        if isinstance(max_pages, bool) or not isinstance(max_pages, int) or max_pages < 1:
            raise ValueError("max_pages must be a whole number of at least 1")
        self.provider = provider
        self.default_base = fhir_base_url.rstrip("/") if fhir_base_url else None
        self.page_size = page_size
        self.check_scopes = check_scopes
        self.event_sink = event_sink
        self.progress = progress
        #: Pages one search reads at most (a server minting ``next`` links forever).
        self.max_pages = max_pages
        #: The token of the last request (its launch context names the patient of
        #: a refused request's event, which has no response to carry it).
        self._last_token: TokenInfo | None = None
        #: ETag and body of recent reads (conditional re-reads, :mod:`.versions`).
        self.etags = _versions.ETagCache()
        #: Terminology answers of this session (:mod:`.terminology`).
        self.terminology = _terminology.TerminologyCache()

    def _context(self, info: TokenInfo) -> SMARTContext:
        return SMARTContext.from_token(info, self.default_base)

    def _check(
        self,
        info: TokenInfo,
        resource_type: str,
        interaction: str,
        params: Sequence[tuple[str, str]] = (),
        resource_id: str | None = None,
    ) -> None:
        self._last_token = info
        if self.check_scopes:
            check_scopes(
                info.scopes,
                resource_type,
                interaction,
                params,
                resource_id=resource_id,
                patient=info.patient,
            )

    def _search_params(
        self, params: Mapping[str, Any] | Iterable[tuple[str, Any]] | None, kwargs: dict[str, Any]
    ) -> list[tuple[str, str]]:
        pairs = search_params(params, kwargs)
        if self.page_size is not None and not any(k == "_count" for k, _ in pairs):
            pairs.append(("_count", str(self.page_size)))
        return pairs

    def _observation_params(
        self,
        info: TokenInfo,
        code: str | Iterable[str] | None,
        since: str | date | datetime | None,
        until: str | date | datetime | None,
        category: str | None,
        patient: str | None,
    ) -> list[tuple[str, str]]:
        who = patient or info.patient
        if who is None:
            raise NoPatientInContext("observations()")
        params: list[tuple[str, Any]] = [("patient", who)]
        if code is not None:
            params.append(("code", code if isinstance(code, str) else list(code)))
        if category is not None:
            params.append(("category", category))
        if since is not None:
            params.append(("date", _date_param("ge", since)))
        if until is not None:
            params.append(("date", _date_param("lt", until)))
        params.append(("_sort", "date"))
        return self._search_params(params, {})

    def _emit(
        self,
        fetched: Fetched,
        action: str,
        resource_type: str,
        *,
        resource_id: str | None = None,
        params: tuple[tuple[str, str], ...] = (),
    ) -> None:
        data = fetched.data
        if data.get("resourceType") == "Bundle":
            entries = data.get("entry")
            count = len(entries) if isinstance(entries, list) else 0
        else:
            count = 1 if action in ("read", "vread") else 0
        self._emit_count(
            fetched, count, action, resource_type, resource_id=resource_id, params=params
        )

    def _emit_count(
        self,
        fetched: Fetched,
        count: int,
        action: str,
        resource_type: str,
        *,
        resource_id: str | None = None,
        params: tuple[tuple[str, str], ...] = (),
    ) -> None:
        """Report an answer that returned ``count`` resources."""
        self._last_token = fetched.token
        if self.event_sink is None:
            return
        emit(
            self.event_sink,
            DataAccessEvent(
                action=action,
                resource_type=resource_type,
                fhir_base_url=fetched.token.fhir_base_url or self.default_base or "",
                url=fetched.url,
                status=fetched.status,
                count=count,
                patient=event_patient(fetched.token.patient, resource_type, resource_id, params),
                resource_id=resource_id,
                params=params,
            ),
        )

    def _emit_refused(
        self,
        error: FHIRError,
        action: str,
        resource_type: str,
        *,
        resource_id: str | None = None,
        params: tuple[tuple[str, str], ...] = (),
    ) -> None:
        """Report a request the FHIR server answered with an error (403, 404...).

        "Was it allowed" is half of what an audit trail is for: a refused read
        is reported like a served one, with its status and no resources.
        Requests that got no answer (connection errors) or were never sent
        (a token that would leave its server, a scope check) are not reported.
        """
        if self.event_sink is None or error.status is None or error.status < 400:
            return
        token = self._last_token
        launched = token.patient if token is not None else None
        emit(
            self.event_sink,
            DataAccessEvent(
                action=action,
                resource_type=resource_type,
                fhir_base_url=(token.fhir_base_url if token else None) or self.default_base or "",
                url=error.url or "",
                status=error.status,
                count=0,
                patient=event_patient(launched, resource_type, resource_id, params),
                resource_id=resource_id,
                params=params,
            ),
        )

    def _sink_flush(self) -> Callable[[], Any] | None:
        flush = getattr(self.event_sink, "flush", None)
        return flush if callable(flush) else None

    def _flushed(self, done: Any) -> None:
        if done is False:
            log.warning(
                "some data-access reports are not delivered yet; they are retried in the "
                "background and at exit"
            )


class _PageReports:
    """The data-access events of one search's pages (shared by both clients' page getters).

    A page fetched unparsed (``raw``) is reported by whoever parses it, with its
    number of entries (``served``), or its error (``refused``): so the pages of a
    search are reported in the order they were requested even when the next
    page's request goes out before this one is parsed.
    """

    def __init__(self, core: _Core, resource_type: str, pairs: list[tuple[str, str]]) -> None:
        self.core = core
        self.resource_type = resource_type
        self.pairs = pairs

    def used(self, params: list[tuple[str, str]] | None) -> tuple[tuple[str, str], ...]:
        return tuple(params if params is not None else self.pairs)

    def served(
        self, fetched: Fetched, entries: int, action: str, params: list[tuple[str, str]] | None
    ) -> None:
        """Report a page read unparsed, now that its ``entries`` are counted."""
        self.core._emit_count(
            fetched, entries, action, self.resource_type, params=self.used(params)
        )

    def refused(
        self, error: BaseException, action: str, params: list[tuple[str, str]] | None
    ) -> None:
        """Report a page request the server answered with an error (others are not reported)."""
        if isinstance(error, FHIRError):
            self.core._emit_refused(error, action, self.resource_type, params=self.used(params))


class _PageGet(_PageReports):
    """``get(path_or_url, params, action)``: one page, parsed and reported; ``raw``: unparsed."""

    core: SMARTClient

    def __call__(
        self, path_or_url: str, params: list[tuple[str, str]] | None, action: str
    ) -> Fetched:
        try:
            fetched = self.core.http.get(path_or_url, params)
        except FHIRError as exc:
            self.refused(exc, action, params)
            raise
        self.core._emit(fetched, action, self.resource_type, params=self.used(params))
        return fetched

    def raw(
        self,
        path_or_url: str,
        params: list[tuple[str, str]] | None,
        action: str,
        head: Head | None = None,
        sent: Callable[[], None] | None = None,
    ) -> Fetched:
        """The page as read (``Fetched.body``), not yet reported: see :meth:`served`.

        ``head`` sees the page's first bytes as they arrive (the pager reads the
        ``next`` link there and asks for the next page before this one has all
        arrived); ``sent()`` is called when the request is on the wire.
        """
        return self.core.http.get(path_or_url, params, parse=False, head=head, sent=sent)


class _AsyncPageGet(_PageReports):
    """Async twin of :class:`_PageGet`."""

    core: AsyncSMARTClient

    async def __call__(
        self, path_or_url: str, params: list[tuple[str, str]] | None, action: str
    ) -> Fetched:
        try:
            fetched = await self.core.http.get(path_or_url, params)
        except FHIRError as exc:
            self.refused(exc, action, params)
            raise
        self.core._emit(fetched, action, self.resource_type, params=self.used(params))
        return fetched

    async def raw(
        self,
        path_or_url: str,
        params: list[tuple[str, str]] | None,
        action: str,
        head: Head | None = None,
    ) -> Fetched:
        return await self.core.http.get(path_or_url, params, parse=False, head=head)


class SMARTClient(_Core):
    """Blocking FHIR client for notebooks; get one from :func:`~.connect.connect`.

    Thread-safe: threads may share one client (one keep-alive connection pool,
    one token cache).
    """

    def __init__(
        self,
        provider: TokenProvider,
        *,
        fhir_base_url: str | None = None,
        retry: RetryPolicy | None = None,
        timeout: httpx.Timeout | float = DEFAULT_TIMEOUT,
        transport: httpx.BaseTransport | None = None,
        page_size: int | None = 1000,
        check_scopes: bool = True,
        event_sink: EventSink | None = None,
        progress: bool | None = None,
        allow_http: bool = False,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
        max_pages: int = DEFAULT_MAX_PAGES,
    ) -> None:
        super().__init__(
            provider,
            fhir_base_url=fhir_base_url,
            page_size=page_size,
            check_scopes=check_scopes,
            event_sink=event_sink,
            progress=progress,
            max_pages=max_pages,
        )
        self.allow_http = allow_http
        self.http = FHIRHTTP(
            provider,
            default_base=self.default_base,
            retry=retry,
            timeout=timeout,
            transport=transport,
            allow_http=allow_http,
            max_response_bytes=max_response_bytes,
        )
        self._capabilities = CapabilityCache(lambda: self.http.get("metadata").data)

    @property
    def capabilities(self) -> Capabilities:
        """The server's CapabilityStatement, read at first use and kept (``GET metadata``)."""
        return self._capabilities.get()

    # -- context ---------------------------------------------------------------------
    @property
    def context(self) -> SMARTContext:
        """Patient, encounter, fhirUser, granted scopes, FHIR base (as of the current token)."""
        return self._context(self.provider.get())

    @property
    def patient(self) -> dict[str, Any]:
        """The launched patient's Patient resource (read now, so it follows a new launch)."""
        patient = self.provider.get().patient
        if patient is None:
            raise NoPatientInContext("client.patient")
        return self.read("Patient", patient)

    def patient_banner(self) -> PatientBanner:
        """The patient banner (name, birth date, gender, MRN); renders as HTML in Jupyter."""
        return PatientBanner.from_resource(self.patient)

    # -- FHIR ------------------------------------------------------------------------
    def read(self, resource_type: str, resource_id: str) -> dict[str, Any]:
        """``GET [base]/{type}/{id}``: the resource as a dict (FHIRError 404 if unknown).

        Conditional: a re-read sends the last ``ETag`` (``If-None-Match``) and an
        unchanged resource costs one ``304 Not Modified``.
        """
        _check_type(resource_type)
        _check_id(resource_id)
        self._check(self.provider.get(), resource_type, "r", resource_id=resource_id)
        return _versions.conditional_read(self, resource_type, resource_id)

    def vread(self, resource_type: str, resource_id: str, version: str | int) -> dict[str, Any]:
        """``GET [base]/{type}/{id}/_history/{version}``: one version of a resource."""
        return _versions.vread(self, resource_type, resource_id, version)

    def history(
        self,
        resource_type: str,
        id: str | None = None,
        since: str | date | datetime | None = None,
    ) -> _versions.HistoryResult:
        """Versions of one resource (``id``) or of a type, newest first, changed since ``since``.

        ``.to_pandas()`` flattens every version present; ``.changes()`` lists
        each version with its method (POST, PUT, DELETE) and time.
        """
        return _versions.history(self, resource_type, id, since)

    def everything(
        self,
        patient: str | None = None,
        since: str | date | datetime | None = None,
        types: Iterable[str] | None = None,
    ) -> _everything.EverythingResult:
        """The patient's whole record (``Patient/$everything``); ``.to_frames()`` per type.

        ``patient`` defaults to the launched patient; ``since`` keeps what
        changed since then; ``types`` limits the resource types.
        """
        return _everything.everything(self, patient, since, types)

    def search(
        self,
        resource_type: str,
        params: Mapping[str, Any] | Iterable[tuple[str, Any]] | None = None,
        *,
        include: Iterable[str] | None = None,
        revinclude: Iterable[str] | None = None,
        include_iterate: Iterable[str] | None = None,
        revinclude_iterate: Iterable[str] | None = None,
        progress: bool | None = None,
        **kwargs: Any,
    ) -> SearchResult:
        """A lazy search: ``for r in ...``, ``len(...)``, ``.to_pandas()``, ``.to_frames()``.

        ``include=["Observation:encounter"]`` / ``revinclude=["Observation:patient"]``
        add the referenced (referring) resources: they never mix into the
        match frame; ``.to_frames()`` gives one frame per type. Search
        controls go as keyword arguments (``_sort="-date"``, ``_elements=[...]``,
        ``_summary="data"``, ``_lastUpdated=("ge2025-01-01", "lt2025-02-01")``);
        chained and ``_has`` parameters in ``params={"patient.family": ...}``.
        """
        _check_type(resource_type)
        extra = include_params(include, revinclude, include_iterate, revinclude_iterate)
        pairs = self._search_params(
            [*(params.items() if isinstance(params, Mapping) else params or []), *extra], kwargs
        )
        if extra:
            capabilities = self.capabilities
            for name, value in extra:
                capabilities.require_include(resource_type, value, name.startswith("_revinclude"))
        self._check(self.provider.get(), resource_type, "s", pairs)
        return SearchResult(
            self._search_get(resource_type, pairs),
            resource_type,
            pairs,
            progress=self.progress if progress is None else progress,
            max_pages=self.max_pages,
        )

    def _search_get(self, resource_type: str, pairs: list[tuple[str, str]]) -> _PageGet:
        """The request function of one search; ``next`` pages report the search's parameters."""
        return _PageGet(self, resource_type, pairs)

    def observations(
        self,
        code: str | Iterable[str] | None = None,
        since: str | date | datetime | None = None,
        *,
        until: str | date | datetime | None = None,
        category: str | None = None,
        patient: str | None = None,
        progress: bool | None = None,
        lastn: int | None = None,
    ) -> SearchResult:
        """The patient's Observations as a time series (oldest first), one row per value.

        ``code`` is a LOINC code (``"8867-4"`` heart rate, ``"85354-9"`` blood
        pressure panel, ``"29463-7"`` weight) or ``system|code``, or a list of
        them; ``since``/``until`` bound ``effective``; ``patient`` defaults to
        the launched patient. ``lastn=N`` keeps the N most recent per code
        (``$lastn`` where the server declares it; ``result.meta`` says which).
        """
        info = self.provider.get()
        params = self._observation_params(info, code, since, until, category, patient)
        self._check(info, "Observation", "s", params)
        if lastn is not None:
            return _lastn.observations_lastn(self, info, params, lastn, progress)
        return SearchResult(
            self._search_get("Observation", params),
            "Observation",
            params,
            progress=self.progress if progress is None else progress,
            max_pages=self.max_pages,
        )

    # -- writes ----------------------------------------------------------------------
    def create(
        self,
        resource: Mapping[str, Any],
        *,
        if_none_exist: str | Mapping[str, Any] | None = None,
        prefer: str = "representation",
    ) -> dict[str, Any]:
        """``POST`` a new resource; returns it as stored (server id and version).

        ``if_none_exist`` (``"identifier=sys|123"`` or a dict) makes it
        conditional: an existing match is returned instead of a duplicate.
        """
        return _writes.create(self, resource, if_none_exist, prefer)

    def update(
        self,
        resource: Mapping[str, Any],
        *,
        if_match: str | int | None = _writes.AUTO,
        prefer: str = "representation",
    ) -> dict[str, Any]:
        """``PUT`` a changed resource, only if nobody changed it since (``If-Match``).

        By default the lock is the resource's own ``meta.versionId``: a stale
        copy fails with a 412 FHIRError instead of overwriting another change.
        ``if_match=None`` writes unconditionally.
        """
        return _writes.update(self, resource, if_match, prefer)

    def patch(
        self,
        resource_type: str,
        resource_id: str,
        operations: list[dict[str, Any]],
        *,
        if_match: str | int | None = None,
        prefer: str = "representation",
    ) -> dict[str, Any]:
        """Apply a JSON Patch (``[{"op": "replace", "path": "/status", "value": ...}]``)."""
        return _writes.patch(self, resource_type, resource_id, operations, if_match, prefer)

    def delete(
        self, resource_type: str, resource_id: str, *, if_match: str | int | None = None
    ) -> None:
        """``DELETE`` a resource (optionally only at version ``if_match``)."""
        _writes.delete(self, resource_type, resource_id, if_match)

    def transaction(
        self, bundle_or_entries: Mapping[str, Any] | Iterable[Mapping[str, Any]]
    ) -> _writes.BundleResult:
        """All entries or none; per-entry results. An entry refused fails the whole with FHIRError."""
        return _writes.send_bundle(self, bundle_or_entries, "transaction")

    def batch(
        self, bundle_or_entries: Mapping[str, Any] | Iterable[Mapping[str, Any]]
    ) -> _writes.BundleResult:
        """Each entry on its own; ``result.failed`` lists the entries that failed."""
        return _writes.send_bundle(self, bundle_or_entries, "batch")

    # -- terminology -----------------------------------------------------------------
    def lookup(self, system: str, code: str) -> dict[str, Any]:
        """A code's display and name (``CodeSystem/$lookup``), cached for the session."""
        return _terminology.lookup(self, system, code)

    def expand(self, valueset_url: str, filter: str | None = None) -> list[dict[str, Any]]:
        """A ValueSet's codes, optionally filtered (``ValueSet/$expand``), cached for the session."""
        return _terminology.expand(self, valueset_url, filter)

    def bulk_export(self, out: str, **kwargs: Any) -> Any:
        """A Bulk Data export with this session's own token, into Parquet under ``out``.

        For the patient- or group-level exports the EHR allows this user
        (``patient_level=True`` or ``group="id"``); keyword arguments are those
        of :func:`jupyterhub_smart.bulk.export`. Returns its ``ExportResult``
        (``.to_pandas("Observation")``, ``.duckdb()``). Plain http to a host other
        than loopback needs ``allow_insecure_http=True``, which defaults to this
        client's ``allow_http``.
        """
        from ..bulk import export

        kwargs.setdefault("allow_insecure_http", self.allow_http)
        base = self.provider.get().fhir_base_url or self.default_base
        if not base:
            raise ValueError("bulk_export needs the FHIR base URL of this session")
        return export(fhir_url=base, out=out, auth=self.httpx_auth(), **kwargs)

    # -- interop and lifetime --------------------------------------------------------
    def httpx_auth(self) -> httpx.Auth:
        """An ``httpx.Auth`` that injects this session's fresh tokens (see :mod:`.auth`).

        Its requests are reported to this client's event sink, like the client's own.
        """
        from .auth import SMARTAuth

        return SMARTAuth(
            self.provider,
            fhir_base_url=self.default_base,
            allow_http=self.allow_http,
            event_sink=self.event_sink,
        )

    def requests_auth(self) -> Any:
        """A ``requests`` auth object that injects fresh tokens and reports to the event sink."""
        from .auth import SMARTRequestsAuth

        return SMARTRequestsAuth(
            self.provider,
            fhir_base_url=self.default_base,
            allow_http=self.allow_http,
            event_sink=self.event_sink,
        )

    def close(self) -> None:
        """Close connections, and flush the event sink (if it has ``flush()``: the hub reporter)."""
        self.http.close()
        close = getattr(self.provider, "close", None)
        if callable(close):
            close()
        flush = self._sink_flush()
        if flush is not None:
            self._flushed(flush())

    def __enter__(self) -> SMARTClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<SMARTClient {self.default_base or '(FHIR base from the hub)'}>"


class AsyncSMARTClient(_Core):
    """Asyncio twin of :class:`SMARTClient` (``await client.read(...)``)."""

    def __init__(
        self,
        provider: TokenProvider,
        *,
        fhir_base_url: str | None = None,
        retry: RetryPolicy | None = None,
        timeout: httpx.Timeout | float = DEFAULT_TIMEOUT,
        transport: httpx.AsyncBaseTransport | None = None,
        page_size: int | None = 1000,
        check_scopes: bool = True,
        event_sink: EventSink | None = None,
        max_connections: int = 20,
        allow_http: bool = False,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
        max_pages: int = DEFAULT_MAX_PAGES,
    ) -> None:
        super().__init__(
            provider,
            fhir_base_url=fhir_base_url,
            page_size=page_size,
            check_scopes=check_scopes,
            event_sink=event_sink,
            progress=False,
            max_pages=max_pages,
        )
        self.http = AsyncFHIRHTTP(
            provider,
            default_base=self.default_base,
            retry=retry,
            timeout=timeout,
            transport=transport,
            max_connections=max_connections,
            allow_http=allow_http,
            max_response_bytes=max_response_bytes,
        )

    async def get_context(self) -> SMARTContext:
        return self._context(await self.provider.aget())

    async def get_patient(self) -> dict[str, Any]:
        patient = (await self.provider.aget()).patient
        if patient is None:
            raise NoPatientInContext("get_patient()")
        return await self.read("Patient", patient)

    async def patient_banner(self) -> PatientBanner:
        return PatientBanner.from_resource(await self.get_patient())

    async def read(self, resource_type: str, resource_id: str) -> dict[str, Any]:
        _check_type(resource_type)
        _check_id(resource_id)
        self._check(await self.provider.aget(), resource_type, "r", resource_id=resource_id)
        try:
            fetched = await self.http.get(f"{resource_type}/{resource_id}")
        except FHIRError as exc:
            self._emit_refused(exc, "read", resource_type, resource_id=resource_id)
            raise
        self._emit(fetched, "read", resource_type, resource_id=resource_id)
        return fetched.data

    def _search_get(self, resource_type: str, pairs: list[tuple[str, str]]) -> _AsyncPageGet:
        return _AsyncPageGet(self, resource_type, pairs)

    async def search(
        self,
        resource_type: str,
        params: Mapping[str, Any] | Iterable[tuple[str, Any]] | None = None,
        **kwargs: Any,
    ) -> AsyncSearchResult:
        """Checks scopes now (hence ``await``); the pages are fetched when used."""
        _check_type(resource_type)
        pairs = self._search_params(params, kwargs)
        self._check(await self.provider.aget(), resource_type, "s", pairs)
        return AsyncSearchResult(
            self._search_get(resource_type, pairs), resource_type, pairs, max_pages=self.max_pages
        )

    async def observations(
        self,
        code: str | Iterable[str] | None = None,
        since: str | date | datetime | None = None,
        *,
        until: str | date | datetime | None = None,
        category: str | None = None,
        patient: str | None = None,
    ) -> AsyncSearchResult:
        info = await self.provider.aget()
        params = self._observation_params(info, code, since, until, category, patient)
        self._check(info, "Observation", "s", params)
        return AsyncSearchResult(
            self._search_get("Observation", params),
            "Observation",
            params,
            max_pages=self.max_pages,
        )

    async def aclose(self) -> None:
        """Close connections, and flush the event sink in a worker thread (it blocks)."""
        await self.http.aclose()
        close = getattr(self.provider, "close", None)
        if callable(close):
            close()
        flush = self._sink_flush()
        if flush is not None:
            self._flushed(await asyncio.get_running_loop().run_in_executor(None, flush))

    async def __aenter__(self) -> AsyncSMARTClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
