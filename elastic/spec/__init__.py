"""The cluster language: YAML (and MLN) files -> a resolved, validated Project.

Pure but for reading the files named.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from elastic.model import Project
from elastic.spec.loader import display_path, load_document
from elastic.spec.resolve import Leases, resolve

__all__ = ["load_project", "load_document", "resolve", "Leases"]


def load_project(path: str | Path, *, counts: Mapping[str, int] | None = None,
                 leases: Leases | None = None,
                 member_classes: Mapping[str, Mapping[int, str]] | None = None) -> Project:
    """Read, merge, substitute, validate and resolve a spec file. Raises ConfigError."""
    doc = load_document(path)
    return resolve(doc, display_path(Path(path)), counts=counts, leases=leases,
                   member_classes=member_classes)
