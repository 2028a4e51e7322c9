#!/usr/bin/env bash
# The test command: builds the binaries and the PKCS#11 module that the
# multi-process tests drive, then runs every test in the workspace, then the lints.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
cargo build --workspace
cargo test --workspace
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
