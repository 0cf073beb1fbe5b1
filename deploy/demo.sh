#!/usr/bin/env bash
# Builds tend (release) and runs the demo: a master and a minion on
# 127.0.0.1 in a temporary directory, a managed file edited by hand four
# ways, and each edit put back. Needs only the Rust toolchain (and the C/C++
# compiler every Rust toolchain on Linux links with; libzmq is built from
# source, no system package).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v c++ >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
  echo "demo: installing a C++ compiler (g++) to build the bundled libzmq" >&2
  ${SUDO:-$( [ "$(id -u)" -eq 0 ] || echo sudo )} apt-get install -y g++ >&2
fi
cargo build --release --workspace
exec ./target/release/tend-bench demo "$@"
