#!/usr/bin/env bash
# The test command: installs what the tests use when it is missing
# (scripts/test-deps.sh), builds the binaries and the PKCS#11 module that the
# multi-process tests drive, runs every test binary in the workspace (all of
# them, even after one fails), then the lints, then a short smoke run of every
# fuzz target. Fails at the end if any step failed, naming each.
set -uo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
failed=()
step() {
  local name="$1"
  shift
  echo "==> $name" >&2
  "$@" || failed+=("$name")
}

scripts/test-deps.sh || { echo "test.sh: could not install what the tests need" >&2; exit 1; }
cargo build --workspace || { echo "test.sh: the build failed" >&2; exit 1; }
# --no-fail-fast: every test binary runs; cargo lists the ones that failed.
step "cargo test" cargo test --workspace --no-fail-fast
step "cargo fmt" cargo fmt --all -- --check
step "cargo clippy" cargo clippy --workspace --all-targets -- -D warnings
# The files of the daemon, the module and the CLI depend on each other one way.
step "module circles" scripts/module-cycles.sh

# Every fuzz target for a fixed short time, each on a scratch copy of its
# seed corpus (a run adds inputs to its corpus). Longer runs: HAHSM_FUZZ_SECONDS.
scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
for target in decode wire peer stored_state client_config custody; do
  mkdir -p "$scratch/$target"
  cp fuzz/corpus/"$target"/* "$scratch/$target/"
  step "fuzz $target" bash -c "cd fuzz && cargo fuzz run -s none $target '$scratch/$target' -- -max_total_time=${HAHSM_FUZZ_SECONDS:-8}"
done

if ((${#failed[@]})); then
  echo "test.sh: FAILED: ${failed[*]}" >&2
  exit 1
fi
echo "test.sh: every step passed" >&2
