#!/usr/bin/env bash
# The test suite: set up (idempotent), then pytest on 2 worker processes (most tests are
# bound by single-threaded XLA compiles, so 2 workers keep both cores busy); test files
# stay whole on one worker (module fixtures are built once). Extra arguments go to pytest;
# PYTEST_WORKERS=0 runs in one process.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/setup.sh
workers=${PYTEST_WORKERS:-2}
if [ "$workers" = "0" ]; then
  exec .venv/bin/python -m pytest -q "$@"
fi
exec .venv/bin/python -m pytest -q -n "$workers" --dist loadfile "$@"
