"""Delta containers: compose base + layers + app image + includes into a cached image.

Warm launch (the common case) costs no engine call: a per-user sidecar file records the
inputs' image IDs, the composed tag and a cheap signature (lstat fields) of every include and
host file; the IDs are checked against podman's ``images.json``. Anything different, and the
composition is redone under an flock (concurrent first launches compose once), see
``compose_build`` for how.
"""

from __future__ import annotations

import json
import os
import stat

from ..errors import FlakeError, SecurityError
from ..flakeconf import PodmanFlake

FORMAT = 1


class ComposeInterrupted(FlakeError):
    exit_code = 130


def needs_compose(flake: PodmanFlake) -> bool:
    return bool(
        flake.base_container or flake.check_host_dependencies or flake.include.tar or flake.include.path
    )


def ensure_image(
    flake: PodmanFlake,
    podman_argv: list[str],
    env: dict[str, str],
    *,
    ignore_sync_error: bool = False,
    state_dir: str | None = None,
) -> str:
    """Return the image reference to run for *flake*, composing (and caching) it if needed.

    podman_argv: the engine prefix to use (e.g. ["/usr/bin/podman"]); env: the environment for
    engine calls (CONTAINERS_STORAGE_CONF etc.). ignore_sync_error: ``%ignore_sync_error``
    (skip missing or refused host files). state_dir: the caller's private state dir (default:
    ``<podman_ids_dir>/<uid>`` of the flake's scope).
    """
    from .. import debug, names, statedir

    names.app_name(flake.app)
    cdir = _compose_dir(flake, state_dir)
    side_path = os.path.join(cdir, flake.app + ".json")
    fingerprint = _fingerprint(flake, podman_argv, env, ignore_sync_error)
    side = _read_sidecar(side_path)
    if side is not None and _fresh(side, fingerprint, flake, None):
        debug.log(f"compose: cache hit {side['tag']}")
        return str(side["tag"])
    from .compose_build import Engine

    engine = Engine(tuple(podman_argv), dict(env))
    with statedir.locked(os.path.join(cdir, flake.app + ".lock")):
        side = _read_sidecar(side_path)  # another launch may have composed meanwhile
        if side is not None and _fresh(side, fingerprint, flake, engine):
            debug.log(f"compose: cache hit (engine check) {side['tag']}")
            return str(side["tag"])
        return _compose_locked(flake, engine, cdir, side_path, side, fingerprint, ignore_sync_error)


def _compose_dir(flake: PodmanFlake, state_dir: str | None) -> str:
    from .. import settings, statedir

    if state_dir is None:
        system = settings.load(False)
        user = not flake.config_file.startswith(system.flakes_dir.rstrip("/") + "/")
        state_dir = statedir.private_dir((settings.load(True) if user else system).podman_ids_dir)
    path = os.path.join(state_dir, "compose")
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid():
        raise SecurityError(f"{path}: not a directory owned by the caller, refusing to use it")
    return path


def _fingerprint(flake: PodmanFlake, podman: list[str], env: dict[str, str], ignore: bool) -> list[object]:
    engine = [a for a in podman if not a.startswith("--log-level")]  # output only, not the store
    return [FORMAT, engine, env.get("CONTAINERS_STORAGE_CONF", ""), flake.base_container,
            list(flake.layers), flake.image, list(flake.include.tar), list(flake.include.path),
            flake.check_host_dependencies, ignore]


def _watched(flake: PodmanFlake, env: dict[str, str], hostdeps: list[str]) -> list[str]:
    """Files whose change invalidates the cache: includes, host files, storage config."""
    from ..settings import home_dir

    confs = [env["CONTAINERS_STORAGE_CONF"]] if env.get("CONTAINERS_STORAGE_CONF") else [
        "/etc/containers/storage.conf", os.path.join(home_dir(), ".config/containers/storage.conf")]
    return [*flake.include.tar, *flake.include.path, *hostdeps, *confs]


def _read_sidecar(path: str) -> dict[str, object] | None:
    from ..statedir import read_file

    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError:
        read_file(path)  # raises SecurityError for a symlink
        return None
    with os.fdopen(fd, "rb") as handle:
        try:
            data = json.loads(handle.read(1 << 22))
        except ValueError:
            return None
    return data if isinstance(data, dict) else None


def _fresh(side: dict[str, object], fingerprint: list[object], flake: PodmanFlake, engine: object) -> bool:
    """True when the recorded composition still matches every input (engine: Engine or None)."""
    from . import compose_store, compose_tar

    if side.get("fingerprint") != fingerprint:
        return False
    index = compose_store.load(str(side.get("images_json", "")))
    inputs = side.get("inputs")
    tag, iid = side.get("tag"), side.get("id")
    if not isinstance(inputs, list) or not isinstance(tag, str) or not isinstance(iid, str):
        return False

    def current(ref: str) -> str | None:
        found = index.resolve(ref) if index is not None else None
        if found is None and engine is not None:
            found = engine.image_id(ref)  # type: ignore[attr-defined]
        return found

    for ref, rid in inputs:
        if current(ref) != rid:
            return False
    if current(tag) != iid:
        return False
    hostdeps = side.get("hostdeps")
    env = {"CONTAINERS_STORAGE_CONF": str(fingerprint[2])} if fingerprint[2] else {}
    watched = _watched(flake, env, list(hostdeps) if isinstance(hostdeps, list) else [])
    return json.loads(json.dumps(compose_tar.signature(watched))) == side.get("sig")


def _compose_locked(
    flake: PodmanFlake, engine: object, cdir: str, side_path: str, old: dict[str, object] | None,
    fingerprint: list[object], ignore: bool,
) -> str:
    import errno
    import shutil
    import signal

    from .. import debug, runner, statedir
    from . import compose_build, compose_tar

    assert isinstance(engine, compose_build.Engine)
    workdir = os.path.join(cdir, flake.app + ".work")
    shutil.rmtree(workdir, ignore_errors=True)  # left by a killed launch; we hold the lock
    os.mkdir(workdir, 0o700)

    def interrupt(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    saved = {}
    for sig_num in (signal.SIGTERM, signal.SIGHUP):
        try:
            saved[sig_num] = signal.signal(sig_num, interrupt)
        except ValueError:  # not the main thread: keep the defaults
            pass
    debug.log(f"compose: composing {flake.app}")
    try:
        env = {"CONTAINERS_STORAGE_CONF": str(fingerprint[2])} if fingerprint[2] else {}
        result = compose_build.compose(flake, engine, workdir, ignore)
        sig = compose_tar.signature(_watched(flake, env, list(result.hostdeps)))
        side = {"fingerprint": fingerprint, "images_json": engine.images_json(), "tag": result.tag,
                "id": result.image_id, "inputs": [list(i) for i in result.inputs],
                "hostdeps": list(result.hostdeps), "sig": sig}
        statedir.write_file(side_path, json.dumps(side))
    except KeyboardInterrupt:
        raise ComposeInterrupted(f"{flake.config_file}: composing the image of {flake.app} was interrupted; "
                                 "nothing was kept") from None
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise FlakeError(f"{flake.config_file}: composing {flake.app}: no space left on device "
                             f"(work dir {workdir}); nothing was kept") from exc
        raise FlakeError(f"{flake.config_file}: composing {flake.app}: {exc.filename or workdir}: "
                         f"{exc.strerror}") from exc
    finally:
        for sig_num, handler in saved.items():
            signal.signal(sig_num, handler)
        shutil.rmtree(workdir, ignore_errors=True)
    old_tag = old.get("tag") if old else None
    if isinstance(old_tag, str) and old_tag != result.tag:
        runner.run([*engine.argv, "rmi", old_tag], env=engine.env, check=False)  # in use: kept
    return result.tag


def list_entries(podman_argv: list[str], env: dict[str, str]) -> list[dict[str, object]]:
    """Every composed image in this store: app, tag, id, inputs, size, created, containers."""
    from .. import runner
    from .compose_build import LABEL_APP, LABEL_INPUTS, PREFIX

    out = runner.run([*podman_argv, "images", "--format", "json", "--filter", f"label={LABEL_APP}"],
                     env=env).stdout
    entries = []
    for img in json.loads(out or b"[]"):
        labels = img.get("Labels") or {}
        tags = [n for n in img.get("Names") or [] if n.startswith(PREFIX)]
        entries.append({"app": labels.get(LABEL_APP, ""), "tag": tags[0] if tags else "",
                        "id": img.get("Id", ""), "inputs": labels.get(LABEL_INPUTS, ""),
                        "size": img.get("Size", 0), "created": img.get("Created", 0),
                        "containers": img.get("Containers", 0)})
    return entries


def free_entries(
    *, app: str | None = None, image: str | None = None,
    podman_argv: list[str] | None = None, env: dict[str, str] | None = None,
) -> list[str]:
    """Remove the composed images of *app*, or those built from *image*; returns what was removed.

    Called when a flake or its container is removed. Images still used by a container stay.
    """
    from .. import runner

    argv = podman_argv or [runner.which("podman")]
    env = env or {}
    removed = []
    for entry in list_entries(argv, env):
        inputs = str(entry["inputs"]).split()
        if (app is not None and entry["app"] == app) or (image is not None and image in inputs):
            if runner.run([*argv, "rmi", str(entry["id"])], env=env, check=False).returncode == 0:
                removed.append(str(entry["tag"] or entry["id"]))
    return removed
