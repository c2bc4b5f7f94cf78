"""Built-in views: one ViewDefinition (a JSON file beside this module) per common resource type.

``load("Observation")`` returns the view as a dict; ``for_type(t)`` returns the
built-in view of a resource type, or for a type without one the generic view
(``id``, ``resource_type``, ``last_updated``). The files are package data, so
users can read them as examples and copy them as a starting point.
"""

from __future__ import annotations

import copy
import functools
from importlib import resources
from typing import Any

import orjson

__all__ = ["for_type", "generic", "load", "names"]


@functools.cache
def names() -> tuple[str, ...]:
    """The resource types that have a built-in view, sorted."""
    folder = resources.files(__name__)
    return tuple(
        sorted(p.name[: -len(".json")] for p in folder.iterdir() if p.name.endswith(".json"))
    )


@functools.cache
def _read(name: str) -> dict[str, Any]:
    data = resources.files(__name__).joinpath(f"{name}.json").read_bytes()
    return dict(orjson.loads(data))


def load(name: str) -> dict[str, Any]:
    """The built-in view of resource type ``name`` (a fresh copy); KeyError if there is none."""
    if name not in names():
        raise KeyError(f"no built-in view for {name!r}; built-in views: {', '.join(names())}")
    return copy.deepcopy(_read(name))


def generic(resource_type: str) -> dict[str, Any]:
    """The view used for a type without a built-in one: id, resource type, last update."""
    return {
        "resourceType": "ViewDefinition",
        "name": "generic",
        "status": "active",
        "resource": resource_type,
        "select": [
            {
                "column": [
                    {"name": "id", "path": "getResourceKey()", "type": "id"},
                    {"name": "resource_type", "path": "resourceType", "type": "code"},
                    {"name": "last_updated", "path": "meta.lastUpdated", "type": "instant"},
                ]
            }
        ],
    }


def for_type(resource_type: str) -> dict[str, Any]:
    """The built-in view of ``resource_type``, else :func:`generic`'s."""
    return load(resource_type) if resource_type in names() else generic(resource_type)
