#!/usr/bin/env bash
# Set up (Debian packages, .venv) and run the whole test suite: unit, contract, system.
#   scripts/test.sh            everything (what CI runs)
#   scripts/test.sh -m "not system"   the fast subset (no VMs, no namespaces)
# Extra arguments go to one pytest process; without any, three run side by side (see below).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
echo "[test] import contracts (lint-imports)"
.venv/bin/lint-imports --config pyproject.toml
if [ $# -gt 0 ]; then
    echo "[test] pytest $*"
    exec .venv/bin/python -m pytest "$@"
fi
# Everything, in three pytest processes side by side: the system tests (marker `serial`, set by
# tests/conftest.py: they boot guests, or use the machine-wide lab) one after another in the
# first; unit, contract and simulation tests in the second, at nice 10 so that they take only
# the CPU the guests leave; in the third, the system tests marked `alongside` (no guests,
# only namespaces and ports of their own). The others' output follows the first's.
logs=$(mktemp -d)
trap 'rm -rf "$logs"' EXIT
echo "[test] pytest -m serial; beside it, pytest -m 'not serial and not alongside' (niced) and" \
    "pytest -m alongside (their output comes after)"
nice -n 10 .venv/bin/python -m pytest -m "not serial and not alongside" -p no:cacheprovider \
    >"$logs/beside.log" 2>&1 &
beside=$!
.venv/bin/python -m pytest -m alongside -p no:cacheprovider >"$logs/alongside.log" 2>&1 &
alongside=$!
rc_serial=0
.venv/bin/python -m pytest -m serial || rc_serial=$?
rc_beside=0
wait "$beside" || rc_beside=$?
rc_alongside=0
wait "$alongside" || rc_alongside=$?
echo
echo "[test] the unit, contract and simulation tests (pytest -m 'not serial and not alongside'), run beside:"
cat "$logs/beside.log"
echo
echo "[test] the system tests without guests (pytest -m alongside), run beside:"
cat "$logs/alongside.log"
# 5: no test selected (a checkout without one of the kinds) is not a failure
ok() { [ "$1" -eq 0 ] || [ "$1" -eq 5 ]; }
if ok "$rc_serial" && ok "$rc_beside" && ok "$rc_alongside"; then
    echo "[test] all passed"
    exit 0
fi
echo "[test] FAILED: pytest -m serial exit $rc_serial, pytest -m 'not serial and not alongside'" \
    "exit $rc_beside, pytest -m alongside exit $rc_alongside"
exit 1
