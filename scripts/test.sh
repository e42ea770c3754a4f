#!/usr/bin/env bash
# The test suite: set up (idempotent), then pytest on 2 worker processes (most tests are
# bound by single-threaded XLA compiles, so 2 workers keep both cores busy); test files
# stay whole on one worker (module fixtures are built once), handed out in collection order,
# the longest first (tests/conftest.py). Extra arguments go to pytest;
# PYTEST_WORKERS=0 runs in one process.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/setup.sh
# One persistent XLA compilation cache for this run of the suite, shared by both workers
# and every subprocess a test starts: many tests compile the same tiny programs, and the
# kill/resume tests run one command up to three times. A cached executable is the one XLA
# compiled, so results are unchanged; the cache is removed at exit ($JAX_COMPILATION_CACHE_DIR
# set by the caller is used and kept instead).
if [ -z "${JAX_COMPILATION_CACHE_DIR:-}" ]; then
  JAX_COMPILATION_CACHE_DIR=$(mktemp -d "${TMPDIR:-/tmp}/jaxvision-test-xla-cache.XXXXXX")
  trap 'rm -rf "$JAX_COMPILATION_CACHE_DIR"' EXIT
fi
export JAX_COMPILATION_CACHE_DIR JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=0 JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES=-1
workers=${PYTEST_WORKERS:-2}
if [ "$workers" = "0" ]; then
  .venv/bin/python -m pytest -q "$@"
else
  .venv/bin/python -m pytest -q -n "$workers" --dist loadfile --no-loadscope-reorder "$@"
fi
