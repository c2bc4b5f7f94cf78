"""MkDocs hook: the configuration reference, generated from traitlets ``help``.

A page may hold a marker ``<!-- traits: package.module.Class -->``; the hook
replaces it with one section per configurable trait that the class (or a base
class from this project) defines, with its type, default and help text. A
trait of ours without ``help`` fails the build, so that every option stays
documented where it is defined.

A marker ``<!-- generated: package.module.function -->`` is replaced with what
that function returns (Markdown built from the code, such as the table of
inherited options the authenticator refuses).
"""

from __future__ import annotations

import importlib
import re
from typing import Any

from traitlets import HasTraits, TraitType

MARKER = re.compile(r"<!--\s*traits:\s*([\w.]+)\s*-->")
GENERATED = re.compile(r"<!--\s*generated:\s*([\w.]+)\s*-->")
OWN_PACKAGE = "jupyterhub_smart"


def _load(dotted: str) -> type[HasTraits]:
    module_name, _, class_name = dotted.rpartition(".")
    cls = getattr(importlib.import_module(module_name), class_name)
    if not (isinstance(cls, type) and issubclass(cls, HasTraits)):
        raise TypeError(f"{dotted} is not a traitlets class")
    return cls


def _owner(cls: type, name: str) -> type:
    for base in cls.__mro__:
        if name in vars(base):
            return base
    return cls


def _default(trait: TraitType[Any, Any]) -> str:
    try:
        value = trait.default_value_repr()
    except Exception:  # some traits compute defaults dynamically
        value = "(dynamic)"
    return value if len(value) < 200 else value[:197] + "..."


def render(dotted: str) -> str:
    """Markdown for every configurable trait that this project defines on the class."""
    cls = _load(dotted)
    short = cls.__name__
    sections: list[str] = []
    for name, trait in sorted(cls.class_traits(config=True).items()):
        owner = _owner(cls, name)
        if not owner.__module__.startswith(OWN_PACKAGE):
            continue
        help_text = (trait.help or "").strip()
        if not help_text:
            raise ValueError(f"{owner.__name__}.{name} has no help= text")
        sections.append(
            f"### `c.{short}.{name}`\n\n"
            f"*{type(trait).__name__}*, default `{_default(trait)}`\n\n{help_text}\n"
        )
    return "\n".join(sections)


def generated(dotted: str) -> str:
    """The Markdown a function of this project returns."""
    module_name, _, function_name = dotted.rpartition(".")
    if not module_name.startswith(OWN_PACKAGE):
        raise ValueError(f"{dotted} is not part of {OWN_PACKAGE}")
    return str(getattr(importlib.import_module(module_name), function_name)())


def on_page_markdown(markdown: str, **_: Any) -> str:
    """Replace each traits marker with the generated reference, each generated marker."""
    markdown = MARKER.sub(lambda m: render(m.group(1)), markdown)
    return GENERATED.sub(lambda m: generated(m.group(1)), markdown)
