"""Placement expressions (OpenNebula's REQUIREMENTS and RANK): small formulas over a host's
attributes, parsed once (lark) and compiled into plain Python closures, so a scheduler can
ask thousands of hosts cheaply. Pure.

    memory_free > 2048 & group == "fast"
    !(name == "h3") | cpu_load < 0.5
    memory_free - 1000 * cpu_load

Grammar: numbers, "strings", attribute names; ``+ - * /``; comparisons ``== = != < <= > >=``;
``!`` (not), ``&`` (and), ``|`` (or); parentheses. The comparisons bind tighter than ``&`` and
``|`` (unlike Python), so the first line means what it says. Equality against a list attribute
(a host's ``group``) is membership, and a string with ``*`` is a glob (``name == "rack1-*"``).
An attribute a host does not have makes every comparison with it false (the host is rejected,
as OpenNebula does), never an error: hosts differ in their attributes.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from lark import Lark, Token, Transformer, UnexpectedCharacters, UnexpectedInput, UnexpectedToken

# The attributes every host has (elastic.placement sets them); a spec's hosts add their own
# attributes: keys.
HOST_ATTRIBUTES: dict[str, str] = {
    "name": "the host's name",
    "type": "its domain type (kvm, qemu, xen)",
    "group": "its groups (== is membership)",
    "memory": "MiB for guests (total less the reserved share)",
    "memory_used": "MiB its guests take (all projects), counting this plan",
    "memory_free": "memory - memory_used",
    "vcpus": "vcpus it may give guests (its CPUs less the reserved, times vcpu_ratio)",
    "vcpus_used": "vcpus its guests take",
    "vcpus_free": "vcpus - vcpus_used",
    "cpu_load": "its measured CPU utilisation, 0..1 (0 when not measured)",
    "vms": "how many VMs it runs, counting this plan",
}

_GRAMMAR = r"""
?start: any_
?any_: all_ ("|" all_)*
?all_: not_ ("&" not_)*
?not_: "!" not_                       -> neg
     | cmp
?cmp: sum (CMP sum)?
?sum: product (ADD product)*
?product: unary (MUL unary)*
?unary: "-" unary                     -> minus
      | atom
?atom: NUMBER                         -> number
     | STRING                         -> string
     | NAME                           -> name
     | "(" any_ ")"
CMP: "==" | "!=" | "<=" | ">=" | "<" | ">" | "="
ADD: "+" | "-"
MUL: "*" | "/"
NAME: /[A-Za-z_][A-Za-z0-9_.]*/
NUMBER: /\d+(\.\d*)?([eE][+-]?\d+)?/ | /\.\d+([eE][+-]?\d+)?/
STRING: /"[^"]*"/ | /'[^']*'/
%import common.WS
%ignore WS
"""


class ExpressionError(ValueError):
    """A formula that does not parse, or names an attribute no host has."""


class _Missing:
    """The value of an attribute a host lacks: every comparison with it is false."""

    def __repr__(self) -> str:
        return "MISSING"


MISSING: Any = _Missing()
Attrs = Mapping[str, Any]
Fn = Callable[[Attrs], Any]


@dataclass(frozen=True)
class Expression:
    text: str
    fn: Fn
    names: frozenset[str]          # the attributes it reads

    def __call__(self, attrs: Attrs) -> Any:
        return self.fn(attrs)

    def holds(self, attrs: Attrs) -> bool:
        """As a requirement: true only for a true value (a missing attribute is false)."""
        v = self.fn(attrs)
        return v is not MISSING and bool(v)

    def rank(self, attrs: Attrs) -> float:
        """As a rank: a number (true/false count 1/0; a missing attribute ranks lowest)."""
        v = self.fn(attrs)
        if v is MISSING or isinstance(v, str):
            return float("-inf")
        return float(v)


def _glob(pattern: str) -> re.Pattern[str]:
    return re.compile("".join(".*" if c == "*" else re.escape(c) for c in pattern) + r"\Z")


def _eq(a: Any, b: Any) -> bool:
    if isinstance(a, (list, tuple, set, frozenset)):
        return any(_eq(x, b) for x in a)
    if isinstance(b, (list, tuple, set, frozenset)):
        return any(_eq(a, x) for x in b)
    if isinstance(a, str) and isinstance(b, str):
        if "*" in b:
            return _glob(b).match(a) is not None
        if "*" in a:
            return _glob(a).match(b) is not None
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b or (a == b and type(a) is type(b))
    return bool(a == b)


def _order(op: str) -> Callable[[Any, Any], bool]:
    cmp = {"<": lambda a, b: a < b, "<=": lambda a, b: a <= b,
           ">": lambda a, b: a > b, ">=": lambda a, b: a >= b}[op]

    def compare(a: Any, b: Any) -> bool:
        num = (int, float)
        if isinstance(a, num) and isinstance(b, num) or isinstance(a, str) and isinstance(b, str):
            return bool(cmp(a, b))
        return False      # a string against a number, or a list: not ordered
    return compare


def _arith(op: str) -> Callable[[Any, Any], Any]:
    def apply(a: Any, b: Any) -> Any:
        if isinstance(a, bool) or isinstance(b, bool) or not (
                isinstance(a, (int, float)) and isinstance(b, (int, float))):
            return MISSING
        if op == "+":
            return a + b
        if op == "-":
            return a - b
        if op == "*":
            return a * b
        return a / b if b else MISSING
    return apply


class _Compile(Transformer[Token, tuple[Fn, frozenset[str]]]):
    """Parse tree -> (closure, names read)."""

    def number(self, children):
        (tok,) = children
        text = str(tok)
        value: float | int = float(text) if any(c in text for c in ".eE") else int(text)
        return (lambda _a: value), frozenset()

    def string(self, children):
        (tok,) = children
        value = str(tok)[1:-1]
        return (lambda _a: value), frozenset()

    def name(self, children):
        (tok,) = children
        key = str(tok)
        return (lambda a: a.get(key, MISSING)), frozenset({key})

    def minus(self, children):
        ((f, names),) = children
        return (lambda a: _arith("-")(0, f(a))), names

    def neg(self, children):
        ((f, names),) = children

        def fn(a: Attrs) -> bool:
            v = f(a)
            return v is MISSING or not v
        return fn, names

    def _fold(self, children, op_of: Callable[[str], Callable[[Any, Any], Any]]):
        f, names = children[0]
        for i in range(1, len(children), 2):
            op = op_of(str(children[i]))
            g, more = children[i + 1]
            f = (lambda f_, g_, op_: lambda a: op_(f_(a), g_(a)))(f, g, op)
            names |= more
        return f, names

    def sum(self, children):
        return self._fold(children, _arith)

    def product(self, children):
        return self._fold(children, _arith)

    def cmp(self, children):
        (f, n1), op, (g, n2) = children
        o = str(op)
        if o in ("==", "="):
            def eq(a: Attrs) -> bool:
                x, y = f(a), g(a)
                return x is not MISSING and y is not MISSING and _eq(x, y)
            return eq, n1 | n2
        if o == "!=":
            def ne(a: Attrs) -> bool:
                x, y = f(a), g(a)
                return x is not MISSING and y is not MISSING and not _eq(x, y)
            return ne, n1 | n2
        order = _order(o)
        return (lambda a: order(f(a), g(a))), n1 | n2

    def _logic(self, children, want: bool):
        """``&`` (want False: the first false operand decides) or ``|`` (want True)."""
        fns = [c[0] for c in children]
        names = frozenset().union(*(c[1] for c in children))

        def fn(a: Attrs) -> bool:
            for f in fns:
                v = f(a)
                if (v is not MISSING and bool(v)) is want:
                    return want
            return not want
        return fn, names

    def all_(self, children):
        return self._logic(children, False)

    def any_(self, children):
        return self._logic(children, True)


@lru_cache(maxsize=1)
def _parser() -> Lark:
    return Lark(_GRAMMAR, parser="lalr", maybe_placeholders=False)


def _describe(e: UnexpectedInput, text: str) -> str:
    col = getattr(e, "column", None)
    at = f" at column {col}" if isinstance(col, int) and col > 0 else ""
    if isinstance(e, UnexpectedToken) and e.token.type == "$END":
        return f"'{text}' ends too soon (an operand or ')' is missing)"
    if isinstance(e, UnexpectedCharacters):
        return f"unexpected '{text[e.pos_in_stream]}'{at} in '{text}'"
    if isinstance(e, UnexpectedToken):
        return f"unexpected '{e.token}'{at} in '{text}'"
    return f"cannot parse '{text}'{at}"


@lru_cache(maxsize=4096)
def _compile(text: str) -> tuple[Fn, frozenset[str]]:
    try:
        tree = _parser().parse(text)
    except UnexpectedInput as e:
        raise ExpressionError(_describe(e, text)) from None
    fn, names = _Compile().transform(tree)
    return fn, names


def compile_expression(text: str, extra: Collection[str] = ()) -> Expression:
    """``text`` compiled. Names must be host attributes (``HOST_ATTRIBUTES`` or ``extra``,
    the attributes: keys of the spec's hosts); an unknown one is an ExpressionError with a
    suggestion."""
    if not text.strip():
        raise ExpressionError("empty expression")
    fn, names = _compile(text)
    known = set(HOST_ATTRIBUTES) | set(extra)
    for name in sorted(names):
        if name not in known:
            close = difflib.get_close_matches(name, sorted(known), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ExpressionError(f"unknown host attribute '{name}' in '{text}'{hint}; known: "
                                  + ", ".join(sorted(known)))
    return Expression(text, fn, names)
