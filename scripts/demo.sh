#!/usr/bin/env bash
# The main job on a fresh machine: set up, make a two-host lab on this machine (network
# namespaces, each with its own libvirtd), and bring a demo cluster up on it.
# Run it again: it converges (nothing to do). Tear down: see the end of its output.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export ELASTIC_STATE_DIR=${ELASTIC_STATE_DIR:-$PWD/.demo-state}
E=.venv/bin/elastic
set -x
$E lab up --hosts 2
$E validate --lab examples/lab/demo.yaml
$E up --lab examples/lab/demo.yaml
$E status demo
set +x
cat <<EOT

The demo cluster is running. Try:
  export ELASTIC_STATE_DIR=$ELASTIC_STATE_DIR
  $E status                        # hosts and nodes
  $E console www1.demo             # its serial console (leave with Ctrl-])
  $E console gw.demo               # gw pinged the web nodes at boot: "gw reaches ..."
  $E down demo && $E lab down      # remove everything
EOT
