"""FHIRPath syntax trees compiled once into Python closures.

A compiled expression is a function ``f(focus, env) -> list``: ``focus`` is the
input collection (a list), ``env`` the per-resource :class:`Env`. Every
FHIRPath value is a collection, so every function returns a list. Compiling
resolves names, constants, function arities and type specifiers up front, so
evaluating a column is a chain of direct calls with no tree walking and no
dispatch on node kinds per resource.

Values are the JSON values themselves (dicts, lists' items, str, int, float,
bool), literals add :class:`~decimal.Decimal`. An element reached through a
choice name (``value`` reaching ``valueQuantity``) is wrapped in
:class:`Typed` so that ``ofType``/``is``/``as`` know its FHIR type.
"""

from __future__ import annotations

import calendar
import re
from collections.abc import Callable, Mapping
from decimal import Decimal, InvalidOperation
from typing import Any

from .fhirtypes import (
    CHOICE_ELEMENTS,
    PRIMITIVE_TYPES,
    is_known_type,
    is_subtype,
    normalize_type,
    subtypes,
)
from .parser import FhirPathSyntaxError, Node, parse, union_operands

__all__ = [
    "CompileError",
    "Env",
    "EvaluationError",
    "Evaluator",
    "FhirPathSyntaxError",
    "Typed",
    "compile_path",
]

Collection = list[Any]
Evaluator = Callable[[Collection, "Env"], Collection]


class CompileError(ValueError):
    """The expression is valid FHIRPath but cannot be compiled (unknown function, constant...)."""


class EvaluationError(ValueError):
    """FHIRPath says the expression is an error for this input (e.g. a collection where one value is needed)."""


class Typed:
    """A value with the FHIR type its choice element name gave it (``valueQuantity`` -> ``Quantity``)."""

    __slots__ = ("type", "value")

    def __init__(self, value: Any, type_name: str) -> None:
        self.value = value
        self.type = type_name

    def __eq__(self, other: object) -> bool:
        return _equal(self, other)

    def __hash__(self) -> int:
        return hash(self.type)

    def __repr__(self) -> str:
        return f"Typed({self.value!r}, {self.type!r})"


class Env:
    """What an expression can see besides its focus: the resource and ``%rowIndex``."""

    __slots__ = ("resource", "row_index")

    def __init__(self, resource: Any, row_index: int = 0) -> None:
        self.resource = resource
        self.row_index = row_index


def unwrap(value: Any) -> Any:
    """The plain JSON value of ``value`` (drops a :class:`Typed` wrapper)."""
    return value.value if value.__class__ is Typed else value


# --- value helpers -----------------------------------------------------------------


def _is_number(value: Any) -> bool:
    cls = value.__class__
    return cls is int or cls is float or cls is Decimal


def _dec(value: Any) -> Decimal:
    if value.__class__ is Decimal:
        return value
    if value.__class__ is float:
        return Decimal(repr(value))
    return Decimal(value)


def _equal(a: Any, b: Any) -> bool:
    a, b = unwrap(a), unwrap(b)
    if _is_number(a) and _is_number(b):
        if a.__class__ is Decimal or b.__class__ is Decimal:
            return _dec(a) == _dec(b)
        return bool(a == b)
    if a.__class__ is bool or b.__class__ is bool:
        return a is b
    if a.__class__ is dict and b.__class__ is dict:
        return _dict_equal(a, b)
    return bool(a == b)


def _dict_equal(a: dict[str, Any], b: dict[str, Any]) -> bool:
    try:
        return a == b
    except RecursionError:  # a pathologically deep element: unequal rather than a crash
        return False


def _truth(collection: Collection) -> bool | None:
    """FHIRPath singleton evaluation of a collection as a boolean (``None`` = empty)."""
    if not collection:
        return None
    if len(collection) == 1:
        value = unwrap(collection[0])
        return value if value is True or value is False else True
    raise EvaluationError(f"expected a single boolean, found {len(collection)} values")


def _single(collection: Collection, what: str) -> Any:
    if len(collection) > 1:
        raise EvaluationError(f"{what} expects a single value, found {len(collection)}")
    return unwrap(collection[0]) if collection else None


def _type_of(value: Any) -> str | None:
    """The FHIR type name of a value, as far as JSON tells (``None`` when unknown)."""
    if value.__class__ is Typed:
        return str(value.type)
    cls = value.__class__
    if cls is bool:
        return "boolean"
    if cls is int:
        return "integer"
    if cls is float or cls is Decimal:
        return "decimal"
    if cls is str:
        return "string"
    if cls is dict:
        kind = value.get("resourceType")
        return kind if isinstance(kind, str) else None
    return None


def _matches_type(value: Any, wanted: str) -> bool:
    actual = _type_of(value)
    if actual is None:
        return False
    if actual == wanted or is_subtype(actual, wanted):
        return True
    # FHIRPath System types: System.String matches string-like FHIR primitives, etc.
    return (
        wanted in ("Resource", "DomainResource")
        and value.__class__ is dict
        and bool(value.get("resourceType"))
    )


# --- navigation ----------------------------------------------------------------------


def _member(name: str, *, choice: bool | None = None) -> Callable[[Collection], Collection]:
    """The navigation step ``.name`` over a collection (choice names also reach ``name[x]``)."""
    if choice is None:
        choice = name in CHOICE_ELEMENTS
    size = len(name)

    def choices(item: dict[str, Any], out: Collection) -> None:
        for key, found in item.items():
            if (
                len(key) > size
                and key.startswith(name)
                and key[size].isupper()
                and found is not None
            ):
                suffix = key[size:]
                lowered = suffix[0].lower() + suffix[1:]
                type_name = lowered if lowered in PRIMITIVE_TYPES else suffix
                if found.__class__ is list:
                    out.extend(Typed(v, type_name) for v in found if v is not None)
                else:
                    out.append(Typed(found, type_name))

    def step(items: Collection) -> Collection:
        if len(items) == 1:  # the common case: one element, read one key
            item = items[0]
            if item.__class__ is Typed:
                item = item.value
            if item.__class__ is not dict:
                return []
            value = item.get(name)
            if value is None:
                if choice:
                    out: Collection = []
                    choices(item, out)
                    return out
                return []
            if value.__class__ is list:
                return [v for v in value if v is not None]
            return [value]
        out = []
        for item in items:
            if item.__class__ is Typed:
                item = item.value
            if item.__class__ is not dict:
                continue
            value = item.get(name)
            if value is None:
                if choice:
                    choices(item, out)
                continue
            if value.__class__ is list:
                out.extend(v for v in value if v is not None)
            else:
                out.append(value)
        return out

    return step


def _choice_key(name: str, type_name: str) -> str:
    return name + type_name[0].upper() + type_name[1:]


# --- compiler --------------------------------------------------------------------------


class _Compiler:
    def __init__(self, constants: Mapping[str, Collection]) -> None:
        self.constants = constants

    def compile(self, node: Node) -> Evaluator:
        kind = node[0]
        method = getattr(self, f"c_{kind}")
        return method(node)

    # terms

    def c_lit(self, node: Node) -> Evaluator:
        value = list(node[1])
        return lambda focus, env: value

    def c_this(self, node: Node) -> Evaluator:
        return lambda focus, env: focus

    def c_index(self, node: Node) -> Evaluator:
        raise CompileError("$index is not supported")

    def c_total(self, node: Node) -> Evaluator:
        raise CompileError("$total is not supported")

    def c_var(self, node: Node) -> Evaluator:
        name = node[1]
        if name in ("resource", "rootResource", "context"):
            return lambda focus, env: [env.resource]
        if name == "rowIndex":
            return lambda focus, env: [env.row_index]
        if name == "ucum":
            return lambda focus, env: ["http://unitsofmeasure.org"]
        if name == "sct":
            return lambda focus, env: ["http://snomed.info/sct"]
        if name == "loinc":
            return lambda focus, env: ["http://loinc.org"]
        if name not in self.constants:
            raise CompileError(f"undefined constant %{name}")
        value = self.constants[name]
        return lambda focus, env: value

    def c_id(self, node: Node) -> Evaluator:
        name = node[1]
        step = _member(name)
        if not name[:1].isupper():
            return lambda focus, env: step(focus)

        def type_or_member(focus: Collection, env: Env) -> Collection:
            typed = [
                item
                for item in focus
                if item.__class__ is dict and item.get("resourceType") == name
            ]
            return typed or step(focus)

        return type_or_member

    def c_member(self, node: Node) -> Evaluator:
        return self._chain(node)

    def _chain(self, node: Node) -> Evaluator:
        """``a.b.first().c``: member steps and ``first()`` run in one loop, not nested closures."""
        steps: list[Callable[[Collection], Collection]] = []
        inner = node
        while True:
            if inner[0] == "member":
                steps.append(_member(inner[2]))
                inner = inner[1]
            elif _is_first(inner) and inner[1][0] in ("member", "call"):
                steps.append(_take_first)
                inner = inner[1]
            else:
                break
        base = self._navigated(inner)
        steps.reverse()
        if len(steps) == 1:
            step = steps[0]
            return lambda focus, env: step(base(focus, env))

        def chain(focus: Collection, env: Env) -> Collection:
            items = base(focus, env)
            for step in steps:
                if not items:
                    return items
                items = step(items)
            return items

        return chain

    def _navigated(self, node: Node) -> Evaluator:
        """``node`` compiled as the start of a navigation: ``value.ofType(Quantity).unit``
        needs no type wrapper on the Quantity, since ``.unit`` reads inside it."""
        if (
            node[0] == "call"
            and node[2] in ("ofType", "as")
            and node[1] is not None
            and node[1][0] in ("member", "id")
        ):
            fast = self._choice_fast_path(node[1], node[2], node[3], wrap=False)
            if fast is not None:
                return fast
        return self.compile(node)

    def c_indexer(self, node: Node) -> Evaluator:
        base = self.compile(node[1])
        index = self.compile(node[2])

        def indexer(focus: Collection, env: Env) -> Collection:
            items = base(focus, env)
            position = _single(index(focus, env), "an indexer")
            if position.__class__ is not int:
                return []
            return [items[position]] if 0 <= position < len(items) else []

        return indexer

    def c_neg(self, node: Node) -> Evaluator:
        operand = self.compile(node[1])

        def negate(focus: Collection, env: Env) -> Collection:
            value = _single(operand(focus, env), "unary minus")
            if value is None:
                return []
            if not _is_number(value) or value.__class__ is bool:
                raise EvaluationError("unary minus needs a number")
            return [-value]

        return negate

    def c_type(self, node: Node) -> Evaluator:
        _, op, expr, type_name = node
        operand = self.compile(expr)
        if not is_known_type(type_name):
            raise CompileError(f"unknown type {type_name}")
        wanted = normalize_type(type_name)
        if op == "is":

            def is_type(focus: Collection, env: Env) -> Collection:
                items = operand(focus, env)
                if not items:
                    return []
                return [_matches_type(_only(items, "is"), wanted)]

            return is_type

        def as_type(focus: Collection, env: Env) -> Collection:
            return [item for item in operand(focus, env) if _matches_type(item, wanted)]

        return as_type

    def c_bin(self, node: Node) -> Evaluator:
        _, op, left_node, right_node = node
        left = self.compile(left_node)
        right = self.compile(right_node)
        maker = _BINARY_OPERATORS.get(op)
        if maker is None:
            raise CompileError(f"operator {op!r} is not supported")
        return maker(left, right)

    def c_call(self, node: Node) -> Evaluator:
        _, base_node, name, args = node
        base: Evaluator = (
            self.compile(base_node) if base_node is not None else (lambda focus, env: focus)
        )
        if (
            name in ("ofType", "as", "is")
            and base_node is not None
            and base_node[0]
            in (
                "member",
                "id",
            )
        ):
            fast = self._choice_fast_path(base_node, name, args)
            if fast is not None:
                return fast
        if name == "first" and not args and base_node is not None and base_node[:2] == ("bin", "|"):
            return self._first_of_union(base_node)
        if _is_first(node) and base_node is not None and base_node[0] == "member":
            return self._chain(node)
        builder = _FUNCTIONS.get(name)
        if builder is None:
            raise CompileError(f"unknown function {name}()")
        minimum, maximum, make = builder
        if not minimum <= len(args) <= maximum:
            raise CompileError(f"{name}() takes {minimum}..{maximum} arguments, got {len(args)}")
        return make(self, base, args)

    def _first_of_union(self, node: Node) -> Evaluator:
        """``(a | b | c).first()``: the first item of the first non-empty operand, in order.

        The union's de-duplication never removes its first item, so evaluating
        the operands lazily gives the same result without building the union.
        """
        operands = union_operands(node)
        compiled = [self.compile(operand) for operand in operands]

        def first(focus: Collection, env: Env) -> Collection:
            for operand in compiled:
                items = operand(focus, env)
                if items:
                    return items[:1]
            return []

        return first

    def _choice_fast_path(
        self, base_node: Node, name: str, args: list[Node], *, wrap: bool = True
    ) -> Evaluator | None:
        """``value.ofType(Quantity)`` reads ``valueQuantity`` directly: no scan of the keys."""
        if len(args) != 1:
            return None
        element = base_node[2] if base_node[0] == "member" else base_node[1]
        if element not in CHOICE_ELEMENTS or name == "is":
            return None
        wanted = normalize_type(type_name_of(args[0]))
        if "." in wanted:
            return None
        parent = self.compile(base_node[1]) if base_node[0] == "member" else None
        keys = [(_choice_key(element, kind), kind) for kind in subtypes(wanted)]

        def read(focus: Collection, env: Env) -> Collection:
            items = parent(focus, env) if parent is not None else focus
            found: Collection = []
            for item in items:
                if item.__class__ is Typed:
                    item = item.value
                if item.__class__ is not dict:
                    continue
                for key, kind in keys:
                    value = item.get(key)
                    if value is None:
                        continue
                    if not wrap:
                        if value.__class__ is list:
                            found.extend(v for v in value if v is not None)
                        else:
                            found.append(value)
                    elif value.__class__ is list:
                        found.extend(Typed(v, kind) for v in value if v is not None)
                    else:
                        found.append(Typed(value, kind))
                # an element named exactly ``value`` (no choice suffix) of the wanted type
                plain = item.get(element)
                if plain is not None:
                    for v in plain if plain.__class__ is list else [plain]:
                        if v is not None and _matches_type(v, wanted):
                            found.append(v)
            return found

        return read


def _is_first(node: Node) -> bool:
    """Whether ``node`` is ``X.first()`` with an ``X``."""
    return node[0] == "call" and node[2] == "first" and not node[3] and node[1] is not None


def _take_first(items: Collection) -> Collection:
    return items[:1]


def _only(items: Collection, what: str) -> Any:
    if len(items) > 1:
        raise EvaluationError(f"{what} expects a single value, found {len(items)}")
    return items[0]


def type_name_of(node: Node) -> str:
    """The type an ``ofType``/``is``/``as`` argument names (``FHIR.Quantity``), checked to exist."""
    if node[0] == "id":
        name = str(node[1])
    elif node[0] == "member" and node[1][0] == "id":
        name = f"{node[1][1]}.{node[2]}"
    else:
        raise CompileError("expected a type name (such as Quantity or string)")
    if not is_known_type(name):
        raise CompileError(f"unknown type {name}")
    return name


# --- operators -------------------------------------------------------------------------


def _equality(negate: bool) -> Callable[[Evaluator, Evaluator], Evaluator]:
    def make(left: Evaluator, right: Evaluator) -> Evaluator:
        def equals(focus: Collection, env: Env) -> Collection:
            a, b = left(focus, env), right(focus, env)
            if not a or not b:
                return []
            if len(a) != len(b):
                return [negate]
            same = all(_equal(x, y) for x, y in zip(a, b, strict=True))
            return [same != negate]

        return equals

    return make


def _normal_text(value: Any) -> Any:
    value = unwrap(value)
    if value.__class__ is str:
        return " ".join(value.lower().split())
    return value


def _equivalence(negate: bool) -> Callable[[Evaluator, Evaluator], Evaluator]:
    def make(left: Evaluator, right: Evaluator) -> Evaluator:
        def equivalent(focus: Collection, env: Env) -> Collection:
            a, b = left(focus, env), right(focus, env)
            if not a and not b:
                return [not negate]
            if len(a) != len(b):
                return [negate]
            same = all(_equal(_normal_text(x), _normal_text(y)) for x, y in zip(a, b, strict=True))
            return [same != negate]

        return equivalent

    return make


_DATE_LIKE = re.compile(r"^\d{4}(-\d{2}(-\d{2})?)?(T.*)?$")


def _comparable(a: Any, b: Any) -> tuple[Any, Any] | None:
    if _is_number(a) and _is_number(b) and a.__class__ is not bool and b.__class__ is not bool:
        if a.__class__ is Decimal or b.__class__ is Decimal:
            return _dec(a), _dec(b)
        return a, b
    if a.__class__ is str and b.__class__ is str:
        if _DATE_LIKE.match(a) and _DATE_LIKE.match(b):
            # partial dates compare only to the shorter precision; equal prefixes are unknown
            n = min(len(a), len(b))
            if len(a) != len(b) and a[:n] == b[:n]:
                return None
        return a, b
    raise EvaluationError(f"cannot compare {type(a).__name__} with {type(b).__name__}")


def _comparison(test: Callable[[Any, Any], bool]) -> Callable[[Evaluator, Evaluator], Evaluator]:
    def make(left: Evaluator, right: Evaluator) -> Evaluator:
        def compare(focus: Collection, env: Env) -> Collection:
            a = _single(left(focus, env), "a comparison")
            b = _single(right(focus, env), "a comparison")
            if a is None or b is None:
                return []
            pair = _comparable(a, b)
            return [] if pair is None else [test(*pair)]

        return compare

    return make


def _arithmetic(op: str) -> Callable[[Evaluator, Evaluator], Evaluator]:
    def make(left: Evaluator, right: Evaluator) -> Evaluator:
        def arithmetic(focus: Collection, env: Env) -> Collection:
            a = _single(left(focus, env), f"operator {op}")
            b = _single(right(focus, env), f"operator {op}")
            if a is None or b is None:
                return []
            if op == "+" and a.__class__ is str and b.__class__ is str:
                return [a + b]
            if not (_is_number(a) and _is_number(b)) or bool in (a.__class__, b.__class__):
                raise EvaluationError(f"operator {op} needs numbers")
            return _number_op(op, a, b)

        return arithmetic

    return make


def _number_op(op: str, a: Any, b: Any) -> Collection:
    both_int = a.__class__ is int and b.__class__ is int
    try:
        if op == "div":
            if b == 0:
                return []
            quotient = _dec(a) / _dec(b)
            return [int(quotient)]
        if op == "mod":
            if b == 0:
                return []
            if both_int:
                return [int(_dec(a) % _dec(b))]
            return [_dec(a) % _dec(b)]
        if op == "/":
            if b == 0:
                return []
            return [_dec(a) / _dec(b)]
        if both_int:
            return [a + b if op == "+" else a - b if op == "-" else a * b]
        x, y = _dec(a), _dec(b)
        return [x + y if op == "+" else x - y if op == "-" else x * y]
    except InvalidOperation:
        return []


def _concatenate(left: Evaluator, right: Evaluator) -> Evaluator:
    def concat(focus: Collection, env: Env) -> Collection:
        a = _single(left(focus, env), "operator &")
        b = _single(right(focus, env), "operator &")
        return [_text(a) + _text(b)]

    return concat


def _text(value: Any) -> str:
    if value is None:
        return ""
    return _to_string(value) or ""


def _union(left: Evaluator, right: Evaluator) -> Evaluator:
    def union(focus: Collection, env: Env) -> Collection:
        return _distinct(left(focus, env) + right(focus, env))

    return union


def _distinct(items: Collection) -> Collection:
    out: Collection = []
    for item in items:
        if not any(_equal(item, seen) for seen in out):
            out.append(item)
    return out


def _membership(reverse: bool) -> Callable[[Evaluator, Evaluator], Evaluator]:
    def make(left: Evaluator, right: Evaluator) -> Evaluator:
        def member(focus: Collection, env: Env) -> Collection:
            a, b = left(focus, env), right(focus, env)
            if reverse:
                a, b = b, a
            if not a:
                return []
            item = _only(a, "in/contains")
            return [any(_equal(item, other) for other in b)]

        return member

    return make


def _logic(op: str) -> Callable[[Evaluator, Evaluator], Evaluator]:
    def make(left: Evaluator, right: Evaluator) -> Evaluator:
        def logic(focus: Collection, env: Env) -> Collection:
            a = _truth(left(focus, env))
            if op == "and" and a is False:
                return [False]
            if op == "or" and a is True:
                return [True]
            if op == "implies" and a is False:
                return [True]
            b = _truth(right(focus, env))
            if op == "and":
                if b is False:
                    return [False]
                return [True] if a is True and b is True else []
            if op == "or":
                if b is True:
                    return [True]
                return [False] if a is False and b is False else []
            if op == "xor":
                return [] if a is None or b is None else [a != b]
            # implies: a is True or None here
            if b is True:
                return [True]
            return [False] if a is True and b is False else []

        return logic

    return make


_BINARY_OPERATORS: dict[str, Callable[[Evaluator, Evaluator], Evaluator]] = {
    "=": _equality(False),
    "!=": _equality(True),
    "~": _equivalence(False),
    "!~": _equivalence(True),
    "<": _comparison(lambda a, b: a < b),
    ">": _comparison(lambda a, b: a > b),
    "<=": _comparison(lambda a, b: a <= b),
    ">=": _comparison(lambda a, b: a >= b),
    "+": _arithmetic("+"),
    "-": _arithmetic("-"),
    "*": _arithmetic("*"),
    "/": _arithmetic("/"),
    "div": _arithmetic("div"),
    "mod": _arithmetic("mod"),
    "&": _concatenate,
    "|": _union,
    "in": _membership(False),
    "contains": _membership(True),
    "and": _logic("and"),
    "or": _logic("or"),
    "xor": _logic("xor"),
    "implies": _logic("implies"),
}


# --- functions -------------------------------------------------------------------------

FunctionMaker = Callable[[_Compiler, Evaluator, list[Node]], Evaluator]
_FUNCTIONS: dict[str, tuple[int, int, FunctionMaker]] = {}


def _function(
    name: str, minimum: int = 0, maximum: int = 0
) -> Callable[[FunctionMaker], FunctionMaker]:
    def register(make: FunctionMaker) -> FunctionMaker:
        _FUNCTIONS[name] = (minimum, maximum, make)
        return make

    return register


def _simple(name: str, body: Callable[[Collection], Collection]) -> None:
    """Register a function without arguments that maps its input collection to a result."""

    def make(compiler: _Compiler, base: Evaluator, args: list[Node]) -> Evaluator:
        return lambda focus, env: body(base(focus, env))

    _FUNCTIONS[name] = (0, 0, make)


@_function("where", 1, 1)
def _where(compiler: _Compiler, base: Evaluator, args: list[Node]) -> Evaluator:
    criteria = compiler.compile(args[0])

    def where(focus: Collection, env: Env) -> Collection:
        return [item for item in base(focus, env) if _truth(criteria([item], env)) is True]

    return where


@_function("select", 1, 1)
def _select(compiler: _Compiler, base: Evaluator, args: list[Node]) -> Evaluator:
    projection = compiler.compile(args[0])

    def select(focus: Collection, env: Env) -> Collection:
        out: Collection = []
        for item in base(focus, env):
            out.extend(projection([item], env))
        return out

    return select


@_function("repeat", 1, 1)
def _repeat(compiler: _Compiler, base: Evaluator, args: list[Node]) -> Evaluator:
    projection = compiler.compile(args[0])

    def repeat(focus: Collection, env: Env) -> Collection:
        out: Collection = []
        queue = list(base(focus, env))
        while queue:
            item = queue.pop(0)
            for child in projection([item], env):
                if not any(child is seen or _equal(child, seen) for seen in out):
                    out.append(child)
                    queue.append(child)
        return out

    return repeat


@_function("exists", 0, 1)
def _exists(compiler: _Compiler, base: Evaluator, args: list[Node]) -> Evaluator:
    if not args:
        return lambda focus, env: [bool(base(focus, env))]
    criteria = compiler.compile(args[0])

    def exists(focus: Collection, env: Env) -> Collection:
        return [any(_truth(criteria([item], env)) is True for item in base(focus, env))]

    return exists


@_function("all", 1, 1)
def _all(compiler: _Compiler, base: Evaluator, args: list[Node]) -> Evaluator:
    criteria = compiler.compile(args[0])

    def all_(focus: Collection, env: Env) -> Collection:
        return [all(_truth(criteria([item], env)) is True for item in base(focus, env))]

    return all_


def _bools(items: Collection) -> list[Any]:
    return [unwrap(item) for item in items]


_simple("empty", lambda items: [not items])
_simple("count", lambda items: [len(items)])
_simple("first", lambda items: items[:1])
_simple("last", lambda items: items[-1:])
_simple("tail", lambda items: items[1:])
_simple("distinct", _distinct)
_simple("isDistinct", lambda items: [len(_distinct(items)) == len(items)])
_simple("hasValue", lambda items: [len(items) == 1 and unwrap(items[0]).__class__ is not dict])
_simple("allTrue", lambda items: [all(v is True for v in _bools(items))])
_simple("anyTrue", lambda items: [any(v is True for v in _bools(items))])
_simple("allFalse", lambda items: [all(v is False for v in _bools(items))])
_simple("anyFalse", lambda items: [any(v is False for v in _bools(items))])


def _single_value(items: Collection) -> Collection:
    if len(items) > 1:
        raise EvaluationError(f"single() found {len(items)} values")
    return items


_simple("single", _single_value)


def _not(items: Collection) -> Collection:
    value = _truth(items)
    return [] if value is None else [not value]


_simple("not", _not)


@_function("skip", 1, 1)
def _skip(compiler: _Compiler, base: Evaluator, args: list[Node]) -> Evaluator:
    count = compiler.compile(args[0])

    def skip(focus: Collection, env: Env) -> Collection:
        n = _single(count(focus, env), "skip()")
        return base(focus, env)[max(int(n or 0), 0) :]

    return skip


@_function("take", 1, 1)
def _take(compiler: _Compiler, base: Evaluator, args: list[Node]) -> Evaluator:
    count = compiler.compile(args[0])

    def take(focus: Collection, env: Env) -> Collection:
        n = _single(count(focus, env), "take()")
        return base(focus, env)[: max(int(n or 0), 0)]

    return take


def _string_argument(
    compiler: _Compiler, args: list[Node], position: int, default: str | None = None
) -> Evaluator:
    if position < len(args):
        return compiler.compile(args[position])
    value = [] if default is None else [default]
    return lambda focus, env: value


@_function("join", 0, 1)
def _join(compiler: _Compiler, base: Evaluator, args: list[Node]) -> Evaluator:
    separator = _string_argument(compiler, args, 0, "")

    def join(focus: Collection, env: Env) -> Collection:
        items = base(focus, env)
        sep = _single(separator(focus, env), "join()") or ""
        return [str(sep).join(_text(unwrap(item)) for item in items)]

    return join


@_function("ofType", 1, 1)
def _of_type(compiler: _Compiler, base: Evaluator, args: list[Node]) -> Evaluator:
    wanted = normalize_type(type_name_of(args[0]))
    return lambda focus, env: [item for item in base(focus, env) if _matches_type(item, wanted)]


@_function("as", 1, 1)
def _as(compiler: _Compiler, base: Evaluator, args: list[Node]) -> Evaluator:
    return _of_type(compiler, base, args)


@_function("is", 1, 1)
def _is(compiler: _Compiler, base: Evaluator, args: list[Node]) -> Evaluator:
    wanted = normalize_type(type_name_of(args[0]))

    def is_(focus: Collection, env: Env) -> Collection:
        items = base(focus, env)
        if not items:
            return []
        return [_matches_type(_only(items, "is()"), wanted)]

    return is_


@_function("extension", 1, 1)
def _extension(compiler: _Compiler, base: Evaluator, args: list[Node]) -> Evaluator:
    url = compiler.compile(args[0])
    step = _member("extension")

    def extension(focus: Collection, env: Env) -> Collection:
        wanted = _single(url(focus, env), "extension()")
        return [
            ext
            for ext in step(base(focus, env))
            if ext.__class__ is dict and ext.get("url") == wanted
        ]

    return extension


@_function("getResourceKey", 0, 0)
def _resource_key(compiler: _Compiler, base: Evaluator, args: list[Node]) -> Evaluator:
    def key(focus: Collection, env: Env) -> Collection:
        out: Collection = []
        for item in base(focus, env):
            item = unwrap(item)
            if item.__class__ is dict:
                rid = item.get("id")
                if isinstance(rid, str):
                    out.append(rid)
        return out

    return key


_REFERENCE = re.compile(r"(?:^|/)([A-Z][A-Za-z]+)/([A-Za-z0-9\-.]{1,64})(?:/_history/[^/]+)?$")


def reference_parts(reference: Any) -> tuple[str, str] | None:
    """``(type, id)`` of a literal reference (relative ``Patient/1`` or absolute URL), else ``None``."""
    if reference.__class__ is not str:
        return None
    match = _REFERENCE.search(reference)
    if match is None:
        return None
    return match.group(1), match.group(2)


@_function("getReferenceKey", 0, 1)
def _reference_key(compiler: _Compiler, base: Evaluator, args: list[Node]) -> Evaluator:
    wanted = normalize_type(type_name_of(args[0])) if args else None

    def key(focus: Collection, env: Env) -> Collection:
        out: Collection = []
        for item in base(focus, env):
            item = unwrap(item)
            if item.__class__ is not dict:
                continue
            parts = reference_parts(item.get("reference"))
            if parts is None or (wanted is not None and parts[0] != wanted):
                continue
            out.append(parts[1])
        return out

    return key


@_function("iif", 2, 3)
def _iif(compiler: _Compiler, base: Evaluator, args: list[Node]) -> Evaluator:
    condition = compiler.compile(args[0])
    then = compiler.compile(args[1])
    otherwise = compiler.compile(args[2]) if len(args) > 2 else (lambda focus, env: [])

    def iif(focus: Collection, env: Env) -> Collection:
        items = base(focus, env)
        if len(items) > 1:
            raise EvaluationError("iif() needs a single input")
        return then(items, env) if _truth(condition(items, env)) is True else otherwise(items, env)

    return iif


@_function("union", 1, 1)
def _union_function(compiler: _Compiler, base: Evaluator, args: list[Node]) -> Evaluator:
    other = compiler.compile(args[0])
    return lambda focus, env: _distinct(base(focus, env) + other(focus, env))


@_function("combine", 1, 1)
def _combine(compiler: _Compiler, base: Evaluator, args: list[Node]) -> Evaluator:
    other = compiler.compile(args[0])
    return lambda focus, env: base(focus, env) + other(focus, env)


# strings


def _to_string(value: Any) -> str | None:
    value = unwrap(value)
    if value.__class__ is str:
        return value
    if value is True:
        return "true"
    if value is False:
        return "false"
    if value.__class__ is int:
        return str(value)
    if value.__class__ is float:
        return repr(value)
    if value.__class__ is Decimal:
        return str(value)
    return None


def _string_function(name: str, arity: int, body: Callable[..., Any]) -> None:
    def make(compiler: _Compiler, base: Evaluator, args: list[Node]) -> Evaluator:
        compiled = [compiler.compile(arg) for arg in args]

        def call(focus: Collection, env: Env) -> Collection:
            value = _single(base(focus, env), f"{name}()")
            if value is None:
                return []
            if value.__class__ is not str:
                raise EvaluationError(f"{name}() needs a string")
            values = [_single(arg(focus, env), f"{name}()") for arg in compiled]
            if any(v is None for v in values):
                return []
            result = body(value, *values)
            return [] if result is None else [result]

        return call

    _FUNCTIONS[name] = (arity, arity, make)


_string_function("startsWith", 1, lambda s, p: s.startswith(p))
_string_function("endsWith", 1, lambda s, p: s.endswith(p))
_string_function("contains", 1, lambda s, p: p in s)
_string_function("upper", 0, str.upper)
_string_function("lower", 0, str.lower)
_string_function("length", 0, len)
_string_function("trim", 0, str.strip)
_string_function("indexOf", 1, lambda s, p: s.find(p))
_string_function("replace", 2, lambda s, a, b: s.replace(a, b))
_string_function("matches", 1, lambda s, p: re.search(p, s, re.DOTALL) is not None)
_string_function("replaceMatches", 2, lambda s, p, r: re.sub(p, r, s))


@_function("substring", 1, 2)
def _substring(compiler: _Compiler, base: Evaluator, args: list[Node]) -> Evaluator:
    start = compiler.compile(args[0])
    length = compiler.compile(args[1]) if len(args) > 1 else None

    def substring(focus: Collection, env: Env) -> Collection:
        value = _single(base(focus, env), "substring()")
        begin = _single(start(focus, env), "substring()")
        if value is None or begin is None or not 0 <= begin < len(value):
            return []
        if length is None:
            return [value[begin:]]
        size = _single(length(focus, env), "substring()")
        return [value[begin : begin + max(size or 0, 0)]]

    return substring


_simple(
    "toString",
    lambda items: (
        [] if not items else [s for s in [_to_string(_only(items, "toString()"))] if s is not None]
    ),
)


def _to_integer(items: Collection) -> Collection:
    if not items:
        return []
    value = unwrap(_only(items, "toInteger()"))
    if value.__class__ is int:
        return [value]
    if value is True or value is False:
        return [int(value)]
    if value.__class__ is str and re.fullmatch(r"[+-]?\d+", value):
        return [int(value)]
    return []


def _to_decimal(items: Collection) -> Collection:
    if not items:
        return []
    value = unwrap(_only(items, "toDecimal()"))
    if value is True or value is False:
        return [Decimal(int(value))]
    if _is_number(value):
        return [_dec(value)]
    if value.__class__ is str and re.fullmatch(r"[+-]?\d+(\.\d+)?", value):
        return [Decimal(value)]
    return []


_simple("toInteger", _to_integer)
_simple("toDecimal", _to_decimal)


def _number_function(name: str, body: Callable[[Any], Any]) -> None:
    def run(items: Collection) -> Collection:
        value = _single(items, f"{name}()")
        if value is None:
            return []
        if not _is_number(value) or value.__class__ is bool:
            raise EvaluationError(f"{name}() needs a number")
        return [body(value)]

    _simple(name, run)


_number_function("abs", abs)
_number_function("ceiling", lambda v: int(_dec(v).to_integral_value(rounding="ROUND_CEILING")))
_number_function("floor", lambda v: int(_dec(v).to_integral_value(rounding="ROUND_FLOOR")))
_number_function("truncate", lambda v: int(_dec(v)))


@_function("round", 0, 1)
def _round(compiler: _Compiler, base: Evaluator, args: list[Node]) -> Evaluator:
    digits = compiler.compile(args[0]) if args else (lambda focus, env: [0])

    def round_(focus: Collection, env: Env) -> Collection:
        value = _single(base(focus, env), "round()")
        if value is None:
            return []
        places = int(_single(digits(focus, env), "round()") or 0)
        return [_dec(value).quantize(Decimal(1).scaleb(-places), rounding="ROUND_HALF_UP")]

    return round_


# boundaries (FHIRPath 3.0 draft, "experimental" in SQL on FHIR)

_DATE = re.compile(r"^(\d{4})(?:-(\d{2})(?:-(\d{2}))?)?$")
_DATETIME = re.compile(
    r"^(\d{4})(?:-(\d{2})(?:-(\d{2}))?)?T(\d{2})?(?::(\d{2}))?(?::(\d{2}))?(?:\.(\d+))?(Z|[+-]\d{2}:\d{2})?$"
)
_TIME = re.compile(r"^(\d{2})(?::(\d{2}))?(?::(\d{2}))?(?:\.(\d+))?$")


def _fill_date(year: str, month: str | None, day: str | None, high: bool) -> str:
    month = month or ("12" if high else "01")
    if day is None:
        day = f"{calendar.monthrange(int(year), int(month))[1]:02d}" if high else "01"
    return f"{year}-{month}-{day}"


def _fraction(digits: str | None, high: bool) -> str:
    """Fractional seconds to milliseconds: the unknown digits are 0s (low) or 9s (high)."""
    return (digits or "")[:3].ljust(3, "9" if high else "0")


def _date_boundary(value: str, high: bool, precision: int | None) -> str | None:
    match = _DATE.match(value)
    if match is None:
        return None
    if precision is not None and precision not in (4, 6, 8):
        return None
    year, month, day = match.groups()
    full = _fill_date(year, month, day, high)
    return full[: {4: 4, 6: 7, 8: 10}[precision or 8]]


def _datetime_boundary(value: str, high: bool, precision: int | None) -> str | None:
    match = _DATETIME.match(value) or _DATE.match(value)
    if match is None:
        return None
    groups = list(match.groups()) + [None] * (8 - len(match.groups()))
    year, month, day, hour, minute, second, fraction, zone = groups
    date = _fill_date(year, month, day, high)
    hour = hour or ("23" if high else "00")
    minute = minute or ("59" if high else "00")
    second = second or ("59" if high else "00")
    zone = zone or ("-12:00" if high else "+14:00")
    full = f"{date}T{hour}:{minute}:{second}.{_fraction(fraction, high)}{zone}"
    if precision is None:
        return full
    sizes = {4: 4, 6: 7, 8: 10, 10: 13, 12: 16, 14: 19, 17: 23}
    if precision not in sizes:
        return None
    return full[: sizes[precision]]


def _time_boundary(value: str, high: bool, precision: int | None) -> str | None:
    match = _TIME.match(value)
    if match is None:
        return None
    hour, minute, second, fraction = match.groups()
    minute = minute or ("59" if high else "00")
    second = second or ("59" if high else "00")
    full = f"{hour}:{minute}:{second}.{_fraction(fraction, high)}"
    if precision is None:
        return full
    sizes = {2: 2, 4: 5, 6: 8, 9: 12}
    return full[: sizes[precision]] if precision in sizes else None


def _decimal_boundary(value: Any, high: bool, precision: int | None) -> Any:
    """The least/greatest value that would round to the input, to ``precision`` places (8).

    The input's precision is its number of decimal places: ``1.0`` stands for
    0.95 up to 1.05 (FHIR's FHIRPath page: "the lowBoundary of 1.0 is
    0.95000000000"), ``1.587`` for 1.5865 up to 1.5875.
    """
    target = 8 if precision is None else precision
    if not 0 <= target <= 28:
        return None
    number = _dec(value)
    exponent = number.as_tuple().exponent
    places = -exponent if isinstance(exponent, int) and exponent < 0 else 0
    half = Decimal(5).scaleb(-(places + 1))
    bound = number + half if high else number - half
    rounding = "ROUND_CEILING" if high else "ROUND_FLOOR"
    return bound.quantize(Decimal(1).scaleb(-target), rounding=rounding)


def _boundary(high: bool) -> FunctionMaker:
    def make(compiler: _Compiler, base: Evaluator, args: list[Node]) -> Evaluator:
        digits = compiler.compile(args[0]) if args else (lambda focus, env: [])

        def boundary(focus: Collection, env: Env) -> Collection:
            items = base(focus, env)
            if not items:
                return []
            item = _only(items, "boundary")
            type_name = _type_of(item)
            value = unwrap(item)
            precision = _single(digits(focus, env), "boundary precision")
            if value.__class__ is dict:
                if type_name == "Period" or "start" in value or "end" in value:
                    edge = value.get("end" if high else "start")
                    if not isinstance(edge, str):
                        return []
                    result = _datetime_boundary(edge, high, precision)
                    return [] if result is None else [result]
                return []
            if _is_number(value) and value.__class__ is not bool:
                result = _decimal_boundary(value, high, precision)
                return [] if result is None else [result]
            if value.__class__ is str:
                if type_name == "time":
                    result = _time_boundary(value, high, precision)
                elif type_name in ("dateTime", "instant") or "T" in value:
                    result = _datetime_boundary(value, high, precision)
                else:
                    result = _date_boundary(value, high, precision)
                    if result is None:
                        result = _time_boundary(value, high, precision)
                return [] if result is None else [result]
            return []

        return boundary

    return make


_FUNCTIONS["lowBoundary"] = (0, 1, _boundary(False))
_FUNCTIONS["highBoundary"] = (0, 1, _boundary(True))


def compile_path(text: str, constants: Mapping[str, Collection]) -> Evaluator:
    """Compile FHIRPath ``text``; raises :class:`CompileError` or ``FhirPathSyntaxError``."""
    return _Compiler(constants).compile(parse(text))
