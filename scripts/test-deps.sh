#!/usr/bin/env bash
# Installs what the tests use when it is missing, so that scripts/test.sh
# works on a fresh Debian machine: the third-party PKCS#11 applications and
# tools the HA tests drive (OpenSSL 3's pkcs11-provider from
# bookworm-backports on bookworm, which has none of its own), Prometheus and promtool for the shipped rules and
# dashboard and Alertmanager for the members' own alerts (t61_prometheus),
# Python's python-pkcs11 and prometheus-client, and cargo-fuzz for the fuzz
# smoke runs. Does nothing for what is already there.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive

# Debian packages, by the command each one brings.
declare -A package_of=(
  [openssl]=openssl
  [pkcs11-tool]=opensc
  [softhsm2-util]=softhsm2
  [p11tool]=gnutls-bin
  # p11-kit's registry of modules (t29_p11_kit).
  [p11-kit]=p11-kit
  # HTTPS with its key in hahsm through the libp11 engine (t52_nginx).
  [nginx]=nginx
  [tshark]=tshark
  # The package tests (t70_packages): a clean Debian root, systemd-analyze,
  # and dpkg-dev's tools for cargo-deb. Docker comes with the machine.
  [debootstrap]=debootstrap
  [systemd-analyze]=systemd
  [dpkg-shlibdeps]=dpkg-dev
  # One package brings both the server and promtool.
  [prometheus]=prometheus
  [promtool]=prometheus
  # The test bed of network namespaces (t73_netns_bed): kernel-made
  # partitions and netem, and health checks from inside a namespace.
  [ip]=iproute2
  [tc]=iproute2
  [nft]=nftables
  [curl]=curl
  # The members' alerts sent to a real Alertmanager (t61_prometheus).
  [prometheus-alertmanager]=prometheus-alertmanager
  # A member whose wall clock runs fast (libfaketime; t74_lease_and_clocks).
  [faketime]=faketime
  # OpenSSH with a user key in hahsm (t27_openssh): a private sshd on a
  # loopback port, ssh -I and ssh-agent with ssh-add -s.
  [sshd]=openssh-server
  [ssh]=openssh-client
  [ssh-agent]=openssh-client
  # NSS's tools (t53_nss): modutil, certutil, pk12util.
  [modutil]=libnss3-tools
  [certutil]=libnss3-tools
  [pk12util]=libnss3-tools
  # Java's SunPKCS11 with keytool and jarsigner (t54_java).
  [keytool]=openjdk-17-jre-headless
  [jarsigner]=openjdk-17-jdk-headless
  [jar]=openjdk-17-jdk-headless
  # A DNSSEC signer with its keystore in hahsm (t58_knot_dnssec), and an
  # independent validator of the zone it signs.
  [knotd]=knot
  [keymgr]=knot
  [ldns-verify-zone]=ldnsutils
)
missing=()
for command in "${!package_of[@]}"; do
  command -v "$command" >/dev/null || missing+=("${package_of[$command]}")
done
# The OpenSSL engine has no command of its own.
ls /usr/lib/*/engines-3/pkcs11.so >/dev/null 2>&1 || missing+=(libengine-pkcs11-openssl)
# Nor has OpenSSL 3's pkcs11-provider (t25_pkcs11_provider). Bookworm has
# none; bookworm-backports has 1.0. Asked for as pkcs11-provider/RELEASE,
# only that package comes from backports, its dependencies from bookworm
# unless one needs a newer version (-t would take every dependency that
# backports carries from there, systemd 254 among them).
backports=
if ! ls /usr/lib/*/ossl-modules/pkcs11.so >/dev/null 2>&1; then
  if [ "$(. /etc/os-release && echo "${VERSION_CODENAME:-}")" = bookworm ]; then
    backports=/etc/apt/sources.list.d/bookworm-backports.list
    missing+=(pkcs11-provider/bookworm-backports)
  else
    missing+=(pkcs11-provider)
  fi
fi
if ((${#missing[@]})); then
  if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null; then
    echo "test-deps: missing Debian packages ${missing[*]}, and no root apt-get to install them" >&2
    exit 1
  fi
  mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
  echo "test-deps: installing ${missing[*]}" >&2
  if [ -n "$backports" ] && ! grep -rqs bookworm-backports /etc/apt/sources.list /etc/apt/sources.list.d/; then
    echo "deb $("$(dirname "$0")/debian-mirror.sh") bookworm-backports main" >"$backports"
  fi
  apt-get update -qq
  apt-get install -y -qq "${missing[@]}" >/dev/null
fi

pip_install() {
  python3 -m pip install --quiet "$1" 2>/dev/null \
    || python3 -m pip install --quiet --break-system-packages "$1"
}
# python-pkcs11: a third-party application of the module in the HA tests.
python3 -c 'import pkcs11' 2>/dev/null || pip_install python-pkcs11
# The monitoring tests check the metrics endpoint with a third-party
# OpenMetrics parser: Python's prometheus_client.
python3 -c 'import prometheus_client.openmetrics.parser' 2>/dev/null || pip_install prometheus-client

rustup component add rustfmt clippy >/dev/null 2>&1 || true
# The fuzz smoke runs (stable toolchain, built with -s none).
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
# scripts/build-debs.sh packages with cargo-deb. 3.8: the package test builds
# from the dev profile that scripts/test.sh has built, which later releases
# announce they will refuse.
command -v cargo-deb >/dev/null || cargo install cargo-deb --locked --version '~3.8'
# The module-graph check (scripts/module-cycles.sh); 0.27 is the last
# release that builds with this toolchain.
command -v cargo-modules >/dev/null || cargo install cargo-modules@0.27.0 --locked
