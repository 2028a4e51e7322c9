#!/usr/bin/env bash
# The test command: builds the binaries and the PKCS#11 module that the
# multi-process tests drive, then runs every test in the workspace, then the lints,
# then a short smoke run of the fuzz target (when cargo-fuzz is installed).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
cargo build --workspace
cargo test --workspace
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
if cargo fuzz --version >/dev/null 2>&1; then
  # The PKCS#11 module's argument decoding, for a fixed short time, on a
  # scratch copy of the seed corpus (the run adds inputs to its corpus).
  corpus="$(mktemp -d)"
  trap 'rm -rf "$corpus"' EXIT
  cp fuzz/corpus/decode/* "$corpus/"
  (cd fuzz && cargo fuzz run -s none decode "$corpus" -- -max_total_time="${HAHSM_FUZZ_SECONDS:-20}")
else
  echo "cargo-fuzz is not installed: skipping the fuzz smoke run (.ci/run installs it)" >&2
fi
