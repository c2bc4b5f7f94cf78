"""MkDocs hook: the built-in views' columns, generated from their JSON files.

A page may hold the marker ``<!-- builtin-views -->``; the hook replaces it
with one table per built-in view (column, FHIR type, what it holds, the
FHIRPath), read from ``jupyterhub_smart/views/builtin/*.json`` when the site
builds, so the documentation cannot drift from what users get.
"""

from __future__ import annotations

import html
from typing import Any

MARKER = "<!-- builtin-views -->"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _code(text: str) -> str:
    """A code cell; HTML so that a FHIRPath union ``|`` does not split the table row."""
    return "<code>" + html.escape(text).replace("|", "&#124;") + "</code>"


def _columns(select: dict[str, Any]) -> list[dict[str, Any]]:
    """Columns of a select in view order: its own, nested selects', then the first union branch's."""
    found = list(select.get("column", []))
    for nested in select.get("select", []):
        found.extend(_columns(nested))
    union = select.get("unionAll")
    if union:
        found.extend(_columns(union[0]))
    return found


def render() -> str:
    """Markdown: one section per built-in view."""
    from jupyterhub_smart.views import builtin

    sections = []
    for name in builtin.names():
        view = builtin.load(name)
        rows = [
            "| column | type | holds | FHIRPath |",
            "|---|---|---|---|",
        ]
        for select in view["select"]:
            for column in _columns(select):
                kind = column.get("type", "")
                if column.get("collection"):
                    kind += " (list)"
                rows.append(
                    f"| `{column['name']}` | {kind} | {_cell(column.get('description', ''))} "
                    f"| {_code(column['path'])} |"
                )
        title = view.get("title", name)
        sections.append(f"### {name}\n\n{title}. Built-in name `{name}`.\n\n" + "\n".join(rows))
    return "\n\n".join(sections)


def on_page_markdown(markdown: str, **kwargs: Any) -> str:
    """Replace the marker with the generated tables."""
    if MARKER not in markdown:
        return markdown
    return markdown.replace(MARKER, render())
