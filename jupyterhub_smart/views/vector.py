"""A ViewDefinition evaluated column-wise on Arrow arrays, for NDJSON files and Bulk Data.

The closure engine (:mod:`.compiler`) walks each resource in Python: about 40 us
per Observation. This engine reads a chunk of NDJSON lines once with
``pyarrow.json`` into typed columns, with an explicit schema holding only the
elements the view navigates (their array-or-not cardinality and primitive types
come from the FHIR R4 element table ``fhir_r4_elements.json``), and evaluates
the view with whole-array operations: a FHIRPath collection is a flat array of
values with, for each value, the row it belongs to.

What it covers, decided once when a view is compiled (:func:`compile_vector`
raises :class:`Unsupported` for anything else, and the caller runs the closure
engine): navigation over FHIR R4 elements, ``ofType``/``as`` on choice
elements, ``first()``, ``(a | b | ...).first()``, ``where``, ``exists``,
``empty``, ``not``, ``join`` of strings, ``toString`` of strings and booleans,
``getResourceKey()``, ``getReferenceKey([type])``, ``extension(url)``,
``and``/``or``, ``=``/``!=`` against a string or boolean, ``%resource``,
string/boolean/integer constants, ``forEach``, ``forEachOrNull``, nested
selects, ``unionAll`` and the view's ``where``; columns of primitive declared
types.

Results equal the closure engine's. Data the fast path does not read exactly
(a line that is not a JSON object, an element of the wrong JSON type or
cardinality, a duplicate key, several values in a column without
``collection``, a non-boolean ``where``) raises :class:`Fallback` for the whole
chunk, and the caller gives that chunk to the closure engine, which reports
exactly what it reports for it. Elements that FHIR R4 does not define are not
read by this engine: a view that names one is :class:`Unsupported`, and a
resource carrying one is read as FHIR defines it.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pj

from .compiler import _REFERENCE, Typed, type_name_of
from .definition import Column, CompiledView, compile_view
from .fhirtypes import (
    CHOICE_ELEMENTS,
    RESOURCE_TYPES,
    normalize_type,
    subtypes,
)
from .parser import Node, parse, union_operands
from .table import TableConverter

__all__ = [
    "Block",
    "EngineStats",
    "Fallback",
    "Unsupported",
    "VectorView",
    "block_batches",
    "chunk_batches",
    "compile_vector",
    "object_lines",
    "try_compile",
    "vector_batch",
]

_TABLE = Path(__file__).with_name("fhir_r4_elements.json")
_PRIMITIVES = {
    "boolean": pa.bool_(),
    "integer": pa.int64(),
    "decimal": pa.float64(),
    "string": pa.string(),
}
_INTEGER = {"integer", "positiveInt", "unsignedInt", "integer64"}
_I64 = np.int64


class Unsupported(ValueError):
    """The view uses something this engine does not evaluate: run the closure engine."""


class Fallback(Exception):
    """This chunk of data is not read exactly here: give it to the closure engine."""


@functools.cache
def _elements() -> dict[str, dict[str, list[Any]]]:
    data: dict[str, dict[str, list[Any]]] = json.loads(_TABLE.read_text(encoding="utf-8"))
    return data


# --- the schema the view reads -----------------------------------------------------------


class _Node:
    """An element the view reads: its FHIR type and the children read below it."""

    def __init__(self, kind: str, is_list: bool = False) -> None:
        self.kind = kind
        self.is_list = is_list
        self.children: dict[str, _Node] = {}
        #: choice element names navigated here (``subject``, Quantity's ``value``): where one
        #: is absent, the closure engine reads any ``name[X...]`` key instead (see _ChoiceCheck)
        self.choices: set[str] = set()

    def child(self, name: str) -> _Node:
        if self.kind in _PRIMITIVES:
            raise Unsupported(f"navigation below a {self.kind}")
        info = _elements().get(self.kind, {}).get(name)
        if info is None and name == "resourceType" and self.kind in RESOURCE_TYPES:
            info = ["string", False]
        if info is None:
            raise Unsupported(f"{self.kind}.{name} is not a FHIR R4 element")
        kind, is_list = info[0], info[1]
        if kind == "Resource":
            raise Unsupported(f"{self.kind}.{name} holds resources")
        node = self.children.get(name)
        if node is None:
            node = self.children[name] = _Node(kind, is_list)
        return node

    def guard(self, name: str) -> None:
        """Read ``name``, which FHIR R4 does not define here, as always null: a resource that
        has it fails the read and goes to the closure engine, which reads any key."""
        if name not in _elements().get(self.kind, {}):
            self.children.setdefault(name, _Node("null"))

    def arrow(self) -> pa.DataType:
        if self.kind == "null":
            return pa.null()
        if self.kind in _PRIMITIVES:
            value = _PRIMITIVES[self.kind]
        else:
            value = pa.struct([pa.field(n, c.arrow()) for n, c in sorted(self.children.items())])
        return pa.list_(value) if self.is_list else value


# --- parsing ---------------------------------------------------------------------------

#: pyarrow.json block size: a block is parsed by one thread, so a chunk of several blocks
#: uses every core; a line longer than a block fails the read (the closure engine reads it).
PARSE_BLOCK = 1 << 22


def _parse(data: bytes | bytearray | memoryview, schema: pa.Schema) -> pa.Table:
    """NDJSON ``data`` read with ``schema``, fields outside it skipped; :class:`Fallback` on error."""
    try:
        return pj.read_json(
            pa.BufferReader(pa.py_buffer(data)),
            read_options=pj.ReadOptions(use_threads=True, block_size=PARSE_BLOCK),
            parse_options=pj.ParseOptions(
                explicit_schema=schema, unexpected_field_behavior="ignore"
            ),
        )
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise Fallback(str(exc)) from None


_NL, _OPEN, _CLOSE = ord("\n"), ord("{"), ord("}")


def object_lines(data: bytes | bytearray | memoryview) -> int | None:
    """How many lines ``data`` has when every one starts with ``{`` and ends with ``}``, else None.

    A few whole-array operations, no Python step per line. Such lines are
    never blank, so pyarrow gives one row per line unless a line holds
    several values (then more rows than lines: the caller compares) or is not
    JSON (an error).
    """
    raw = np.frombuffer(data, dtype=np.uint8)
    if not len(raw) or raw[0] != _OPEN:
        return None
    breaks = np.flatnonzero(raw == _NL)
    ended = raw[-1] == _NL
    inner = breaks[:-1] if ended else breaks  # each followed by a line
    if not ended and raw[-1] != _CLOSE:
        return None
    if not (raw[breaks - 1] == _CLOSE).all() or not (raw[inner + 1] == _OPEN).all():
        return None
    return len(inner) + 1


# --- choice names: the keys the closure engine reads when an element is absent ---------

Path_ = tuple[tuple[str, bool], ...]  # (field name, is a list) from the resource down


def _values_at(resources: pa.StructArray, path: Path_) -> pa.Array:
    """The values at ``path`` below the resources (lists flattened, absent parents null)."""
    array: pa.Array = resources
    for name, is_list in path:
        index = array.type.get_field_index(name)
        array = array.flatten()[index]  # flatten(): the child with its parent's nulls
        if is_list:
            array = array.flatten()
    return array


@dataclass
class _ChoiceCheck:
    """Where a chunk may hold keys the closure engine reads and this engine does not.

    For a choice element name navigated in a struct (``Observation.subject``,
    ``Quantity.value``), the closure engine reads, where the element is absent,
    every key of that struct that starts with the name and an upper-case
    letter (``subjectReference``, ``valueFoo``). This engine reads none of
    those; so a chunk passes only when no such struct lacks the element, or,
    if some do, when the bytes hold no ``"name[A-Z]`` key beyond the ones the
    schema reads (counted in the parsed columns). Otherwise :class:`Fallback`.
    """

    #: (path of the struct, choice name) for every navigated choice name
    places: list[tuple[Path_, str]]
    #: per choice name, the paths of the fields read whose key starts with it + upper case
    prefixed: dict[str, list[Path_]]

    def check(self, resources: pa.StructArray, data: bytes | bytearray | memoryview | None) -> None:
        text = b""
        for path, name in self.places:
            if path:
                struct = _values_at(resources, path)
                element = struct.flatten()[struct.type.get_field_index(name)]
            else:
                struct, element = resources, resources.field(name)
            if element.null_count == struct.null_count:  # present wherever its struct is
                continue
            if data is None:
                raise Fallback(f"{name} absent: the closure engine reads {name}[x] keys there")
            text = text or bytes(data)
            if b"\\u" in text:
                raise Fallback(f"{name} absent, and escaped text that may spell a {name}[x] key")
            quoted = b'"' + name.encode()
            keys = text.count(quoted) - text.count(quoted + b'"')
            read = sum(
                len(values) - values.null_count
                for values in (_values_at(resources, p) for p in self.prefixed.get(name, []))
            )
            if keys != read:
                raise Fallback(f"{name} absent, and {name}[x] keys this engine does not read")


def _choice_check(root: _Node) -> _ChoiceCheck:
    places: list[tuple[Path_, str]] = []
    fields: list[tuple[Path_, str]] = []

    def walk(node: _Node, path: Path_) -> None:
        places.extend((path, name) for name in sorted(node.choices))
        for name, child in sorted(node.children.items()):
            if child.kind == "null":
                continue
            here = (*path, (name, child.is_list))
            fields.append((here, name))
            walk(child, here)

    walk(root, ())
    names = {name for _, name in places}
    prefixed: dict[str, list[Path_]] = {}
    for name in names:
        for path, key in fields:
            if len(key) > len(name) and key.startswith(name) and key[len(name)].isupper():
                prefixed.setdefault(name, []).append(path)
    return _ChoiceCheck(places, prefixed)


# --- collections -------------------------------------------------------------------------


@dataclass
class _Col:
    """A FHIRPath collection per row: non-null ``values``, each with its row in ``parent`` (sorted)."""

    values: pa.Array
    parent: np.ndarray
    n: int

    def single(self) -> bool:
        return len(self.parent) < 2 or bool((self.parent[1:] != self.parent[:-1]).all())


@dataclass
class _Space:
    """The rows an expression is evaluated for: their nodes and the resource row of each."""

    values: pa.Array
    res: np.ndarray
    root: pa.Array
    constants: Mapping[str, Any]

    @property
    def n(self) -> int:
        return len(self.values)

    def focus(self) -> _Col:
        return _Col(self.values, np.arange(self.n, dtype=_I64), self.n)

    def sub(self, col: _Col) -> _Space:
        return _Space(col.values, self.res[col.parent], self.root, self.constants)


def _drop_nulls(values: pa.Array, parent: np.ndarray, n: int) -> _Col:
    if values.null_count:
        keep = values.is_valid()
        values = values.filter(keep)
        parent = parent[keep.to_numpy(zero_copy_only=False)]
    return _Col(values, parent, n)


def _member(col: _Col, name: str, is_list: bool) -> _Col:
    values = col.values
    if pa.types.is_null(values.type):  # an empty collection of no known shape
        return col
    child = values.field(name)
    if not is_list:
        return _drop_nulls(child, col.parent, col.n)
    inner = pc.list_parent_indices(child).to_numpy()
    return _drop_nulls(child.flatten(), col.parent[inner], col.n)


def _first(col: _Col) -> _Col:
    if col.single():
        return col
    keep = np.empty(len(col.parent), dtype=bool)
    keep[0] = True
    keep[1:] = col.parent[1:] != col.parent[:-1]
    return _Col(col.values.filter(keep), col.parent[keep], col.n)


def _counts(col: _Col) -> np.ndarray:
    return np.bincount(col.parent, minlength=col.n)


def _per_row(values: pa.Array, n: int) -> _Col:
    """One value per row (nulls: no value)."""
    return _drop_nulls(values, np.arange(n, dtype=_I64), n)


def _truth(col: _Col) -> pa.Array:
    """FHIRPath singleton evaluation as a boolean per row (null: empty; a non-boolean: true)."""
    if not col.single():
        raise Fallback("several values where one boolean is expected")
    values = col.values
    if not pa.types.is_boolean(values.type):
        values = pa.array(np.ones(len(values), dtype=bool))
    out = np.full(col.n, -1, dtype=_I64)
    out[col.parent] = np.arange(len(col.parent), dtype=_I64)
    return values.take(pa.array(out, mask=out < 0))


def _scatter(col: _Col) -> pa.Array:
    """At most one value per row -> an array of one value (or null) per row."""
    if not col.single():
        raise Fallback("several values in a column without collection")
    if len(col.parent) == col.n:
        return col.values
    out = np.full(col.n, -1, dtype=_I64)
    out[col.parent] = np.arange(len(col.parent), dtype=_I64)
    return col.values.take(pa.array(out, mask=out < 0))


def _concat(pieces: list[pa.Array]) -> pa.Array:
    types = {p.type for p in pieces if not pa.types.is_null(p.type)}
    if len(types) > 1:
        if types <= {pa.int64(), pa.float64()}:
            pieces = [p.cast(pa.float64()) for p in pieces]
        else:
            raise Fallback("values of different shapes in one collection")
    target = types.pop() if len(types) == 1 else pa.null()
    pieces = [p.cast(target) if pa.types.is_null(p.type) else p for p in pieces]
    return pa.concat_arrays(pieces) if pieces else pa.nulls(0)


def _merge(cols: list[_Col], n: int) -> _Col:
    """Several collections over the same rows, row by row in operand order."""
    parents = np.concatenate([c.parent for c in cols])
    order = np.argsort(parents, kind="stable")
    values = _concat([c.values for c in cols])
    return _Col(values.take(pa.array(order)), parents[order], n)


Eval = Callable[[_Space, _Col], _Col]


def _empty(space: _Space, focus: _Col) -> _Col:
    return _Col(pa.nulls(0), np.zeros(0, dtype=_I64), focus.n)


def _constant(value: Any) -> Eval:
    if value.__class__ is Typed:
        raise Unsupported("a typed literal")
    if value.__class__ is bool:
        kind = pa.bool_()
    elif value.__class__ is str:
        kind = pa.string()
    elif value.__class__ is int:
        kind = pa.int64()
    else:
        raise Unsupported(f"a {type(value).__name__} literal")

    def constant(space: _Space, focus: _Col) -> _Col:
        n = focus.n
        return _Col(pa.array([value] * n, type=kind), np.arange(n, dtype=_I64), n)

    return constant


# --- the FHIRPath compiler ---------------------------------------------------------------


class _Compiler:
    def __init__(self, root: _Node, constants: Mapping[str, list[Any]]) -> None:
        self.root = root
        self.constants = constants

    def compile(self, node: Node, st: _Node | None) -> tuple[Eval, _Node | None]:
        if node[0] in ("member", "call") and _from_resource(node):
            return self.at_root(node)
        return self.compile_here(node, st)

    def at_root(self, node: Node) -> tuple[Eval, _Node | None]:
        """``%resource.a.b...``: evaluated once over the resources, then given to each row.

        Cheaper than copying whole resources to every row of a ``forEach``.
        """
        inner, result = self.compile_here(node, self.root)

        def broadcast(space: _Space, focus: _Col) -> _Col:
            root = _Space(space.root, np.arange(len(space.root), dtype=_I64), space.root, {})
            col = inner(root, root.focus())
            if space.values is space.root:
                return col
            counts = np.bincount(col.parent, minlength=len(space.root))
            starts = np.zeros(len(counts), dtype=_I64)
            np.cumsum(counts[:-1], out=starts[1:])
            k = counts[space.res]
            parent = np.repeat(np.arange(focus.n, dtype=_I64), k)
            offsets = np.cumsum(k) - k
            index = np.arange(len(parent), dtype=_I64) - np.repeat(offsets - starts[space.res], k)
            return _Col(col.values.take(pa.array(index)), parent, focus.n)

        return broadcast, result

    def compile_here(self, node: Node, st: _Node | None) -> tuple[Eval, _Node | None]:
        kind = node[0]
        if kind == "this":
            return (lambda space, focus: focus), st
        if kind == "lit":
            if not node[1]:
                return _empty, None
            if len(node[1]) != 1:
                raise Unsupported("a literal collection")
            return _constant(node[1][0]), _literal_type(node[1][0])
        if kind == "var":
            return self.var(node[1])
        if kind == "id":
            if node[1][:1].isupper():
                raise Unsupported("a type name as a path")
            return self.member(lambda space, focus: focus, st, node[1])
        if kind == "member":
            base, bst = self.compile(node[1], st)
            return self.member(base, bst, node[2])
        if kind == "call":
            return self.call(node, st)
        if kind == "bin":
            return self.binary(node, st)
        raise Unsupported(f"{kind} expressions")

    def var(self, name: str) -> tuple[Eval, _Node | None]:
        if name in ("resource", "rootResource", "context"):

            def resource(space: _Space, focus: _Col) -> _Col:
                values = space.root if space.values is space.root else space.root.take(space.res)
                return _Col(values, np.arange(focus.n, dtype=_I64), focus.n)

            return resource, self.root
        if name in self.constants:
            value = self.constants[name]
            if len(value) != 1:
                raise Unsupported("a constant collection")
            return _constant(value[0]), _literal_type(value[0])
        raise Unsupported(f"%{name}")

    def member(self, base: Eval, st: _Node | None, name: str) -> tuple[Eval, _Node | None]:
        if st is None:
            raise Unsupported("navigation from a value of unknown type")
        if name in CHOICE_ELEMENTS and name not in _elements().get(st.kind, {}):
            prefix = [k for k in _elements().get(st.kind, {}) if k.startswith(name)]
            if prefix:
                raise Unsupported(f"the choice element {name} without ofType()")
        child = st.child(name)
        is_list = child.is_list
        if name in CHOICE_ELEMENTS:  # the closure engine also reads name[X] keys when absent
            st.choices.add(name)

        def member(space: _Space, focus: _Col) -> _Col:
            return _member(base(space, focus), name, is_list)

        return member, child

    def base(self, node: Node, st: _Node | None) -> tuple[Eval, _Node | None]:
        if node[1] is None:
            return (lambda space, focus: focus), st
        return self.compile(node[1], st)

    def call(self, node: Node, st: _Node | None) -> tuple[Eval, _Node | None]:
        _, base_node, name, args = node
        if name in ("ofType", "as") and base_node is not None and base_node[0] in ("member", "id"):
            return self.of_type(base_node, args, st)
        if name == "first" and not args and base_node is not None and base_node[:2] == ("bin", "|"):
            return self.first_of_union(base_node, st)
        base, bst = self.base(node, st)
        if name == "first" and not args:
            return (lambda space, focus: _first(base(space, focus))), bst
        if name == "where" and len(args) == 1:
            return self.where(base, bst, args[0]), bst
        if name == "exists" and len(args) <= 1:
            if args:
                base = self.where(base, bst, args[0])

            def exists(space: _Space, focus: _Col) -> _Col:
                found = _counts(base(space, focus)) > 0
                return _Col(pa.array(found), np.arange(focus.n, dtype=_I64), focus.n)

            return exists, _Node("boolean")
        if name == "empty" and not args:

            def empty(space: _Space, focus: _Col) -> _Col:
                none = _counts(base(space, focus)) == 0
                return _Col(pa.array(none), np.arange(focus.n, dtype=_I64), focus.n)

            return empty, _Node("boolean")
        if name == "not" and not args:

            def not_(space: _Space, focus: _Col) -> _Col:
                return _per_row(pc.invert(_truth(base(space, focus))), focus.n)

            return not_, _Node("boolean")
        if name == "join" and len(args) <= 1:
            return self.join(base, bst, args)
        if name == "toString" and not args:
            if bst is None or bst.kind not in ("string", "boolean"):
                raise Unsupported("toString() of a value that is not a string or boolean")
            return self.to_string(base), _Node("string")
        if name == "getResourceKey" and not args:
            return self.member(base, bst, "id")
        if name == "getReferenceKey" and len(args) <= 1:
            wanted = normalize_type(type_name_of(args[0])) if args else None
            return self.reference_key(base, bst, wanted), _Node("string")
        if name == "extension" and len(args) == 1:
            return self.extension(base, bst, args[0])
        raise Unsupported(f"{name}()")

    def of_type(
        self, base_node: Node, args: list[Node], st: _Node | None
    ) -> tuple[Eval, _Node | None]:
        if len(args) != 1:
            raise Unsupported("ofType() arguments")
        if base_node[0] == "member":
            parent, pst = self.compile(base_node[1], st)
            element = base_node[2]
        else:
            parent, pst = (lambda space, focus: focus), st
            element = base_node[1]
        if pst is None or pst.kind in _PRIMITIVES:
            raise Unsupported("ofType() on a value of unknown type")
        if element not in CHOICE_ELEMENTS:
            raise Unsupported("ofType() on an element that is not a choice")
        defined = _elements().get(pst.kind, {})
        if element in defined:
            raise Unsupported(f"ofType() on {pst.kind}.{element}, which is not a choice")
        wanted = normalize_type(type_name_of(args[0]))
        if "." in wanted:
            raise Unsupported("a qualified type")
        candidates = [element + kind[0].upper() + kind[1:] for kind in subtypes(wanted)]
        keys = [key for key in candidates if key in defined]
        for key in [element, *candidates]:
            pst.guard(key)
        if not keys:
            return _empty, None
        children = [pst.child(key) for key in keys]
        if len({(c.kind, c.is_list) for c in children}) > 1 or (
            len(children) > 1 and children[0].kind not in _PRIMITIVES
        ):
            raise Unsupported("ofType() reaching elements of different shapes")
        flags = [(key, c.is_list) for key, c in zip(keys, children, strict=True)]

        def of_type(space: _Space, focus: _Col) -> _Col:
            items = parent(space, focus)
            found = [_member(items, key, is_list) for key, is_list in flags]
            if len(found) == 1:
                return found[0]
            return _merge(found, focus.n)  # one value per element at most: row order is item order

        return of_type, children[0]

    def first_of_union(self, node: Node, st: _Node | None) -> tuple[Eval, _Node | None]:
        operands = union_operands(node)
        compiled = [self.compile(operand, st) for operand in operands]
        kinds = {s.kind for _, s in compiled if s is not None}
        if len(kinds) > 1 and not kinds <= {"integer", "decimal"}:
            raise Unsupported("a union of values of different types")
        result_type = None
        for _, s in compiled:
            if s is not None:
                result_type = s if len(kinds) == 1 else _Node("decimal")
                break
        evaluators = [e for e, _ in compiled]

        def first(space: _Space, focus: _Col) -> _Col:
            n = focus.n
            filled = np.zeros(n, dtype=bool)
            pieces = []
            for evaluate in evaluators:
                col = _first(evaluate(space, focus))
                if not len(col.parent):
                    continue
                take = ~filled[col.parent]
                if not take.any():
                    continue
                chosen = col if take.all() else _Col(col.values.filter(take), col.parent[take], n)
                filled[chosen.parent] = True
                pieces.append(chosen)
            if not pieces:
                return _Col(pa.nulls(0), np.zeros(0, dtype=_I64), n)
            if len(pieces) == 1:
                return pieces[0]
            return _merge(pieces, n)

        return first, result_type

    def where(self, base: Eval, st: _Node | None, criteria: Node) -> Eval:
        test, _ = self.compile(criteria, st)

        def where(space: _Space, focus: _Col) -> _Col:
            items = base(space, focus)
            if not len(items.parent):
                return items
            inner = space.sub(items)
            keep = _truth(test(inner, inner.focus())).fill_null(False)
            keep_np = keep.to_numpy(zero_copy_only=False)
            return _Col(items.values.filter(keep), items.parent[keep_np], items.n)

        return where

    def join(self, base: Eval, st: _Node | None, args: list[Node]) -> tuple[Eval, _Node | None]:
        separator = ""
        if args:
            if args[0][0] != "lit" or len(args[0][1]) != 1 or args[0][1][0].__class__ is not str:
                raise Unsupported("join() with a separator that is not a string literal")
            separator = args[0][1][0]
        if st is not None and st.kind != "string":
            raise Unsupported("join() of values that are not strings")

        def join(space: _Space, focus: _Col) -> _Col:
            col = base(space, focus)
            n = focus.n
            offsets = np.zeros(n + 1, dtype=np.int32)
            np.cumsum(_counts(col), out=offsets[1:])
            values = col.values if len(col.values) else pa.array([], type=pa.string())
            lists = pa.ListArray.from_arrays(pa.array(offsets), values)
            return _Col(pc.binary_join(lists, separator), np.arange(n, dtype=_I64), n)

        return join, _Node("string")

    def to_string(self, base: Eval) -> Eval:
        def to_string(space: _Space, focus: _Col) -> _Col:
            col = base(space, focus)
            if not col.single():
                raise Fallback("toString() of several values")
            if pa.types.is_boolean(col.values.type):
                text = pc.if_else(col.values, "true", "false")
                return _Col(text, col.parent, col.n)
            return col

        return to_string

    def reference_key(self, base: Eval, st: _Node | None, wanted: str | None) -> Eval:
        if st is None or st.kind in _PRIMITIVES:
            raise Unsupported("getReferenceKey() of a value that is not a Reference")
        st.child("reference")

        def key(space: _Space, focus: _Col) -> _Col:
            refs = _member(base(space, focus), "reference", False)
            if not len(refs.values):
                return refs
            if pc.any(pc.match_substring(refs.values, "\n")).as_py():
                raise Fallback("a reference with a line break")
            parts = pc.extract_regex(refs.values, _REFERENCE_RE2)
            ids = pc.struct_field(parts, "id")  # null where nothing matched (field() ignores that)
            keep = ids.is_valid()
            if wanted is not None:
                keep = pc.and_(
                    keep, pc.equal(pc.struct_field(parts, "type"), wanted).fill_null(False)
                )
            keep_np = keep.to_numpy(zero_copy_only=False)
            return _Col(ids.filter(keep), refs.parent[keep_np], refs.n)

        return key

    def extension(self, base: Eval, st: _Node | None, url_node: Node) -> tuple[Eval, _Node | None]:
        if url_node[0] != "lit" or len(url_node[1]) != 1 or url_node[1][0].__class__ is not str:
            raise Unsupported("extension() with a url that is not a string literal")
        url = url_node[1][0]
        ext_eval, ext = self.member(base, st, "extension")
        assert ext is not None
        ext.child("url")

        def extension(space: _Space, focus: _Col) -> _Col:
            items = ext_eval(space, focus)
            if not len(items.parent):
                return items
            keep = pc.equal(items.values.field("url"), url).fill_null(False)
            return _Col(
                items.values.filter(keep),
                items.parent[keep.to_numpy(zero_copy_only=False)],
                items.n,
            )

        return extension, ext

    def binary(self, node: Node, st: _Node | None) -> tuple[Eval, _Node | None]:
        _, op, left_node, right_node = node
        if op in ("and", "or"):
            left, _ = self.compile(left_node, st)
            right, _ = self.compile(right_node, st)
            combine = pc.and_kleene if op == "and" else pc.or_kleene

            def logic(space: _Space, focus: _Col) -> _Col:
                a = _truth(left(space, focus))
                b = _truth(right(space, focus))
                return _per_row(combine(a, b), focus.n)

            return logic, _Node("boolean")
        if op in ("=", "!="):
            return self.equality(left_node, right_node, st, negate=op == "!=")
        raise Unsupported(f"operator {op}")

    def equality(
        self, left_node: Node, right_node: Node, st: _Node | None, *, negate: bool
    ) -> tuple[Eval, _Node | None]:
        literal = _literal_of(right_node, self.constants)
        if literal is None or literal.__class__ not in (str, bool):
            raise Unsupported("= or != against something other than a string or boolean")
        left, lst = self.compile(left_node, st)
        kind = "string" if literal.__class__ is str else "boolean"
        if lst is None or lst.kind not in _PRIMITIVES:
            raise Unsupported("= of a complex value")

        def equals(space: _Space, focus: _Col) -> _Col:
            col = left(space, focus)
            n = focus.n
            counts = _counts(col)
            if lst.kind == kind:
                same = pc.equal(col.values, literal).to_numpy(zero_copy_only=False)
            else:
                same = np.zeros(len(col.parent), dtype=bool)
            result = np.zeros(n, dtype=bool)
            result[col.parent[same]] = True
            result &= counts == 1
            if negate:
                result = ~result
            return _per_row(pa.array(result, mask=counts == 0), n)

        return equals, _Node("boolean")


# RE2 version of the closure engine's reference pattern (same groups, named).
_REFERENCE_RE2 = _REFERENCE.pattern.replace("([A-Z]", "(?P<type>[A-Z]", 1).replace(
    "/([A-Za-z0-9", "/(?P<id>[A-Za-z0-9", 1
)


def _from_resource(node: Node) -> bool:
    """Whether a member/call chain starts at ``%resource`` (or ``%rootResource``, ``%context``)."""
    while node[0] in ("member", "call") and node[1] is not None:
        node = node[1]
    return node[0] == "var" and node[1] in ("resource", "rootResource", "context")


def _literal_of(node: Node, constants: Mapping[str, list[Any]]) -> Any:
    if node[0] == "lit" and len(node[1]) == 1:
        return node[1][0]
    if node[0] == "var" and node[1] in constants and len(constants[node[1]]) == 1:
        value = constants[node[1]][0]
        return None if value.__class__ is Typed else value
    return None


def _literal_type(value: Any) -> _Node | None:
    if value.__class__ is bool:
        return _Node("boolean")
    if value.__class__ is str:
        return _Node("string")
    if value.__class__ is int:
        return _Node("integer")
    if value.__class__ is Decimal:
        raise Unsupported("a decimal literal")
    return None


# --- rows ---------------------------------------------------------------------------------


@dataclass
class _Rows:
    """Rows produced for a space: the row of the space each came from (sorted) and the columns."""

    parent: np.ndarray
    columns: list[pa.Array]


Producer = Callable[[_Space], _Rows]


def _take_rows(rows: _Rows, index: np.ndarray) -> list[pa.Array]:
    if len(index) == len(rows.parent) and (index == np.arange(len(index))).all():
        return rows.columns
    taken = pa.array(index)
    return [c.take(taken) for c in rows.columns]


def _product(parts: list[_Rows], n: int) -> _Rows:
    """Rows of sibling selects: per row of the space, the Cartesian product, first part major."""
    result = parts[0]
    for part in parts[1:]:
        ca = np.bincount(result.parent, minlength=n)
        cb = np.bincount(part.parent, minlength=n)
        if (ca == 1).all() and (cb == 1).all():
            result = _Rows(result.parent, result.columns + part.columns)
            continue
        sa = np.concatenate([[0], np.cumsum(ca)[:-1]]).astype(_I64)
        sb = np.concatenate([[0], np.cumsum(cb)[:-1]]).astype(_I64)
        counts = ca * cb
        parent = np.repeat(np.arange(n, dtype=_I64), counts)
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(_I64)
        k = np.arange(len(parent), dtype=_I64) - starts[parent]
        width = cb[parent]
        ia = sa[parent] + k // np.maximum(width, 1)
        ib = sb[parent] + k % np.maximum(width, 1)
        result = _Rows(parent, _take_rows(result, ia) + _take_rows(part, ib))
    return result


def _union(branches: list[_Rows]) -> _Rows:
    parents = np.concatenate([b.parent for b in branches])
    order = np.argsort(parents, kind="stable")
    columns = []
    for i in range(len(branches[0].columns)):
        columns.append(_concat([b.columns[i] for b in branches]).take(pa.array(order)))
    return _Rows(parents[order], columns)


@dataclass
class _Out:
    """A column's evaluator and its declared type, for the conversion of its values."""

    column: Column
    evaluate: Eval


class _ViewCompiler:
    def __init__(self, view: CompiledView, definition: Mapping[str, Any]) -> None:
        self.view = view
        self.root = _Node(view.resource)
        self.root.children["resourceType"] = _Node("string")
        self.constants = _view_constants(definition)
        self.fhirpath = _Compiler(self.root, self.constants)
        self.columns: list[_Out] = []
        self.by_name = {c.name: c for c in view.columns}
        #: per column, the FHIR kinds its paths give (undeclared columns take their values' type)
        self.kinds: dict[str, set[str | None]] = {}

    def path(self, text: str, st: _Node) -> tuple[Eval, _Node | None]:
        return self.fhirpath.compile(parse(text), st)

    def select(self, select: Mapping[str, Any], st: _Node) -> tuple[Producer, int]:
        parts: list[Callable[[_Space], _Rows]] = []
        width = 0
        inner_st = st
        iterate: Eval | None = None
        or_null = False
        if "repeat" in select:
            raise Unsupported("repeat")
        for key in ("forEach", "forEachOrNull"):
            if key in select:
                iterate, found = self.path(select[key], st)
                if found is None:
                    raise Unsupported(f"{key} over values of unknown type")
                inner_st = found
                or_null = key == "forEachOrNull"
        columns = select.get("column") or []
        if columns:
            outs = []
            for column in columns:
                evaluate, kind = self.path(column["path"], inner_st)
                self.kinds.setdefault(column["name"], set()).add(kind.kind if kind else None)
                outs.append(_Out(self.by_name[column["name"]], evaluate))
            width += len(outs)
            parts.append(self.column_block(outs))
        for nested in select.get("select") or []:
            produce, w = self.select(nested, inner_st)
            width += w
            parts.append(produce)
        union = select.get("unionAll")
        if union:
            branches = []
            w = 0
            for branch in union:
                produce, w = self.select(branch, inner_st)
                branches.append(produce)
            width += w
            parts.append(lambda space: _union([b(space) for b in branches]))

        def body(space: _Space) -> _Rows:
            return _product([part(space) for part in parts], space.n)

        if iterate is None:
            return body, width
        final_width = width

        def for_each(space: _Space) -> _Rows:
            items = iterate(space, space.focus())
            inner = space.sub(items)
            rows = body(inner)
            parent = items.parent[rows.parent]
            if not or_null:
                return _Rows(parent, rows.columns)
            missing = np.flatnonzero(_counts(items) == 0).astype(_I64)
            if not len(missing):
                return _Rows(parent, rows.columns)
            nulls = _Rows(missing, [pa.nulls(len(missing), c.type) for c in rows.columns])
            return _union([_Rows(parent, rows.columns), nulls]) if final_width else nulls

        return for_each, width

    def column_block(self, outs: list[_Out]) -> Producer:
        def block(space: _Space) -> _Rows:
            focus = space.focus()
            arrays = []
            for out in outs:
                col = out.evaluate(space, focus)
                arrays.append(_ColumnValue(col, out.column.collection).array())
            return _Rows(np.arange(space.n, dtype=_I64), arrays)

        return block


class _ColumnValue:
    """A column's collection per row, as the Arrow array the view row holds before conversion."""

    def __init__(self, col: _Col, collection: bool) -> None:
        self.col = col
        self.collection = collection

    def array(self) -> pa.Array:
        col = self.col
        if not self.collection:
            return _scatter(col)
        offsets = np.zeros(col.n + 1, dtype=np.int32)
        np.cumsum(_counts(col), out=offsets[1:])
        return pa.ListArray.from_arrays(pa.array(offsets), col.values)


#: Constant types the Arrow engine compares (the rest: the closure engine).
_PLAIN_CONSTANTS = {
    "valueString", "valueCode", "valueId", "valueUri", "valueUrl", "valueCanonical",
    "valueBoolean", "valueInteger", "valuePositiveInt", "valueUnsignedInt",
}  # fmt: skip


def _view_constants(definition: Mapping[str, Any]) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {}
    for constant in definition.get("constant") or []:
        key = next(k for k in constant if k.startswith("value"))
        if key not in _PLAIN_CONSTANTS:
            raise Unsupported(f"a constant {key}")
        out[constant["name"]] = [constant[key]]
    return out


# --- conversion to the declared column types (as :mod:`.table` does it) -------------------


def _convert(values: pa.Array, type_name: str) -> tuple[pa.Array, int]:
    """``values`` as the Arrow type of FHIR ``type_name``, with how many did not fit (now null)."""
    kind = values.type
    if pa.types.is_null(kind):
        from .table import arrow_type

        return pa.nulls(len(values), arrow_type(type_name)), 0
    if type_name == "boolean":
        target = pa.bool_()
        fits = pa.types.is_boolean(kind)
    elif type_name in _INTEGER:
        target = pa.int64()
        if pa.types.is_int64(kind):
            return values, 0
        if pa.types.is_float64(kind):
            whole = pc.equal(pc.floor(values), values)
            big = pc.greater_equal(pc.abs(values), 2.0**63).fill_null(False)
            if pc.any(big).as_py():
                raise Fallback("an integer beyond 64 bits")
            bad = pc.sum(pc.invert(whole).cast(pa.int64())).as_py() or 0
            return pc.if_else(whole, values, pa.scalar(None, pa.float64())).cast(pa.int64()), bad
        fits = False
    elif type_name == "decimal":
        target = pa.float64()
        if pa.types.is_float64(kind):
            return values, 0
        if pa.types.is_int64(kind):
            return values.cast(pa.float64()), 0
        fits = False
    else:
        target = pa.string()
        fits = pa.types.is_string(kind)
    if fits:
        return values, 0
    return pa.nulls(len(values), target), len(values) - values.null_count


def _convert_column(array: pa.Array, column: Column) -> tuple[pa.Array, int]:
    assert column.type is not None
    if not column.collection:
        return _convert(array, column.type)
    lengths = pc.list_value_length(array).fill_null(0).to_numpy()
    offsets = np.zeros(len(array) + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    converted, bad = _convert(array.flatten(), column.type)
    mask = array.is_null() if array.null_count else None
    return pa.ListArray.from_arrays(pa.array(offsets), converted, mask=mask), bad


# --- the public face -----------------------------------------------------------------------


@dataclass
class VectorView:
    """A view compiled for the Arrow engine: read schema, row producer, columns."""

    view: CompiledView
    read_schema: pa.Schema
    _produce: Producer = field(repr=False)
    _where: list[Eval] = field(repr=False)
    _choices: _ChoiceCheck = field(repr=False, default_factory=lambda: _ChoiceCheck([], {}))

    @property
    def columns(self) -> list[Column]:
        return self.view.columns

    def read(self, lines: Sequence[bytes]) -> tuple[pa.StructArray, np.ndarray]:
        """The resources of NDJSON ``lines`` that may be of the view's type, and their line numbers.

        A line without the type's name in quotes (and without ``\\u`` escapes,
        which could spell it) is of another type and skipped unparsed. Raises
        :class:`Fallback` when a line is not read exactly as the closure engine
        reads it (not a JSON object, wrong types or cardinality).
        """
        quoted = f'"{self.view.resource}"'.encode()
        index = [i for i, line in enumerate(lines) if quoted in line or b"\\u" in line]
        if len(index) != len(lines):
            lines = [lines[i] for i in index]
        if not lines:
            empty = self.read_schema.empty_table().to_struct_array().combine_chunks()
            return empty, np.zeros(0, dtype=_I64)
        data = b"\n".join(lines)
        table = _parse(data, self.read_schema)
        if table.num_rows != len(lines):
            raise Fallback("a line that is not one JSON object")
        resources = table.to_struct_array().combine_chunks()
        self._choices.check(resources, data)
        return resources, np.asarray(index, dtype=_I64)

    def read_block(self, data: bytes | bytearray | memoryview) -> pa.StructArray:
        """The resources of a block of NDJSON bytes whose every line is one of the view's type.

        No Python work per line: the block is parsed whole (on all cores). It
        gives what :meth:`read` gives for the block's lines when each line is
        one ``{...}`` object (checked by counting, see :func:`object_lines`)
        of the view's type; any other block raises :class:`Fallback`, and the
        caller reads it line by line.
        """
        lines = object_lines(data)
        if lines is None:
            raise Fallback("a line that is not one {...} object")
        table = _parse(data, self.read_schema)
        if table.num_rows != lines:
            raise Fallback("a line that is not one JSON object")
        resources = table.to_struct_array().combine_chunks()
        kinds = resources.field("resourceType")
        if kinds.null_count or not pc.all(pc.equal(kinds, self.view.resource)).as_py():
            raise Fallback("a line of another type")
        self._choices.check(resources, data)
        return resources

    def check_choices(
        self, resources: pa.StructArray, data: bytes | bytearray | memoryview | None
    ) -> None:
        """:class:`Fallback` unless the closure engine reads no key here that this engine skips.

        Where a choice name the view navigates is absent (``Observation.subject``,
        Quantity's ``value``), the closure engine reads any ``name[X...]`` key in
        its place. ``data``: the NDJSON or JSON the resources were parsed from
        (more is fine: only stricter), whose ``"name[A-Z]`` keys are counted
        against the ones read; without it, any such absence hands the data back.
        :meth:`read` and :meth:`read_block` check their resources this way.
        """
        self._choices.check(resources, data)

    def rows(
        self, resources: pa.StructArray, *, choices_checked: bool = False
    ) -> tuple[np.ndarray, list[pa.Array], dict[str, int]]:
        """``(resource row of each view row, converted columns, warnings per column)``.

        ``resources`` from :meth:`read` or :meth:`read_block` (``choices_checked``);
        others are checked here as :meth:`check_choices` does without the data.
        """
        if not choices_checked:
            self._choices.check(resources, None)
        keep = pc.equal(resources.field("resourceType"), self.view.resource).fill_null(False)
        chosen = np.flatnonzero(keep.to_numpy(zero_copy_only=False)).astype(_I64)
        values = resources.take(pa.array(chosen)) if len(chosen) != len(resources) else resources
        space = _Space(values, np.arange(len(values), dtype=_I64), values, {})
        for test in self._where:
            col = test(space, space.focus())
            if len(col.values) and not pa.types.is_boolean(col.values.type):
                raise Fallback("a where path that is not boolean")
            passed = _truth(col).fill_null(False).to_numpy(zero_copy_only=False)
            if not passed.all():
                sub = np.flatnonzero(passed).astype(_I64)
                chosen = chosen[sub]
                values = values.take(pa.array(sub))
                space = _Space(values, np.arange(len(values), dtype=_I64), values, {})
        rows = self._produce(space)
        warnings: dict[str, int] = {}
        arrays = []
        for column, array in zip(self.view.columns, rows.columns, strict=True):
            if column.type is None:  # typed by the converter (see vector_batch)
                arrays.append(array)
                continue
            converted, bad = _convert_column(array, column)
            if bad:
                warnings[column.name] = bad
            arrays.append(converted)
        return chosen[rows.parent], arrays, warnings


def compile_vector(view: Mapping[str, Any] | CompiledView) -> VectorView:
    """Compile a ViewDefinition for the Arrow engine; :class:`Unsupported` if it cannot be.

    The view is validated by :func:`~.definition.compile_view` first, so an
    invalid view raises :class:`~.errors.ViewDefinitionError` as before.
    """
    compiled = view if isinstance(view, CompiledView) else compile_view(view)
    definition = compiled.definition
    if definition is None:
        raise Unsupported("a view compiled without its definition")
    for column in compiled.columns:
        if column.type is not None and column.type[:1].isupper():
            raise Unsupported(f"column {column.name}: a complex type (JSON text)")
    builder = _ViewCompiler(compiled, definition)
    builder.root.child("id")
    producers = []
    for select in definition["select"]:
        produce, _ = builder.select(select, builder.root)
        producers.append(produce)
    for column in compiled.columns:
        kinds = builder.kinds.get(column.name, set()) - {None}
        # an undeclared column is typed by its values: the same Arrow type only when the
        # path's FHIR kind maps one to one (a JSON 5 under decimal is an int to the closures)
        if column.type is None and not kinds <= {"boolean", "integer", "string"}:
            raise Unsupported(f"column {column.name}: no declared type, values of kind {kinds}")
        if column.type is None and len(kinds) > 1:
            raise Unsupported(f"column {column.name}: no declared type, values of kinds {kinds}")
    where = [builder.path(w["path"], builder.root)[0] for w in definition.get("where") or []]
    schema = pa.schema([pa.field(n, c.arrow()) for n, c in sorted(builder.root.children.items())])

    def produce_all(space: _Space) -> _Rows:
        return _product([p(space) for p in producers], space.n)

    return VectorView(compiled, schema, produce_all, where, _choice_check(builder.root))


# --- batches: the fast path per chunk, the closure engine for the chunks it hands back -----


@dataclass
class EngineStats:
    """How many chunks each engine converted (and why the last fallback happened)."""

    vector_chunks: int = 0
    closure_chunks: int = 0
    last_fallback: str = ""


def vector_batch(
    vector: VectorView,
    lines: Sequence[bytes],
    converter: TableConverter,
    skipped: Callable[[list[int]], None] | None = None,
) -> pa.RecordBatch | None:
    """The view's rows of NDJSON ``lines`` as one batch of ``converter``'s schema (None: no rows).

    ``skipped`` receives the positions of the lines left unparsed as another
    type's (to check them otherwise). Raises :class:`Fallback` (before touching
    ``converter``) when the closure engine must convert these lines instead.
    """
    resources, index = vector.read(lines)
    parent, arrays, warnings = vector.rows(resources, choices_checked=True)
    arrays = _undeclared(arrays, converter)
    if skipped is not None and len(index) != len(lines):
        kept = set(index.tolist())
        skipped([i for i in range(len(lines)) if i not in kept])
    for name, count in warnings.items():
        converter.warnings[name] = converter.warnings.get(name, 0) + count
    if not len(parent):
        return None
    return pa.RecordBatch.from_arrays(arrays, schema=converter.schema())


def _undeclared(arrays: list[pa.Array], converter: TableConverter) -> list[pa.Array]:
    """Columns without a declared type, typed as the converter types them (by the first value).

    The converter fixes such a column's type on the first batch with a value;
    a later batch of another type raises :class:`Fallback` (the closure engine
    converts it to the fixed type), before the converter is changed.
    """
    from .table import _loose

    fixes: dict[int, pa.DataType] = {}
    out = list(arrays)
    for i, column in enumerate(converter.columns):
        if column.type is not None:
            continue
        array = arrays[i]
        fixed = converter._types[i]
        if column.collection:
            items = array.flatten()
            kind = items.type
            empty = items.null_count == len(items)
        else:
            kind = array.type
            empty = array.null_count == len(array)
        if empty:  # nothing to type by: as the converter, null (or [] once typed)
            if fixed is None:
                out[i] = pa.nulls(
                    len(array), pa.list_(pa.string()) if column.collection else pa.string()
                )
            elif column.collection:
                out[i] = array.cast(pa.list_(fixed))
            else:
                out[i] = pa.nulls(len(array), fixed)
            continue
        if fixed is None:
            fixes[i] = kind
        elif fixed != kind:
            raise Fallback(f"column {column.name}: values of another type than before")
    for i, kind in fixes.items():
        converter._types[i] = kind
        converter._converters[i] = _loose(kind)
    return out


#: A chunk of NDJSON: its lines, how to get its resources for the closure engine, and what to
#: do with the lines the Arrow engine skipped as another type's (``None``: nothing).
Chunk = tuple[Sequence[bytes], Callable[[], Iterable[Any]], Callable[[list[int]], None] | None]


def closure_rows(
    view: CompiledView, resources: Iterable[Any], converter: TableConverter
) -> list[tuple[Any, ...]]:
    """The closure engine's rows of ``resources`` (a too deeply nested one is counted, skipped)."""
    rows: list[tuple[Any, ...]] = []
    deep = "<resource too deeply nested>"
    for resource in resources:
        try:
            rows.extend(view.rows(resource))
        except RecursionError:
            converter.warnings[deep] = converter.warnings.get(deep, 0) + 1
    return rows


def chunk_batches(
    view: CompiledView,
    vector: VectorView | None,
    chunks: Iterable[Chunk],
    converter: TableConverter,
    stats: EngineStats | None = None,
) -> Iterator[pa.RecordBatch]:
    """Batches of ``chunks`` (NDJSON lines, and how to get their resources for the closure engine).

    Each chunk goes through ``vector`` when given; a chunk it hands back
    (:class:`Fallback`) goes through the closure engine, whole.
    """
    from .gcpause import gc_paused

    stats = stats if stats is not None else EngineStats()
    for lines, resources, skipped in chunks:
        if vector is not None:
            try:
                batch = vector_batch(vector, lines, converter, skipped)
            except Fallback as exc:
                stats.last_fallback = str(exc)[:200]
            else:
                stats.vector_chunks += 1
                if batch is not None:
                    yield batch
                continue
        stats.closure_chunks += 1
        with gc_paused():
            rows = closure_rows(view, resources(), converter)
            batch = converter.batch(rows) if rows else None
        if batch is not None:
            yield batch


#: A block of NDJSON bytes, the chunk its lines make (for when the block is not read whole),
#: and what to tell when it is read whole (its number of lines).
Block = tuple[bytes | bytearray | memoryview, Callable[[], Chunk], Callable[[int], None]]


def block_batches(
    view: CompiledView,
    vector: VectorView,
    blocks: Iterable[Block],
    converter: TableConverter,
    stats: EngineStats | None = None,
) -> Iterator[pa.RecordBatch]:
    """Batches of NDJSON ``blocks``: each read whole when it can be (see :meth:`VectorView.read_block`).

    A block that cannot (a line of another type, a blank or odd line, data the
    fast path does not read exactly) becomes its chunk of lines and goes
    through :func:`chunk_batches`, which reads it as it reads any chunk. Every
    block gives the rows its lines give there.
    """
    stats = stats if stats is not None else EngineStats()
    for data, chunk, whole in blocks:
        try:
            resources = vector.read_block(data)
            parent, arrays, warnings = vector.rows(resources, choices_checked=True)
            arrays = _undeclared(arrays, converter)
        except Fallback as exc:
            stats.last_fallback = str(exc)[:200]
            yield from chunk_batches(view, vector, [chunk()], converter, stats)
            continue
        stats.vector_chunks += 1
        whole(len(resources))
        for name, count in warnings.items():
            converter.warnings[name] = converter.warnings.get(name, 0) + count
        if len(parent):
            yield pa.RecordBatch.from_arrays(arrays, schema=converter.schema())


def try_compile(view: CompiledView) -> tuple[VectorView | None, str]:
    """The Arrow engine's form of ``view``, or ``None`` and the reason it has none."""
    try:
        return compile_vector(view), ""
    except Unsupported as exc:
        return None, str(exc)
