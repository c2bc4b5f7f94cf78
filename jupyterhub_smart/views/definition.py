"""A ViewDefinition validated and compiled into a row generator.

:func:`compile_view` checks the whole view against the SQL on FHIR v2 logical
model and its processing algorithm (``ValidateColumns``) and compiles every
FHIRPath expression once; any problem raises
:class:`~.errors.ViewDefinitionError` naming the element path, before a single
resource is read. The result, a :class:`CompiledView`, turns one resource into
row tuples in the view's column order.

Rows follow the specification's processing model: a select's own columns, its
nested selects and its ``unionAll`` each give a list of partial rows, and the
select's rows are their Cartesian product, for each focus of its ``forEach``
(``forEachOrNull`` keeps one all-null row when there is no focus; ``repeat``
takes every node reached by applying its paths again and again, depth first).
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from .compiler import (
    CompileError,
    Env,
    EvaluationError,
    Evaluator,
    FhirPathSyntaxError,
    Typed,
    compile_path,
    unwrap,
)
from .errors import ViewDefinitionError, ViewEvaluationError
from .fhirtypes import COMPLEX_TYPES, PRIMITIVE_TYPES, RESOURCE_TYPES, normalize_type

__all__ = ["Column", "CompiledView", "compile_view"]

_SQL_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")

#: ``value[x]`` types a constant may have (ViewDefinition.constant.value[x]).
_CONSTANT_TYPES = {
    "Base64Binary": "base64Binary",
    "Boolean": "boolean",
    "Canonical": "canonical",
    "Code": "code",
    "Date": "date",
    "DateTime": "dateTime",
    "Decimal": "decimal",
    "Id": "id",
    "Instant": "instant",
    "Integer": "integer",
    "Integer64": "integer64",
    "Oid": "oid",
    "String": "string",
    "PositiveInt": "positiveInt",
    "Time": "time",
    "UnsignedInt": "unsignedInt",
    "Uri": "uri",
    "Url": "url",
    "Uuid": "uuid",
}

#: Elements a select and a column may have; anything else is refused as a likely typo
#: (the ViewDefinition itself, a canonical resource, may carry any metadata).
#: ``type`` on a select and ``tags`` on a column appear in older published examples.
_SELECT_KEYS = {"column", "select", "forEach", "forEachOrNull", "unionAll", "repeat", "id",
                "extension", "modifierExtension", "description", "type"}  # fmt: skip
_COLUMN_KEYS = {"name", "path", "type", "collection", "description", "tag", "tags", "id",
                "extension", "modifierExtension"}  # fmt: skip


@dataclass(frozen=True)
class Column:
    """One output column: its name, FHIR type (``None`` = not declared) and collection flag."""

    name: str
    type: str | None
    collection: bool
    element: str
    description: str | None = None
    path: str = ""


Row = tuple[Any, ...]
Producer = Callable[[Any, Env], list[Row]]


@dataclass
class CompiledView:
    """A validated view: its resource type, columns and compiled row producer."""

    resource: str
    columns: list[Column]
    name: str | None
    _where: list[tuple[str, Evaluator]] = field(repr=False)
    _produce: Producer = field(repr=False)
    #: The validated ViewDefinition JSON (the Arrow engine compiles it again column-wise).
    definition: Mapping[str, Any] | None = field(default=None, repr=False)

    def rows(self, resource: Mapping[str, Any]) -> list[Row]:
        """The rows ``resource`` gives (none if it is of another type or fails ``where``).

        Values are still FHIRPath values (``Decimal``, typed wrappers removed);
        :mod:`.table` converts them to the column types.
        """
        if resource.__class__ is not dict or resource.get("resourceType") != self.resource:
            return []
        env = Env(resource)
        focus = [resource]
        for element, test in self._where:
            try:
                result = test(focus, env)
            except EvaluationError as exc:
                raise ViewEvaluationError(element, str(exc)) from None
            if not result:
                return []
            if len(result) > 1:
                raise ViewEvaluationError(element, "where path gives several values, not a boolean")
            value = unwrap(result[0])
            if value is not True and value is not False:
                raise ViewEvaluationError(element, "where path must give a boolean")
            if value is False:
                return []
        return self._produce(resource, env)


def compile_view(view: Any) -> CompiledView:
    """Validate ``view`` (a ViewDefinition as JSON) and compile it; raises ViewDefinitionError."""
    if not isinstance(view, Mapping):
        raise ViewDefinitionError("", "a ViewDefinition must be a JSON object")
    kind = view.get("resourceType", "ViewDefinition")
    if kind != "ViewDefinition":
        raise ViewDefinitionError("resourceType", f"expected 'ViewDefinition', found {kind!r}")
    name = view.get("name")
    if name is not None and not (isinstance(name, str) and _SQL_NAME.match(name)):
        raise ViewDefinitionError("name", "must match ^[A-Za-z][A-Za-z0-9_]*$")
    resource = view.get("resource")
    if not isinstance(resource, str) or not resource:
        raise ViewDefinitionError("resource", "required: the FHIR resource type of the view")
    if resource not in RESOURCE_TYPES:
        raise ViewDefinitionError("resource", f"unknown FHIR resource type {resource!r}")
    constants = _constants(view.get("constant"))
    selects = view.get("select")
    if not isinstance(selects, list) or not selects:
        raise ViewDefinitionError("select", "required: a non-empty list of selects")
    builder = _Builder(constants)
    columns: list[Column] = []
    producers = []
    for i, select in enumerate(selects):
        produce, select_columns = builder.select(select, f"select[{i}]")
        _append_columns(columns, select_columns, f"select[{i}]")
        producers.append(produce)
    where = _where(view.get("where"), constants)
    return CompiledView(resource, columns, name, where, _product(producers), view)


def _append_columns(columns: list[Column], new: list[Column], element: str) -> None:
    seen = {c.name for c in columns}
    for column in new:
        if column.name in seen:
            raise ViewDefinitionError(column.element, f"column {column.name!r} already defined")
        seen.add(column.name)
        columns.append(column)


def _constants(value: Any) -> dict[str, list[Any]]:
    if value is None:
        return {}
    if not isinstance(value, list):
        raise ViewDefinitionError("constant", "must be a list")
    constants: dict[str, list[Any]] = {}
    for i, constant in enumerate(value):
        element = f"constant[{i}]"
        if not isinstance(constant, Mapping):
            raise ViewDefinitionError(element, "must be an object")
        name = constant.get("name")
        if not isinstance(name, str) or not _SQL_NAME.match(name):
            raise ViewDefinitionError(
                f"{element}.name", "required, matching ^[A-Za-z][A-Za-z0-9_]*$"
            )
        if name in constants:
            raise ViewDefinitionError(f"{element}.name", f"constant {name!r} already defined")
        values = [key for key in constant if key.startswith("value")]
        if len(values) != 1:
            raise ViewDefinitionError(element, "needs exactly one value[x]")
        key = values[0]
        type_name = _CONSTANT_TYPES.get(key[5:])
        if type_name is None:
            raise ViewDefinitionError(f"{element}.{key}", "not an allowed constant type")
        others = set(constant) - {"name", key, "id", "extension", "description"}
        if others:
            raise ViewDefinitionError(f"{element}.{sorted(others)[0]}", "unknown element")
        constants[name] = [_constant_value(constant[key], type_name, f"{element}.{key}")]
    return constants


def _constant_value(value: Any, type_name: str, element: str) -> Any:
    if type_name == "boolean":
        if not isinstance(value, bool):
            raise ViewDefinitionError(element, "must be true or false")
        return value
    if type_name in ("integer", "positiveInt", "unsignedInt", "integer64"):
        if type_name == "integer64" and isinstance(value, str) and re.fullmatch(r"-?\d+", value):
            return int(value)
        if not isinstance(value, int) or isinstance(value, bool):
            raise ViewDefinitionError(element, "must be an integer")
        return value
    if type_name == "decimal":
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise ViewDefinitionError(element, "must be a number")
        return Decimal(repr(value)) if isinstance(value, float) else Decimal(value)
    if not isinstance(value, str):
        raise ViewDefinitionError(element, "must be a string")
    return (
        Typed(value, type_name) if type_name in ("date", "dateTime", "time", "instant") else value
    )


def _compile(text: Any, constants: Mapping[str, list[Any]], element: str) -> Evaluator:
    if not isinstance(text, str):
        raise ViewDefinitionError(element, "must be a FHIRPath string")
    try:
        return compile_path(text, constants)
    except (FhirPathSyntaxError, CompileError) as exc:
        raise ViewDefinitionError(element, str(exc)) from None


def _where(value: Any, constants: Mapping[str, list[Any]]) -> list[tuple[str, Evaluator]]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise ViewDefinitionError("where", "must be a list")
    compiled = []
    for i, where in enumerate(value):
        element = f"where[{i}]"
        if not isinstance(where, Mapping) or "path" not in where:
            raise ViewDefinitionError(element, "must be an object with a path")
        compiled.append((f"{element}.path", _compile(where["path"], constants, f"{element}.path")))
    return compiled


def _product(producers: list[Producer]) -> Producer:
    """Rows of sibling selects: their Cartesian product, columns concatenated in order."""
    if len(producers) == 1:
        return producers[0]

    def product(node: Any, env: Env) -> list[Row]:
        parts = []
        for produce in producers:
            rows = produce(node, env)
            if not rows:
                return []
            parts.append(rows)
        if all(len(rows) == 1 for rows in parts):
            return [tuple(itertools.chain.from_iterable(rows[0] for rows in parts))]
        return [tuple(itertools.chain.from_iterable(combo)) for combo in itertools.product(*parts)]

    return product


def _column_type(value: Any, element: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise ViewDefinitionError(element, "must be a FHIR type name or StructureDefinition URL")
    type_name = normalize_type(value)
    base = type_name.split(".", 1)[0]
    if (
        type_name not in PRIMITIVE_TYPES
        and base not in COMPLEX_TYPES
        and base not in RESOURCE_TYPES
    ):
        raise ViewDefinitionError(element, f"unknown FHIR type {value!r}")
    return type_name


class _Builder:
    def __init__(self, constants: Mapping[str, list[Any]]) -> None:
        self.constants = constants

    def column(self, column: Any, element: str) -> tuple[Column, Evaluator]:
        if not isinstance(column, Mapping):
            raise ViewDefinitionError(element, "must be an object")
        unknown = sorted(set(column) - _COLUMN_KEYS)
        if unknown:
            raise ViewDefinitionError(f"{element}.{unknown[0]}", "unknown element of a column")
        name = column.get("name")
        if not isinstance(name, str) or not _SQL_NAME.match(name):
            raise ViewDefinitionError(
                f"{element}.name", "required, matching ^[A-Za-z][A-Za-z0-9_]*$"
            )
        if "path" not in column:
            raise ViewDefinitionError(f"{element}.path", "required")
        evaluate = _compile(column["path"], self.constants, f"{element}.path")
        collection = column.get("collection", False)
        if not isinstance(collection, bool):
            raise ViewDefinitionError(f"{element}.collection", "must be true or false")
        type_name = _column_type(column.get("type"), f"{element}.type")
        description = column.get("description")
        return (
            Column(
                name,
                type_name,
                collection,
                f"{element}.path",
                description if isinstance(description, str) else None,
                column["path"],
            ),
            evaluate,
        )

    def select(self, select: Any, element: str) -> tuple[Producer, list[Column]]:
        if not isinstance(select, Mapping):
            raise ViewDefinitionError(element, "must be an object")
        unknown = sorted(set(select) - _SELECT_KEYS)
        if unknown:
            raise ViewDefinitionError(f"{element}.{unknown[0]}", "unknown element of a select")
        iterators = [key for key in ("forEach", "forEachOrNull", "repeat") if key in select]
        if len(iterators) > 1:
            raise ViewDefinitionError(
                f"{element}.{iterators[1]}",
                f"only one of forEach, forEachOrNull, repeat ({', '.join(iterators)})",
            )
        columns: list[Column] = []
        column_fns: list[tuple[Column, Evaluator]] = []
        raw_columns = select.get("column", [])
        if not isinstance(raw_columns, list):
            raise ViewDefinitionError(f"{element}.column", "must be a list")
        for i, raw in enumerate(raw_columns):
            column, evaluate = self.column(raw, f"{element}.column[{i}]")
            _append_columns(columns, [column], element)
            column_fns.append((column, evaluate))
        parts: list[Producer] = []
        if column_fns:
            parts.append(_columns_producer(column_fns))
        raw_selects = select.get("select", [])
        if not isinstance(raw_selects, list):
            raise ViewDefinitionError(f"{element}.select", "must be a list")
        for i, nested in enumerate(raw_selects):
            produce, nested_columns = self.select(nested, f"{element}.select[{i}]")
            _append_columns(columns, nested_columns, element)
            parts.append(produce)
        union = select.get("unionAll")
        if union is not None:
            produce, union_columns = self.union(union, f"{element}.unionAll")
            _append_columns(columns, union_columns, element)
            parts.append(produce)
        if not parts:
            raise ViewDefinitionError(element, "a select needs a column, select or unionAll")
        body = _product(parts)
        if "forEach" in select or "forEachOrNull" in select:
            key = iterators[0]
            path = _compile(select[key], self.constants, f"{element}.{key}")
            # forEachOrNull's row for an empty collection: nulls, but %rowIndex is 0 there too
            empty = tuple(0 if c.path.strip() == "%rowIndex" else None for c in columns)
            or_null = empty if key == "forEachOrNull" else None
            return _for_each(path, body, or_null, f"{element}.{key}"), columns
        if "repeat" in select:
            paths = select["repeat"]
            if not isinstance(paths, list) or not paths:
                raise ViewDefinitionError(f"{element}.repeat", "must be a non-empty list of paths")
            compiled = [
                _compile(p, self.constants, f"{element}.repeat[{i}]") for i, p in enumerate(paths)
            ]
            return _repeat(compiled, body), columns
        return body, columns

    def union(self, union: Any, element: str) -> tuple[Producer, list[Column]]:
        if not isinstance(union, list) or not union:
            raise ViewDefinitionError(element, "must be a non-empty list of selects")
        branches = []
        first: list[Column] | None = None
        for i, branch in enumerate(union):
            produce, columns = self.select(branch, f"{element}[{i}]")
            if first is None:
                first = columns
            elif [c.name for c in columns] != [c.name for c in first]:
                raise ViewDefinitionError(
                    f"{element}[{i}]",
                    "unionAll branches must have the same columns, in the same order "
                    f"({[c.name for c in first]} vs {[c.name for c in columns]})",
                )
            else:
                for mine, theirs in zip(columns, first, strict=True):
                    if mine.type and theirs.type and mine.type != theirs.type:
                        raise ViewDefinitionError(
                            mine.element,
                            f"type {mine.type} differs from {theirs.type} in unionAll[0]",
                        )
            branches.append(produce)
        assert first is not None

        def union_all(node: Any, env: Env) -> list[Row]:
            rows: list[Row] = []
            for produce in branches:
                rows.extend(produce(node, env))
            return rows

        return union_all, first


def _columns_producer(columns: list[tuple[Column, Evaluator]]) -> Producer:
    compiled = [(c.element, c.collection, evaluate) for c, evaluate in columns]

    def values(node: Any, env: Env) -> list[Row]:
        focus = [node]
        row: list[Any] = []
        append = row.append
        element = ""
        try:
            for element, collection, evaluate in compiled:
                result = evaluate(focus, env)
                if collection:
                    # a collection column is always a list: [] when the path finds nothing
                    append([unwrap(v) for v in result])
                elif not result:
                    append(None)
                elif len(result) == 1:
                    value = result[0]
                    append(value.value if value.__class__ is Typed else value)
                else:
                    raise ViewEvaluationError(
                        element,
                        f"Collection value: {len(result)} values found for a column without "
                        "collection: true",
                    )
        except EvaluationError as exc:
            raise ViewEvaluationError(element, str(exc)) from None
        return [tuple(row)]

    return values


def _for_each(path: Evaluator, body: Producer, or_null: Row | None, element: str) -> Producer:
    def for_each(node: Any, env: Env) -> list[Row]:
        try:
            foci = path([node], env)
        except EvaluationError as exc:
            raise ViewEvaluationError(element, str(exc)) from None
        saved = env.row_index
        rows: list[Row] = []
        for index, focus in enumerate(foci):
            env.row_index = index
            rows.extend(body(unwrap(focus), env))
        env.row_index = saved
        if not foci and or_null is not None:
            return [or_null]
        return rows

    return for_each


def _repeat(paths: list[Evaluator], body: Producer) -> Producer:
    def children(node: Any, env: Env) -> list[Any]:
        out: list[Any] = []
        for path in paths:
            out.extend(unwrap(child) for child in path([node], env))
        return out

    def repeat(node: Any, env: Env) -> list[Row]:
        saved = env.row_index
        rows: list[Row] = []
        stack: list[Iterator[Any]] = [iter(children(node, env))]
        index = 0
        while stack:
            child = next(stack[-1], _DONE)
            if child is _DONE:
                stack.pop()
                continue
            env.row_index = index
            index += 1
            rows.extend(body(child, env))
            stack.append(iter(children(child, env)))
        env.row_index = saved
        return rows

    return repeat


_DONE = object()
