#!/usr/bin/env bash
# Fails if the files (modules) of hahsmd, hahsm-pkcs11 or hahsm-cli depend on
# each other in a circle: cargo-modules draws each crate's module graph, and
# scripts/module_graph.py adds the `crate::`/`super::` paths written inline and
# looks for circles. (cargo-modules 0.27's own --acyclic counts a type and its
# methods as a circle whatever the filters, so it fails on every crate.)
# Installs cargo-modules 0.27, the last release for this toolchain, if missing.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v cargo-modules >/dev/null || cargo install cargo-modules@0.27.0 --locked
status=0
check() {
  local name="$1" dir="$2" root="$3"
  shift 3
  cargo modules dependencies "$@" --no-externs --no-sysroot --no-fns --no-traits --no-types --no-owns 2>/dev/null \
    | python3 scripts/module_graph.py "$name" "$dir" "$root" || status=1
}
check hahsmd crates/hahsmd/src lib.rs -p hahsmd --lib
check hahsm_pkcs11 crates/hahsm-pkcs11/src lib.rs -p hahsm-pkcs11 --lib
check hahsm crates/hahsm-cli/src main.rs -p hahsm-cli --bin hahsm
[ "$status" -eq 0 ] && echo "module-cycles: no module circles in hahsmd, hahsm-pkcs11, hahsm-cli" >&2
exit $status
