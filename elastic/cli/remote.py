"""The CLI as a client of a running `elastic serve`: ``--api URL`` (or ``ELASTIC_API``)
sends the changing commands (add-workers, remove-workers, rebalance, scale) to the daemon
instead of acting here, and waits for the operation to end.

    remote = Remote("http://127.0.0.1:8765", token)
    result = remote.act("/api/v1/projects/sge/workers", {"add": 2}, timeout=900)

Standard library only (urllib): the client needs nothing the server's extras bring.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

from elastic.errors import PermanentError, TransientError

API_TOKEN_FILE = "api-token"   # under the state dir: what `elastic serve` made (0600)
REQUEST_TIMEOUT = 30.0     # seconds for one HTTP request
POLL_EVERY = 1.0           # seconds between looks at a running operation


class Remote:
    def __init__(self, url: str, token: str | None) -> None:
        self.url = url.rstrip("/")
        self.token = token

    def _call(self, method: str, path: str, body: dict | None = None) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(f"{self.url}{path}", data=data, method=method)
        req.add_header("Accept", "application/json")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        if self.token:
            req.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(req, timeout=REQUEST_TIMEOUT) as resp:
                return resp.status, json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as e:
            try:
                detail = json.loads(e.read() or b"null")
            except ValueError:
                detail = None
            message = detail.get("detail") if isinstance(detail, dict) else None
            if e.code == 401:
                raise PermanentError(f"{self.url}: the API refused the token (give the "
                                     "daemon's api-token with --api-token-file)") from None
            if e.code >= 500:
                raise TransientError(f"{self.url}{path}: HTTP {e.code}: {message}") from None
            raise PermanentError(f"{self.url}{path}: HTTP {e.code}: "
                                 f"{message if message is not None else detail}") from None
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise TransientError(f"{self.url}: no answer from elastic serve ({reason})") \
                from None

    def act(self, path: str, body: dict, *, timeout: float,
            say: Callable[[str], None] | None = None) -> Any:
        """POST ``body`` to ``path``, then wait (at most ``timeout`` s) for the operation
        it started; its result, or a PermanentError with the daemon's error."""
        status, accepted = self._call("POST", path, body)
        op = accepted.get("operation") if isinstance(accepted, dict) else None
        if status != 202 or not op:
            raise PermanentError(f"{self.url}{path}: unexpected answer {status}: {accepted}")
        if say:
            say(f"operation {op} started on {self.url}")
        deadline = time.monotonic() + timeout
        while True:
            _, state = self._call("GET", f"/api/v1/operations/{op}")
            if state.get("state") == "done":
                return state.get("result")
            if state.get("state") == "failed":
                raise PermanentError(f"{self.url}: operation {op} failed: {state.get('error')}")
            if time.monotonic() > deadline:
                raise TransientError(f"{self.url}: operation {op} still running after "
                                     f"{timeout:g} s (look: GET /api/v1/operations/{op})")
            time.sleep(POLL_EVERY)
