#!/usr/bin/env bash
# Install everything possm-plugin needs on a fresh machine (idempotent; fast when already done).
# - redis-server from Debian's packages (the BRAND/Redis tests start their own on a free port)
# - torch==2.13.0 (CPU build) first, so nothing pulls a CUDA build, then the package with its extras
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

if ! command -v redis-server >/dev/null 2>&1; then
  echo "setup: installing redis-server" >&2
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq redis-server >/dev/null
fi

if ! $PY -c "import torch, sys; sys.exit(0 if torch.__version__.startswith('2.13.0') else 1)" 2>/dev/null; then
  echo "setup: installing torch==2.13.0" >&2
  $PY -m pip install -q "torch==2.13.0"
fi

stamp=".setup-stamp"
want="$(cat pyproject.toml tests/plugin_pkg/pyproject.toml 2>/dev/null | sha256sum | cut -d' ' -f1)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ] || ! $PY -c "import possm_plugin" 2>/dev/null; then
  echo "setup: installing possm-plugin and its extras" >&2
  $PY -m pip install -q -e ".[all]"
  # Timeflux 0.17.2 pins old numpy/networkx: install it without its pins (its needs are in [timeflux])
  $PY -m pip install -q --no-deps "timeflux==0.17.2"
  echo "$want" > "$stamp"
fi
# compile the CPU inference step once (Numba caches it; a no-op when the cache is current)
$PY -m possm_plugin.cli.main compile >&2 || echo "setup: the compiled engine is unavailable; decoders use the torch engine" >&2
