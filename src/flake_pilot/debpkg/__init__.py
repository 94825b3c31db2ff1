"""Flakes as Debian packages: ``flake-ctl podman|firecracker build-deb`` and the package scripts.

``control``: names, versions, the control file and maintainer scripts; ``image``: the podman image
archive (a sorted, timestamp-free OCI archive); ``build``: the package tree and ``dpkg-deb``;
``repo``: a flat apt repository; ``hooks``: what the installed package's scripts run
(``flake-ctl ENGINE deb-hook``).
"""

# Where a package keeps its manifest and image: <PACKAGES_DIR>/<package>/
PACKAGES_DIR = "/usr/share/flake-pilot/packages"
MANIFEST = "manifest.yaml"
# podman images a package owns are named <IMAGE_REPO>/<package>:<image id, 12 hex>
IMAGE_REPO = "localhost/flake-deb"
FLAKE_CTL = "/usr/bin/flake-ctl"
LAUNCHER_DIR = "/usr/bin"
