#!/usr/bin/env bash
# The README's first command: install what is missing, then stream simulated spikes over LSL, decode
# them live with `possm-lsl --inlet spikes` and report R2, latency and counts (plot in possm-demo/).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec possm demo "$@"
