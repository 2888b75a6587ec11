#!/usr/bin/env bash
# Set up (Debian packages, .venv) and run the whole test suite: unit, contract, system.
#   scripts/test.sh            everything (what CI runs)
#   scripts/test.sh -m "not system"   the fast subset (no VMs, no namespaces)
# Extra arguments go to one pytest process; without any, two run side by side (see below).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
echo "[test] import contracts (lint-imports)"
.venv/bin/lint-imports --config pyproject.toml
if [ $# -gt 0 ]; then
    echo "[test] pytest $*"
    exec .venv/bin/python -m pytest "$@"
fi
# Everything, in two pytest processes side by side: the system tests (marker `serial`, set by
# tests/conftest.py: they boot guests, or use the machine-wide lab) one after another in the
# first; unit, contract and simulation tests in the second, at nice 10 so that they take only
# the CPU the guests leave. The second's output follows the first's.
logs=$(mktemp -d)
trap 'rm -rf "$logs"' EXIT
echo "[test] pytest -m 'not serial' (niced, in the background; its output comes after) and pytest -m serial"
nice -n 10 .venv/bin/python -m pytest -m "not serial" -p no:cacheprovider >"$logs/beside.log" 2>&1 &
beside=$!
rc_serial=0
.venv/bin/python -m pytest -m serial || rc_serial=$?
rc_beside=0
wait "$beside" || rc_beside=$?
echo
echo "[test] the unit, contract and simulation tests (pytest -m 'not serial'), run beside:"
cat "$logs/beside.log"
# 5: no test selected (a checkout without one of the two kinds) is not a failure
ok() { [ "$1" -eq 0 ] || [ "$1" -eq 5 ]; }
if ok "$rc_serial" && ok "$rc_beside"; then
    echo "[test] all passed"
    exit 0
fi
echo "[test] FAILED: pytest -m serial exit $rc_serial, pytest -m 'not serial' exit $rc_beside"
exit 1
