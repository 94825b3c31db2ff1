#!/usr/bin/env bash
# Build the test guest from Debian packages only, cached in $FLAKE_GUEST_DIR
# (default /var/tmp/flake-pilot/guest); each artefact is rebuilt only when missing:
#   vmlinuz            Debian cloud kernel (bzImage, for QEMU -kernel)
#   vmlinux            the same kernel as an ELF (for Firecracker)
#   initrd.cpio.gz     static busybox; loads virtio/virtio_mmio/virtio_blk/virtio_console/vsock/overlay/
#                      virtio_net modules, mounts root=/dev/vda read-only (rw with `rw`), switch_root to init=
#                      (default /usr/sbin/sci)
#   rootfs.ext4        debootstrap minbase + python3-minimal, /overlayroot, and sci at /usr/sbin/sci
#                      (sci is rewritten with debugfs whenever the zipapp built from this checkout changes)
# Usage (root): scripts/build-guest.sh          prints the guest dir on success
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
G=${FLAKE_GUEST_DIR:-${FLAKE_STATE:-/var/tmp/flake-pilot}/guest}
PY=${PYTHON:-python3}
mkdir -p "$G/dl"
exec 9>"$G/.lock"; flock 9  # one builder at a time
log() { echo "build-guest: $*" >&2; }
[ "$(id -u)" = 0 ] || { log "run as root (debootstrap, device nodes)"; exit 1; }
for tool in apt-get dpkg-deb cpio gzip lz4 mkfs.ext4 debugfs; do
  command -v "$tool" >/dev/null || { log "$tool missing: run scripts/setup-host.sh --test"; exit 1; }
done

fetch() {  # fetch PKG -> path of its .deb in $G/dl
  local debs
  debs=("$G/dl/$1"_*.deb)
  if [ ! -e "${debs[0]}" ]; then
    (cd "$G/dl" && apt-get download "$1" >/dev/null 2>&1) || { log "apt-get download $1 failed"; exit 1; }
    debs=("$G/dl/$1"_*.deb)
  fi
  echo "${debs[0]}"
}

KPKG=$(apt-cache depends linux-image-cloud-amd64 | awk '/Depends: linux-image-[0-9]/{print $2; exit}')
[ -n "$KPKG" ] || { log "cannot resolve linux-image-cloud-amd64 (apt-get update?)"; exit 1; }
KVER=${KPKG#linux-image-}
K=$G/kernel-$KVER

if [ ! -s "$G/vmlinuz" ] || [ ! -d "$K/lib/modules" ]; then
  log "kernel $KPKG"
  rm -rf "$K"; dpkg-deb -x "$(fetch "$KPKG")" "$K"
  cp "$K/boot/vmlinuz-$KVER" "$G/vmlinuz.tmp" && mv "$G/vmlinuz.tmp" "$G/vmlinuz"
  cp "$K/boot/config-$KVER" "$G/kernel.config"
fi

if [ ! -s "$G/vmlinux" ]; then
  log "vmlinux (ELF) from the lz4 payload"
  pos=$(LC_ALL=C grep -abo "$(printf '\002!L\030')" "$G/vmlinuz" | head -1 | cut -d: -f1)
  tail -c +$((pos + 1)) "$G/vmlinuz" | lz4 -dc > "$G/vmlinux.tmp" 2>/dev/null || true
  [ "$(head -c4 "$G/vmlinux.tmp" | od -An -c | tr -d ' ')" = "177ELF" ] || { log "vmlinux extraction failed"; exit 1; }
  mv "$G/vmlinux.tmp" "$G/vmlinux"
fi

INIT_SCRIPT=$(cat <<'EOF'
#!/bin/busybox sh
# flake-pilot test initrd: modules, read-only root from /dev/vda, switch_root to init= (default sci)
B=/bin/busybox
die() { echo "initrd: $*"; echo 1 > /proc/sys/kernel/sysrq; echo o > /proc/sysrq-trigger; $B sleep 3; echo b > /proc/sysrq-trigger; }
$B mount -t devtmpfs dev /dev; $B mount -t proc proc /proc; $B mount -t sysfs sys /sys
for m in virtio_ring virtio virtio_mmio virtio_blk virtio_console vsock vmw_vsock_virtio_transport_common \
         vmw_vsock_virtio_transport overlay failover net_failover virtio_net; do
  $B insmod /lib/modules/$m.ko 2>/dev/null || echo "initrd: insmod $m failed"
done
INIT=/usr/sbin/sci; ROOT=/dev/vda; MODE=ro
for a in $($B cat /proc/cmdline); do
  case $a in init=*) INIT=${a#init=};; root=/dev/*) ROOT=${a#root=};; rw) MODE=rw;; esac
done
i=0; while [ ! -b $ROOT ] && [ $i -lt 500 ]; do $B usleep 10000; i=$((i+1)); done
$B mount -t ext4 -o $MODE $ROOT /newroot || die "cannot mount $ROOT"
# hand /dev, /proc and /sys over: init does not have to mount them again
$B mount --move /dev /newroot/dev; $B mount --move /proc /newroot/proc; $B mount --move /sys /newroot/sys
exec $B switch_root /newroot $INIT "$@"
EOF
)
if [ ! -s "$G/initrd.cpio.gz" ] || [ ! -c "$G/initrd.d/dev/console" ] \
   || [ "$(cat "$G/initrd.d/init" 2>/dev/null)" != "$INIT_SCRIPT" ]; then
  log "initrd"
  I=$G/initrd.d; rm -rf "$I" "$G/bbx"; mkdir -p "$I"/{bin,dev,proc,sys,newroot,lib/modules}
  dpkg-deb -x "$(fetch busybox-static)" "$G/bbx"; cp "$G/bbx/bin/busybox" "$I/bin/"
  M=$K/lib/modules/$KVER/kernel
  MODS="drivers/virtio/virtio_ring drivers/virtio/virtio drivers/virtio/virtio_mmio drivers/block/virtio_blk
        drivers/char/virtio_console net/vmw_vsock/vsock net/vmw_vsock/vmw_vsock_virtio_transport_common
        net/vmw_vsock/vmw_vsock_virtio_transport fs/overlayfs/overlay net/core/failover drivers/net/net_failover
        drivers/net/virtio_net"
  for m in $MODS; do
    f=$(find "$M/$(dirname "$m")" -maxdepth 1 -name "$(basename "$m").ko*" | head -1)
    case $f in *.xz) xz -dc "$f" > "$I/lib/modules/$(basename "$m").ko";; *) cp "$f" "$I/lib/modules/";; esac
  done
  mknod -m 600 "$I/dev/console" c 5 1  # the kernel opens it as fd 0/1/2 of /init (and so of sci)
  printf '%s\n' "$INIT_SCRIPT" > "$I/init"
  chmod +x "$I/init"
  (cd "$I" && find . | cpio -o -H newc 2>/dev/null | gzip -1 > "$G/initrd.cpio.gz.tmp")
  mv "$G/initrd.cpio.gz.tmp" "$G/initrd.cpio.gz"
fi

if [ ! -s "$G/rootfs-base.ext4" ]; then
  log "rootfs: debootstrap minbase + python3-minimal (about 40 s)"
  if command -v debootstrap >/dev/null; then DBS=(debootstrap); else
    rm -rf "$G/dbs"; dpkg-deb -x "$(fetch debootstrap)" "$G/dbs"
    export DEBOOTSTRAP_DIR=$G/dbs/usr/share/debootstrap; DBS=("$G/dbs/usr/sbin/debootstrap")
  fi
  MIRROR=$(awk '/^URIs:/{print $2; exit} /^deb /{print $2; exit}' /etc/apt/sources.list.d/*.sources /etc/apt/sources.list 2>/dev/null || true)
  R=$G/rootfs.d; rm -rf "$R"
  "${DBS[@]}" --variant=minbase --include=python3-minimal bookworm "$R" "${MIRROR:-http://deb.debian.org/debian}" \
    > "$G/debootstrap.log" 2>&1 || { tail -5 "$G/debootstrap.log" >&2; exit 1; }
  rm -rf "$R"/var/cache/apt/archives/*.deb "$R"/var/lib/apt/lists/*
  mkdir -p "$R/overlayroot" "$R/mnt"
  truncate -s 400M "$G/rootfs-base.ext4.tmp"; mkfs.ext4 -q -F -L flake-guest -d "$R" "$G/rootfs-base.ext4.tmp"
  mv "$G/rootfs-base.ext4.tmp" "$G/rootfs-base.ext4"; rm -rf "$R"
fi

# sci from this checkout: rewrite it into the image only when the zipapp changed
PYTHONPATH=$REPO/src "$PY" -m flake_pilot.sci.bundle "$G/sci.pyz" >/dev/null
SUM=$(sha256sum "$G/sci.pyz" | cut -d' ' -f1)
if [ ! -s "$G/rootfs.ext4" ] || [ "$(cat "$G/rootfs.sci.sha256" 2>/dev/null)" != "$SUM" ]; then
  log "rootfs.ext4 with sci $SUM"
  cp --sparse=always "$G/rootfs-base.ext4" "$G/rootfs.ext4.tmp"
  debugfs -w -R "write $G/sci.pyz /usr/sbin/sci" "$G/rootfs.ext4.tmp" >/dev/null 2>&1
  debugfs -w -R "sif /usr/sbin/sci mode 0100755" "$G/rootfs.ext4.tmp" >/dev/null 2>&1
  debugfs -R "stat /usr/sbin/sci" "$G/rootfs.ext4.tmp" 2>/dev/null | grep -q "Mode:  0755" \
    || { log "installing sci into the rootfs failed"; exit 1; }
  mv "$G/rootfs.ext4.tmp" "$G/rootfs.ext4"; echo "$SUM" > "$G/rootfs.sci.sha256"
fi
echo "$G"
