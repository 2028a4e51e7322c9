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
# Its output is kept, so that the names of the failed tests can be repeated
# at the end, where a CI log that shows only its last lines still has them.
scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
step "cargo test" bash -c 'set -o pipefail; cargo test --workspace --no-fail-fast 2>&1 | tee "$1"' _ "$scratch/cargo-test.log"
step "cargo fmt" cargo fmt --all -- --check
step "cargo clippy" cargo clippy --workspace --all-targets -- -D warnings
# The files of the daemon, the module and the CLI depend on each other one way.
step "module circles" scripts/module-cycles.sh

# Every fuzz target for a fixed short time, each on a scratch copy of its
# seed corpus (a run adds inputs to its corpus). Longer runs: HAHSM_FUZZ_SECONDS.
for target in decode wire peer stored_state client_config custody; do
  mkdir -p "$scratch/$target"
  cp fuzz/corpus/"$target"/* "$scratch/$target/"
  # A fuzz run prints thousands of lines (its dictionary among them): they
  # go to a file, and only a failed run's last lines are shown.
  step "fuzz $target" bash -c "cd fuzz && cargo fuzz run -s none $target '$scratch/$target' -- -max_total_time=${HAHSM_FUZZ_SECONDS:-8} >'$scratch/fuzz-$target.log' 2>&1 || { tail -n 60 '$scratch/fuzz-$target.log'; false; }"
  tail -n 1 "$scratch/fuzz-$target.log" >&2
done

if ((${#failed[@]})); then
  # cargo's own summary of each failed test binary, and the failed tests.
  grep -E '^(error: test failed|    [a-z0-9_:]+$|test .* \.\.\. FAILED|error: [0-9]+ targets failed)' "$scratch/cargo-test.log" >&2 || true
  echo "test.sh: FAILED: ${failed[*]}" >&2
  exit 1
fi
echo "test.sh: every step passed" >&2
