#!/usr/bin/env bash
# Set up (first time) and start the gateway on its embedded default, or with the arguments given:
#   bash scripts/start.sh                      # web chat + offline FAQ answers, data in ./gateway-data
#   bash scripts/start.sh --config my.toml     # your config
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    echo "Sovereign Gateway needs Python 3.11 or newer ($PYTHON is $("$PYTHON" --version 2>&1))" >&2
    exit 1
fi
if [ ! -x .venv/bin/gateway ] || [ pyproject.toml -nt .venv/.installed ]; then
    echo "setting up .venv (first run only)..." >&2
    "$PYTHON" -m venv .venv
    .venv/bin/pip install --quiet --upgrade pip
    .venv/bin/pip install --quiet -e .
    touch .venv/.installed
fi
exec .venv/bin/gateway run "$@"
