"""The CLI's logging: ``-v`` levels and a JSON option for daemons run under a supervisor.

    elastic -v autoscale cluster.yaml                  # INFO, as text on stderr
    elastic -vv --log-format json autoscale ...        # DEBUG, one JSON object per line

Without ``-v`` only warnings and errors are logged (what a command prints for its user is not
logging: it goes to stdout as before). JSON lines carry ``time`` (ISO 8601, UTC), ``level``,
``logger``, ``message`` and whatever a call passed in ``extra=`` (project, node, ...).
"""

from __future__ import annotations

import logging
import sys

LEVELS = (logging.WARNING, logging.INFO, logging.DEBUG)
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# libraries that are chatty at INFO/DEBUG about things an operator does not act on
QUIET = ("botocore", "boto3", "urllib3", "paramiko.transport", "asyncio", "multipart")


def level_for(verbosity: int) -> int:
    return LEVELS[max(0, min(verbosity, len(LEVELS) - 1))]


def setup(verbosity: int = 0, fmt: str = "text", stream=None) -> logging.Handler:
    """Configure the root logger once for this process; returns its handler."""
    handler = logging.StreamHandler(stream or sys.stderr)
    if fmt == "json":
        from pythonjsonlogger.json import JsonFormatter
        handler.setFormatter(JsonFormatter(
            "%(asctime)s %(levelname)s %(name)s %(message)s",
            rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
            datefmt="%Y-%m-%dT%H:%M:%S%z", timestamp=False))
        handler.formatter.converter = _utc
    else:
        handler.setFormatter(logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    level = level_for(verbosity)
    root.setLevel(level)
    for name in QUIET:
        logging.getLogger(name).setLevel(max(level, logging.WARNING if verbosity < 3
                                             else logging.DEBUG))
    return handler


def _utc(seconds: float | None):
    import time
    return time.gmtime(seconds)
