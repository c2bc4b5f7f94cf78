"""One search page straight into a view's Arrow columns (the views' Arrow engine, per page).

Parsing a page of 1,000 Observations into Python dicts and walking each
through the compiled view costs about 25 ms of CPU, all of it holding the
GIL, while the next page's bytes wait to be read. Instead the page's bytes are
read once by ``pyarrow.json`` with a schema holding only what a search needs
(``resourceType``, ``total``, ``link``, each entry's ``search.mode``) and,
for ``entry.resource``, only the elements the view reads
(:attr:`~jupyterhub_smart.views.vector.VectorView.read_schema`); the view is
then evaluated on whole columns (:meth:`~jupyterhub_smart.views.vector.VectorView.rows`).
That is several times less CPU, mostly outside the GIL.

The result must be what the dict path gives, so anything this path does not
read exactly as ``orjson`` and the dict path do makes :meth:`ArrowPages.read`
return ``None`` and the caller takes the dict path for that page: a body that
``orjson`` would refuse but Arrow's parser accepts (invalid UTF-8, a byte order
mark, ``NaN``/``Infinity``), any element of an unexpected JSON type, a
duplicate member, an entry without a resource, an ``OperationOutcome`` entry
(the dict path logs its issues), or data the Arrow engine hands back
(:class:`~jupyterhub_smart.views.vector.Fallback`).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pj

from jupyterhub_smart.views import CompiledView
from jupyterhub_smart.views.vector import Fallback, VectorView, try_compile

__all__ = ["ArrowPage", "ArrowPages"]

_REFUSED_BY_ORJSON = (b"NaN", b"Infinity")


@dataclass
class ArrowPage:
    """A page read by :class:`ArrowPages`: what the search needs of it, and the view's columns."""

    link: Any
    total: int | None
    entries: int
    matches: int
    resources: int
    arrays: list[pa.Array]
    warnings: dict[str, int]


class ArrowPages:
    """Reads Bundle pages of one resource type through one view's Arrow engine."""

    def __init__(self, vector: VectorView, resource_type: str) -> None:
        self.vector = vector
        self.resource_type = resource_type
        entry = pa.struct(
            [
                pa.field("search", pa.struct([pa.field("mode", pa.string())])),
                pa.field("resource", pa.struct(list(vector.read_schema))),
            ]
        )
        link = pa.struct([pa.field("relation", pa.string()), pa.field("url", pa.string())])
        self.schema = pa.schema(
            [
                pa.field("resourceType", pa.string()),
                pa.field("total", pa.int64()),
                pa.field("link", pa.list_(link)),
                pa.field("entry", pa.list_(entry)),
            ]
        )

    @classmethod
    def for_view(cls, view: CompiledView, resource_type: str) -> ArrowPages | None:
        """The reader for ``view``, or ``None`` when the Arrow engine does not cover it.

        Columns without a declared type are typed by their values across pages,
        which the dict path's converter does: such views take the dict path.
        """
        if any(column.type is None for column in view.columns):
            return None
        vector, _why = try_compile(view)
        return cls(vector, resource_type) if vector is not None else None

    def read(self, body: bytes) -> ArrowPage | None:
        """The page's columns, or ``None`` when the dict path must read this page."""
        if not body or body[:3] == b"\xef\xbb\xbf" or any(w in body for w in _REFUSED_BY_ORJSON):
            return None
        if not body.isascii():
            try:
                body.decode("utf-8")
            except UnicodeDecodeError:
                return None
        try:
            table = pj.read_json(
                io.BytesIO(body),
                read_options=pj.ReadOptions(use_threads=False, block_size=len(body) + 1),
                parse_options=pj.ParseOptions(
                    explicit_schema=self.schema,
                    unexpected_field_behavior="ignore",
                    newlines_in_values=True,
                ),
            )
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            return None
        if table.num_rows != 1 or table.column("resourceType")[0].as_py() != "Bundle":
            return None
        entry = table.column("entry").combine_chunks()
        items = entry.flatten() if entry.null_count == 0 else pa.array([], entry.type.value_type)
        if items.null_count:
            return None
        search, resources = items.flatten()
        if resources.null_count:
            return None  # an entry without a resource: the dict path names the error
        kinds = resources.field("resourceType")
        if pc.any(pc.equal(kinds, "OperationOutcome")).as_py():
            return None  # the dict path logs what the server says
        mode = search.flatten()[0]
        matched = pc.or_kleene(pc.is_null(mode), pc.equal(mode, "match"))
        matched_np = matched.to_numpy(zero_copy_only=False)
        try:
            rows = resources.filter(matched) if not matched_np.all() else resources
            # the page's bytes tell which absent choice names the closure engine would read
            self.vector.check_choices(rows, body)
            _parent, arrays, warnings = self.vector.rows(rows, choices_checked=True)
        except Fallback:
            return None
        ours = pc.equal(rows.field("resourceType"), self.resource_type).fill_null(False)
        return ArrowPage(
            link=table.column("link")[0].as_py(),
            total=table.column("total")[0].as_py(),
            entries=len(items),
            matches=int(np.count_nonzero(matched_np)),
            resources=int(pc.sum(ours).as_py() or 0),
            arrays=arrays,
            warnings=warnings,
        )
