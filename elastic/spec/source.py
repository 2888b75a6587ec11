"""Raw spec documents that remember where every key was written.

Both front ends (YAML and MLN) produce the same shape: nested ``SMap`` (a dict) and
``SList`` (a list) whose keys and items carry a ``Where`` (file, line). Everything later
(validation, inheritance, resolution) reports problems through these positions, so an
error names the line the user wrote even after classes were merged.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from elastic.errors import ConfigError
from elastic.model import Where


class SMap(dict):
    """A mapping that knows where it and each of its keys were written."""

    __slots__ = ("where", "key_where")

    def __init__(self, *args: Any, where: Where | None = None, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.where = where
        self.key_where: dict[str, Where] = {}

    def set(self, key: str, value: Any, where: Where | None) -> None:
        self[key] = value
        if where is not None:
            self.key_where[key] = where

    def where_of(self, key: str) -> Where | None:
        return self.key_where.get(key, self.where)


class SList(list):
    """A list that knows where it and each of its items were written."""

    __slots__ = ("where", "item_where")

    def __init__(self, *args: Any, where: Where | None = None) -> None:
        super().__init__(*args)
        self.where = where
        self.item_where: list[Where | None] = []

    def add(self, value: Any, where: Where | None) -> None:
        self.append(value)
        self.item_where.append(where)

    def where_of(self, index: int) -> Where | None:
        if 0 <= index < len(self.item_where) and self.item_where[index] is not None:
            return self.item_where[index]
        return self.where


def where_at(root: Any, path: tuple[Any, ...]) -> Where | None:
    """The most precise position known for ``path`` below ``root``."""
    best = getattr(root, "where", None)
    node = root
    for part in path:
        if isinstance(node, SMap) and isinstance(part, str) and part in node:
            best = node.where_of(part) or best
            node = node[part]
        elif isinstance(node, SList) and isinstance(part, int) and 0 <= part < len(node):
            best = node.where_of(part) or best
            node = node[part]
        else:
            break
    return best


def copy_tree(value: Any) -> Any:
    """A deep copy that keeps positions."""
    if isinstance(value, SMap):
        out = SMap(where=value.where)
        for k, v in value.items():
            out.set(k, copy_tree(v), value.key_where.get(k))
        return out
    if isinstance(value, SList):
        out_l = SList(where=value.where)
        for i, v in enumerate(value):
            out_l.add(copy_tree(v), value.item_where[i] if i < len(value.item_where) else None)
        return out_l
    if isinstance(value, dict):
        return {k: copy_tree(v) for k, v in value.items()}
    if isinstance(value, list):
        return [copy_tree(v) for v in value]
    return value


# ---------------------------------------------------------------------------------- YAML

class _Loader(yaml.SafeLoader):
    """SafeLoader that builds SMap/SList with positions and refuses duplicate keys."""

    filename = "<string>"


def _construct_mapping(loader: _Loader, node: yaml.MappingNode) -> SMap:
    loader.flatten_mapping(node)
    out = SMap(where=Where(loader.filename, node.start_mark.line + 1))
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        line = key_node.start_mark.line + 1
        if not isinstance(key, (str, int, float, bool)) or isinstance(key, bool):
            raise ConfigError(f"a key must be a plain name, not {type(key).__name__}",
                              loader.filename, line)
        key = str(key)
        if key in out:
            first = out.key_where[key].line
            raise ConfigError(f"duplicate key '{key}' (first at line {first})", loader.filename,
                              line, key)
        out.set(key, loader.construct_object(value_node, deep=True),
                Where(loader.filename, line))
    return out


def _construct_sequence(loader: _Loader, node: yaml.SequenceNode) -> SList:
    out = SList(where=Where(loader.filename, node.start_mark.line + 1))
    for item in node.value:
        out.add(loader.construct_object(item, deep=True), Where(loader.filename, item.start_mark.line + 1))
    return out


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG, _construct_sequence)


def parse_yaml(text: str, filename: str) -> SMap:
    """Parse one YAML document into an SMap. Syntax errors name the file and line."""
    loader = _Loader(text)
    loader.filename = filename
    try:
        doc = loader.get_single_data()
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = mark.line + 1 if mark else None
        what = e.problem or e.context or "syntax error"
        lines = text.splitlines()
        if line and line <= len(lines) and "${" in lines[line - 1]:
            what += " (inside [ ] or { }, quote values that use ${...}: \"${name}\")"
        raise ConfigError(f"YAML syntax error: {what}", filename, line) from None
    except yaml.YAMLError as e:
        raise ConfigError(f"YAML error: {e}", filename) from None
    finally:
        loader.dispose()
    if doc is None:
        raise ConfigError("the file is empty", filename)
    if not isinstance(doc, SMap):
        raise ConfigError(f"the top level must be a mapping of sections, not a {type(doc).__name__}",
                          filename, 1)
    return doc


def read_text(path: Path, referenced_from: Where | None = None, key: str | None = None) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        if referenced_from:
            raise ConfigError(f"file not found: {path}", referenced_from.file,
                              referenced_from.line, key) from None
        raise ConfigError(f"file not found: {path}", str(path)) from None
    except IsADirectoryError:
        raise ConfigError(f"{path} is a directory, not a spec file", str(path)) from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"not UTF-8 text ({e.reason} at byte {e.start})", str(path)) from None
    except OSError as e:
        raise ConfigError(f"cannot read {path}: {e.strerror}", str(path)) from None
