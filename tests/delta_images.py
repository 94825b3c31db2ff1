"""The delta-container test images (base, two layers, app; built once in the shared test storage),
the host files they need, and registrations of them: shared by the delta tests."""

from __future__ import annotations

from pathlib import Path

from conftest import STATE, busybox_rootfs_tar, import_image, podman

TAG = "v1"
BASE = f"localhost/flake-test/delta-base:{TAG}"
L1 = f"localhost/flake-test/delta-l1:{TAG}"
L2 = f"localhost/flake-test/delta-l2:{TAG}"
APP = f"localhost/flake-test/delta-app:{TAG}"
HOSTDIR = STATE / "delta-host"


def write_host_files() -> None:
    """Idempotent: never touches an existing file (its ctime is part of the cache key check)."""
    HOSTDIR.mkdir(parents=True, exist_ok=True)
    if HOSTDIR.stat().st_mode & 0o777 != 0o755:
        HOSTDIR.chmod(0o755)
    for name, mode in (("host-a.txt", 0o644), ("host-b.txt", 0o644), ("secret.txt", 0o600)):
        path = HOSTDIR / name
        if not path.exists():
            path.write_text(f"{name} from the host\n")
        if path.stat().st_mode & 0o777 != mode:
            path.chmod(mode)


def build(tag: str, containerfile: str, files: dict[str, str], storage: Path | None, ctx: Path) -> None:
    ctx.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (ctx / name).write_text(text)
    (ctx / "Containerfile").write_text(containerfile)
    podman("build", "-q", "--pull=never", "-t", tag, str(ctx), storage=storage)


def build_images(storage: Path, work: Path) -> None:
    """base (with /removed), layer 1 (deletes a base file), layer 2 (ships /systemfiles), app."""
    write_host_files()
    if all(podman("image", "exists", i, storage=storage, check=False).returncode == 0 for i in (BASE, L1, L2, APP)):
        return
    import_image(
        BASE,
        busybox_rootfs_tar(
            {
                "opt/base.txt": b"base\n",
                "opt/order.txt": b"base\n",
                "opt/gone.txt": b"base\n",
                "removed": f"# host files this delta needs\n{HOSTDIR}/host-a.txt\n".encode(),
            }
        ),
        storage,
    )
    build(
        L1,
        f"FROM {BASE}\nCOPY order /opt/order.txt\nCOPY l1 /opt/l1.txt\nRUN rm /opt/gone.txt\n",
        {"order": "layer1\n", "l1": "l1\n"},
        storage,
        work / "l1",
    )
    build(
        L2,
        f"FROM {BASE}\nCOPY order /opt/order.txt\nCOPY l2 /opt/l2.txt\nCOPY over /opt/over.txt\n"
        "COPY systemfiles /systemfiles\n",
        {
            "order": "layer2\n",
            "l2": "l2\n",
            "over": "layer2\n",
            "systemfiles": f"echo {HOSTDIR}/host-b.txt\n",
        },
        storage,
        work / "l2",
    )
    build(
        APP,
        f"FROM {BASE}\nCOPY app /opt/app.txt\nCOPY over /opt/over.txt\nCOPY hello /usr/bin/hello\n"
        "RUN chmod 755 /usr/bin/hello\n",
        {"app": "app\n", "over": "app\n", "hello": '#!/bin/sh\necho "hello $*"\necho err >&2\nexit 3\n'},
        storage,
        work / "app",
    )


def registration(flakes_dir: Path, app: str, **container: object) -> Path:
    import yaml

    path = flakes_dir / f"{app}.yaml"
    include = container.pop("include", {"tar": None, "path": None})
    data = {
        "include": include,
        "container": {
            "name": APP,
            "target_app_path": "/usr/bin/hello",
            "runtime": {"runas": "root"},
            **container,
        },
    }
    flakes_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data))
    return path
