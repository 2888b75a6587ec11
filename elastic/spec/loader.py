"""Read a spec file into one raw document: includes merged, variables substituted.

YAML files (``*.yaml``, ``*.yml``) and MLN files (``*.mln``) give the same raw shape.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from elastic.errors import ConfigError
from elastic.model import Where
from elastic.spec.source import SList, SMap, parse_yaml, read_text, where_at

MERGED_SECTIONS = ("networks", "hosts", "classes", "nodes", "clouds", "frontends")
_VAR_RE = re.compile(r"\$\$\{|\$\{([^}]*)\}")   # $${ is a literal ${ (for shell commands)


def display_path(path: Path) -> str:
    """The path as the user will recognise it: relative to the working directory if below it."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def _relative(path: Path, base: Path) -> str:
    try:
        return str(path.relative_to(base))
    except ValueError:
        return str(path)


def load_document(path: str | Path) -> SMap:
    """The raw document of a spec file, with includes merged and ``${vars}`` substituted."""
    path = Path(path)
    if path.suffix.lower() == ".mln":
        from elastic.spec.mln import parse_mln
        return parse_mln(path)
    doc = _load_yaml_tree(path, stack=(), referenced_from=None)
    return substitute_vars(doc)


def _load_yaml_tree(path: Path, stack: tuple[Path, ...], referenced_from: Where | None) -> SMap:
    real = path.resolve()
    if real in stack:
        cycle = (*stack[stack.index(real):], real)
        chain = " -> ".join(_relative(p, stack[0].parent) for p in cycle)
        assert referenced_from is not None
        raise ConfigError(f"include cycle: {chain}", referenced_from.file, referenced_from.line,
                          "include")
    doc = parse_yaml(read_text(path, referenced_from, "include"), display_path(path))
    includes = doc.pop("include", None)
    if includes is None:
        return doc
    if isinstance(includes, str):
        items = [(includes, doc.key_where.get("include"))]
    elif isinstance(includes, SList):
        items = [(v, includes.where_of(i)) for i, v in enumerate(includes)]
    else:
        w = doc.key_where.get("include")
        raise ConfigError("include: expects a file name or a list of file names",
                          w.file if w else None, w.line if w else None, "include")
    merged = SMap(where=doc.where)
    for name, where in items:
        if not isinstance(name, str):
            raise ConfigError("include: expects file names", where.file if where else None,
                              where.line if where else None, "include")
        child = _load_yaml_tree(path.parent / name, (*stack, real), where)
        _merge_document(merged, child)
    _merge_document(merged, doc)
    return merged


def _merge_document(into: SMap, doc: SMap) -> None:
    """Merge an included (or including) document into ``into``: named sections are united
    (a name defined twice is an error naming both places); vars of later files win."""
    for key, value in doc.items():
        where = doc.key_where.get(key)
        if key in MERGED_SECTIONS and isinstance(value, SMap) and isinstance(into.get(key), SMap):
            target: SMap = into[key]
            for name, item in value.items():
                if name in target:
                    first = target.where_of(name)
                    second = value.where_of(name)
                    raise ConfigError(f"'{name}' is defined twice (also at {first})",
                                      second.file if second else None,
                                      second.line if second else None, f"{key}.{name}")
                target.set(name, item, value.key_where.get(name))
        elif key == "vars" and isinstance(value, SMap) and isinstance(into.get("vars"), SMap):
            for name, item in value.items():
                into["vars"].set(name, item, value.key_where.get(name))
        elif key == "project" and "project" in into and into["project"] != value:
            first = into.where_of("project")
            raise ConfigError(f"project '{value}' differs from project '{into['project']}' "
                              f"named at {first}", where.file if where else None,
                              where.line if where else None, "project")
        elif key in into and key not in ("project",) and not isinstance(value, SMap):
            first = into.where_of(key)
            raise ConfigError(f"'{key}' is set twice (also at {first})",
                              where.file if where else None, where.line if where else None, key)
        else:
            into.set(key, value, where)


# --------------------------------------------------------------------------- variables

def substitute_vars(doc: SMap) -> SMap:
    """Replace ``${name}`` in every string of the document by the value from ``vars:``.
    A string that is exactly ``${name}`` takes the variable's type (a number stays a number)."""
    raw_vars = doc.pop("vars", None)
    if raw_vars is None:
        values: dict[str, Any] = {}
    elif isinstance(raw_vars, SMap):
        values = _resolve_vars(raw_vars)
    else:
        w = doc.key_where.get("vars")
        raise ConfigError("vars: must be a mapping of names to values",
                          w.file if w else None, w.line if w else None, "vars")
    for key in list(doc):
        doc[key] = _subst(doc[key], values, (key,), doc)
    return doc


def _resolve_vars(raw: SMap) -> dict[str, Any]:
    done: dict[str, Any] = {}

    def get(name: str, chain: tuple[str, ...]) -> Any:
        if name in done:
            return done[name]
        w = raw.where_of(name) if name in raw else raw.where
        if name in chain:
            raise ConfigError(f"variable cycle: {' -> '.join((*chain, name))}",
                              w.file if w else None, w.line if w else None, f"vars.{name}")
        value = raw[name]
        if isinstance(value, str):
            value = _expand(value, lambda n: _lookup(n, raw, chain + (name,), get, w, name),)
        done[name] = value
        return value

    for name in raw:
        get(name, ())
    return done


def _lookup(n: str, raw: SMap, chain: tuple[str, ...], get: Any, w: Where | None,
            owner: str) -> Any:
    if n not in raw:
        raise ConfigError(f"unknown variable '${{{n}}}'{_suggest(n, raw)}",
                          w.file if w else None, w.line if w else None, f"vars.{owner}")
    return get(n, chain)


def _expand(text: str, lookup: Any) -> Any:
    whole = _VAR_RE.fullmatch(text)
    if whole and whole.group(1) is not None:
        return lookup(whole.group(1).strip())
    return _VAR_RE.sub(lambda m: "${" if m.group(1) is None else str(lookup(m.group(1).strip())),
                       text)


def _subst(value: Any, values: dict[str, Any], path: tuple[Any, ...], root: SMap) -> Any:
    if isinstance(value, str):
        if "${" not in value:
            return value

        def lookup(name: str) -> Any:
            if name not in values:
                w = where_at(root, path)
                raise ConfigError(f"unknown variable '${{{name}}}'{_suggest(name, values)}",
                                  w.file if w else None, w.line if w else None,
                                  ".".join(str(p) for p in path))
            return values[name]

        return _expand(value, lookup)
    if isinstance(value, SMap):
        for k in list(value):
            value[k] = _subst(value[k], values, path + (k,), root)
        return value
    if isinstance(value, SList):
        for i, item in enumerate(value):
            value[i] = _subst(item, values, path + (i,), root)
        return value
    return value


def _suggest(name: str, choices: Any) -> str:
    from elastic.spec.suggest import did_you_mean
    return did_you_mean(name, list(choices))
