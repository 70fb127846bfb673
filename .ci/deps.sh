#!/usr/bin/env bash
# Checks (or, with "install", installs) the Debian packages the build and tests need.
#   .ci/deps.sh check     report each missing package by name with its install command
#   .ci/deps.sh install   apt-get install the missing ones (CI; needs root)
set -euo pipefail
mode=${1:-check}

# package : a file or command that proves it is installed
deps=(
  "cmake:cmd:cmake"
  "g++:cmd:g++"
  "make:cmd:make"
  "clang:cmd:clang++"
  "clang-format:cmd:clang-format"
  # libFuzzer's runtime (make fuzz); Debian ships it apart from clang.
  "libclang-rt-14-dev:file:/usr/lib/llvm-14/lib/clang/14.0.6/lib/linux/libclang_rt.fuzzer-x86_64.a"
  "sqlite3:cmd:sqlite3"
  "libsqlite3-dev:file:/usr/include/sqlite3.h"
  "libgtest-dev:file:/usr/include/gtest/gtest.h"
  "python3:file:/usr/bin/python3"
  "nodejs:cmd:node"
  # N-API headers: nodesource's nodejs ships them; with Debian's nodejs they are in libnode-dev.
  "libnode-dev:file:/usr/include/node/node_api.h"
)
missing=()
for d in "${deps[@]}"; do
  IFS=: read -r pkg kind what <<<"$d"
  if [ "$kind" = cmd ]; then command -v "$what" >/dev/null 2>&1 || missing+=("$pkg")
  else [ -e "$what" ] || missing+=("$pkg"); fi
done
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$mode" = install ]; then
  echo "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${missing[@]}"
  exit 0
fi
for pkg in "${missing[@]}"; do echo "missing Debian package: $pkg" >&2; done
echo "install them with:  apt-get install -y ${missing[*]}" >&2
exit 1
