#!/usr/bin/env bash
# Regenerates the issue-7 figures in BENCHMARKS.md: builds the release binaries, then
# runs the report's four performance scenarios (tests 3.4.8 to 3.4.11) and every mode
# once, each against a local group it starts itself. Writes CSV, JSONL and SVG/PNG
# plots into docs/bench/ (or $BENCH_OUT).
#
#   scripts/bench-all.sh            # 2 s per point: a noisy, shared machine
#   scripts/bench-all.sh 10         # 10 s per point: a quiet machine
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-2}"
out="${BENCH_OUT:-docs/bench}"
mkdir -p "$out/keygen"
cargo build --release -p hahsmd -p hahsm-cli -p hahsm-pkcs11
h=target/release/hahsm

{
  echo "# $(date -u +%FT%TZ) $(nproc) CPUs: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
  echo "# load average before the run: $(cut -d' ' -f1-3 /proc/loadavg)"
} > "$out/machine.txt"

# Signing: report tests 3.4.8 to 3.4.11 (tables 4.1 to 4.5, figures 4.1 and 4.2).
sign=(--mode rsa-sign:2048 --seconds "$secs" --warmup 1 --out "$out")
"$h" bench scenario threads --baseline raw,softhsm "${sign[@]}"
"$h" bench scenario processes --threads 1,3,10,30,100 "${sign[@]}"
"$h" bench scenario ha-vs-standalone --threads 3,9,24,60 "${sign[@]}"
"$h" bench scenario slow-member --baseline raw,softhsm "${sign[@]}"

# Key generation: a key takes up to a second under load, so 4x longer windows.
keygen=(--mode rsa-keygen:2048 --seconds "$((secs * 4))" --warmup 2 --out "$out/keygen")
"$h" bench scenario threads --threads 1,3,10,20,60 --baseline raw,softhsm "${keygen[@]}"
"$h" bench scenario ha-vs-standalone --threads 3,9,24 "${keygen[@]}"
"$h" bench scenario slow-member --baseline raw,softhsm "${keygen[@]}"

# Every mode on the HA slot of a 3-member group, with both baselines.
group="$(mktemp -d)"
trap '"$h" demo stop --dir "$group/demo" >/dev/null 2>&1 || true; rm -rf "$group"' EXIT
"$h" demo --detach --members 3 --dir "$group/demo" >/dev/null
pin="$(sed -n 's/.*"user_pin": *"\([^"]*\)".*/\1/p' "$group/demo/demo.json")"
HAHSM_CONF="$group/demo/client/client.toml" HAHSM_PIN="$pin" "$h" bench --slot ha \
  --mode rsa-sign:2048,rsa-sign:3072,rsa-sign:4096,rsa-keygen:2048,ecdsa-sign:p256,ecdsa-sign:p384,eddsa-sign,aes-gcm,hmac,ecdh:p256 \
  --threads 1,8 --seconds "$secs" --warmup 1 --baseline raw,softhsm --csv "$out/modes.csv"
echo "# load average after the run: $(cut -d' ' -f1-3 /proc/loadavg)" >> "$out/machine.txt"
if command -v python3 >/dev/null; then
  python3 scripts/bench-tables.py "$out" > "$out/tables.md"
fi
