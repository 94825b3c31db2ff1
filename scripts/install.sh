#!/usr/bin/env bash
# Install flake-pilot like a distribution package (called by `make install`):
#   scripts/install.sh DESTDIR PREFIX SYSCONFDIR        e.g.  "" /usr /etc
# - the Python package into PREFIX/lib/flake-pilot (private dir, pip --target, no dependencies:
#   PyYAML comes from the system, Debian: python3-yaml),
# - one launcher per console script of pyproject.toml into PREFIX/bin (#!PYTHON -I; the app
#   launchers podman-pilot and firecracker-pilot #!PYTHON -IS),
# - SYSCONFDIR/flakes.yml and SYSCONFDIR/flakes/{container-flake.yaml,firecracker-flake.yaml,storage.conf};
#   existing configuration files are kept (the new one is written next to it as *.new).
# DESTDIR is prepended to every path written (staging); PYTHON selects the interpreter.
set -euo pipefail
[ $# -eq 3 ] || { echo "usage: install.sh DESTDIR PREFIX SYSCONFDIR" >&2; exit 2; }
DESTDIR=$1 PREFIX=$2 SYSCONFDIR=$3
PYTHON=${PYTHON:-/usr/bin/python3}
case "$PREFIX" in /*) ;; *) echo "install.sh: PREFIX must be absolute: $PREFIX" >&2; exit 2 ;; esac
case "$SYSCONFDIR" in /*) ;; *) echo "install.sh: SYSCONFDIR must be absolute: $SYSCONFDIR" >&2; exit 2 ;; esac
SRC=$(cd "$(dirname "$0")/.." && pwd)
DATA=$SRC/src/flake_pilot/data
LIBDIR=$PREFIX/lib/flake-pilot
"$PYTHON" -c 'import yaml' 2>/dev/null || echo "install.sh: warning: $PYTHON has no PyYAML (Debian: apt-get install python3-yaml)" >&2

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
# build from a copy so the checkout gets no build/ or egg-info
mkdir -p "$WORK/src"
cp -r "$SRC/pyproject.toml" "$SRC/README.md" "$WORK/src/"
cp -r "$SRC/src" "$WORK/src/src"
find "$WORK/src" \( -name __pycache__ -o -name '*.egg-info' \) -prune -exec rm -rf {} +
"$PYTHON" -m pip install -q --no-deps --no-build-isolation --no-compile --disable-pip-version-check \
  --target "$WORK/lib" "$WORK/src" 2>&1 | grep -v "Running pip as the 'root' user" >&2 || true
[ -f "$WORK/lib/flake_pilot/__init__.py" ] || { echo "install.sh: building the package failed" >&2; exit 1; }
rm -rf "$WORK/lib/bin"
"$PYTHON" -m compileall -q -d "$LIBDIR" "$WORK/lib" >/dev/null

# replace the private lib dir as a whole (a new version never mixes with an old one)
install -d -m 755 "$DESTDIR$PREFIX/lib" "$DESTDIR$PREFIX/bin"
rm -rf "$DESTDIR$LIBDIR.new"
cp -r "$WORK/lib" "$DESTDIR$LIBDIR.new"
chmod -R u=rwX,go=rX "$DESTDIR$LIBDIR.new"
rm -rf "$DESTDIR$LIBDIR.old"
[ -d "$DESTDIR$LIBDIR" ] && mv "$DESTDIR$LIBDIR" "$DESTDIR$LIBDIR.old"
mv "$DESTDIR$LIBDIR.new" "$DESTDIR$LIBDIR"
rm -rf "$DESTDIR$LIBDIR.old"

# launchers from [project.scripts]: name = "module:function"
"$PYTHON" - "$SRC/pyproject.toml" <<'PY' > "$WORK/scripts"
import sys, tomllib
with open(sys.argv[1], "rb") as f:
    for name, target in tomllib.load(f)["project"]["scripts"].items():
        print(name, target)
PY
# The launchers (podman-pilot, firecracker-pilot) start as `-IS`: no `site` (~5 ms of every
# launch); a warm launch needs the stdlib only, and a cold one (YAML to parse) runs site.main()
# itself to find PyYAML (flake_pilot.yamlio). One shebang argument: Linux passes "-I -S" as one.
while read -r name target; do
  module=${target%%:*} func=${target##*:}
  case "$name" in podman-pilot|firecracker-pilot) flags=-IS ;; *) flags=-I ;; esac
  cat > "$WORK/$name" <<EOF
#!$PYTHON $flags
import sys
sys.path.insert(0, "$LIBDIR")
from $module import $func
sys.exit($func())
EOF
  install -m 755 "$WORK/$name" "$DESTDIR$PREFIX/bin/$name"
done < "$WORK/scripts"

# configuration: /etc paths in the shipped files follow SYSCONFDIR
conf() {  # $1 = data file, $2 = destination, $3 = keep (1: configuration, never overwritten)
  sed "s|/etc/flakes/|$SYSCONFDIR/flakes/|g" "$DATA/$1" > "$WORK/conf"
  if [ "$3" = 1 ] && [ -e "$2" ] && ! cmp -s "$WORK/conf" "$2"; then
    install -m 644 "$WORK/conf" "$2.new"
    echo "install.sh: kept $2, new version in $2.new" >&2
  else
    install -m 644 "$WORK/conf" "$2"
  fi
}
install -d -m 755 "$DESTDIR$SYSCONFDIR/flakes"
conf flakes.yml "$DESTDIR$SYSCONFDIR/flakes.yml" 1
conf storage.conf "$DESTDIR$SYSCONFDIR/flakes/storage.conf" 1
conf container-flake.yaml "$DESTDIR$SYSCONFDIR/flakes/container-flake.yaml" 0
conf firecracker-flake.yaml "$DESTDIR$SYSCONFDIR/flakes/firecracker-flake.yaml" 0

# man pages (flake_pilot.ctl.manpages: the installed package and the reference in docs/) and shell completion
"$PYTHON" -I -c 'import sys; sys.path.insert(0, sys.argv[1]); from flake_pilot.ctl import manpages; manpages.write(sys.argv[2], docs_dir=sys.argv[3])' "$WORK/lib" "$WORK/man" "$SRC/docs" >/dev/null
for page in "$WORK"/man/*.[58]; do
  install -D -m 644 "$page" "$DESTDIR$PREFIX/share/man/man${page##*.}/$(basename "$page")"
done
for sh in bash zsh fish; do
  "$PYTHON" -I -c 'import sys; sys.path.insert(0, sys.argv[1]); from flake_pilot.ctl import completion; sys.exit(completion.main(sys.argv[2:]))' "$WORK/lib" "$sh" "$WORK/completion.$sh"
done
install -D -m 644 "$WORK/completion.bash" "$DESTDIR$PREFIX/share/bash-completion/completions/flake-ctl"
install -D -m 644 "$WORK/completion.zsh" "$DESTDIR$PREFIX/share/zsh/vendor-completions/_flake-ctl"
install -D -m 644 "$WORK/completion.fish" "$DESTDIR$PREFIX/share/fish/vendor_completions.d/flake-ctl.fish"
echo "installed flake-pilot into $DESTDIR$PREFIX (programs in $PREFIX/bin, config in $SYSCONFDIR)"
