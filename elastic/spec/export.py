"""Write a raw document back out as cluster.yaml (used by `elastic import-mln`)."""

from __future__ import annotations

from typing import Any

import yaml

from elastic.spec.source import SList, SMap

_ORDER = ("project", "description", "vars", "include", "networks", "hosts", "classes", "nodes",
          "clouds", "scaling", "frontends")


def _plain(value: Any) -> Any:
    if isinstance(value, (SMap, dict)):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (SList, list)):
        return [_plain(v) for v in value]
    if isinstance(value, str):
        return value.replace("${", "$${")   # read back literally, not as a variable
    return value


class _Dumper(yaml.SafeDumper):
    pass


def _str(dumper: yaml.SafeDumper, data: str) -> yaml.ScalarNode:
    style = "|" if "\n" in data else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style=style)


_Dumper.add_representer(str, _str)


def document_yaml(doc: SMap, source: str | None = None) -> str:
    ordered = {k: _plain(doc[k]) for k in _ORDER if k in doc}
    ordered.update({k: _plain(v) for k, v in doc.items() if k not in ordered})
    body = yaml.dump(ordered, Dumper=_Dumper, sort_keys=False, default_flow_style=False,
                     width=100, allow_unicode=True)
    head = f"# Converted from {source} by `elastic import-mln`.\n" if source else ""
    return head + body
