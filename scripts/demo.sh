#!/usr/bin/env bash
# `make demo`: build a tiny local image, register it as a flake in a private prefix (never
# /usr/bin or /etc), launch it and show what it does. Usage: scripts/demo.sh VENV
set -euo pipefail
VENV=${1:-$(cd "$(dirname "$0")/.." && pwd)/.venv}
STATE=${FLAKE_STATE:-/var/tmp/flake-pilot}
DEMO=$STATE/demo
IMAGE=localhost/flake-demo/hello:latest

export CONTAINERS_CONF=$STATE/podman/containers.conf
export FLAKES_CONFIG=$DEMO/flakes.yml
mkdir -p "$DEMO/bin" "$DEMO/flakes" "$DEMO/storage"
cat > "$DEMO/storage/storage.conf" <<CONF
[storage]
driver = "overlay"
graphroot = "$DEMO/storage/graph"
runroot = "$DEMO/storage/run"
CONF
cat > "$FLAKES_CONFIG" <<CONF
generic:
  flakes_dir: $DEMO/flakes
  podman_ids_dir: $DEMO/ids
  firecracker_ids_dir: $DEMO/ids
  podman_storage_conf: $DEMO/storage/storage.conf
  firecracker_registry_dir: $DEMO/firecracker
CONF
export CONTAINERS_STORAGE_CONF=$DEMO/storage/storage.conf

echo "== building $IMAGE from Debian's static busybox"
W=$(mktemp -d); trap 'rm -rf "$W"' EXIT
R=$W/rootfs
mkdir -p "$R"/{bin,usr/bin,etc,root,tmp,proc,sys,dev}
cp /bin/busybox "$R/bin/busybox"
for a in $(/bin/busybox --list); do [ "$a" = busybox ] || ln -s busybox "$R/bin/$a"; done
printf 'root:x:0:0:root:/root:/bin/sh\n' > "$R/etc/passwd"
cat > "$R/usr/bin/hello" <<'APP'
#!/bin/sh
echo "hello from inside the container ($(uname -s) $(hostname)), args: $*"
echo "this line goes to stderr" >&2
if [ ! -t 0 ]; then echo "stdin said: $(cat)"; fi
exit 3
APP
chmod 755 "$R/usr/bin/hello"
tar --numeric-owner --owner=0 --group=0 -C "$R" -cf "$W/rootfs.tar" .
podman import -q --change 'CMD ["/bin/sh"]' --change 'ENV PATH=/usr/sbin:/usr/bin:/sbin:/bin' "$W/rootfs.tar" "$IMAGE" >/dev/null

echo "== registering the flake $DEMO/bin/hello"
"$VENV/bin/flake-ctl" podman register --container "$IMAGE" --app "$DEMO/bin/hello" --target /usr/bin/hello --force
"$VENV/bin/flake-ctl" list

echo "== running: echo 'piped input' | $DEMO/bin/hello one 'two words'"
set +e
echo 'piped input' | "$DEMO/bin/hello" one 'two words' 2>"$W/stderr"
rc=$?
set -e
echo "   stderr was: $(cat "$W/stderr")"
echo "   exit status: $rc (the app's own status)"
[ "$rc" = 3 ] || { echo "demo: expected exit status 3 from the app, got $rc" >&2; exit 1; }
echo "== demo done. Try it yourself:"
echo "   export FLAKES_CONFIG=$FLAKES_CONFIG CONTAINERS_CONF=$CONTAINERS_CONF; $DEMO/bin/hello hi"
