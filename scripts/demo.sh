#!/usr/bin/env bash
# The main job on a fresh machine: set up, then show what elastic makes of the example SGE
# cluster. (Once the libvirt provider lands this brings the cluster up in the lab.)
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export ELASTIC_STATE_DIR=${ELASTIC_STATE_DIR:-$PWD/.demo-state}
E=.venv/bin/elastic
set -x
$E validate examples/sge/cluster.yaml
$E plan examples/sge/cluster.yaml
$E import-mln examples/mln/webfarm.mln
