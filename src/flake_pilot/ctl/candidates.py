"""The hidden ``flake-ctl __complete KIND`` helper the completion scripts call for option values.

Registered app paths (``apps``), VM image names (``vms``) and container image names
(``containers``) of both scopes, one per line; it never fails loudly (a completion must not).
"""

from __future__ import annotations

import os

KINDS = ("apps", "vms", "containers")


def candidates(kind: str) -> list[str]:
    """Registered app paths, VM image names or container image names; never raises."""
    try:
        if kind == "apps":
            return _apps()
        if kind == "vms":
            return _vms()
        if kind == "containers":
            return _containers()
    except Exception:  # noqa: BLE001 - completion must never fail loudly
        return []
    return []


def _scopes() -> list[object]:
    from .. import settings

    scopes: list[object] = []
    for user_mode in (False, True):
        try:
            scopes.append(settings.load(user_mode))
        except Exception:  # noqa: BLE001
            continue
    return scopes


def _apps() -> list[str]:
    from ..flakeconf import parse

    found: set[str] = set()
    for cfg in _scopes():
        flakes_dir = getattr(cfg, "flakes_dir", "")
        try:
            names = sorted(os.listdir(flakes_dir))
        except OSError:
            continue
        for name in names:
            if not name.endswith(".yaml"):
                continue
            app = name[: -len(".yaml")]
            try:
                flake = parse(app, os.path.join(flakes_dir, name))
            except Exception:  # noqa: BLE001
                continue
            found.add(flake.host_app_path or app)
    return sorted(found)


def _vms() -> list[str]:
    found: set[str] = set()
    for cfg in _scopes():
        images = os.path.join(getattr(cfg, "firecracker_registry_dir", ""), "images")
        try:
            found.update(n for n in os.listdir(images) if os.path.isdir(os.path.join(images, n)))
        except OSError:
            continue
    return sorted(found)


def _containers() -> list[str]:
    from ..launch import runner

    found: set[str] = set()
    for cfg in _scopes():
        env = {}
        storage = getattr(cfg, "podman_storage_conf", None)
        if storage:
            if not os.path.exists(storage):
                continue
            env["CONTAINERS_STORAGE_CONF"] = storage
        proc = runner.run(
            [getattr(cfg, "podman_binary", "podman"), "images", "--format", "{{.Repository}}:{{.Tag}}"],
            env=env,
            check=False,
            timeout=10,
        )
        if proc.returncode == 0:
            found.update(ln for ln in proc.stdout.decode().split() if ln and "<none>" not in ln)
    return sorted(found)


def complete_main(argv: list[str]) -> int:
    """``flake-ctl __complete KIND``: one candidate per line on stdout; always exit 0."""
    if len(argv) == 1 and argv[0] in KINDS:
        for item in candidates(argv[0]):
            print(item)
    return 0
