"""Typed errors, by what the caller should do next.

- ConfigError: the user's input is wrong; nothing was changed; exit code 2.
- TransientError: try again later (optionally after ``retry_after`` seconds).
- PermanentError: retrying will not help; report and stop this action.
"""

from __future__ import annotations

from dataclasses import dataclass


class ElasticError(Exception):
    """Base of every error elastic raises on purpose."""


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the input, located as precisely as we can."""

    message: str
    file: str | None = None
    line: int | None = None
    key: str | None = None

    def __str__(self) -> str:
        where = ""
        if self.file:
            where = self.file if self.line is None else f"{self.file}:{self.line}"
            where += ": "
        key = f"{self.key}: " if self.key else ""
        return f"{where}{key}{self.message}"


class ConfigError(ElasticError):
    """Bad input: a spec, an MLN file, a flag. Carries one or more located problems."""

    def __init__(self, message: str, file: str | None = None, line: int | None = None,
                 key: str | None = None, *, problems: list[Problem] | None = None) -> None:
        if problems is None:
            problems = [Problem(message, file, line, key)]
        self.problems = problems
        first = problems[0]
        self.file, self.line, self.key = first.file, first.line, first.key
        super().__init__("\n".join(str(p) for p in problems))

    @classmethod
    def many(cls, problems: list[Problem]) -> ConfigError:
        return cls("", problems=sorted(problems, key=_problem_order))


def _problem_order(p: Problem) -> tuple[str, int, str]:
    return (p.file or "", p.line or 0, p.key or "")


class TransientError(ElasticError):
    """Something that may work if tried again (throttling, a busy host, a lock held)."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class PermanentError(ElasticError):
    """Something that will not work by retrying (auth refused, image missing)."""
