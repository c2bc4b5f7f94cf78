"""Lazy search results: follow every ``next`` link, count with ``_summary=count``, build frames.

Nothing is fetched until the result is used. Iterating yields resources page
by page (a 100,000-resource search never sits in memory as JSON); ``len()``
asks the server for ``_summary=count`` (one cheap request, cached);
``to_pandas()``/``to_arrow()`` stream the pages into a :class:`TableBuilder`,
which flattens them with the type's built-in SQL on FHIR view or the
``view=`` given (a ViewDefinition dict, a path to one, or a built-in name).

Latency: the ``next`` link is read first and the next page's request is in
flight while the current page is parsed and flattened (a thread for the sync
client; a task, with the flattening in a worker thread, for the async one),
so a search costs about pages x server latency. Results and order are the
same as fetching one page after the other.

Paging safety: every ``next`` URL goes through the HTTP layer's base check
(the token never leaves its FHIR server), and a ``next`` link seen before
stops the search with an error instead of looping forever (fhir-py#47), and
so does a server that keeps minting new ``next`` links: a search reads at
most ``max_pages`` pages.

Completeness: when the pages end (no ``next`` link) before the number of
matches the server's ``Bundle.total`` announced, the result is short. That is
an :class:`IncompleteSearchWarning` naming both numbers, or an
:class:`IncompleteSearch` error with ``strict=True``: never a silently
truncated frame.

Only entries with ``search.mode`` ``match`` (or none) of the searched type
become rows of ``to_pandas()``: ``_include``-d resources never mix into the
match frame. ``to_frames()`` gives one frame per type, included types too.
An OperationOutcome with mode ``outcome`` (a server's warning) is logged.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import sys
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import TYPE_CHECKING, Any

from jupyterhub_smart.views.gcpause import gc_paused

from .arrowpage import ArrowPages
from .context import in_notebook
from .errors import FHIRError, IncompleteSearch, IncompleteSearchWarning
from .flatten import TableBuilder, ViewSpec
from .http import Fetched
from .pager import AsyncPager, Page, SyncPager, check_bundle, next_link

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa

__all__ = [
    "DEFAULT_MAX_PAGES",
    "AsyncSearchResult",
    "SearchResult",
    "bundle_entries",
    "next_link",
]

log = logging.getLogger(__name__)

#: ``(path_or_url, params, action) -> Fetched``; the client's request method.
SyncGet = Callable[[str, "list[tuple[str, str]] | None", str], Fetched]
AsyncGet = Callable[[str, "list[tuple[str, str]] | None", str], Awaitable[Fetched]]
#: Parameters that shape pages, not matches: dropped for ``_summary=count``.
_PAGING = frozenset({"_count", "_sort", "_elements", "_include", "_revinclude", "_summary"})
#: Pages one search reads at most: 10 million resources at the default page
#: size, and an end to a server that sends a new ``next`` link forever.
DEFAULT_MAX_PAGES = 10_000


def _check_bundle(fetched: Fetched) -> dict[str, Any]:
    return check_bundle(fetched.data, fetched.url, fetched.status)


def bundle_entries(bundle: dict[str, Any], resource_type: str, url: str) -> list[dict[str, Any]]:
    """The matched resources of ``resource_type`` on one page (a page may have no ``entry``)."""
    return list(iter_matches(bundle, resource_type, url))


def iter_matches(bundle: dict[str, Any], resource_type: str, url: str) -> Iterator[dict[str, Any]]:
    """Generator form of :func:`bundle_entries`.

    Frames are built from this directly, so that each resource is flattened
    right after its entry is read, while it is still in the CPU cache.
    """
    entries = bundle.get("entry")
    if entries is None:
        return
    if not isinstance(entries, list):
        raise FHIRError(f"GET {url}: malformed Bundle: 'entry' is not a list", url=url)
    for entry in entries:
        resource = entry.get("resource") if entry.__class__ is dict else None
        if resource.__class__ is not dict:
            raise FHIRError(f"GET {url}: malformed Bundle: an entry has no resource", url=url)
        search = entry.get("search")
        mode = search.get("mode") if search.__class__ is dict else None
        kind = resource.get("resourceType")
        if kind == resource_type and (mode is None or mode == "match"):
            yield resource
        elif kind == "OperationOutcome" and mode in ("outcome", None):
            for issue in resource.get("issue") or []:
                if isinstance(issue, dict):
                    log.warning(
                        "FHIR server note on %s: %s",
                        url,
                        str(issue.get("diagnostics") or issue.get("code"))[:300],
                    )


def included(bundle: dict[str, Any], url: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """``(type, resource)`` of each entry a server added with ``search.mode`` ``include``."""
    for entry in bundle.get("entry") or []:
        search = entry.get("search") if isinstance(entry, dict) else None
        if not isinstance(search, dict) or search.get("mode") != "include":
            continue
        resource = entry.get("resource")
        if not isinstance(resource, dict) or not isinstance(resource.get("resourceType"), str):
            raise FHIRError(
                f"GET {url}: malformed Bundle: an included entry has no resource", url=url
            )
        yield resource["resourceType"], resource


def build_frames(
    first_type: str,
    pages: Iterator[tuple[dict[str, Any], str, bool]],
    typed: Callable[[dict[str, Any], str], Iterator[tuple[str, dict[str, Any]]]],
) -> dict[str, pd.DataFrame]:
    """Frames per resource type from pages; each ends with a ``key`` column (``Type/id``).

    A resource included by several pages (the Encounter of Observations on two
    pages) is one row set, not one per page.
    """
    builders = {first_type: TableBuilder(first_type)} if first_type else {}
    seen: set[tuple[str, Any]] = set()
    with gc_paused():
        for bundle, url, _more in pages:
            batch: dict[str, list[dict[str, Any]]] = {}
            for kind, resource in typed(bundle, url):
                rid = resource.get("id")
                if rid is not None:
                    if (kind, rid) in seen:
                        continue
                    seen.add((kind, rid))
                batch.setdefault(kind, []).append(resource)
            for kind, resources in batch.items():
                if kind not in builders:
                    builders[kind] = TableBuilder(kind)
                builders[kind].add(resources)
    frames = {}
    for kind, builder in builders.items():
        frame = builder.to_pandas()
        if "id" in frame.columns:  # last, so that the view's columns keep their places
            frame["key"] = (kind + "/") + frame["id"]
        frames[kind] = frame
    return frames


def _opened(page: Page) -> dict[str, Any]:
    """The page's Bundle, reported; its error (or the paging's) raised after the report."""
    if page.error is not None:
        page.refused()
        raise page.error
    try:
        bundle = page.bundle()
    except FHIRError as exc:
        page.error = exc
        page.refused()
        raise
    entries = bundle.get("entry")
    page.served(len(entries) if isinstance(entries, list) else 0)
    if page.stop is not None:
        raise page.stop
    return bundle


def _add_page(
    page: Page,
    builder: TableBuilder,
    fast: Callable[[], ArrowPages | None],
    tally: _Tally,
    matches: Callable[[dict[str, Any], str], Iterator[dict[str, Any]]],
) -> int:
    """Flatten one page into ``builder`` (Arrow engine where it reads the page exactly).

    ``fast`` gives the Arrow engine's reader, compiled on the first page: by then the
    second page's request is out, so the compiling hides behind the server's time.
    """
    body = page.fetched.body if page.fetched is not None and page.data is None else None
    reader = fast() if body is not None and page.error is None else None
    read = reader.read(body) if reader is not None and body is not None else None
    if read is None:
        bundle = _opened(page)
        tally.add(bundle)
        return builder.add(matches(bundle, page.url))
    page.served(read.entries)
    if page.stop is not None:
        raise page.stop
    page.check_link(next_link({"link": read.link}, page.url))
    tally.add_counted(read.total, read.matches)
    builder.add_arrow(read.arrays, read.warnings)
    return read.resources


_PACKAGE = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep


def _caller_stacklevel() -> int:
    """``stacklevel`` of the first frame outside this package: the researcher's line.

    A warning attributed to a line of ours would be shown once per session
    (Python's default filter), so a second short search would go unnoticed;
    attributed to the notebook cell, it shows each time.
    """
    frame = sys._getframe(1)
    level = 1
    while frame.f_back is not None and frame.f_code.co_filename.startswith(_PACKAGE):
        frame = frame.f_back
        level += 1
    return level


class _Tally:
    """The matches read so far against the ``Bundle.total`` the server announced."""

    def __init__(self) -> None:
        self.total: int | None = None
        self.matches = 0

    def add(self, bundle: dict[str, Any]) -> None:
        total = bundle.get("total")
        if self.total is None and isinstance(total, int) and not isinstance(total, bool):
            self.total = total
        entries = bundle.get("entry")
        if not isinstance(entries, list):
            return
        for entry in entries:
            search = entry.get("search") if isinstance(entry, dict) else None
            mode = search.get("mode") if isinstance(search, dict) else None
            resource = entry.get("resource") if isinstance(entry, dict) else None
            kind = resource.get("resourceType") if isinstance(resource, dict) else None
            if mode == "match" or (mode is None and kind != "OperationOutcome"):
                self.matches += 1

    def add_counted(self, total: int | None, matches: int) -> None:
        """:meth:`add` for a page read by the Arrow engine (its total and matches counted)."""
        if self.total is None and total is not None:
            self.total = total
        self.matches += matches

    def finish(self, url: str, strict: bool) -> None:
        """Warn (or raise, ``strict``) when the last page came before ``total`` matches."""
        if self.total is None or self.matches >= self.total:
            return
        message = (
            f"incomplete search: the FHIR server announced {self.total} matches "
            f"(Bundle.total) but its pages ended after {self.matches} (GET {url} has no "
            "'next' link). The result holds only those; the server may cap searches or "
            "have dropped its paging state. Ask for fewer matches (narrower parameters), "
            "or a larger page_size, and compare with len(result)"
        )
        if strict:
            raise IncompleteSearch(message, url=url)
        warnings.warn(message, IncompleteSearchWarning, stacklevel=_caller_stacklevel())


def _total(fetched: Fetched) -> int:
    total = _check_bundle(fetched).get("total")
    if isinstance(total, bool) or not isinstance(total, int) or total < 0:
        raise FHIRError(
            f"GET {fetched.url}: the server did not return a count (Bundle.total)",
            url=fetched.url,
        )
    return total


def _progress_bar(enabled: bool | None, more_pages: bool, total: Callable[[], int | None]) -> Any:
    """A tqdm bar when asked (``True``), or by default for a multi-page search in a notebook.

    A one-page search is over before a bar would mean anything, so the
    default waits for the first page: only when it has a ``next`` link does
    the bar appear (its total from ``_summary=count``, if the server counts).
    """
    if enabled is False or (enabled is None and not (more_pages and in_notebook())):
        return None
    import warnings

    with warnings.catch_warnings():  # without ipywidgets tqdm.auto warns, then draws text
        warnings.simplefilter("ignore")
        from tqdm.auto import tqdm

    return tqdm(total=total(), unit=" resources", desc="FHIR search")


class _Base:
    def __init__(
        self,
        resource_type: str,
        params: list[tuple[str, str]],
        progress: bool | None,
        max_pages: int,
        path: str | None = None,
        action: str = "search",
    ) -> None:
        if isinstance(max_pages, bool) or not isinstance(max_pages, int) or max_pages < 1:
            raise ValueError("max_pages must be a whole number of at least 1")
        self.resource_type = resource_type
        self.params = params
        self.progress = progress
        #: Pages read at most before the search stops with an error.
        self.max_pages = max_pages
        #: Where the first page is (``Observation``, ``Patient/x/$everything``...).
        self.path = path or resource_type
        #: The action its data-access events report (``search``, ``operation``...).
        self.action = action
        #: How the result was obtained, where there was a choice (``observations(lastn=)``).
        self.meta: dict[str, Any] = {}
        self._count: int | None = None

    def _count_params(self) -> list[tuple[str, str]]:
        return [(k, v) for k, v in self.params if k not in _PAGING] + [("_summary", "count")]

    def __repr__(self) -> str:
        query = "&".join(f"{k}={v}" for k, v in self.params)
        return f"<{type(self).__name__} {self.resource_type}?{query}>"


class SearchResult(_Base):
    """A search that runs when used: iterate, ``len()``, ``to_pandas()``, ``to_arrow()``."""

    def __init__(
        self,
        get: SyncGet,
        resource_type: str,
        params: list[tuple[str, str]],
        *,
        progress: bool | None = None,
        prefetch: bool = True,
        strict: bool = False,
        max_pages: int = DEFAULT_MAX_PAGES,
        path: str | None = None,
        action: str = "search",
    ) -> None:
        super().__init__(resource_type, params, progress, max_pages, path, action)
        self._get = get
        #: Fetch the next page while the current one is processed.
        self.prefetch = prefetch
        #: Raise :class:`IncompleteSearch` instead of warning when the pages end
        #: before ``Bundle.total``.
        self.strict = strict

    def pages(self) -> Iterator[dict[str, Any]]:
        """Each Bundle page, following ``next`` links to the end."""
        for bundle, _url, _more in self._walk():
            yield bundle

    def _pager(self) -> SyncPager:
        return SyncPager(
            self._get, self.path, self.params, self.action, self.max_pages, self.prefetch
        )

    def _walk(self, strict: bool | None = None) -> Iterator[tuple[dict[str, Any], str, bool]]:
        """Pages with their URLs; the next page is on its way while the caller works on this one.

        The FHIR server (another process, often another machine) answers page
        N+1 while this process parses and flattens page N (:mod:`.pager`): on
        a 100-page search that hides all but the server's time.
        """
        tally = _Tally()
        pager = self._pager()
        try:
            for page in pager:
                bundle = _opened(page)
                tally.add(bundle)
                yield bundle, page.url, page.next is not None
                if page.next is None:
                    tally.finish(page.url, self.strict if strict is None else strict)
        finally:
            pager.close()

    def _resource_pages(self) -> Iterator[list[dict[str, Any]]]:
        for bundle, url, _more in self._walk():
            yield list(self._page_resources(bundle, url))

    def _page_resources(self, bundle: dict[str, Any], url: str) -> Iterator[dict[str, Any]]:
        """The resources of one page that are this result's rows (the matches)."""
        return iter_matches(bundle, self.resource_type, url)

    def _typed_entries(
        self, bundle: dict[str, Any], url: str
    ) -> Iterator[tuple[str, dict[str, Any]]]:
        """``(type, resource)`` of the matches and of the ``_include``-d resources of a page."""
        for resource in self._page_resources(bundle, url):
            yield self.resource_type, resource
        yield from included(bundle, url)

    def to_frames(self, *, strict: bool | None = None) -> dict[str, pd.DataFrame]:
        """One DataFrame per resource type: the matches, and each included type.

        Each frame is flattened by its type's built-in view and gets a ``key``
        column (``Encounter/123``) to join on: e.g.
        ``frames["Observation"].merge(frames["Encounter"], left_on="encounter", right_on="key")``.
        The searched type always has a frame (empty if nothing matched).
        """
        return build_frames(self.resource_type, self._walk(strict), self._typed_entries)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for resources in self._resource_pages():
            yield from resources

    def count(self) -> int:
        """Number of matches, from the server (``_summary=count``); cached.

        A result that is not a plain search (history, ``$everything``,
        ``$lastn``) has no ``_summary=count``: its pages are read and counted.
        """
        if self._count is None:
            if self.path != self.resource_type:
                self._count = sum(
                    sum(1 for _ in self._page_resources(bundle, url))
                    for bundle, url, _more in self._walk()
                )
            else:
                self._count = _total(self._get(self.resource_type, self._count_params(), "count"))
        return self._count

    def __len__(self) -> int:
        """``len(result)``: the server's count. ``list(result)`` asks for it too (as a size hint).

        A server that cannot count makes ``len()`` raise TypeError (with the
        reason), which ``list()`` treats as "no size hint" and carries on.
        """
        try:
            return self.count()
        except FHIRError as exc:
            raise TypeError(f"len() needs the server's _summary=count: {exc}") from exc

    def _safe_count(self) -> int | None:
        try:
            return self.count()
        except FHIRError:
            return None

    def builder(
        self,
        *,
        raw: bool = False,
        progress: bool | None = None,
        strict: bool | None = None,
        view: ViewSpec | None = None,
    ) -> TableBuilder:
        """Fetch every page into a :class:`TableBuilder` (the shared path of both frame types)."""
        builder = TableBuilder(self.resource_type, raw=raw, view=view)
        enabled = self.progress if progress is None else progress
        tally = _Tally()
        bar = None
        pager = self._pager()
        fast = functools.cache(lambda: self._arrow_pages(builder, raw))
        try:
            for n, page in enumerate(pager):
                if n == 0:
                    bar = _progress_bar(enabled, page.next is not None, self._safe_count)
                with gc_paused():
                    added = _add_page(page, builder, fast, tally, self._page_resources)
                if bar is not None:
                    bar.update(added)
                if page.next is None:
                    tally.finish(page.url, self.strict if strict is None else strict)
        finally:
            pager.close()
            if bar is not None:
                bar.close()
        return builder

    def _arrow_pages(self, builder: TableBuilder, raw: bool) -> ArrowPages | None:
        """The Arrow engine's page reader, where it gives exactly this result's rows."""
        if raw or type(self)._page_resources is not SearchResult._page_resources:
            return None
        return ArrowPages.for_view(builder.view, self.resource_type)

    def to_pandas(
        self,
        *,
        raw: bool = False,
        progress: bool | None = None,
        strict: bool | None = None,
        view: ViewSpec | None = None,
    ) -> pd.DataFrame:
        """All matches as a typed DataFrame (see :mod:`.flatten` for the columns).

        ``view`` flattens with that SQL on FHIR ViewDefinition (a dict, a path
        to its JSON file, or a built-in name) instead of the type's built-in
        view; an invalid one raises ``ViewDefinitionError`` before any request.
        ``strict=True`` raises :class:`IncompleteSearch` when the server's pages
        end before its ``Bundle.total`` (by default that is a warning).
        """
        return self.builder(raw=raw, progress=progress, strict=strict, view=view).to_pandas()

    def to_arrow(
        self,
        *,
        raw: bool = False,
        progress: bool | None = None,
        strict: bool | None = None,
        view: ViewSpec | None = None,
    ) -> pa.Table:
        """All matches as an Arrow table (same columns and types as :meth:`to_pandas`)."""
        return self.builder(raw=raw, progress=progress, strict=strict, view=view).to_arrow()


class AsyncSearchResult(_Base):
    """Async twin: ``async for``, ``await .count()``, ``await .to_pandas()``."""

    def __init__(
        self,
        get: AsyncGet,
        resource_type: str,
        params: list[tuple[str, str]],
        *,
        progress: bool | None = None,
        prefetch: bool = True,
        strict: bool = False,
        max_pages: int = DEFAULT_MAX_PAGES,
    ) -> None:
        super().__init__(resource_type, params, progress, max_pages)
        self._get = get
        #: Request the next page while the current one is processed.
        self.prefetch = prefetch
        self.strict = strict

    async def pages(self) -> AsyncIterator[dict[str, Any]]:
        """Each Bundle page, following ``next`` links to the end."""
        async for bundle, _url in self._walk():
            yield bundle

    def _pager(self) -> AsyncPager:
        return AsyncPager(
            self._get, self.resource_type, self.params, "search", self.max_pages, self.prefetch
        )

    async def _walk(self, strict: bool | None = None) -> AsyncIterator[tuple[dict[str, Any], str]]:
        """Pages with their URLs; the next page's request is a task while this one is used."""
        tally = _Tally()
        pager = self._pager()
        pages = pager.pages()
        try:
            async for page in pages:
                bundle = _opened(page)
                tally.add(bundle)
                yield bundle, page.url
                if page.next is None:
                    tally.finish(page.url, self.strict if strict is None else strict)
        finally:
            await pages.aclose()
            await pager.aclose()

    async def __aiter__(self) -> AsyncIterator[dict[str, Any]]:
        async for bundle, url in self._walk():
            for resource in bundle_entries(bundle, self.resource_type, url):
                yield resource

    async def count(self) -> int:
        if self._count is None:
            self._count = _total(await self._get(self.resource_type, self._count_params(), "count"))
        return self._count

    async def builder(
        self, *, raw: bool = False, strict: bool | None = None, view: ViewSpec | None = None
    ) -> TableBuilder:
        """Fetch every page into a :class:`TableBuilder`.

        Each page is flattened in a worker thread, so that the event loop
        carries the next page's request meanwhile (and other tasks keep running).
        """
        builder = TableBuilder(self.resource_type, raw=raw, view=view)
        tally = _Tally()
        fast = functools.cache(
            lambda: None if raw else ArrowPages.for_view(builder.view, self.resource_type)
        )

        def matches(bundle: dict[str, Any], url: str) -> Iterator[dict[str, Any]]:
            return iter_matches(bundle, self.resource_type, url)

        def add(page: Page) -> None:
            with gc_paused():
                _add_page(page, builder, fast, tally, matches)

        pager = self._pager()
        pages = pager.pages()
        try:
            async for page in pages:
                await asyncio.to_thread(add, page)
                if page.next is None:
                    tally.finish(page.url, self.strict if strict is None else strict)
        finally:
            await pages.aclose()
            await pager.aclose()
        return builder

    async def to_pandas(
        self, *, raw: bool = False, strict: bool | None = None, view: ViewSpec | None = None
    ) -> pd.DataFrame:
        """All matches as a typed DataFrame (``view=`` as for the sync client)."""
        return (await self.builder(raw=raw, strict=strict, view=view)).to_pandas()

    async def to_arrow(
        self, *, raw: bool = False, strict: bool | None = None, view: ViewSpec | None = None
    ) -> pa.Table:
        """All matches as an Arrow table (``view=`` as for the sync client)."""
        return (await self.builder(raw=raw, strict=strict, view=view)).to_arrow()
