#!/usr/bin/env bash
# Set up everything the tests need on a fresh machine, then run the whole suite (offline).
#   bash scripts/test.sh                 # everything
#   bash scripts/test.sh tests/core -x   # extra arguments go to pytest
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
"$PYTHON" -m venv .venv
.venv/bin/pip install --quiet --upgrade pip
.venv/bin/pip install --quiet -e '.[test]'
touch .venv/.installed
bash scripts/install-test-deps.sh
if [ $# -eq 0 ]; then
    # The whole run, as CI does it: lint, types, then every test.
    .venv/bin/ruff check .
    .venv/bin/ruff format --check .
    .venv/bin/mypy gateway plugins
fi
exec .venv/bin/pytest "$@"
