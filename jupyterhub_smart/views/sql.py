"""A ViewDefinition compiled to one DuckDB query over NDJSON files (the vectorised engine).

The Python engine (:mod:`.definition`) evaluates a view resource by resource;
this module translates the same view into a single SQL query over
``read_ndjson_objects`` so that DuckDB parses and flattens the files in C++,
in parallel, with bounded memory.

Exactness comes first. The translation covers a subset of FHIRPath and of the
view model (navigation, ``first()``, ``exists()``, ``empty()``, ``where()``,
``join()``, ``ofType()`` on choice elements, ``extension(url)``,
``getResourceKey()``, ``getReferenceKey([type])``, ``toString()``, ``not()``,
``and``/``or``, ``=``/``!=`` against a string, ``(a | b).first()``, string,
integer and boolean constants, ``forEach``, ``forEachOrNull``, nested selects
and ``unionAll``) and refuses anything else with :class:`Unsupported`, so the
caller runs the Python engine instead. Data the translation cannot treat
exactly as the Python engine does (a non-string ``use``, a choice element
reached without ``ofType``, several values in a single-valued column, a
non-boolean ``where``) stops the query with a DuckDB error; the caller then
reruns the view on the Python engine, which gives the exact result or the
exact error. Each column's type conversion is the one of :mod:`.table`, and
values that do not fit are null and counted in hidden ``__bad_N`` columns.
"""

# ruff: noqa: S608 - the query is generated: every name and string in it goes through _quote/_ident
from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .definition import Column, compile_view
from .fhirtypes import CHOICE_ELEMENTS, normalize_type, subtypes
from .parser import Node, parse, union_operands
from .table import _INTEGER

__all__ = ["SqlView", "Unsupported", "compile_sql"]

#: The marker of every error raised on purpose: "run this view on the Python engine".
FALLBACK = "jupyterhub_smart: needs the python engine"

_MACROS = [
    # the values of key k of JSON value x, as FHIRPath navigation gives them (arrays unrolled, nulls
    # dropped); a choice element reached without its suffix is left to the Python engine
    # the items of JSON value v (an element's value) as FHIRPath sees them: arrays unrolled,
    # nulls dropped
    """CREATE OR REPLACE MACRO fp_items(v) AS
    CASE
      WHEN json_type(v) = 'ARRAY'
        THEN list_filter(json_extract(v, '$[*]'), lambda e: json_type(e) <> 'NULL')
      WHEN coalesce(json_type(v), 'NULL') <> 'NULL' THEN [v]
      ELSE []::JSON[]
    END""",
    # navigation to key k of x; a choice element reached without its suffix (k missing, kX
    # present) is left to the Python engine
    """CREATE OR REPLACE MACRO fp_step(x, k, choice) AS
    CASE
      WHEN choice AND coalesce(json_type(json_extract(x, k)), 'NULL') = 'NULL'
           AND json_type(x) = 'OBJECT'
           AND len(list_filter(json_keys(x), lambda key: starts_with(key, k)
                                              AND len(key) > len(k))) > 0
        THEN error('"""
    + FALLBACK
    + """: choice element')
      ELSE fp_items(json_extract(x, k))
    END""",
    # FHIRPath singleton evaluation as a boolean (NULL = empty; a non-boolean value is true)
    """CREATE OR REPLACE MACRO fp_truth(c) AS
    CASE len(c) WHEN 0 THEN NULL::BOOLEAN
      WHEN 1 THEN (CASE WHEN json_type(c[1]) = 'BOOLEAN' THEN c[1]::BOOLEAN ELSE true END)
      ELSE error('"""
    + FALLBACK
    + """: several values as a boolean') END""",
]


class Unsupported(Exception):
    """The view uses something this translation does not cover exactly."""


@dataclass(frozen=True)
class SqlView:
    """A view as SQL: ``query(source)`` selects its columns, then ``__bad_N`` counts."""

    columns: list[Column]
    _rows: str
    _where: list[str]
    resource: str
    _root_keys: tuple[str, ...]

    def query(self, source: str) -> str:
        """The query over ``source``, a relation with one JSON column ``r`` per line."""
        conditions = [f"r ->> 'resourceType' = {_quote(self.resource)}", *self._where]
        paths = ", ".join(_quote("$." + json.dumps(key)) for key in self._root_keys)
        source = f"(SELECT r, json_extract(r, [{paths}]) AS rk FROM {source})"
        select = ", ".join(
            [f"row.c{i} AS {_ident(c.name)}" for i, c in enumerate(self.columns)]
            + [f"row.b{i} AS __bad_{i}" for i in range(len(self.columns))]
        )
        return (
            f"SELECT {select} FROM (SELECT unnest({self._rows}) AS row FROM {source} "
            f"WHERE json_type(r) = 'OBJECT' AND {' AND '.join(conditions)})"
        )


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _json_literal(value: Any) -> str:
    return f"{_quote(json.dumps(value))}::JSON"


def _let(value: str, body: Any) -> str:
    """``body(name)`` with ``name`` bound to ``value``: SQL text that repeats a name, not a subquery.

    Repeating the text of a sub-expression would grow the query exponentially with the
    nesting of paths; a one-item ``list_transform`` evaluates it once.
    """
    name = _var()
    return f"(list_transform([{value}], lambda {name}: {body(name)})[1])"


def install_macros(connection: Any) -> None:
    """Create the helper macros in ``connection`` (a DuckDB connection)."""
    for macro in _MACROS:
        connection.execute(macro)


# --- expressions ----------------------------------------------------------------------
# Every expression compiles to a SQL expression of type JSON[]: the FHIRPath collection.

_FN = [0]


def _var() -> str:
    _FN[0] += 1
    return f"v{_FN[0]}"


class _Expr:
    def __init__(self, constants: Mapping[str, list[Any]]) -> None:
        self.constants = constants
        #: top-level keys read once per resource (``rk[i]``), in order of first use
        self.root_keys: dict[str, int] = {}

    def root(self, key: str) -> str:
        """The value of the resource's top-level ``key`` (JSON, NULL when absent)."""
        index = self.root_keys.setdefault(key, len(self.root_keys) + 1)
        return f"rk[{index}]"

    def compile(self, node: Node, focus: str, single: str | None) -> str:
        """SQL (JSON[]) of ``node`` on collection ``focus`` (``single``: its one item, if known)."""
        kind = node[0]
        if kind == "id":
            return self.step(focus, single, node[1])
        if kind == "member":
            if node[1] == ("var", "resource"):
                return self.step("[r]", "r", node[2])
            base = self.compile(node[1], focus, single)
            return self.step(base, None, node[2])
        if kind == "var":
            name = node[1]
            if name == "resource":
                return "[r]"
            if name in self.constants:
                return self.literal(self.constants[name])
            raise Unsupported(f"%{name}")
        if kind == "lit":
            return self.literal(node[1])
        if kind == "this":
            return focus
        if kind == "call":
            return self.call(node, focus, single)
        if kind == "bin":
            return self.binary(node, focus, single)
        raise Unsupported(kind)

    def literal(self, values: list[Any]) -> str:
        items = []
        for value in values:
            if value.__class__ not in (str, int, bool):
                raise Unsupported(f"literal {value!r}")
            items.append(_json_literal(value))
        return f"[{', '.join(items)}]::JSON[]"

    def step(self, focus: str, single: str | None, name: str) -> str:
        if name[:1].isupper():
            raise Unsupported("a type name as a path step")
        choice = "true" if name in CHOICE_ELEMENTS else "false"
        if single == "r":
            value = self.root(name)
            if name not in CHOICE_ELEMENTS:
                return f"fp_items({value})"
            return (
                f"(CASE WHEN coalesce(json_type({value}), 'NULL') = 'NULL' AND len(list_filter("
                f"json_keys(r), lambda key: starts_with(key, {_quote(name)}) AND len(key) > "
                f"{len(name)})) > 0 THEN error('{FALLBACK}: choice element') "
                f"ELSE fp_items({value}) END)"
            )
        if single is not None:
            return f"fp_step({single}, {_quote(name)}, {choice})"
        x = _var()
        return (
            f"flatten(list_transform({focus}, lambda {x}: fp_step({x}, {_quote(name)}, {choice})))"
        )

    def truth(self, node: Node, focus: str, single: str | None) -> str:
        """``node`` as a SQL BOOLEAN (NULL = empty), FHIRPath's singleton evaluation."""
        kind = node[0]
        if kind == "bin" and node[1] in ("and", "or"):
            left = self.truth(node[2], focus, single)
            right = self.truth(node[3], focus, single)
            return f"({left} {node[1].upper()} {right})"
        if kind == "call" and node[2] in ("exists", "empty") and len(node[3]) <= 1:
            if node[2] == "empty" and node[3]:
                raise Unsupported("empty() with an argument")
            base = self.compile(node[1], focus, single) if node[1] is not None else focus
            if node[3]:
                base = self.where(base, node[3][0])
            return f"(len({base}) {'> 0' if node[2] == 'exists' else '= 0'})"
        if kind == "call" and node[2] == "not" and not node[3]:
            base = (
                self.truth(node[1], focus, single) if node[1] is not None else f"fp_truth({focus})"
            )
            return f"(NOT {base})"
        if kind == "bin" and node[1] in ("=", "!="):
            return self.equals(node, focus, single)
        return _let(self.compile(node, focus, single), lambda t: f"fp_truth({t})")

    def text(self, node: Node) -> str | None:
        """The string ``node`` stands for, if it is a string literal or string constant."""
        if node[0] == "lit":
            values = node[1]
        elif node[0] == "var" and node[1] in self.constants:
            values = self.constants[node[1]]
        else:
            return None
        return values[0] if len(values) == 1 and values[0].__class__ is str else None

    def boolean(self, node: Node, focus: str, single: str | None) -> str:
        """A boolean-valued ``node`` as a FHIRPath collection (JSON[])."""
        return _let(
            self.truth(node, focus, single),
            lambda t: f"(CASE WHEN {t} IS NULL THEN []::JSON[] ELSE [to_json({t})]::JSON[] END)",
        )

    def equals(self, node: Node, focus: str, single: str | None) -> str:
        """``path = 'text'`` (or ``!=``) as a SQL BOOLEAN, as the Python engine compares."""
        _, op, left, right = node
        value, other = self.text(right), left
        if value is None:
            value, other = self.text(left), right
        if value is None:
            raise Unsupported("= between two paths")
        negate = "NOT " if op == "!=" else ""

        def test(c: str) -> str:
            same = f"(json_type({c}[1]) = 'VARCHAR' AND {c}[1] ->> '$' = {_quote(value)})"
            return (
                f"(CASE len({c}) WHEN 0 THEN NULL::BOOLEAN WHEN 1 THEN {negate}{same} "
                f"ELSE {'true' if op == '!=' else 'false'} END)"
            )

        return _let(self.compile(other, focus, single), test)

    def call(self, node: Node, focus: str, single: str | None) -> str:
        _, base_node, name, args = node
        if name == "first" and not args and base_node is not None and base_node[:2] == ("bin", "|"):
            operands = union_operands(base_node)
            result = "[]::JSON[]"
            for operand in reversed(operands):
                later = result
                result = _let(
                    self.compile(operand, focus, single),
                    lambda t, later=later: (
                        f"(CASE WHEN len({t}) > 0 THEN {t}[1:1] ELSE {later} END)"
                    ),
                )
            return result
        if name in ("ofType", "as") and base_node is not None and base_node[0] in ("member", "id"):
            return self.choice(base_node, args, focus, single)
        base = self.compile(base_node, focus, single) if base_node is not None else focus
        base_single = single if base_node is None else None
        if name == "first" and not args:
            return f"{base}[1:1]"
        if name in ("exists", "empty", "not"):
            return self.boolean(node, focus, single)
        if name in ("exists", "empty"):
            if len(args) > 1:
                raise Unsupported(name)
            if args:
                if name == "empty":
                    raise Unsupported("empty() with an argument")
                base = self.where(base, args[0])
            test = "> 0" if name == "exists" else "= 0"
            return f"[to_json(len({base}) {test})]::JSON[]"
        if name == "where" and len(args) == 1:
            return self.where(base, args[0])
        if name == "not" and not args:
            return _let(
                f"fp_truth({base})",
                lambda t: (
                    f"(CASE WHEN {t} IS NULL THEN []::JSON[] ELSE [to_json(NOT {t})]::JSON[] END)"
                ),
            )
        if name == "join" and len(args) <= 1:
            sep = ""
            if args:
                if (
                    args[0][0] != "lit"
                    or len(args[0][1]) != 1
                    or args[0][1][0].__class__ is not str
                ):
                    raise Unsupported("join() separator that is not a string literal")
                sep = args[0][1][0]
            x = _var()
            text = (
                f"CASE json_type({x}) WHEN 'VARCHAR' THEN {x} ->> '$' "
                f"WHEN 'BOOLEAN' THEN {x}::VARCHAR WHEN 'OBJECT' THEN '' WHEN 'ARRAY' THEN '' "
                f"ELSE error('{FALLBACK}: join of a number') END"
            )
            return f"[to_json(array_to_string(list_transform({base}, lambda {x}: {text}), {_quote(sep)}))]::JSON[]"
        if name == "toString" and not args:
            x = _var()
            text = (
                f"CASE json_type({x}) WHEN 'VARCHAR' THEN {x} WHEN 'BOOLEAN' THEN to_json({x}::VARCHAR) "
                f"ELSE error('{FALLBACK}: toString of this type') END"
            )
            return _let(
                base,
                lambda t: (
                    f"(CASE WHEN len({t}) > 1 THEN error('{FALLBACK}: toString of several') "
                    f"ELSE list_transform({t}, lambda {x}: {text}) END)"
                ),
            )
        if name == "getResourceKey" and not args:
            x = _var()
            if base == "[r]":
                return f"list_filter([{self.root('id')}], lambda {x}: json_type({x}) = 'VARCHAR')"
            items = f"list_transform({base}, lambda {x}: {x} -> 'id')"
            y = _var()
            return f"list_filter({items}, lambda {y}: json_type({y}) = 'VARCHAR')"
        if name == "getReferenceKey" and len(args) <= 1:
            wanted = None
            if args:
                from .compiler import type_name_of

                wanted = normalize_type(type_name_of(args[0]))
            pattern = r"(?:^|/)([A-Z][A-Za-z]+)/([A-Za-z0-9\-.]{1,64})(?:/_history/[^/]+)?$"
            x = _var()
            ref = f"({x} -> 'reference')"
            text = f"({ref} ->> '$')"
            ok = (
                f"json_type({x}) = 'OBJECT' AND json_type({ref}) = 'VARCHAR' "
                f"AND regexp_matches({text}, {_quote(pattern)})"
            )
            if wanted is not None:
                ok += f" AND regexp_extract({text}, {_quote(pattern)}, 1) = {_quote(wanted)}"
            guard = (
                f"CASE WHEN json_type({ref}) = 'VARCHAR' AND contains({text}, chr(10)) "
                f"THEN error('{FALLBACK}: newline in a reference') ELSE {ok} END"
            )
            y = _var()
            keep = f"list_filter({base}, lambda {x}: {guard})"
            return (
                f"list_transform({keep}, lambda {y}: "
                f"to_json(regexp_extract({y} ->> 'reference', {_quote(pattern)}, 2)))"
            )
        if name == "extension" and len(args) == 1:
            arg = args[0]
            if arg[0] != "lit" or len(arg[1]) != 1 or arg[1][0].__class__ is not str:
                raise Unsupported("extension() url that is not a string literal")
            exts = self.step(base, base_single, "extension")
            x = _var()
            return (
                f"list_filter({exts}, lambda {x}: json_type({x}) = 'OBJECT' "
                f"AND json_type({x} -> 'url') = 'VARCHAR' AND {x} ->> 'url' = {_quote(arg[1][0])})"
            )
        raise Unsupported(f"{name}()")

    def where(self, base: str, criteria: Node) -> str:
        x = _var()
        test = self.truth(criteria, f"[{x}]", x)
        return f"list_filter({base}, lambda {x}: ({test}) IS TRUE)"

    def choice(self, base_node: Node, args: list[Node], focus: str, single: str | None) -> str:
        from .compiler import type_name_of

        element = base_node[2] if base_node[0] == "member" else base_node[1]
        if len(args) != 1 or element not in CHOICE_ELEMENTS:
            raise Unsupported("ofType() on an element that is not a choice")
        wanted = normalize_type(type_name_of(args[0]))
        if "." in wanted:
            raise Unsupported("ofType() with a qualified type")
        if base_node[0] == "member":
            parent = self.compile(base_node[1], focus, single)
            x = _var()
            return f"flatten(list_transform({parent}, lambda {x}: {self._choice_of(x, element, wanted)}))"
        if single is not None:
            return self._choice_of(single, element, wanted)
        x = _var()
        return (
            f"flatten(list_transform({focus}, lambda {x}: {self._choice_of(x, element, wanted)}))"
        )

    def _choice_of(self, x: str, element: str, wanted: str) -> str:
        from .compiler import _choice_key

        if x == "r":
            parts = [
                f"fp_items({self.root(_choice_key(element, kind))})" for kind in subtypes(wanted)
            ]
            value = self.root(element)
        else:
            parts = [
                f"fp_items(json_extract({x}, {_quote(_choice_key(element, kind))}))"
                for kind in subtypes(wanted)
            ]
            value = f"json_extract({x}, {_quote(element)})"
        plain = (
            f"CASE WHEN coalesce(json_type({value}), 'NULL') <> 'NULL' "
            f"THEN error('{FALLBACK}: plain choice element') ELSE []::JSON[] END"
        )
        return f"list_concat({', '.join([*parts, plain])})"

    def binary(self, node: Node, focus: str, single: str | None) -> str:
        if node[1] in ("and", "or", "=", "!="):
            return self.boolean(node, focus, single)
        raise Unsupported(f"operator {node[1]}")


# --- column values --------------------------------------------------------------------


def _conversion(type_name: str, v: str) -> tuple[str, str]:
    """(value SQL, fits SQL) of JSON value ``v`` for a column of FHIR type ``type_name``."""
    kind = f"json_type({v})"
    if type_name == "boolean":
        return f"CASE WHEN {kind} = 'BOOLEAN' THEN {v}::BOOLEAN END", f"{kind} = 'BOOLEAN'"
    if type_name in _INTEGER:
        fits = (
            f"({kind} IN ('BIGINT', 'UBIGINT') OR "
            f"({kind} = 'DOUBLE' AND {v}::DOUBLE = trunc({v}::DOUBLE)))"
        )
        return (
            f"CASE WHEN {kind} IN ('BIGINT', 'UBIGINT') THEN {v}::BIGINT "
            f"WHEN {kind} = 'DOUBLE' AND {v}::DOUBLE = trunc({v}::DOUBLE) THEN {v}::DOUBLE::BIGINT END",
            fits,
        )
    if type_name == "decimal":
        fits = f"{kind} IN ('BIGINT', 'UBIGINT', 'DOUBLE')"
        return f"CASE WHEN {fits} THEN {v}::DOUBLE END", fits
    if type_name[:1].isupper():
        raise Unsupported(f"a column of complex type {type_name}")
    return f"CASE WHEN {kind} = 'VARCHAR' THEN {v} ->> '$' END", f"{kind} = 'VARCHAR'"


def _column_sql(column: Column, values: str) -> tuple[str, str]:
    if column.type is None:
        raise Unsupported("a column without a declared type")
    v = _var()
    value, fits = _conversion(column.type, v)
    if column.collection:
        return (
            f"list_transform({values}, lambda {v}: {value})",
            f"len(list_filter({values}, lambda {v}: NOT ({fits})))",
        )
    one = f"{values}[1]"
    value1, fits1 = _conversion(column.type, one)
    return (
        f"(CASE len({values}) WHEN 0 THEN NULL WHEN 1 THEN {value1} "
        f"ELSE error('{FALLBACK}: several values in a column') END)",
        f"(CASE WHEN len({values}) = 1 AND NOT ({fits1}) THEN 1 ELSE 0 END)",
    )


class _Selects:
    def __init__(self, expr: _Expr, columns: list[Column]) -> None:
        self.expr = expr
        self.index = {c.element: i for i, c in enumerate(columns)}
        self.columns = columns

    def null_row(self, numbers: Sequence[int]) -> str:
        fields = []
        for i in numbers:
            fields.append(f"c{i} := NULL")
            fields.append(f"b{i} := 0")
        return f"struct_pack({', '.join(fields)})"

    def select(self, select: Mapping[str, Any], element: str, x: str) -> tuple[str, list[int]]:
        """SQL list of row structs of ``select`` on JSON value ``x``, and its column numbers."""
        if "repeat" in select:
            raise Unsupported("repeat")
        iterate = next((k for k in ("forEach", "forEachOrNull") if k in select), None)
        if iterate is not None:
            f = _var()
            body, numbers = self.body(select, element, f)
            path = parse(select[iterate])
            if (
                iterate == "forEach"
                and path[0] == "call"
                and path[1] is None
                and path[2] == "where"
            ):
                # forEach: where(...) on the focus itself: its rows when the test holds
                if len(path[3]) != 1:
                    raise Unsupported("where() arity")
                body, numbers = self.body(select, element, x)
                test = self.expr.truth(path[3][0], f"[{x}]", x)
                return f"(CASE WHEN ({test}) IS TRUE THEN {body} ELSE [] END)", numbers
            foci = self.expr.compile(path, f"[{x}]", x)
            if iterate == "forEach":
                return f"flatten(list_transform({foci}, lambda {f}: {body}))", numbers
            null = self.null_row(numbers)
            return _let(
                foci,
                lambda t: (
                    f"(CASE WHEN len({t}) = 0 THEN [{null}] "
                    f"ELSE flatten(list_transform({t}, lambda {f}: {body})) END)"
                ),
            ), numbers
        return self.body(select, element, x)

    def body(self, select: Mapping[str, Any], element: str, x: str) -> tuple[str, list[int]]:
        parts: list[tuple[str, list[int]]] = []
        columns = select.get("column", [])
        if columns:
            fields = []
            numbers = []
            found = []
            t = _var()
            for j, raw in enumerate(columns):
                path = raw["path"]
                if "%rowIndex" in path:
                    raise Unsupported("%rowIndex")
                i = self.index[f"{element}.column[{j}].path"]
                found.append(self.expr.compile(parse(path), f"[{x}]", x))
                value, bad = _column_sql(self.columns[i], f"{t}[{j + 1}]")
                fields += [f"c{i} := {value}", f"b{i} := {bad}"]
                numbers.append(i)
            parts.append(
                (
                    f"list_transform([[{', '.join(found)}]], "
                    f"lambda {t}: struct_pack({', '.join(fields)}))",
                    numbers,
                )
            )
        for j, nested in enumerate(select.get("select", [])):
            parts.append(self.select(nested, f"{element}.select[{j}]", x))
        union = select.get("unionAll")
        if union is not None:
            rows, first = self.select(union[0], f"{element}.unionAll[0]", x)
            branches = [rows]
            for j, branch in enumerate(union[1:], start=1):
                # the output columns are the first branch's: a later branch's column k fills
                # the first branch's column k (and is converted to its type)
                name = f"{element}.unionAll[{j}]"
                for path, number in zip(_elements(branch, name), first, strict=True):
                    self.index[path] = number
                rows, numbers = self.select(branch, name, x)
                if numbers != first:
                    raise Unsupported("unionAll branches in another column order")
                branches.append(rows)
            parts.append((f"list_concat({', '.join(branches)})", first))
        return _product(parts)


def _elements(select: Mapping[str, Any], element: str) -> list[str]:
    """The element paths of a select's columns in output order (as :mod:`.definition` names them)."""
    found = [f"{element}.column[{j}].path" for j in range(len(select.get("column", [])))]
    for j, nested in enumerate(select.get("select", [])):
        found += _elements(nested, f"{element}.select[{j}]")
    union = select.get("unionAll")
    if union:
        found += _elements(union[0], f"{element}.unionAll[0]")
    return found


def _product(parts: list[tuple[str, list[int]]]) -> tuple[str, list[int]]:
    rows, numbers = parts[0]
    for other, other_numbers in parts[1:]:
        p, q = _var(), _var()
        fields = [f"c{i} := {p}.c{i}, b{i} := {p}.b{i}" for i in numbers]
        fields += [f"c{i} := {q}.c{i}, b{i} := {q}.b{i}" for i in other_numbers]
        rows = (
            f"flatten(list_transform({rows}, lambda {p}: list_transform({other}, "
            f"lambda {q}: struct_pack({', '.join(fields)}))))"
        )
        numbers = numbers + other_numbers
    return rows, numbers


def compile_sql(view: Mapping[str, Any]) -> SqlView:
    """``view`` as SQL; raises ViewDefinitionError if invalid, :class:`Unsupported` if not covered."""
    compiled = compile_view(view)
    columns = compiled.columns
    constants = {}
    for constant in view.get("constant", []) or []:
        key = next(k for k in constant if k.startswith("value"))
        value = constant[key]
        if value.__class__ not in (str, int, bool) or key in (
            "valueDate", "valueDateTime", "valueTime", "valueInstant", "valueInteger64",
            "valueDecimal",
        ):  # fmt: skip
            raise Unsupported(f"constant {key}")
        constants[constant["name"]] = [value]
    expr = _Expr(constants)
    selects = _Selects(expr, columns)
    # Python's element names for unionAll branches and nested selects are the same dotted paths
    parts = [selects.select(s, f"select[{i}]", "r") for i, s in enumerate(view["select"])]
    rows, numbers = _product(parts)
    if numbers != list(range(len(columns))):
        raise Unsupported("column order")
    where = []
    for w in view.get("where", []) or []:
        where.append(
            _let(
                expr.compile(parse(w["path"]), "[r]", "r"),
                lambda c: (
                    f"(CASE len({c}) WHEN 0 THEN false WHEN 1 THEN (CASE WHEN "
                    f"json_type({c}[1]) = 'BOOLEAN' THEN {c}[1]::BOOLEAN ELSE "
                    f"error('{FALLBACK}: where not boolean') END) "
                    f"ELSE error('{FALLBACK}: where not boolean') END)"
                ),
            )
        )
    return SqlView(columns, rows, where, compiled.resource, tuple(expr.root_keys))


# --- running ----------------------------------------------------------------------------


class SqlRun:
    """Runs a :class:`SqlView` over NDJSON files, streaming Arrow record batches.

    ``warnings`` holds the counted nulls per column once the batches are consumed.
    A DuckDB error (malformed JSON, data only the Python engine treats exactly)
    propagates as ``duckdb.Error``: the caller reruns the view on the Python engine.
    """

    def __init__(self, view: SqlView, files: Sequence[str], *, threads: int | None = None) -> None:
        self.view = view
        self.files = list(files)
        self.threads = threads
        self.warnings: dict[str, int] = {}

    def schema(self) -> Any:
        """The output schema, the Python engine's (types, ``fhir_type``, warning counts)."""
        from .table import TableConverter

        converter = TableConverter(self.view.columns)
        converter.warnings = dict(self.warnings)
        return converter.schema()

    def batches(self, batch_rows: int = 65_536) -> Any:
        """Record batches of the view's rows, in file order, then ``warnings`` is set."""
        import duckdb
        import pyarrow as pa
        import pyarrow.compute as pc

        connection = duckdb.connect(config={"threads": self.threads} if self.threads else {})
        try:
            install_macros(connection)
            files = "[" + ", ".join(_quote(f) for f in self.files) + "]"
            source = f"(SELECT json AS r FROM read_ndjson_objects({files}, compression = 'auto'))"
            reader = connection.sql(self.view.query(source)).to_arrow_reader(batch_rows)
            width = len(self.view.columns)
            counts = [0] * width
            target = self.schema()
            for batch in reader:
                for i in range(width):
                    counts[i] += int(pc.sum(batch.column(width + i)).as_py() or 0)
                arrays = [batch.column(i).cast(target.field(i).type) for i in range(width)]
                yield pa.RecordBatch.from_arrays(arrays, schema=target)
            self.warnings = {c.name: n for c, n in zip(self.view.columns, counts, strict=True) if n}
        finally:
            connection.close()
