#!/usr/bin/env bash
# Install everything possm-plugin needs on a fresh machine (idempotent; fast when already done).
# - redis-server from Debian's packages (the BRAND/Redis tests start their own on a free port)
# - torch: an installed torch in pyproject's range is left alone (a lab's own build stays). With none,
#   the CPU build torch==2.13.0+cpu first, so that the package's range is met without pulling a
#   multi-GB CUDA build: pip finds it on this project's machines; elsewhere set TORCH_INDEX_URL to
#   PyTorch's CPU wheel index, or install the torch you want before running this.
# - then the package (editable) with its extras
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

if ! command -v redis-server >/dev/null 2>&1; then
  echo "setup: installing redis-server" >&2
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq redis-server >/dev/null
fi

torch_floor="$(sed -n 's/^ *"torch>=\([0-9.]*\)".*/\1/p' pyproject.toml)"  # the dependency's lower bound
if have="$($PY -c "import torch; print(torch.__version__)" 2>/dev/null)"; then
  if ! $PY - "$have" "$torch_floor" <<'PYEOF'
import sys
def release(v):
    return tuple(int(x) for x in v.split("+")[0].split(".")[:2])
sys.exit(0 if release(sys.argv[1]) >= release(sys.argv[2]) else 1)
PYEOF
  then
    echo "setup: torch $have is older than possm-plugin needs (>=$torch_floor); upgrade it (or remove it to get the CPU build)" >&2
    exit 1
  fi
  echo "setup: keeping the installed torch $have" >&2
else
  echo "setup: no torch installed: installing the CPU build torch==2.13.0+cpu" >&2
  $PY -m pip install -q "torch==2.13.0+cpu" ${TORCH_INDEX_URL:+--extra-index-url "$TORCH_INDEX_URL"}
fi

stamp=".setup-stamp"  # what was installed, and into which environment
want="$( (cat pyproject.toml tests/plugin_pkg/pyproject.toml 2>/dev/null; $PY -c "import sys; print(sys.prefix)") | sha256sum | cut -d' ' -f1)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ] || ! $PY -c "import possm_plugin" 2>/dev/null; then
  echo "setup: installing possm-plugin and its extras" >&2
  $PY -m pip install -q -e ".[all]"
  # Timeflux 0.17.2 pins old numpy/networkx: install it without its pins (its needs are in [timeflux])
  $PY -m pip install -q --no-deps "timeflux==0.17.2"
  echo "$want" > "$stamp"
fi
# compile the CPU inference step once (Numba caches it; a no-op when the cache is current)
$PY -m possm_plugin.cli.main compile >&2 || echo "setup: the compiled engine is unavailable; decoders use the torch engine" >&2
