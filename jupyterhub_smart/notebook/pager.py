"""Walking a search's pages with the next page's request in flight while this one is used.

A FHIR server takes 50-200 ms per page, and that wait, not parsing, dominates
a search. So the pager (a thread for the sync client, a task for the async
one) reads each page's ``next`` link straight from the bytes it received and
sends the next request at once; parsing and flattening happen in the caller
meanwhile. The request for page N+1 goes out as soon as page N's ``link``
has arrived: the link sits in the page's first bytes, so it is read while
the rest of the page is still streaming in (:func:`scan_link` on the bytes so
far), and page N+1 is asked for on a second keep-alive connection. A page's
transfer (a few ms for a page of 1,000 resources, more on a slow network) and
the client's own per-request time then overlap the server's wait for the next
page, instead of adding to it: a search costs about pages x server latency.
Pages are handed over in order. When the caller falls behind, the pager holds
one page for it and sends no request ahead of it (page N+1 is asked for early
only if the caller has taken page N-1; otherwise once page N is handed over),
so at most three pages are held at a time (the caller's, the one waiting for
it, the one in flight) and a slow page of flattening does not stall the
requests.

Finding the link before parsing: servers write ``resourceType``, ``type``,
``total`` and ``link`` before the large ``entry`` array, so
:func:`scan_link` reads the top-level members up to ``entry`` with a small
tokenizer and parses only the ``link`` array (a few hundred bytes). Where it
cannot tell (``link`` after ``entry``, an escaped member name), the pager
parses the whole page instead. The caller's full parse later checks that the
link followed is the page's link (JSON with two ``link`` members is refused
as a malformed Bundle). A link read early is compared with the whole page's
once it has arrived (they differ only if the page's request was sent again
after a broken connection and the server answered otherwise: the search then
stops with an error instead of following a link the page does not hold).

Data-access events: a page fetched unparsed is reported by whoever parses it
(:meth:`Page.served`/:meth:`Page.refused`), so events keep the order of the
requests; a page fetched but never used (the caller stopped) is reported too.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import re
import threading
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import orjson

from .errors import FHIRError
from .http import Fetched, Head, parse_body

__all__ = [
    "AsyncPager",
    "Page",
    "SyncPager",
    "check_bundle",
    "next_link",
    "scan_link",
]

Params = list[tuple[str, str]] | None

#: One JSON token: a string, a punctuation mark, or a bare literal (number, true, false, null).
_TOKEN = re.compile(rb'[ \t\r\n]*(?:("(?:[^"\\]|\\.)*")|([\[\]{},:])|([^ \t\r\n"\[\]{},:]+))')
_UNKNOWN = object()


def check_bundle(data: dict[str, Any], url: str, status: int) -> dict[str, Any]:
    """``data`` if it is a Bundle, else the :class:`FHIRError` a search reports."""
    if data.get("resourceType") != "Bundle":
        raise FHIRError(
            f"GET {url}: expected a Bundle, got {data.get('resourceType')!r}",
            status=status,
            url=url,
        )
    return data


def next_link(bundle: dict[str, Any], url: str) -> str | None:
    """The ``next`` link of a page, if any."""
    links = bundle.get("link") or []
    if not isinstance(links, list):
        raise FHIRError(f"GET {url}: malformed Bundle: 'link' is not a list", url=url)
    for link in links:
        if isinstance(link, dict) and link.get("relation") == "next":
            target = link.get("url")
            if not isinstance(target, str) or not target:
                raise FHIRError(f"GET {url}: malformed Bundle: a 'next' link has no url", url=url)
            return target
    return None


def _skip(body: bytes | bytearray, pos: int, first: bytes) -> int:
    """The position after the object or array opened by ``first`` (already read)."""
    depth = 1
    while depth:
        match = _TOKEN.match(body, pos)
        if match is None:
            raise ValueError("not JSON")
        pos = match.end()
        mark = match.group(2)
        if mark in (b"[", b"{"):
            depth += 1
        elif mark in (b"]", b"}"):
            depth -= 1
    return pos


def scan_link(body: bytes | bytearray) -> Any:
    """The Bundle's ``link`` value, read from its members before ``entry``; else ``_UNKNOWN``.

    Known only when a ``resourceType`` member ``"Bundle"`` and a ``link`` member
    come before ``entry`` (or the object ends without ``entry``: then a missing
    ``link`` is ``None``). Anything else (``link`` after ``entry``, a member
    name with escapes, two ``link`` members, no JSON) is left to the full parse.
    """
    try:
        match = _TOKEN.match(body, 0)
        if match is None or match.group(2) != b"{":
            return _UNKNOWN
        pos = match.end()
        bundle = False
        links: Any = _UNKNOWN
        while True:
            key = _TOKEN.match(body, pos)
            if key is None:
                return _UNKNOWN
            if key.group(2) == b"}":  # the whole object read: no link member means no link
                return (None if links is _UNKNOWN else links) if bundle else _UNKNOWN
            name = key.group(1)
            if name is None or b"\\" in name:
                return _UNKNOWN
            colon = _TOKEN.match(body, key.end())
            if colon is None or colon.group(2) != b":":
                return _UNKNOWN
            value = _TOKEN.match(body, colon.end())
            if value is None:
                return _UNKNOWN
            if name == b'"entry"':
                return links if bundle and links is not _UNKNOWN else _UNKNOWN
            start = value.start(value.lastindex or 0)
            end = value.end()
            if value.group(2) in (b"[", b"{"):
                end = _skip(body, end, value.group(2))
            elif value.group(2) is not None:
                return _UNKNOWN
            if name == b'"resourceType"':
                if value.group(1) != b'"Bundle"':
                    return _UNKNOWN
                bundle = True
            elif name == b'"link"':
                if links is not _UNKNOWN:
                    return _UNKNOWN  # two link members: let the full parse decide
                links = orjson.loads(body[start:end])
            after = _TOKEN.match(body, end)
            if after is None or after.group(2) not in (b",", b"}"):
                return _UNKNOWN
            pos = after.end() if after.group(2) == b"," else after.start(2)
    except (ValueError, orjson.JSONDecodeError):
        return _UNKNOWN


class _Reports:
    """What a page getter offers for pages it fetched unparsed (see the client's ``_PageGet``)."""

    def served(self, fetched: Fetched, entries: int, action: str, params: Params) -> None: ...

    def refused(self, error: BaseException, action: str, params: Params) -> None: ...


@dataclass
class Page:
    """One page as the pager hands it over, with its own error or the paging's.

    ``error``: the request failed (or its answer is no JSON Bundle); nothing
    else is set. ``stop``: the page is fine but paging cannot go on (a loop,
    ``max_pages``, a malformed link); it is raised once the page is reported.
    """

    fetched: Fetched | None
    params: Params
    action: str
    reports: _Reports | None
    next: str | None = None
    data: dict[str, Any] | None = None
    error: BaseException | None = None
    stop: BaseException | None = None
    reported: bool = False

    @property
    def url(self) -> str:
        return self.fetched.url if self.fetched is not None else ""

    @property
    def last(self) -> bool:
        """No page comes after this one (the end, or an error)."""
        return self.error is not None or self.stop is not None or self.next is None

    def served(self, entries: int) -> None:
        """Report the page (once), now that its entries are counted."""
        if not self.reported and self.reports is not None and self.fetched is not None:
            self.reports.served(self.fetched, entries, self.action, self.params)
        self.reported = True

    def refused(self) -> None:
        """Report the page's error (once)."""
        if not self.reported and self.reports is not None and self.error is not None:
            self.reports.refused(self.error, self.action, self.params)
        self.reported = True

    def bundle(self) -> dict[str, Any]:
        """The page parsed (once) and checked to be a Bundle whose link is the one followed."""
        if self.data is None:
            assert self.fetched is not None and self.fetched.body is not None
            self.data = parse_body(self.fetched.body, self.fetched.status, self.url)
            check_bundle(self.data, self.url, self.fetched.status)
            self.check_link(next_link(self.data, self.url))
        return self.data

    def check_link(self, link: str | None) -> None:
        """Refuse a page whose link (from the full parse) is not the one the pager followed."""
        if self.stop is None and link != self.next:
            raise FHIRError(
                f"GET {self.url}: malformed Bundle: more than one 'link' member", url=self.url
            )

    def drop(self) -> None:
        """Report a page that was fetched but will not be used (the search was abandoned)."""
        if self.reported:
            return
        if self.error is not None:
            self.refused()
            return
        try:
            entries = self.bundle().get("entry")
        except FHIRError:
            entries = None
        self.served(len(entries) if isinstance(entries, list) else 0)


#: How long a pager thread that started the next page's request waits for it to be on
#: the wire before it reads on: meanwhile the sending thread has the interpreter to
#: itself (two threads running Python take turns only every few milliseconds).
_SEND_WAIT = 0.02

#: How much of a page is searched for its ``link`` while the page streams in. Servers
#: write it within the first few hundred bytes; a page that has not shown it by then
#: is read whole first (as one whose ``link`` comes after ``entry``).
_HEAD_BYTES = 64 * 1024


class _Walk:
    """The paging rules shared by both pagers: one page's link, loops, ``max_pages``."""

    def __init__(self, get: Any, path: str, params: Params, action: str, max_pages: int) -> None:
        self.get = get
        self.raw = getattr(get, "raw", None)
        self.reports = get if self.raw is not None else None
        self.path = path
        self.params = params
        self.action = action
        self.max_pages = max_pages
        self.seen: set[str] = set()

    def page(self, fetched: Fetched, params: Params, early: str | None = None) -> Page:
        """The fetched page with its next link found (and checked), or its error.

        ``early``: the next link already read from the page's first bytes (and
        checked, and asked for); the whole page must hold that same link.
        """
        page = Page(fetched, params, self.action, self.reports, reported=self.raw is None)
        if not self.seen:
            self.seen.add(fetched.url)
        try:
            links: Any = _UNKNOWN
            if self.raw is None:
                page.data = check_bundle(fetched.data, fetched.url, fetched.status)
            else:
                assert fetched.body is not None
                links = scan_link(fetched.body)
                if links is _UNKNOWN:
                    page.data = check_bundle(
                        parse_body(fetched.body, fetched.status, fetched.url),
                        fetched.url,
                        fetched.status,
                    )
            bundle = page.data if links is _UNKNOWN else {"link": links}
            assert bundle is not None
        except FHIRError as exc:
            page.error = exc
            return page
        try:
            if early is None:
                page.next = self.checked_next(bundle, fetched.url)
            elif next_link(bundle, fetched.url) == early:
                page.next = early
            else:
                raise FHIRError(
                    f"GET {fetched.url}: the page's next link is not the one read from its "
                    "first bytes (its request was sent again after a broken connection and "
                    "the server answered otherwise); the search stopped here: run it again",
                    url=fetched.url,
                )
        except FHIRError as exc:
            page.stop = exc
        return page

    def early_next(self, url: str, partial: bytearray) -> Any:
        """The next link read from a page's first bytes: a link, ``None``, or ``_UNKNOWN``.

        A link is checked as :meth:`checked_next` does (and so counted as
        followed); a page whose first bytes do not tell, or whose link would
        stop the paging (a loop, ``max_pages``, a malformed link), is left to
        the whole page, which then reports it.
        """
        links = scan_link(partial)
        if links is _UNKNOWN:
            return _UNKNOWN
        if not self.seen:
            self.seen.add(url)
        try:
            return self.checked_next({"link": links}, url)
        except FHIRError:
            return _UNKNOWN

    def failed(self, error: BaseException, params: Params) -> Page:
        return Page(None, params, self.action, self.reports, error=error, reported=self.raw is None)

    def checked_next(self, bundle: dict[str, Any], url: str) -> str | None:
        """The next link, refusing one already fetched or one past ``max_pages`` (no endless paging)."""
        link = next_link(bundle, url)
        if link is not None:
            if link in self.seen:
                raise FHIRError(
                    f"the server's paging loops: the next link {link} was already fetched",
                    url=link,
                )
            if len(self.seen) >= self.max_pages:
                raise FHIRError(
                    f"the search stopped after max_pages={self.max_pages:,} pages and the "
                    "server still sends a next link: either it pages without end, or the "
                    "search is larger than that. Narrow the search, ask for bigger pages "
                    "(connect(page_size=...)), or raise the limit (connect(max_pages=...))",
                    url=url,
                )
            self.seen.add(link)
        return link


class SyncPager(_Walk):
    """Pages of one search, fetched by threads ahead of the caller (``ahead=False``: in the caller).

    Each page's request runs in a ``fhir-pager`` thread; the thread that reads
    page N's link from its first bytes starts page N+1's thread (see the
    module's docstring), or, when it could not, fetches page N+1 itself once
    page N is handed over. Page N is handed over only after page N-1.
    """

    def __init__(
        self,
        get: Callable[[str, Params, str], Fetched],
        path: str,
        params: Params,
        action: str,
        max_pages: int,
        ahead: bool = True,
    ) -> None:
        super().__init__(get, path, params, action, max_pages)
        self.ahead = ahead
        self._cond = threading.Condition()
        self._slot: Page | None = None
        self._placed = -1  # the number of the last page handed over (0 is the first)
        self._stopped = False
        self._died = False
        #: Each live pager thread, and whether it is in a request (not waited for by close()).
        self._threads: dict[threading.Thread, bool] = {}

    def _fetch(
        self,
        link: str,
        params: Params,
        number: int = -1,
        early: list[str] | None = None,
        sent: threading.Event | None = None,
    ) -> Page:
        """Page ``number`` at ``link``; ``early`` collects its next link if started from its head.

        ``sent`` is set once the request is on the wire (or has failed).
        """
        try:
            if self.raw is None:
                fetched = self.get(link, params, self.action)
            elif early is None:
                fetched = self.raw(link, params, self.action)
            else:
                head = self._head(number, early)
                fetched = self.raw(
                    link, params, self.action, head=head, sent=sent.set if sent else None
                )
        except Exception as exc:  # handed to the caller, raised there
            return self.failed(exc, params)
        finally:
            if sent is not None:
                sent.set()
        return self.page(fetched, params, early[0] if early else None)

    def _head(self, number: int, early: list[str]) -> Head:
        """What reads page ``number``'s link from its first bytes and starts the next page."""

        def head(url: str, partial: bytearray) -> bool:
            if early or len(partial) > _HEAD_BYTES:
                return True
            sent = threading.Event()
            with self._cond:
                # ahead of the caller only while it has taken every page before this one
                if self._stopped or self._slot is not None or self._placed != number - 1:
                    return True
                link = self.early_next(url, partial)
                if link is _UNKNOWN:
                    return False
                if isinstance(link, str):
                    early.append(link)
                    self._spawn(number + 1, link, None, sent)
            if early:  # the rest of this page can wait: the next request goes out first
                sent.wait(_SEND_WAIT)
            return True

        return head

    def __iter__(self) -> Iterator[Page]:
        if not self.ahead:
            link, params = self.path, self.params
            while True:
                page = self._fetch(link, params)
                yield page
                if page.last:
                    return
                assert page.next is not None
                link, params = page.next, None
        self.start()
        try:
            while True:
                with self._cond:
                    while self._slot is None:
                        if self._died or not any(t.is_alive() for t in self._threads):
                            raise RuntimeError("the page fetcher stopped unexpectedly")
                        self._cond.wait(0.5)
                    page, self._slot = self._slot, None
                    self._cond.notify_all()
                yield page
                if page.last:
                    return
        finally:
            self.close()

    def start(self) -> None:
        """Send the first request now (iterating starts it too): the caller may prepare meanwhile."""
        with self._cond:
            if not self._threads and self._placed < 0 and not self._stopped:
                self._spawn(0, self.path, self.params)

    def _spawn(
        self, number: int, link: str, params: Params, sent: threading.Event | None = None
    ) -> None:
        """Start the thread of page ``number`` (the condition held)."""
        thread = threading.Thread(
            target=self._run, args=(number, link, params, sent), name="fhir-pager", daemon=True
        )
        self._threads[thread] = True
        thread.start()

    def _run(
        self, number: int, link: str, params: Params, sent: threading.Event | None = None
    ) -> None:
        me = threading.current_thread()
        try:
            while True:
                early: list[str] = []
                page = self._fetch(link, params, number, early, sent)
                sent = None
                with self._cond:
                    self._threads[me] = False
                    while not self._stopped and (
                        self._slot is not None or self._placed != number - 1
                    ):
                        self._cond.wait()
                    if self._stopped:
                        break
                    self._slot = page
                    self._placed = number
                    self._cond.notify_all()
                    if page.last or early:  # the end, or the next page has its own thread
                        return
                    self._threads[me] = True
                assert page.next is not None
                link, params, number = page.next, None, number + 1
            page.drop()
        except BaseException:
            self._died = True
            raise
        finally:
            with self._cond:
                self._threads.pop(me, None)
                self._cond.notify_all()

    def close(self) -> None:
        """Stop paging: a page handed over but not taken is reported and dropped.

        A request in flight is not waited for (an interrupted search returns at
        once); its thread reports the page when it arrives and ends.
        """
        with self._cond:
            self._stopped = True
            left, self._slot = self._slot, None
            if left is not None:  # before a later page waiting for its turn: events keep order
                left.drop()
            idle = [thread for thread, busy in self._threads.items() if not busy]
            self._cond.notify_all()
        for thread in idle:
            if thread is not threading.current_thread():
                thread.join()


class AsyncPager(_Walk):
    """Async twin of :class:`SyncPager`: each page is fetched by a task."""

    def __init__(
        self,
        get: Callable[[str, Params, str], Awaitable[Fetched]],
        path: str,
        params: Params,
        action: str,
        max_pages: int,
        ahead: bool = True,
    ) -> None:
        super().__init__(get, path, params, action, max_pages)
        self.ahead = ahead
        self._cond = asyncio.Condition()
        self._slot: Page | None = None
        self._placed = -1
        self._closed = False
        self._tasks: list[asyncio.Task[None]] = []

    async def _fetch(
        self, link: str, params: Params, number: int = -1, early: list[str] | None = None
    ) -> Page:
        try:
            if self.raw is None:
                fetched = await self.get(link, params, self.action)
            elif early is None:
                fetched = await self.raw(link, params, self.action)
            else:
                fetched = await self.raw(link, params, self.action, head=self._head(number, early))
        except Exception as exc:
            return self.failed(exc, params)
        return self.page(fetched, params, early[0] if early else None)

    def _head(self, number: int, early: list[str]) -> Head:
        """:meth:`SyncPager._head` on the event loop (no lock: it runs between awaits)."""

        def head(url: str, partial: bytearray) -> bool:
            if early or len(partial) > _HEAD_BYTES:
                return True
            if self._closed or self._slot is not None or self._placed != number - 1:
                return True
            link = self.early_next(url, partial)
            if link is _UNKNOWN:
                return False
            if isinstance(link, str):
                early.append(link)
                self._spawn(number + 1, link, None)
            return True

        return head

    async def pages(self) -> AsyncGenerator[Page, None]:
        if not self.ahead:
            link, params = self.path, self.params
            while True:
                page = await self._fetch(link, params)
                yield page
                if page.last:
                    return
                assert page.next is not None
                link, params = page.next, None
        self.start()
        try:
            while True:
                async with self._cond:
                    while self._slot is None:
                        for task in self._tasks:
                            if task.done() and not task.cancelled():
                                task.result()  # a task's unexpected error, raised here
                        if all(task.done() for task in self._tasks):
                            raise RuntimeError("the page fetcher stopped unexpectedly")
                        await self._cond.wait()
                    page, self._slot = self._slot, None
                    self._cond.notify_all()
                yield page
                if page.last:
                    return
        finally:
            await self.aclose()

    def start(self) -> None:
        """Start the first page's task now (iterating starts it too)."""
        if not self._tasks and not self._closed:
            self._spawn(0, self.path, self.params)

    def _spawn(self, number: int, link: str, params: Params) -> None:
        self._tasks = [task for task in self._tasks if not task.done() or task.cancelled()]
        self._tasks.append(asyncio.ensure_future(self._run(number, link, params)))

    async def _run(self, number: int, link: str, params: Params) -> None:
        try:
            while True:
                early: list[str] = []
                page = await self._fetch(link, params, number, early)
                try:
                    async with self._cond:
                        await self._cond.wait_for(functools.partial(self._turn, number))
                        if self._closed:
                            page.drop()
                            return
                        self._slot = page
                        self._placed = number
                        self._cond.notify_all()
                except asyncio.CancelledError:
                    page.drop()  # fetched but never handed over: still reported
                    raise
                if page.last or early:
                    return
                assert page.next is not None
                link, params, number = page.next, None, number + 1
        finally:
            if not asyncio.current_task().cancelling():  # type: ignore[union-attr]
                async with self._cond:  # wake a caller waiting for a page that will not come
                    self._cond.notify_all()

    def _turn(self, number: int) -> bool:
        """Page ``number`` may be handed over (the one before it was taken), or paging stopped."""
        return self._closed or (self._slot is None and self._placed == number - 1)

    async def aclose(self) -> None:
        """Stop paging: requests in flight are cancelled, a page not taken is reported."""
        self._closed = True
        left, self._slot = self._slot, None
        if left is not None:  # before a later page a cancelled task reports: events keep order
            left.drop()
        tasks, self._tasks = self._tasks, []
        running = [task for task in tasks if not task.done()]
        for task in running:
            task.cancel()
        for task in running:
            with contextlib.suppress(asyncio.CancelledError):
                await task
