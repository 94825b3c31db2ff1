"""Delta containers: compose base + layers + app image + includes into a cached image."""

from __future__ import annotations

from ..flakeconf import PodmanFlake
from ..errors import FlakeError


def needs_compose(flake: PodmanFlake) -> bool:
    return bool(flake.base_container or flake.check_host_dependencies or flake.include.tar or flake.include.path)


def ensure_image(flake: PodmanFlake, podman_argv: list[str], env: dict[str, str]) -> str:
    """Return the image reference to run for *flake*, composing (and caching) it if needed.

    podman_argv: the engine prefix to use (e.g. ["/usr/bin/podman"]); env: the environment for
    engine calls (CONTAINERS_STORAGE_CONF etc.).
    """
    raise FlakeError(f"{flake.config_file}: delta containers and includes are not implemented yet")
