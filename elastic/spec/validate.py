"""Run a pydantic block model over a raw block and turn its complaints into located
problems (file, line, key), with 'did you mean' for unknown keys."""

from __future__ import annotations

import types
import typing
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from elastic.errors import ConfigError, Problem
from elastic.model import Where
from elastic.spec.source import SList, SMap, where_at
from elastic.spec.suggest import did_you_mean

M = TypeVar("M", bound=BaseModel)


class Problems:
    """Collects every problem of a phase so the user sees them all at once."""

    def __init__(self) -> None:
        self.items: list[Problem] = []

    def add(self, message: str, where: Where | None, key: str) -> None:
        self.items.append(Problem(message, where.file if where else None,
                                  where.line if where else None, key))

    def raise_if_any(self) -> None:
        if self.items:
            # the same problem can be reached twice (a class used by two nodes): say it once
            unique = list(dict.fromkeys(self.items))
            raise ConfigError.many(unique)

    def __bool__(self) -> bool:
        return bool(self.items)


def validate_block(model: type[M], raw: Any, key: str, problems: Problems,
                   where: Where | None = None) -> M | None:
    """The block as a model, or None after adding its problems. ``where`` is the line that
    names the block (for complaints about the block as a whole)."""
    if not isinstance(raw, SMap):
        if raw is None:
            raw = SMap(where=getattr(raw, "where", None))
        else:
            problems.add(f"expected a mapping of settings, not {_kind(raw)}",
                         getattr(raw, "where", None), key)
            return None
    try:
        return model.model_validate(raw)
    except ValidationError as e:
        for err in e.errors():
            loc = _clean_loc(raw, err["loc"])
            at = where if where is not None and (not loc or err["type"] == "missing") \
                else where_at(raw, loc)
            problems.add(_message(model, err, loc), at,
                         ".".join([key, *map(str, loc)]))
        return None


def _clean_loc(raw: Any, loc: tuple[Any, ...]) -> tuple[Any, ...]:
    """Drop pydantic's union-branch tags, keep the keys the user wrote."""
    out: list[Any] = []
    node = raw
    for i, part in enumerate(loc):
        last = i == len(loc) - 1
        if isinstance(node, dict) and part in node:
            out.append(part)
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            out.append(part)
            node = node[part]
        elif last and isinstance(part, str) and isinstance(node, dict) and not _is_tag(part):
            out.append(part)   # a missing key
    return tuple(out)


def _is_tag(part: str) -> bool:
    return "[" in part or part[:1].isupper() or part in ("int", "str", "float", "bool", "list",
                                                        "dict", "function-after",
                                                        "function-before")


def _message(model: type[BaseModel], err: Any, loc: tuple[Any, ...]) -> str:
    kind = err["type"]
    if kind == "extra_forbidden" and loc:
        known = _fields_at(model, loc[:-1])
        return f"unknown key '{loc[-1]}'" + did_you_mean(str(loc[-1]), known)
    if kind == "missing" and loc:
        return f"missing required key '{loc[-1]}'"
    msg = err["msg"]
    for prefix in ("Value error, ", "Assertion failed, "):
        if msg.startswith(prefix):
            return msg[len(prefix):]
    got = err.get("input")
    if isinstance(got, (str, int, float, bool)) and kind not in ("value_error",):
        return f"{msg[0].lower()}{msg[1:]} (got {got!r})"
    if isinstance(got, (SMap, dict)):
        return f"{msg[0].lower()}{msg[1:]} (got a mapping)"
    if isinstance(got, (SList, list)):
        return f"{msg[0].lower()}{msg[1:]} (got a list)"
    return msg[0].lower() + msg[1:]


def _fields_at(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """The keys allowed at ``loc`` inside ``model`` (for suggestions)."""
    current: Any = model
    expect_key = False   # True after a dict: the next loc part is a user's name
    for part in loc:
        if expect_key:
            expect_key = False
            continue
        if isinstance(part, int):
            continue
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return []
        field = _field(current, str(part))
        if field is None:
            return []
        current, expect_key = _unwrap(field.annotation)
    if isinstance(current, type) and issubclass(current, BaseModel):
        return [f.alias or n for n, f in current.model_fields.items()]
    return []


def _field(model: type[BaseModel], name: str) -> Any:
    for n, f in model.model_fields.items():
        if name in (n, f.alias):
            return f
    return None


def _unwrap(tp: Any) -> tuple[Any, bool]:
    """(the model inside an annotation, whether a dict level comes first)."""
    origin = typing.get_origin(tp)
    if origin is typing.Annotated:
        return _unwrap(typing.get_args(tp)[0])
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            inner, is_dict = _unwrap(arg)
            if isinstance(inner, type) and issubclass(inner, BaseModel):
                return inner, is_dict
        return None, False
    if origin is dict:
        inner, _ = _unwrap(typing.get_args(tp)[1])
        return inner, True
    if origin is list:
        return _unwrap(typing.get_args(tp)[0])
    return tp, False


def _kind(value: Any) -> str:
    if isinstance(value, (SList, list)):
        return "a list"
    if isinstance(value, str):
        return f"the text '{value}'"
    return f"{value!r}"
