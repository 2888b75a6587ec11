"""elastic's HTTP API, status page and Prometheus metrics (the ``server`` extra: fastapi,
uvicorn, prometheus-client).

    from elastic.server import create_app, load_or_make_token, serve
    serve(create_app(state_dir, token=load_or_make_token(state_dir)), "127.0.0.1", 8765)

The names are imported on first use, so ``elastic.server.metrics`` works without fastapi.
"""

from __future__ import annotations

from typing import Any

__all__ = ["Actions", "EngineActions", "create_app", "load_or_make_token", "render", "serve"]


def __getattr__(name: str) -> Any:
    if name == "render":
        from elastic.server import metrics
        return metrics.render
    if name in __all__:
        from elastic.server import app
        return getattr(app, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
