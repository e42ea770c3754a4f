#!/usr/bin/env bash
# The test suite: set up (idempotent), then pytest. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/setup.sh
exec .venv/bin/python -m pytest -q "$@"
