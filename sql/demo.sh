#!/usr/bin/env bash
# make demo: runs sql/demo.py with Debian's python3 (pyenv's cannot load extensions).
set -euo pipefail
build=${1:-build}
exec /usr/bin/python3 "$(dirname "$0")/demo.py" "$build/libsafeconc.so"
