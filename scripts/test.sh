#!/usr/bin/env bash
# The test command: builds the binaries the multi-process tests drive, then
# runs every test in the workspace, then the lints.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
cargo build --workspace --bins
cargo test --workspace
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
