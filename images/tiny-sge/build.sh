#!/bin/sh
# images/tiny-sge/build.sh OUTDIR: the tiny image with Grid Engine (a spec says image: tiny-sge).
#
# = images/tiny/payloads/sge/build-payload.sh OUTDIR/payload, then
#   PAYLOAD=OUTDIR/payload images/tiny/build.sh OUTDIR  (idempotent: the payload is hashed).
# Needs the Debian packages gridengine-master gridengine-exec gridengine-client besides the
# tiny image's own. Environment: as images/tiny/build.sh (KVER, FORCE, ...).
set -eu
[ $# -eq 1 ] || { sed -n '2,/^set -eu/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//' >&2; exit 2; }
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$1"
out=$(cd "$1" && pwd)
sh "$here/../tiny/payloads/sge/build-payload.sh" "$out/payload" >/dev/null
PAYLOAD=$out/payload exec sh "$here/../tiny/build.sh" "$out"
