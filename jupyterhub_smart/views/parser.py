"""FHIRPath text to a small syntax tree (tuples), for the compiler in :mod:`.compiler`.

The grammar is FHIRPath's (https://hl7.org/fhirpath/, "Grammar"), with its
operator precedence, from tightest to loosest::

    . []   unary + -   * / div mod   + - &   is as   |
    < > <= >=   = ~ != !~   in contains   and   xor or   implies

Nodes are tuples whose first item names the kind:

``("lit", [values])`` a literal collection, ``("this",)``, ``("index",)``,
``("var", name)`` an ``%name``, ``("id", name)`` a leading identifier,
``("member", base, name)``, ``("call", base | None, name, [args])``,
``("indexer", base, expr)``, ``("neg", expr)``, ``("bin", op, left, right)``,
``("type", "is" | "as", expr, type_name)``.

Parsing is iterative in the depth of chained invocations and recursive only in
the nesting of parentheses and function arguments, which a depth limit bounds.
"""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Any

__all__ = ["FhirPathSyntaxError", "Node", "parse", "union_operands"]

Node = tuple[Any, ...]

#: Deeper nesting than this (parentheses, arguments, unary minus) is refused, not recursed into.
MAX_DEPTH = 64


class FhirPathSyntaxError(ValueError):
    """The expression is not valid FHIRPath (or uses syntax this engine does not support)."""


_TOKEN = re.compile(
    r"""
    (?P<ws>\s+|//[^\n]*|/\*.*?\*/)
  | (?P<datetime>@\d{4}(?:-\d{2}(?:-\d{2})?)?(?:T(?:\d{2}(?::\d{2}(?::\d{2}(?:\.\d+)?)?)?)?(?:Z|[+-]\d{2}:\d{2})?)?)
  | (?P<time>@T\d{2}(?::\d{2}(?::\d{2}(?:\.\d+)?)?)?)
  | (?P<number>\d+(?:\.\d+)?)
  | (?P<string>'(?:[^'\\]|\\.)*')
  | (?P<delimited>`(?:[^`\\]|\\.)*`)
  | (?P<var>%(?:[A-Za-z_][A-Za-z0-9_]*|`(?:[^`\\]|\\.)*`|'(?:[^'\\]|\\.)*'))
  | (?P<special>\$(?:this|index|total))
  | (?P<ident>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<op><=|>=|!=|!~|[-+*/&|<>=~.,()\[\]{}])
    """,
    re.VERBOSE | re.DOTALL,
)

_ESCAPES = {
    "'": "'",
    '"': '"',
    "`": "`",
    "r": "\r",
    "n": "\n",
    "t": "\t",
    "f": "\f",
    "\\": "\\",
    "/": "/",
}


def _unescape(body: str) -> str:
    out: list[str] = []
    chars = iter(range(len(body)))
    for i in chars:
        c = body[i]
        if c != "\\":
            out.append(c)
            continue
        nxt = body[i + 1] if i + 1 < len(body) else ""
        if nxt == "u" and i + 5 < len(body):
            out.append(chr(int(body[i + 2 : i + 6], 16)))
            for _ in range(5):
                next(chars, None)
            continue
        out.append(_ESCAPES.get(nxt, nxt))
        next(chars, None)
    return "".join(out)


def tokenize(text: str) -> list[tuple[str, Any]]:
    """Split ``text`` into ``(kind, value)`` tokens; raises on a character FHIRPath does not have."""
    tokens: list[tuple[str, Any]] = []
    pos = 0
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if match is None:
            raise FhirPathSyntaxError(f"unexpected {text[pos]!r} at position {pos}")
        pos = match.end()
        kind = match.lastgroup
        value = match.group()
        if kind == "ws":
            continue
        if kind == "string":
            tokens.append(("string", _unescape(value[1:-1])))
        elif kind == "delimited":
            tokens.append(("ident", _unescape(value[1:-1])))
        elif kind == "var":
            name = value[1:]
            if name[0] in "`'":
                name = _unescape(name[1:-1])
            tokens.append(("var", name))
        elif kind == "ident" and value in _WORD_OPERATORS:
            tokens.append(("op", value))
        else:
            tokens.append((kind or "", value))
    tokens.append(("end", None))
    return tokens


_WORD_OPERATORS = {"div", "mod", "is", "as", "in", "contains", "and", "or", "xor", "implies"}

#: Binary operators and their binding power (higher binds tighter).
_BINARY = {
    "implies": 1,
    "or": 2,
    "xor": 2,
    "and": 3,
    "in": 4,
    "contains": 4,
    "=": 5,
    "~": 5,
    "!=": 5,
    "!~": 5,
    "<": 6,
    ">": 6,
    "<=": 6,
    ">=": 6,
    "|": 7,
    "is": 8,
    "as": 8,
    "+": 9,
    "-": 9,
    "&": 9,
    "*": 10,
    "/": 10,
    "div": 10,
    "mod": 10,
}


class _Parser:
    def __init__(self, text: str) -> None:
        self.tokens = tokenize(text)
        self.pos = 0
        self.depth = 0

    def peek(self) -> tuple[str, Any]:
        return self.tokens[self.pos]

    def take(self) -> tuple[str, Any]:
        token = self.tokens[self.pos]
        self.pos += 1
        return token

    def expect(self, value: str) -> None:
        kind, got = self.take()
        if got != value or kind not in ("op",):
            raise FhirPathSyntaxError(f"expected {value!r}, found {got!r}")

    def enter(self) -> None:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise FhirPathSyntaxError(f"expression nested deeper than {MAX_DEPTH} levels")

    def expression(self, min_power: int = 0) -> Node:
        self.enter()
        left = self.unary()
        while True:
            kind, value = self.peek()
            power = _BINARY.get(value) if kind == "op" else None
            if power is None or power <= min_power:
                break
            self.take()
            if value in ("is", "as"):
                left = ("type", value, left, self.type_name())
            else:
                left = ("bin", value, left, self.expression(power))
        self.depth -= 1
        return left

    def type_name(self) -> str:
        kind, value = self.take()
        if kind != "ident":
            raise FhirPathSyntaxError(f"expected a type name, found {value!r}")
        name = value
        while self.peek() == ("op", "."):
            self.take()
            kind, value = self.take()
            if kind != "ident":
                raise FhirPathSyntaxError(f"expected a type name, found {value!r}")
            name = f"{name}.{value}"
        return name

    def unary(self) -> Node:
        kind, value = self.peek()
        if kind == "op" and value in ("+", "-"):
            self.take()
            self.enter()
            operand = self.unary()
            self.depth -= 1
            return ("neg", operand) if value == "-" else operand
        return self.postfix(self.term())

    def term(self) -> Node:
        kind, value = self.take()
        if kind == "number":
            number: Any = Decimal(value) if "." in value else int(value)
            return ("lit", [number])
        if kind == "string":
            return ("lit", [value])
        if kind == "datetime":
            return ("lit", [value[1:]])
        if kind == "time":
            return ("lit", [value[2:]])
        if kind == "var":
            return ("var", value)
        if kind == "special":
            return (
                ("this",) if value == "$this" else ("index",) if value == "$index" else ("total",)
            )
        if kind == "ident":
            if value in ("true", "false"):
                return ("lit", [value == "true"])
            if self.peek() == ("op", "("):
                return self.call(None, value)
            return ("id", value)
        if kind == "op" and value == "(":
            inner = self.expression()
            self.expect(")")
            return inner
        if kind == "op" and value == "{":
            self.expect("}")
            return ("lit", [])
        raise FhirPathSyntaxError(
            f"unexpected {value!r}" if value is not None else "unexpected end"
        )

    def call(self, base: Node | None, name: str) -> Node:
        self.expect("(")
        self.enter()
        args: list[Node] = []
        if self.peek() != ("op", ")"):
            args.append(self.expression())
            while self.peek() == ("op", ","):
                self.take()
                args.append(self.expression())
        self.expect(")")
        self.depth -= 1
        return ("call", base, name, args)

    def postfix(self, node: Node) -> Node:
        while True:
            kind, value = self.peek()
            if kind == "op" and value == ".":
                self.take()
                kind, name = self.take()
                if kind != "ident" and not (kind == "op" and name in _WORD_OPERATORS):
                    raise FhirPathSyntaxError(f"expected a name after '.', found {name!r}")
                if self.peek() == ("op", "("):
                    node = self.call(node, name)
                else:
                    node = ("member", node, name)
            elif kind == "op" and value == "[":
                self.take()
                index = self.expression()
                self.expect("]")
                node = ("indexer", node, index)
            else:
                return node


def parse(text: str) -> Node:
    """Parse a FHIRPath expression; raises :class:`FhirPathSyntaxError` with the reason."""
    if not isinstance(text, str):
        raise FhirPathSyntaxError(f"expected a string, found {type(text).__name__}")
    if not text.strip():
        raise FhirPathSyntaxError("empty expression")
    parser = _Parser(text)
    node = parser.expression()
    kind, value = parser.peek()
    if kind != "end":
        raise FhirPathSyntaxError(f"unexpected {value!r} after a complete expression")
    return node


def union_operands(node: Node) -> list[Node]:
    """The operands of a chain of ``|`` unions, left to right (``a | b | c`` -> ``[a, b, c]``).

    Engines use it for ``(a | b).first()``: the union's de-duplication never
    removes its first item, so the first non-empty operand gives the answer.
    """
    operands: list[Node] = []
    pending = [node]
    while pending:
        current = pending.pop()
        if current[:2] == ("bin", "|"):
            pending.extend([current[3], current[2]])
        else:
            operands.append(current)
    return operands
