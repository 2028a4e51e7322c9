#!/usr/bin/env bash
# Builds hahsm-base:bookworm, a minimal Debian bookworm image (debootstrap
# --variant=minbase, imported with docker import), for the package tests: no
# image registry is needed. Does nothing when the image exists.
# The mirror is the host's own, taken from its apt sources.
#
#   scripts/base-image.sh [IMAGE]
set -euo pipefail
image="${1:-hahsm-base:bookworm}"
if docker image inspect "$image" >/dev/null 2>&1; then
  echo "$image exists" >&2
  exit 0
fi
if ! command -v debootstrap >/dev/null; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
fi
mirror="$("$(dirname "$0")/debian-mirror.sh")"
root="$(mktemp -d)"
trap 'rm -rf "$root"' EXIT
echo "debootstrap bookworm from $mirror" >&2
debootstrap --variant=minbase bookworm "$root" "$mirror" >&2
# Smaller and quieter: no apt lists, no caches, no man pages except what
# packages installed later bring.
rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin
tar -C "$root" -c . | docker import - "$image" >&2
echo "$image built" >&2
