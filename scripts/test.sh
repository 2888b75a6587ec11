#!/usr/bin/env bash
# Set up (Debian packages, .venv) and run the whole test suite: unit, contract, system.
#   scripts/test.sh            everything (what CI runs)
#   scripts/test.sh -m "not system"   the fast subset (no VMs, no namespaces)
# Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
echo "[test] import contracts (lint-imports)"
.venv/bin/lint-imports --config pyproject.toml
echo "[test] pytest"
exec .venv/bin/python -m pytest "$@"
