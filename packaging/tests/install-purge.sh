#!/bin/sh
# Runs as root inside a clean Debian container (hahsm-base:bookworm) with the
# three .debs in /debs: installs them with apt, checks what they installed,
# runs the packaged daemon with the packaged config, then purges them and
# checks that nothing of theirs is left but /var/lib/hahsm (the keys).
# Called by crates/hahsm-it/tests/t70_packages.rs; prints "PACKAGES OK" at the end.
set -eu
export DEBIAN_FRONTEND=noninteractive
fail() { echo "FAIL: $*" >&2; exit 1; }
step() { echo "== $*"; }

step "apt-get update; man-db and p11-kit for the checks"
apt-get update -qq
apt-get install -y -qq --no-install-recommends man-db p11-kit procps >/dev/null

step "install the packages"
cd /debs
apt-get install -y -qq ./hahsmd_*.deb ./hahsm_*.deb ./libhahsm-pkcs11_*.deb >/tmp/install.log 2>&1 \
  || { cat /tmp/install.log; fail "apt-get install of the packages failed"; }
for p in hahsmd hahsm libhahsm-pkcs11; do
  dpkg-query -W -f='${Status}\n' "$p" | grep -qx 'install ok installed' || fail "$p is not installed"
  dpkg -L "$p" > "/tmp/$p.list"
done

step "the files"
for f in /usr/sbin/hahsmd /etc/hahsm/hahsmd.toml /usr/lib/systemd/system/hahsmd.service \
         /usr/bin/hahsm /usr/share/man/man1/hahsm.1.gz /usr/share/man/man1/hahsm-ha.1.gz \
         /usr/share/man/man1/hahsm-appliance.1.gz \
         /usr/share/bash-completion/completions/hahsm /usr/share/zsh/vendor-completions/_hahsm \
         /usr/share/fish/vendor_completions.d/hahsm.fish \
         /usr/lib/x86_64-linux-gnu/pkcs11/libhahsm_pkcs11.so /usr/share/p11-kit/modules/hahsm.module \
         /usr/share/hahsm/prometheus/hahsm-rules.yml /usr/share/hahsm/grafana/hahsm-dashboard.json \
         /usr/share/doc/hahsmd/deploy.md; do
  grep -qx "$f" /tmp/*.list || fail "$f is in no package's dpkg -L"
  [ -f "$f" ] || fail "$f is missing"
done
[ -x /usr/sbin/hahsmd ] && [ -x /usr/bin/hahsm ] || fail "the binaries are not executable"
ls /usr/share/man/man1/hahsm-generate-assets* 2>/dev/null && fail "the hidden command has a man page"
dpkg-query -W -f='${Conffiles}\n' hahsmd | grep -q '/etc/hahsm/hahsmd.toml' \
  || fail "/etc/hahsm/hahsmd.toml is not a conffile"

step "the hahsm user and /var/lib/hahsm"
getent passwd hahsm || fail "no hahsm user"
getent group hahsm || fail "no hahsm group"
[ "$(getent passwd hahsm | cut -d: -f7)" = /usr/sbin/nologin ] || fail "the hahsm user has a login shell"
[ "$(stat -c '%a %U %G' /var/lib/hahsm)" = "700 hahsm hahsm" ] \
  || fail "/var/lib/hahsm is $(stat -c '%a %U %G' /var/lib/hahsm), not 700 hahsm hahsm"

step "versions"
version="$(dpkg-query -W -f='${Version}' hahsmd)"
hahsmd --version | tee /dev/stderr | grep -qx "hahsmd ${version%-*}" || fail "hahsmd --version is not ${version%-*}"
hahsm --version | grep -qx "hahsm ${version%-*}" || fail "hahsm --version is not ${version%-*}"

step "man pages"
MANPAGER=cat man hahsm 2>/dev/null | grep -q "Operate a hahsm cluster of network HSMs" || fail "man hahsm"
MANPAGER=cat man hahsm-ha 2>/dev/null | grep -q "HA groups" || fail "man hahsm-ha"

step "completions"
bash -c '. /usr/share/bash-completion/completions/hahsm && complete -p hahsm' | grep -q hahsm \
  || fail "the bash completion does not register"
grep -q '#compdef hahsm' /usr/share/zsh/vendor-completions/_hahsm || fail "zsh completion"
grep -q 'complete -c hahsm' /usr/share/fish/vendor_completions.d/hahsm.fish || fail "fish completion"

step "p11-kit lists the module"
# Without a client config the module's C_Initialize fails (it is not critical,
# so p11-kit carries on); with one, p11-kit lists it by its module file's name.
mkdir -p /tmp/p11
cat > /tmp/p11/client.toml <<TOML
cert = "/tmp/p11/none.pem"
key = "/tmp/p11/none.key"
connect_timeout_ms = 300
[[server]]
name = "nowhere"
address = "127.0.0.1:9"
fingerprint = "$(printf '00%.0s' $(seq 32))"
TOML
HAHSM_CONF=/tmp/p11/client.toml p11-kit list-modules > /tmp/p11.out 2>&1 || true
cat /tmp/p11.out
grep -q '^hahsm: libhahsm_pkcs11.so' /tmp/p11.out || fail "p11-kit list-modules does not list hahsm"
grep -q 'library-description:.*hahsm' /tmp/p11.out || fail "p11-kit did not initialize the hahsm module"
p11-kit list-modules >/tmp/p11-noconf.out 2>&1 || { cat /tmp/p11-noconf.out; fail "p11-kit list-modules fails on a host without a hahsm config"; }
grep -q "^p11-kit-trust:" /tmp/p11-noconf.out || { cat /tmp/p11-noconf.out; fail "without a hahsm config, p11-kit lost its other modules"; }

step "the packaged daemon with the packaged config, as the hahsm user"
setpriv --reuid=hahsm --regid=hahsm --init-groups hahsmd --config /etc/hahsm/hahsmd.toml >/tmp/hahsmd.log 2>&1 &
pid=$!
for _ in $(seq 100); do [ -s /var/lib/hahsm/listen.addr ] && break; sleep 0.1; done
hahsm appliance status || { cat /tmp/hahsmd.log; fail "hahsm appliance status"; }
[ "$(stat -c '%a %U' /var/lib/hahsm/hahsm.db)" = "600 hahsm" ] || fail "the store is not 600 hahsm"
kill "$pid"; wait "$pid" || true

step "purge"
apt-get purge -y -qq hahsmd hahsm libhahsm-pkcs11 >/tmp/purge.log 2>&1 || { cat /tmp/purge.log; fail "purge failed"; }
if dpkg -l | grep -E '^.. +(hahsmd|hahsm|libhahsm-pkcs11) '; then fail "a package is still known to dpkg"; fi
left=0
for f in $(cat /tmp/*.list | sort -u); do
  if [ -L "$f" ] || [ -f "$f" ]; then
    echo "left behind: $f"; left=1
  elif [ -d "$f" ] && ! dpkg -S "$f" >/dev/null 2>&1; then
    # A directory no other package owns must be gone too.
    echo "left behind: $f/"; left=1
  fi
done
[ "$left" = 0 ] || fail "files of the packages remain after purge"
[ ! -e /etc/hahsm ] || fail "/etc/hahsm remains after purge"
[ ! -e /etc/systemd/system/multi-user.target.wants/hahsmd.service ] || fail "the unit is still enabled"
[ -f /var/lib/hahsm/hahsm.db ] || fail "purge removed /var/lib/hahsm (the keys): it must stay"
echo "PACKAGES OK"
