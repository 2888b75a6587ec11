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
# Everything, in two pytest processes side by side: the tests that use the machine-wide lab
# (marker `lab`, set by tests/conftest.py) one after another in the first, all the others in
# the second, whose output follows the first's.
logs=$(mktemp -d)
trap 'rm -rf "$logs"' EXIT
echo "[test] pytest -m 'not lab' (in the background, output after the lab's) and pytest -m lab"
.venv/bin/python -m pytest -m "not lab" -p no:cacheprovider >"$logs/beside.log" 2>&1 &
beside=$!
rc_lab=0
.venv/bin/python -m pytest -m lab || rc_lab=$?
rc_beside=0
wait "$beside" || rc_beside=$?
echo
echo "[test] the tests beside the lab's (pytest -m 'not lab'):"
cat "$logs/beside.log"
# 5: no test selected (a checkout without one of the two kinds) is not a failure
ok() { [ "$1" -eq 0 ] || [ "$1" -eq 5 ]; }
if ok "$rc_lab" && ok "$rc_beside"; then
    echo "[test] all passed"
    exit 0
fi
echo "[test] FAILED: pytest -m lab exit $rc_lab, pytest -m 'not lab' exit $rc_beside"
exit 1
