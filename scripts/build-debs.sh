#!/usr/bin/env bash
# Builds the Debian packages (amd64) with cargo-deb:
#   hahsmd           the daemon, its conffile /etc/hahsm/hahsmd.toml, the systemd unit
#   hahsm            the CLI, its man pages and bash, zsh and fish completions
#   libhahsm-pkcs11  the PKCS#11 module, registered with p11-kit
# into DIR (default: target/debian, under CARGO_TARGET_DIR when set), and prints
# DIR as its only line on stdout.
#
#   scripts/build-debs.sh [DIR]
#
# HAHSM_DEB_PROFILE picks the cargo profile (default: release). The package
# test uses dev, the profile scripts/test.sh has already built.
# HAHSM_DEB_REVISION sets the Debian revision (default: 1): the deployment
# test upgrades packages of one revision to the next.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

profile="${HAHSM_DEB_PROFILE:-release}"
case "$profile" in
  dev | test) profile_dir=debug ;;
  bench) profile_dir=release ;;
  *) profile_dir="$profile" ;;
esac
target="${CARGO_TARGET_DIR:-$PWD/target}"
out="${1:-$target/debian}"

command -v cargo-deb >/dev/null || cargo install cargo-deb --locked --version '~3.8' >&2

# One build of the three packages' crates, so cargo-deb has nothing to build.
cargo build --profile "$profile" -p hahsmd -p hahsm-cli -p hahsm-pkcs11 >&2

# The man pages and completions, from the clap definitions of the binary just
# built; the hahsm package's assets point here (target/release/hahsm-assets,
# which cargo-deb maps to the profile's directory).
assets="$target/$profile_dir/hahsm-assets"
rm -rf "$assets"
"$target/$profile_dir/hahsm" generate-assets "$assets" >&2
gzip -9n "$assets"/man/*.1

mkdir -p "$out"
out="$(cd "$out" && pwd)"
rm -f "$out"/hahsmd_*.deb "$out"/hahsm_*.deb "$out"/libhahsm-pkcs11_*.deb
# Stripped: the release profile keeps debug info (debug = 1) for profiling,
# which would make the binaries five times larger.
revision=()
[ -n "${HAHSM_DEB_REVISION:-}" ] && revision=(--deb-revision "$HAHSM_DEB_REVISION")
for crate in hahsmd hahsm-cli hahsm-pkcs11; do
  cargo deb --no-build --strip --profile "$profile" -p "$crate" "${revision[@]}" --output "$out" >&2
done
echo "$out"
