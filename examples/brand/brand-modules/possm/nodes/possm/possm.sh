#!/usr/bin/env bash
# The POSSM node's launcher. `make` (which BRAND runs in every node folder, after deleting the old
# .bin) copies it to possm.bin, the executable BRAND's supervisor starts as
#     <module>/nodes/possm/possm.bin -n NICKNAME -i HOST -p PORT [-s SOCKET]
# with the supervisor's environment: BRAND's `rt` conda env (Python 3.8, torch 1.12), which cannot
# hold possm-plugin. So possm-brand runs from its own virtual environment, the first found of:
#   1. $POSSM_BRAND: the path of a possm-brand executable (e.g. /opt/possm/venv/bin/possm-brand);
#   2. ./venv/bin/possm-brand beside this file (`make venv` builds it; or link ./venv to a venv);
#   3. possm-brand on PATH (possm-plugin installed in the environment the supervisor runs in).
# A virtual environment's executable runs with PYTHONPATH and PYTHONHOME cleared, so that nothing of
# the rt env's Python leaks into it.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
exe="${POSSM_BRAND:-}"
if [ -z "$exe" ] && [ -x "$here/venv/bin/possm-brand" ]; then
  exe="$here/venv/bin/possm-brand"
fi
if [ -n "$exe" ]; then
  if [ ! -x "$exe" ]; then
    echo "possm.bin: POSSM_BRAND=$exe is not an executable file" >&2
    exit 127
  fi
  exec env -u PYTHONPATH -u PYTHONHOME "$exe" "$@"
fi
if ! exe="$(command -v possm-brand)"; then
  echo "possm.bin: possm-brand not found: run \`make venv\` in $here, link $here/venv to a virtual" \
       "environment holding possm-plugin, or set POSSM_BRAND to its possm-brand" >&2
  exit 127
fi
exec "$exe" "$@"
