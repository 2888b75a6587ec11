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
# Two pytest workers (pytest-xdist): the lab's system tests one after another on one, the rest
# (unit, contract, image tests, ...) beside them on the other (groups: tests/conftest.py).
# Pass -n 0 to run everything in one process.
parallel=(-n 2 --dist loadgroup)
for arg in "$@"; do
    case "$arg" in -n|-n*|--numprocesses*) parallel=() ;; esac
done
echo "[test] pytest ${parallel[*]} $*"
exec .venv/bin/python -m pytest "${parallel[@]}" "$@"
