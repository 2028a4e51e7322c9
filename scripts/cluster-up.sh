#!/usr/bin/env bash
# A three-member hahsm cluster in containers, set up end to end: the images
# (packaging/container/Dockerfile, from the Debian packages), then
# packaging/container/compose.yaml started, then the members initialised, a
# partition on each, the HA group, and a client registered on every member.
#
#   scripts/cluster-up.sh          build, start and set up (or start again:
#                                  the members' volumes keep the group)
#   scripts/cluster-up.sh down     stop and remove the containers, keep the volumes
#   scripts/cluster-up.sh destroy  the same, and remove the volumes (the keys)
#
# Then, for example:
#   docker exec -it hahsm-client hahsm keys list    (PROJECT-client; see docs/deploy.md)
#
# Environment:
#   HAHSM_PROJECT   the compose project (default: hahsm)
#   HAHSM_BASE      the Debian bookworm image to build on (default: one made here
#                   from Debian's packages by scripts/base-image.sh, for a
#                   machine without an image registry; debian:bookworm-slim works)
#   HAHSM_TAG       the images' tag (default: latest)
#   HAHSM_SUBNET    the first three bytes of the network's /24 (default: 10.89.0)
#   HAHSM_PROMETHEUS_PORT  where the host reaches Prometheus (default: 127.0.0.1:9090)
#   HAHSM_SECRETS   where the custodians' secrets are kept on this host
#                   (default: ~/.hahsm-cluster/PROJECT); move them offline
#   HAHSM_PIN       the partition's user PIN (default: a random one, kept there)
#   HAHSM_DEB_PROFILE, CARGO_TARGET_DIR: as for scripts/build-debs.sh
set -euo pipefail
cd "$(dirname "$0")/.."
repo="$PWD"

project="${HAHSM_PROJECT:-hahsm}"
base="${HAHSM_BASE:-hahsm-base:bookworm}"
tag="${HAHSM_TAG:-latest}"
subnet="${HAHSM_SUBNET:-10.89.0}"
secrets="${HAHSM_SECRETS:-$HOME/.hahsm-cluster/$project}"
export HAHSM_PROJECT="$project" HAHSM_TAG="$tag" HAHSM_SUBNET="$subnet"
partition=haPart
group=haGroup
members=(member1 member2 member3)

say() { printf '== %s\n' "$*" >&2; }

# `docker compose` (v2) where it exists, else docker-compose (v1).
if docker compose version >/dev/null 2>&1; then
  compose_cmd=(docker compose)
else
  compose_cmd=(docker-compose)
fi
compose() { "${compose_cmd[@]}" -p "$project" -f "$repo/packaging/container/compose.yaml" "$@"; }

# The container of a compose service (compose.yaml names them PROJECT-SERVICE).
container() { echo "$project-$1"; }

# Waits until a service's container reports healthy.
wait_healthy() {
  local c status
  c="$(container "$1")"
  for _ in $(seq 120); do
    status="$(docker inspect -f '{{.State.Health.Status}}' "$c" 2>/dev/null || true)"
    [ "$status" = healthy ] && return 0
    sleep 1
  done
  docker logs --tail 50 "$c" >&2 || true
  echo "$1 is not healthy after 120 s (status: $status)" >&2
  exit 1
}

case "${1:-up}" in
  down)
    compose down --remove-orphans
    exit 0
    ;;
  destroy)
    compose down --remove-orphans --volumes
    exit 0
    ;;
  up) ;;
  *)
    echo "usage: $0 [up|down|destroy]" >&2
    exit 2
    ;;
esac

# ---- the images ------------------------------------------------------------
if [ "$base" = hahsm-base:bookworm ]; then
  scripts/base-image.sh "$base"
fi
context="$(mktemp -d)"
# However the script ends (a set-up that fails half way too), no secret copied
# into a member for the set-up stays there.
scrub() {
  rm -rf "$context"
  for m in "${members[@]}"; do
    docker exec -u root "$(container "$m")" rm -rf /tmp/setup >/dev/null 2>&1 || true
  done
}
trap scrub EXIT
say "the Debian packages"
scripts/build-debs.sh "$context/debs" >/dev/null
cp packaging/container/Dockerfile packaging/container/hahsmd.toml packaging/container/prometheus.yml "$context/"
mkdir -p "$context/rules"
cp monitoring/prometheus/hahsm-rules.yml "$context/rules/"
for target in member client prometheus; do
  say "image hahsm-$target:$tag (on $base)"
  docker build -q --build-arg BASE="$base" --target "$target" -t "hahsm-$target:$tag" "$context" >/dev/null
done

# ---- the containers --------------------------------------------------------
say "starting the members (project $project, network $subnet.0/24)"
compose up -d "${members[@]}"
for m in "${members[@]}"; do wait_healthy "$m"; done
say "starting the client and Prometheus"
compose up -d

# A command on a member's console (its admin socket), as root, who can read
# the secret files copied in for the set-up.
on() {
  local service="$1"
  shift
  docker exec -u root "$(container "$service")" "$@"
}
address() { # the member's address on the compose network
  case "$1" in member1) echo "$subnet.11" ;; member2) echo "$subnet.12" ;; member3) echo "$subnet.13" ;; esac
}

# (Whole outputs, then grep: `grep -q` in a pipe would end the writer early,
# and pipefail would count its SIGPIPE as a failure.)
holds_group() {
  local show
  show="$(on member1 hahsm ha show --json 2>/dev/null || true)"
  grep -q "\"$group\"" <<<"$show"
}
status="$(on member1 hahsm appliance status)"
if ! grep -q '^HSM label: *(not initialized)' <<<"$status"; then
  say "the group is already set up (the volumes kept it)"
  # The members activate their partitions and take up the group as they start.
  for _ in $(seq 60); do
    holds_group && break
    sleep 1
  done
  holds_group || {
    echo "member1 is initialised but holds no group $group: a set-up that stopped half way?" \
      "'$0 destroy' removes it (and its keys) to start again" >&2
    exit 1
  }
else
  say "setting the group up; the custodians' secrets go to $secrets"
  mkdir -p "$secrets"
  chmod 700 "$secrets"
  pin="${HAHSM_PIN:-}"
  if [ -z "$pin" ]; then
    if [ -s "$secrets/user-pin" ]; then
      pin="$(cat "$secrets/user-pin")"
    else
      pin="$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')"
    fi
  fi
  (umask 077 && printf '%s' "$pin" > "$secrets/user-pin")

  # The client's certificate, made on the client host; only the certificate
  # travels to the members.
  client="$(container client)"
  docker exec "$client" sh -c 'test -f ~/.hahsm/app1.pem || hahsm client create-cert --name app1' >&2
  docker cp "$client:/home/app/.hahsm/app1.pem" "$secrets/app1.pem"

  for m in "${members[@]}"; do
    c="$(container "$m")"
    n="${m#member}"
    on "$m" install -d -m 0700 /tmp/setup
    # The first member makes the domain and owner secrets; the others get them.
    for s in domain.key owner.key; do
      if [ -f "$secrets/$s" ]; then docker cp "$secrets/$s" "$c:/tmp/setup/$s"; fi
    done
    if [ -f "$secrets/so$n.key" ]; then docker cp "$secrets/so$n.key" "$c:/tmp/setup/so.key"; fi
    docker cp "$secrets/app1.pem" "$c:/tmp/setup/app1.pem"
    say "$m: HSM, partition $partition, client app1"
    on "$m" hahsm appliance hsm init --label "$m" --so-secret /tmp/setup/so.key --domain-secret /tmp/setup/domain.key >&2
    on "$m" hahsm appliance hsm login --so-secret /tmp/setup/so.key >&2
    for p in 7 16 20; do on "$m" hahsm appliance hsm change-policy --policy "$p" --value 1 >&2; done
    on "$m" hahsm appliance partition create --partition "$partition" --owner-secret /tmp/setup/owner.key --pin "$pin" >&2
    for p in 0 4 21 22 23; do
      on "$m" hahsm appliance partition change-policy --partition "$partition" --policy "$p" --value 1 >&2
    done
    on "$m" hahsm appliance partition activate --partition "$partition" --owner-secret /tmp/setup/owner.key >&2
    on "$m" hahsm ha prepare --partition "$partition" --owner-secret /tmp/setup/owner.key >&2
    on "$m" hahsm appliance client register --client app1 --hostname "$subnet.21" --cert /tmp/setup/app1.pem >&2
    on "$m" hahsm appliance client assign-partition --client app1 --partition "$partition" >&2
    # The secrets this member made, kept on this host; then none stays in the container.
    for s in domain.key owner.key; do
      [ -f "$secrets/$s" ] || docker cp "$c:/tmp/setup/$s" "$secrets/$s"
    done
    docker cp "$c:/tmp/setup/so.key" "$secrets/so$n.key"
    on "$m" rm -rf /tmp/setup
  done
  chmod 600 "$secrets"/*.key

  say "the group $group on member1, with member2 and member3"
  on member1 hahsm ha create-group --label "$group" --partition "$partition" --quorum >&2
  for m in member2 member3; do
    fp="$(on "$m" hahsm appliance sysconf fingerprint | sed 's/.*=//')"
    on member1 hahsm ha add-member --group "$group" --address "$(address "$m"):1793" --fingerprint "$fp" >&2
  done

  say "the client trusts every member"
  for m in "${members[@]}"; do
    fp="$(on "$m" hahsm appliance sysconf fingerprint | sed 's/.*=//')"
    docker exec "$client" hahsm client add-server --name "$m" --address "$(address "$m"):1792" --fingerprint "$fp" >&2
  done
  docker exec "$client" hahsm client verify >&2
fi

cat >&2 <<TXT

The cluster is up (project $project):
  members    $subnet.11, $subnet.12, $subnet.13 (client link 1792, peers 1793, metrics and health 9792)
  client     $subnet.21: docker exec -it $(container client) bash
             (HAHSM_CONF is set; the partition is $partition, the PIN is in $secrets/user-pin)
  Prometheus http://$(docker port "$(container prometheus)" 9090 | head -n1)
  group      docker exec $(container member1) hahsm ha show
Stop it with $0 down (the volumes stay), or $0 destroy.
TXT
