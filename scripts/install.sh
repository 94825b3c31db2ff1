#!/usr/bin/env bash
# Build, install and uninstall flake-pilot like a distribution package (make build/install/uninstall):
#   scripts/install.sh build STAGE PREFIX SYSCONFDIR             everything `install` puts in place, into STAGE
#   scripts/install.sh install STAGE DESTDIR PREFIX SYSCONFDIR   put a STAGE built for PREFIX/SYSCONFDIR in place
#   scripts/install.sh uninstall DESTDIR PREFIX                  remove what `install` put in place
#   scripts/install.sh DESTDIR PREFIX SYSCONFDIR                 build (in a temp dir) and install, e.g. "" /usr /etc
# What is installed:
# - the Python package into PREFIX/lib/flake-pilot (private dir, pip --target, no dependencies:
#   PyYAML comes from the system, Debian: python3-yaml),
# - one launcher per console script of pyproject.toml into PREFIX/bin (scripts/write-launchers),
# - man pages and bash/zsh/fish completion under PREFIX/share,
# - SYSCONFDIR/flakes.yml and SYSCONFDIR/flakes/{container-flake.yaml,firecracker-flake.yaml,storage.conf};
#   an existing configuration file that differs is kept (the new one is written next to it as *.new).
# Every file and every directory it creates is listed in PREFIX/lib/flake-pilot/.installed-files;
# uninstall removes exactly those (a configuration file only while it is as installed, a
# directory only when empty). DESTDIR is prepended to every path written (staging); PYTHON
# selects the interpreter.
set -euo pipefail
PYTHON=${PYTHON:-/usr/bin/python3}
SRC=$(cd "$(dirname "$0")/.." && pwd)
MANIFEST_NAME=.installed-files

usage() {
  sed -n '3,6s/^#   /usage: /p' "$0" >&2
  exit 2
}
absolute() {  # NAME VALUE
  case "$2" in /*) ;; *) echo "install.sh: $1 must be absolute: $2" >&2; exit 2 ;; esac
}

build() {  # STAGE PREFIX SYSCONFDIR
  local stage=$1 prefix=$2 sysconfdir=$3 libdir=$2/lib/flake-pilot work
  "$PYTHON" -c 'import yaml' 2>/dev/null \
    || echo "install.sh: warning: $PYTHON has no PyYAML (Debian: apt-get install python3-yaml)" >&2
  work=$(mktemp -d)
  # shellcheck disable=SC2064  # expand now: $work is local
  trap "rm -rf '$work'" EXIT
  rm -rf "$stage"
  mkdir -p "$stage/etc/flakes" "$stage/completion"
  # the package, built from a copy so the checkout gets no build/ or egg-info
  mkdir -p "$work/src"
  cp -r "$SRC/pyproject.toml" "$SRC/README.md" "$SRC/src" "$work/src/"
  find "$work/src" \( -name __pycache__ -o -name '*.egg-info' \) -prune -exec rm -rf {} +
  "$PYTHON" -m pip install -q --no-deps --no-build-isolation --no-compile --disable-pip-version-check \
    --target "$stage/lib" "$work/src" 2>&1 | grep -v "Running pip as the 'root' user" >&2 || true
  [ -f "$stage/lib/flake_pilot/__init__.py" ] || { echo "install.sh: building the package failed" >&2; exit 1; }
  rm -rf "$stage/lib/bin"
  "$PYTHON" -m compileall -q -d "$libdir" "$stage/lib" >/dev/null
  "$PYTHON" "$SRC/scripts/write-launchers" "$PYTHON" "$libdir" "$stage/bin"
  # configuration: /etc paths in the shipped files follow SYSCONFDIR
  for f in flakes.yml flakes/storage.conf flakes/container-flake.yaml flakes/firecracker-flake.yaml; do
    sed "s|/etc/flakes/|$sysconfdir/flakes/|g" "$SRC/src/flake_pilot/data/$(basename "$f")" > "$stage/etc/$f"
  done
  # man pages (flake_pilot.ctl.manpages: the package and the reference in docs/) and shell completion
  "$PYTHON" -I -c 'import sys; sys.path.insert(0, sys.argv[1]); from flake_pilot.ctl import manpages; manpages.write(sys.argv[2], docs_dir=sys.argv[3])' \
    "$stage/lib" "$stage/man" "$SRC/docs" >/dev/null
  for sh in bash zsh fish; do
    "$PYTHON" -I -c 'import sys; sys.path.insert(0, sys.argv[1]); from flake_pilot.ctl import completion; sys.exit(completion.main(sys.argv[2:]))' \
      "$stage/lib" "$sh" "$stage/completion/flake-ctl.$sh"
  done
  printf '%s\n%s\n%s\n' "$prefix" "$sysconfdir" "$PYTHON" > "$stage/built-for"
}

# -- install: every path put in place is recorded (without DESTDIR) in $MANIFEST --------------------
D='' MANIFEST=''
record() { printf '%s\n' "$*" >> "$MANIFEST"; }
mkdirs() {  # DIR: create it and its missing parents, recording each one created
  if [ -d "$D$1" ] || [ "$1" = / ]; then return; fi
  mkdirs "$(dirname "$1")"
  install -d -m 755 "$D$1"
  record "d $1"
}
put() {  # FILE MODE DEST
  mkdirs "$(dirname "$3")"
  install -m "$2" "$1" "$D$3"
  record "f $3"
}
conf() {  # FILE DEST KEEP: KEEP=1 for configuration (a changed one is kept, the new one goes to DEST.new)
  mkdirs "$(dirname "$2")"
  if [ "$3" = 1 ] && [ -e "$D$2" ] && ! cmp -s "$1" "$D$2"; then
    install -m 644 "$1" "$D$2.new"
    record "f $2.new"
    echo "install.sh: kept $D$2, new version in $D$2.new" >&2
  else
    install -m 644 "$1" "$D$2"
    record "c $(sha256sum < "$1" | cut -d' ' -f1) $2"
  fi
}

has_conf() {  # PATH: the new manifest lists PATH as configuration
  local kind sum path
  while read -r kind sum path; do
    if [ "$kind" = c ] && [ "$path" = "$1" ]; then return 0; fi
  done < "$MANIFEST"
  return 1
}

install_stage() {  # STAGE DESTDIR PREFIX SYSCONFDIR
  local stage=$1 prefix=$3 sysconfdir=$4 libdir=$3/lib/flake-pilot work old page sh
  D=$2
  [ -f "$stage/built-for" ] || { echo "install.sh: $stage is not built (make build)" >&2; exit 2; }
  if [ "$(printf '%s\n%s\n%s\n' "$prefix" "$sysconfdir" "$PYTHON")" != "$(cat "$stage/built-for")" ]; then
    echo "install.sh: $stage was built for another PREFIX, SYSCONFDIR or PYTHON: $(tr '\n' ' ' < "$stage/built-for")" >&2
    exit 2
  fi
  work=$(mktemp -d)
  # shellcheck disable=SC2064  # expand now: $work is local
  trap "rm -rf '$work'" EXIT
  MANIFEST=$work/manifest
  : > "$MANIFEST"
  [ -z "$D" ] || mkdir -p "$D"
  old=$work/old-manifest
  if [ -f "$D$libdir/$MANIFEST_NAME" ]; then cp "$D$libdir/$MANIFEST_NAME" "$old"; else : > "$old"; fi

  # the private lib dir is replaced as a whole (a new version never mixes with an old one)
  mkdirs "$prefix/lib"
  rm -rf "$D$libdir.new" "$D$libdir.old"
  cp -r "$stage/lib" "$D$libdir.new"
  chmod -R u=rwX,go=rX "$D$libdir.new"
  if [ -d "$D$libdir" ]; then mv "$D$libdir" "$D$libdir.old"; fi
  mv "$D$libdir.new" "$D$libdir"
  rm -rf "$D$libdir.old"
  record "t $libdir"

  for f in "$stage"/bin/*; do put "$f" 755 "$prefix/bin/$(basename "$f")"; done
  conf "$stage/etc/flakes.yml" "$sysconfdir/flakes.yml" 1
  conf "$stage/etc/flakes/storage.conf" "$sysconfdir/flakes/storage.conf" 1
  conf "$stage/etc/flakes/container-flake.yaml" "$sysconfdir/flakes/container-flake.yaml" 0
  conf "$stage/etc/flakes/firecracker-flake.yaml" "$sysconfdir/flakes/firecracker-flake.yaml" 0
  for page in "$stage"/man/*.[58]; do put "$page" 644 "$prefix/share/man/man${page##*.}/$(basename "$page")"; done
  put "$stage/completion/flake-ctl.bash" 644 "$prefix/share/bash-completion/completions/flake-ctl"
  put "$stage/completion/flake-ctl.zsh" 644 "$prefix/share/zsh/vendor-completions/_flake-ctl"
  put "$stage/completion/flake-ctl.fish" 644 "$prefix/share/fish/vendor_completions.d/flake-ctl.fish"

  # an earlier install's directories and configuration stay ours; its files this one no longer ships go
  while read -r kind rest; do
    case "$kind" in
      d) grep -qxF "d $rest" "$MANIFEST" || record "d $rest" ;;
      c) has_conf "${rest#* }" || record "c $rest" ;;
      f) grep -qxF "f $rest" "$MANIFEST" || rm -f "$D$rest" ;;
    esac
  done < "$old"
  install -m 644 "$MANIFEST" "$D$libdir/$MANIFEST_NAME"
  echo "installed flake-pilot into $D$prefix (programs in $prefix/bin, config in $sysconfdir)"
}

uninstall() {  # DESTDIR PREFIX
  local libdir=$2/lib/flake-pilot kind rest sum path tree=''
  D=$1
  [ -f "$D$libdir/$MANIFEST_NAME" ] || { echo "install.sh: flake-pilot is not installed in $D$2 (no $D$libdir/$MANIFEST_NAME)" >&2; exit 4; }
  local entries
  entries=$(cat "$D$libdir/$MANIFEST_NAME")
  while read -r kind rest; do
    case "$kind" in
      f) rm -f "$D$rest" ;;
      c) sum=${rest%% *} path=${rest#* }
         if [ -f "$D$path" ] && [ "$(sha256sum < "$D$path" | cut -d' ' -f1)" != "$sum" ]; then
           echo "install.sh: kept $D$path (changed since it was installed)" >&2
         else
           rm -f "$D$path"
         fi ;;
      t) tree=$rest ;;
    esac
  done <<< "$entries"
  case "$tree" in */lib/flake-pilot) rm -rf "$D$tree" ;; esac
  # directories install created, deepest first, where empty
  grep '^d ' <<< "$entries" | cut -c3- | sort -r | while read -r path; do
    rmdir "$D$path" 2>/dev/null || true
  done
  echo "uninstalled flake-pilot from $D$2"
}

case "${1:-}" in
  build) [ $# -eq 4 ] || usage; absolute PREFIX "$3"; absolute SYSCONFDIR "$4"; build "$2" "$3" "$4" ;;
  install) [ $# -eq 5 ] || usage; absolute PREFIX "$4"; absolute SYSCONFDIR "$5"; install_stage "$2" "$3" "$4" "$5" ;;
  uninstall) [ $# -eq 3 ] || usage; absolute PREFIX "$3"; uninstall "$2" "$3" ;;
  *)
    [ $# -eq 3 ] || usage
    absolute PREFIX "$2"; absolute SYSCONFDIR "$3"
    STAGE=$(mktemp -d)
    # shellcheck disable=SC2064  # expand now
    trap "rm -rf '$STAGE'" EXIT
    (build "$STAGE/stage" "$2" "$3")
    (install_stage "$STAGE/stage" "$1" "$2" "$3")
    ;;
esac
