#!/usr/bin/env bash
# The whole test suite once per Keras backend (tensorflow, jax, torch).
# Extra arguments go to pytest. Exits non-zero if any backend fails.
set -u
cd "$(dirname "$0")/.."
status=0
for backend in tensorflow jax torch; do
  echo "=== KERAS_BACKEND=$backend"
  KERAS_BACKEND=$backend python -m pytest -q "$@" || status=1
done
exit $status
