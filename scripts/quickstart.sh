#!/usr/bin/env bash
# Sets up one hahsm member exactly as the report's listings 3.1 and 3.2 set up
# a Luna SA, then generates an RSA key, signs with it and verifies the
# signature with openssl. Everything lives in a temporary directory.
#   scripts/quickstart.sh          run it and stop the member at the end
#   scripts/quickstart.sh --keep   leave the member running and print how to use it
set -euo pipefail
cd "$(dirname "$0")/.."
keep=no
[ "${1:-}" = "--keep" ] && keep=yes

cargo build --quiet --bins
bin="$(pwd)/target/debug"
work="$(mktemp -d /tmp/hahsm-quickstart.XXXXXX)"
export HAHSM_ADMIN_SOCKET="$work/data/admin.sock"
export HAHSM_CONF="$work/client/client.toml"

cat > "$work/hahsmd.toml" <<TOML
data_dir = "$work/data"
listen = "127.0.0.1:0"
TOML
"$bin/hahsmd" --config "$work/hahsmd.toml" 2> "$work/hahsmd.log" &
pid=$!
if [ "$keep" = no ]; then trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null || true' EXIT; fi
for _ in $(seq 100); do [ -S "$HAHSM_ADMIN_SOCKET" ] && [ -f "$work/data/listen.addr" ] && break; sleep 0.1; done
addr="$(cat "$work/data/listen.addr")"

step() { printf '\n\033[1m$ hahsm %s\033[0m\n' "$*"; "$bin/hahsm" "$@"; }

echo "== Listing 3.1: base setup of the HSM (member at $addr)"
mkdir -p "$work/secrets"
step appliance hsm init --label testhsm --so-secret "$work/secrets/so.key" --domain-secret "$work/secrets/domain.key"
step appliance hsm login --so-secret "$work/secrets/so.key"
step appliance hsm show-policies
for p in 7 16 20; do step appliance hsm change-policy --policy $p --value 1; done
step appliance sysconf fingerprint

echo; echo "== Listing 3.2: a stand-alone partition and its client"
step appliance partition create --partition myPart --owner-secret "$work/secrets/owner.key"
step appliance partition change-pin --partition myPart --owner-secret "$work/secrets/owner.key" --new-pin myPwD-2024
step appliance partition change-policy --partition myPart --policy 22 --value 1
step appliance partition change-policy --partition myPart --policy 23 --value 1
step appliance partition activate --partition myPart --owner-secret "$work/secrets/owner.key"
fp="$("$bin/hahsm" appliance sysconf fingerprint | sed 's/.*=//')"
step client create-cert --name app1
step client add-server --name testhsm --address "$addr" --fingerprint "$fp"
step appliance client register --client app1 --hostname 127.0.0.1 --cert "$work/client/app1.pem"
step appliance client assign-partition --client app1 --partition myPart
step client verify

echo; echo "== A key generation and a signature, verified by openssl"
export HAHSM_PIN=myPwD-2024 HAHSM_PARTITION=myPart
step keys gen --type rsa:2048 --label demo-rsa
echo "hello, HSM" > "$work/message.txt"
step keys sign --label demo-rsa --mech SHA256-RSA-PKCS --in "$work/message.txt" --out "$work/message.sig"
step keys pubkey --label demo-rsa --out "$work/demo-rsa.pub.pem"
printf '\n\033[1m$ openssl dgst -sha256 -verify demo-rsa.pub.pem -signature message.sig message.txt\033[0m\n'
openssl dgst -sha256 -verify "$work/demo-rsa.pub.pem" -signature "$work/message.sig" "$work/message.txt"
step keys list

if [ "$keep" = yes ]; then
  cat <<TXT

The member is still running (pid $pid). To use it:
  export HAHSM_CONF=$HAHSM_CONF HAHSM_ADMIN_SOCKET=$HAHSM_ADMIN_SOCKET
  export HAHSM_PIN=myPwD-2024 HAHSM_PARTITION=myPart
  $bin/hahsm keys list
Stop it with: kill $pid
TXT
else
  echo; echo "done; the member is stopped and its files are in $work"
fi
