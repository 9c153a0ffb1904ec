#!/usr/bin/env bash
# The README's test command: install what is missing, then run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# lint first: the ruff rules are in pyproject.toml ([tool.ruff]); a finding fails the run
${PYTHON:-python3} -m ruff check --no-cache .
export POSSM_REQUIRE_REDIS=1  # tests that need redis-server fail instead of skipping
exec ${PYTHON:-python3} -m pytest -q -p no:cacheprovider "$@"
