#!/bin/sh
# Runs as root inside a container whose PID 1 is systemd, with the .debs in
# /debs: installs them (postinst enables and starts hahsmd.service), then checks
# that the daemon runs under the unit's sandbox and still does its work: an
# HSM, a partition, a client, a key, a signature, a restart with auto-activation,
# the watchdog. Called by crates/hahsm-it/tests/t70_packages.rs; prints
# "SYSTEMD OK" at the end.
set -eu
export DEBIAN_FRONTEND=noninteractive
fail() {
  echo "FAIL: $*" >&2
  systemctl status hahsmd --no-pager >&2 || true
  journalctl -u hahsmd --no-pager -n 40 >&2 || true
  exit 1
}
step() { echo "== $*"; }

step "install the packages: postinst enables and starts hahsmd"
cd /debs
apt-get install -y -qq ./hahsmd_*.deb ./hahsm_*.deb ./libhahsm-pkcs11_*.deb >/tmp/install.log 2>&1 \
  || { cat /tmp/install.log; fail "apt-get install failed"; }
[ "$(systemctl is-enabled hahsmd)" = enabled ] || fail "hahsmd.service is not enabled"
# Type=notify: "active" only after the daemon sent READY=1.
[ "$(systemctl is-active hahsmd)" = active ] || fail "hahsmd.service is not active"
[ "$(systemctl show -p Type --value hahsmd)" = notify ] || fail "not Type=notify"

step "the sandbox is in force"
pid="$(systemctl show -p MainPID --value hahsmd)"
grep -E '^(Uid|CapEff|CapBnd|NoNewPrivs|Seccomp):' "/proc/$pid/status"
[ "$(awk '/^Uid:/ { print $2 }' "/proc/$pid/status")" = "$(id -u hahsm)" ] || fail "not running as hahsm"
grep -q '^CapEff:[[:space:]]*0000000000000000$' "/proc/$pid/status" || fail "has capabilities"
grep -q '^CapBnd:[[:space:]]*0000000000000000$' "/proc/$pid/status" || fail "has a capability bounding set"
grep -q '^NoNewPrivs:[[:space:]]*1$' "/proc/$pid/status" || fail "NoNewPrivileges is off"
grep -q '^Seccomp:[[:space:]]*2$' "/proc/$pid/status" || fail "no system call filter"

step "an HSM, a partition, a client, a key and a signature (as scripts/quickstart.sh)"
mkdir -p /root/s && cd /root/s
hahsm appliance hsm init --label pkgtest --so-secret so.key --domain-secret domain.key
hahsm appliance hsm login --so-secret so.key
hahsm appliance partition create --partition p1 --owner-secret owner.key
hahsm appliance partition change-pin --partition p1 --owner-secret owner.key --new-pin pkg-PIN-2024
hahsm appliance partition change-policy --partition p1 --policy 22 --value 1
hahsm appliance partition change-policy --partition p1 --policy 23 --value 1
hahsm appliance partition activate --partition p1 --owner-secret owner.key
fp="$(hahsm appliance sysconf fingerprint | sed 's/.*=//')"
hahsm client create-cert --name app1
hahsm client add-server --name member1 --address 127.0.0.1:1792 --fingerprint "$fp"
hahsm appliance client register --client app1 --hostname 127.0.0.1 --cert /root/.hahsm/app1.pem
hahsm appliance client assign-partition --client app1 --partition p1
export HAHSM_PIN=pkg-PIN-2024 HAHSM_PARTITION=p1
hahsm keys gen --type ec:p256 --label pkg-key || fail "key generation"
echo "signed under systemd" > msg
hahsm keys sign --label pkg-key --mech ECDSA-SHA256 --in msg --out msg.sig || fail "signature"
[ -s msg.sig ] || fail "no signature"

step "p11-kit loads the module, which finds the partition as a token"
HAHSM_CONF=/root/.hahsm/client.toml p11-kit list-modules > /tmp/p11.out 2>&1 || true
sed -n '/^hahsm:/,$p' /tmp/p11.out
sed -n '/^hahsm:/,$p' /tmp/p11.out | grep -q 'token: p1$' || fail "p11-kit lists no hahsm token p1"

step "restart: the partition auto-activates, the key is there"
systemctl restart hahsmd || fail "restart"
hahsm keys list | grep pkg-key >/dev/null || fail "the key is gone after a restart"

step "the watchdog: pings keep a 2 s watchdog happy; a stopped daemon is restarted"
mkdir -p /etc/systemd/system/hahsmd.service.d
printf '[Service]\nWatchdogSec=2s\n' > /etc/systemd/system/hahsmd.service.d/watchdog.conf
systemctl daemon-reload
systemctl restart hahsmd
sleep 5
[ "$(systemctl is-active hahsmd)" = active ] || fail "the daemon did not keep the watchdog happy"
[ "$(systemctl show -p NRestarts --value hahsmd)" = 0 ] || fail "the watchdog restarted a healthy daemon"
kill -STOP "$(systemctl show -p MainPID --value hahsmd)"
for _ in $(seq 60); do
  [ "$(systemctl show -p NRestarts --value hahsmd)" -ge 1 ] && break
  sleep 0.25
done
[ "$(systemctl show -p NRestarts --value hahsmd)" -ge 1 ] || fail "a stopped daemon was not restarted by the watchdog"
journalctl -u hahsmd --no-pager | grep -q 'Watchdog timeout' || fail "no watchdog timeout in the journal"
for _ in $(seq 40); do [ "$(systemctl is-active hahsmd)" = active ] && break; sleep 0.25; done
[ "$(systemctl is-active hahsmd)" = active ] || fail "not active again after the watchdog restart"
hahsm keys list | grep pkg-key >/dev/null || fail "the key is gone after the watchdog restart"
rm -r /etc/systemd/system/hahsmd.service.d && systemctl daemon-reload

step "purge stops and disables the service"
apt-get purge -y -qq hahsmd hahsm libhahsm-pkcs11 >/tmp/purge.log 2>&1 || { cat /tmp/purge.log; fail "purge"; }
[ "$(systemctl is-active hahsmd 2>/dev/null || true)" != active ] || fail "still running after purge"
[ -f /var/lib/hahsm/hahsm.db ] || fail "purge removed the keys"

step "installed again, the member has its keys"
cd /debs
apt-get install -y -qq ./hahsmd_*.deb ./hahsm_*.deb >/tmp/install2.log 2>&1 || { cat /tmp/install2.log; fail "reinstall"; }
[ "$(systemctl is-active hahsmd)" = active ] || fail "not active after reinstall"
hahsm keys list | grep pkg-key >/dev/null || fail "the key did not survive purge and reinstall"
echo "SYSTEMD OK"
