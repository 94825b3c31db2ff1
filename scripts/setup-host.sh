#!/usr/bin/env bash
# Prepare a Debian 12 host (run as root) for flake-pilot's demo and tests.
# Idempotent: installs only what is missing, writes podman settings for THIS machine into
# $FLAKE_STATE (never /etc), creates the rootless test user. Usage:
#   scripts/setup-host.sh [--test]
set -euo pipefail
MODE=${1:-demo}
STATE=${FLAKE_STATE:-/var/tmp/flake-pilot}
TEST_USER=${FLAKE_TEST_USER:-flaketest}

[ "$(id -u)" = 0 ] || { echo "setup-host.sh: run as root (it installs Debian packages)" >&2; exit 1; }

pkgs=(podman runc conmon catatonit uidmap slirp4netns fuse-overlayfs netavark aardvark-dns iptables
      busybox-static python3-venv e2fsprogs tar)
if [ "$MODE" = --test ]; then
  pkgs+=(docker-registry rsync qemu-system-x86 cpio lz4 binutils openssl tmux man-db bash-completion
         zsh fish debhelper dh-python python3-all python3-setuptools python3-yaml pybuild-plugin-pyproject
         python3-pip dpkg-dev xz-utils kmod pipx shellcheck
         sudo)  # sudo: test_privilege proves the test user has no sudo rights where sudo exists
fi
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup-host: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get -o DPkg::Lock::Timeout=300 update -qq
  apt-get -o DPkg::Lock::Timeout=300 install -y -qq --no-install-recommends "${missing[@]}" >/tmp/flake-setup-apt.log 2>&1 \
    || { tail -20 /tmp/flake-setup-apt.log >&2; exit 1; }
fi

# podman settings for this kind of machine (see docs): runc, pinned ulimits, overlay storage.
mkdir -p "$STATE/podman"
chmod 755 "$STATE" "$STATE/podman"
NOFILE=$(ulimit -Hn); [ "$NOFILE" = unlimited ] && NOFILE=1048576
NPROC=$(ulimit -Hu); { [ "$NPROC" = unlimited ] || [ "$NPROC" -gt 32768 ]; } && NPROC=32768
cat > "$STATE/podman/containers.conf" <<CONF
[containers]
default_ulimits = ["nofile=${NOFILE}:${NOFILE}", "nproc=${NPROC}:${NPROC}"]

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"

[network]
network_backend = "netavark"
CONF
chmod 644 "$STATE/podman/containers.conf"

# rootless test user: subordinate ids, usable /dev/net/tun (0600 on these VMs)
if ! id "$TEST_USER" >/dev/null 2>&1; then
  useradd -m -s /bin/bash "$TEST_USER"
fi
grep -q "^$TEST_USER:" /etc/subuid || usermod --add-subuids 200000-265535 --add-subgids 200000-265535 "$TEST_USER"
# a second unprivileged account: the attacker in tests/test_hostile_attacks.py (no subuids: never runs podman)
ATTACK_USER=${FLAKE_ATTACK_USER:-flakeattk}
id "$ATTACK_USER" >/dev/null 2>&1 || useradd -M -d /nonexistent -s /usr/sbin/nologin "$ATTACK_USER"
[ -c /dev/net/tun ] && chmod 0666 /dev/net/tun
# the test user must be able to reach the checkout (traverse only)
d=$(cd "$(dirname "$0")/.." && pwd)
while [ "$d" != / ]; do
  perm=$(stat -c %A "$d"); [ "${perm:9:1}" = x ] || [ "${perm:9:1}" = t ] || chmod o+x "$d"
  d=$(dirname "$d")
done
echo "setup-host: ready ($(podman --version), state in $STATE)"
