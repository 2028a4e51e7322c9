#!/usr/bin/env bash
# The test command: builds the binaries and the PKCS#11 module that the
# multi-process tests drive, then runs every test in the workspace, then the lints,
# then a short smoke run of every fuzz target (when cargo-fuzz is installed).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
cargo build --workspace
cargo test --workspace
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
if cargo fuzz --version >/dev/null 2>&1; then
  # Every fuzz target for a fixed short time, each on a scratch copy of its
  # seed corpus (a run adds inputs to its corpus). Longer runs: HAHSM_FUZZ_SECONDS.
  scratch="$(mktemp -d)"
  trap 'rm -rf "$scratch"' EXIT
  for target in decode wire peer stored_state client_config custody; do
    mkdir -p "$scratch/$target"
    cp fuzz/corpus/"$target"/* "$scratch/$target/"
    (cd fuzz && cargo fuzz run -s none "$target" "$scratch/$target" -- -max_total_time="${HAHSM_FUZZ_SECONDS:-8}")
  done
else
  echo "cargo-fuzz is not installed: skipping the fuzz smoke runs (.ci/run installs it)" >&2
fi
