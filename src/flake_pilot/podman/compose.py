"""Delta containers: compose base + layers + app image + includes into a cached image.

Warm launch (the common case) costs no engine call and no JSON parse: a per-user sidecar
(``<state>/compose/<app>.cache``, marshal) records the inputs' image IDs, the composed tag, the
lstat stamps of the registration files, of every include and host file, and of podman's
``images.json`` (rewritten by podman whenever any tag moves). Stamps equal: cache hit. Only the
store stamp differs: the IDs are checked in ``images.json``. Anything else different, and the
composition is redone under an flock (concurrent first launches compose once), see
``compose_build`` for how.
"""

from __future__ import annotations

import marshal
import os
import stat

from ..errors import FlakeError, SecurityError

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs ~10 ms per launch
if TYPE_CHECKING:
    from ..flakeconf import PodmanFlake

FORMAT = 1
SUFFIX = ".cache"


class ComposeInterrupted(FlakeError):
    exit_code = 130


def needs_compose(flake: PodmanFlake) -> bool:
    return bool(flake.base_container or flake.check_host_dependencies or flake.include.tar or flake.include.path)


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
    from ..launch import debug, statedir

    _check_app(flake.app)
    cdir = _compose_dir(flake.app, flake.config_file, state_dir)
    side_path = os.path.join(cdir, flake.app + SUFFIX)
    inputs, runtime = _flake_fields(flake), _runtime(podman_argv, env, ignore_sync_error)
    side = _read_sidecar(side_path)
    if side is not None and _fresh(side, inputs, runtime, None, side_path):
        debug.log(f"compose: cache hit {side['tag']}")
        return str(side["tag"])
    from .compose_build import Engine

    engine = Engine(tuple(podman_argv), dict(env))
    with statedir.locked(os.path.join(cdir, flake.app + ".lock")):
        side = _read_sidecar(side_path)  # another launch may have composed meanwhile
        if side is not None and _fresh(side, inputs, runtime, engine, side_path):
            debug.log(f"compose: cache hit (engine check) {side['tag']}")
            return str(side["tag"])
        return _compose_locked(flake, engine, cdir, side_path, side, inputs, runtime, ignore_sync_error)


def warm_image(
    app: str,
    config_file: str,
    podman_argv: list[str],
    env: dict[str, str],
    *,
    ignore_sync_error: bool = False,
    state_dir: str | None = None,
) -> str | None:
    """The cached composed image when nothing changed, else None (then call ensure_image).

    Needs no parsed registration: the registration files (with drop-ins) are compared by
    their lstat stamps recorded at composition time, so a warm launch skips the YAML parse.
    """
    from ..launch import debug

    _check_app(app)
    cdir = _compose_dir(app, config_file, state_dir)
    side_path = os.path.join(cdir, app + SUFFIX)
    side = _read_sidecar(side_path)
    if side is None or side.get("config_sig") != _config_sig(config_file):
        return None
    inputs = side.get("inputs_cfg")
    runtime = _runtime(podman_argv, env, ignore_sync_error)
    if not isinstance(inputs, dict) or not _fresh(side, inputs, runtime, None, side_path):
        return None
    debug.log(f"compose: cache hit {side['tag']}")
    return str(side["tag"])


def _check_app(app: str) -> None:
    """The app name becomes a file name: the full (regex) check only when the cheap one fails."""
    if not app or "/" in app or app.startswith(".") or "\0" in app or len(app) > 128:
        from ..launch.names import app_name

        app_name(app)


def _compose_dir(app: str, config_file: str, state_dir: str | None) -> str:
    if state_dir is None:
        from .. import settings
        from ..launch import statedir

        system = settings.load(False)
        user = not config_file.startswith(system.flakes_dir.rstrip("/") + "/")
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


def _flake_fields(flake: PodmanFlake) -> dict[str, object]:
    """What a composition is made of, as recorded in the sidecar."""
    return {
        "app": flake.app,
        "base": flake.base_container,
        "layers": list(flake.layers),
        "image": flake.image,
        "tar": list(flake.include.tar),
        "path": list(flake.include.path),
        "host": flake.check_host_dependencies,
    }


def _runtime(podman: list[str], env: dict[str, str], ignore: bool) -> list[object]:
    engine = [a for a in podman if not a.startswith("--log-level")]  # output only, not the store
    return [FORMAT, engine, env.get("CONTAINERS_STORAGE_CONF", ""), ignore]


def _config_sig(config_file: str) -> object:
    from .compose_store import signature

    dropins = config_file[: -len(".yaml")] + ".d" if config_file.endswith(".yaml") else config_file + ".d"
    return signature([config_file, dropins])


def _watched(inputs: dict[str, object], storage_conf: str, hostdeps: list[str]) -> list[str]:
    """Files whose change invalidates the cache: includes, host files, storage config."""
    confs = _confs(storage_conf)
    files = [str(p) for p in [*inputs["tar"], *inputs["path"]]]  # type: ignore[misc]
    return [*files, *hostdeps, *confs]


def _confs(storage_conf: str) -> list[str]:
    """The storage.conf files that decide where the image store is."""
    if storage_conf:
        return [storage_conf]
    from ..settings import home_dir

    return ["/etc/containers/storage.conf", os.path.join(home_dir(), ".config/containers/storage.conf")]


def _read_sidecar(path: str) -> dict[str, object] | None:
    """The sidecar, or None when missing/unusable; a symlink or foreign file is never read."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise SecurityError(f"{path}: cannot open ({exc.strerror}); a symlink is refused") from exc
    try:
        st = os.fstat(fd)
        if st.st_uid != os.getuid() or st.st_mode & 0o022 or st.st_size > 1 << 22:
            return None
        data = marshal.loads(os.read(fd, st.st_size))
    except (ValueError, EOFError, TypeError):
        return None
    finally:
        os.close(fd)
    return data if isinstance(data, dict) else None


def _write_sidecar(path: str, side: dict[str, object]) -> None:
    """0600, temp file + rename, never following a symlink."""
    tmp = f"{path}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, marshal.dumps(side))
    finally:
        os.close(fd)
    os.replace(tmp, path)


def _stamp(path: str) -> list[int]:
    try:
        st = os.stat(path)
    except OSError:
        return []
    return [st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]


def _fresh(
    side: dict[str, object], inputs: dict[str, object], runtime: list[object], engine: object, side_path: str
) -> bool:
    """True when the recorded composition still matches every input (engine: Engine or None)."""
    from ..launch import debug
    from . import compose_store

    if side.get("inputs_cfg") != inputs or side.get("runtime") != runtime:
        debug.log("compose: registration or engine changed")
        return False
    hostdeps = side.get("hostdeps")
    watched = _watched(inputs, str(runtime[2]), list(hostdeps) if isinstance(hostdeps, list) else [])
    if compose_store.signature(watched) != side.get("sig"):
        debug.log("compose: an include, host file or storage.conf changed")
        return False
    images_json = str(side.get("images_json", ""))
    if images_json and _stamp(images_json) == side.get("images_stamp"):
        return True  # podman rewrote no image record since we checked
    images, tag, iid = side.get("images"), side.get("tag"), side.get("id")
    if not isinstance(images, list) or not isinstance(tag, str) or not isinstance(iid, str):
        return False
    stamp = _stamp(images_json)
    index = compose_store.load(images_json)

    def current(ref: str) -> str | None:
        found = index.resolve(ref) if index is not None else None
        if found is None and engine is not None:
            found = engine.image_id(ref)  # type: ignore[attr-defined]
        return found

    if any(current(ref) != rid for ref, rid in images) or current(tag) != iid:
        debug.log("compose: an input image changed or the composed image is gone")
        return False
    if index is not None and stamp:
        try:
            _write_sidecar(side_path, {**side, "images_stamp": stamp})  # next launch: stamp check only
        except OSError:
            pass
    return True


def _compose_locked(
    flake: PodmanFlake,
    engine: object,
    cdir: str,
    side_path: str,
    old: dict[str, object] | None,
    inputs: dict[str, object],
    runtime: list[object],
    ignore: bool,
) -> str:
    import errno
    import shutil
    import signal

    from ..launch import debug, runner
    from . import compose_build, compose_store

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
        config_sig = _config_sig(flake.config_file)
        store_sig = compose_store.signature(_confs(str(runtime[2])))
        known = old.get("images_json") if old and old.get("store_sig") == store_sig else None
        images_json = known if isinstance(known, str) else engine.images_json()  # podman info: ~0.3 s
        images_stamp = _stamp(images_json)  # before resolving: a later change is noticed
        result = compose_build.compose(flake, engine, workdir, ignore, images_json)
        sig = compose_store.signature(_watched(inputs, str(runtime[2]), list(result.hostdeps)))
        side = {
            "inputs_cfg": inputs,
            "runtime": runtime,
            "config_sig": config_sig,
            "store_sig": store_sig,
            "images_json": images_json,
            "images_stamp": images_stamp,
            "tag": result.tag,
            "id": result.image_id,
            "images": [list(i) for i in result.inputs],
            "hostdeps": list(result.hostdeps),
            "sig": sig,
        }
        _write_sidecar(side_path, side)
    except KeyboardInterrupt:
        raise ComposeInterrupted(
            f"{flake.config_file}: composing the image of {flake.app} was interrupted; nothing was kept"
        ) from None
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise FlakeError(
                f"{flake.config_file}: composing {flake.app}: no space left on device "
                f"(work dir {workdir}); nothing was kept"
            ) from exc
        raise FlakeError(
            f"{flake.config_file}: composing {flake.app}: {exc.filename or workdir}: {exc.strerror}"
        ) from exc
    finally:
        for sig_num, handler in saved.items():
            signal.signal(sig_num, handler)
        shutil.rmtree(workdir, ignore_errors=True)
    old_tag = old.get("tag") if old else None
    if isinstance(old_tag, str) and old_tag != result.tag:
        runner.run([*engine.argv, "rmi", old_tag], env=engine.env, check=False)  # in use: kept
    return result.tag


def forget(app: str, state_dir: str) -> bool:
    """Remove *app*'s composition record, work dir and lock file from the caller's *state_dir*
    (the flake is being removed); True if something was there."""
    import shutil

    from ..launch import statedir

    cdir = os.path.join(state_dir, "compose")
    if not os.path.isdir(cdir) or os.path.islink(cdir):
        return False
    _check_app(app)
    paths = [os.path.join(cdir, app + ext) for ext in (SUFFIX, ".work", ".lock")]
    if not any(os.path.lexists(p) for p in paths):
        return False
    lock = statedir.locked(paths[2])
    with lock:  # a composition in progress finishes first
        statedir.remove_file(paths[0])
        shutil.rmtree(paths[1], ignore_errors=True)
        lock.unlink()
    return True


def list_entries(podman_argv: list[str], env: dict[str, str]) -> list[dict[str, object]]:
    """Every composed image in this store: app, tag, id, inputs, size, created, containers."""
    import json

    from ..launch import runner
    from .compose_build import LABEL_APP, LABEL_INPUTS, PREFIX

    out = runner.run([*podman_argv, "images", "--format", "json", "--filter", f"label={LABEL_APP}"], env=env).stdout
    entries = []
    for img in json.loads(out or b"[]"):
        labels = img.get("Labels") or {}
        tags = [n for n in img.get("Names") or [] if n.startswith(PREFIX)]
        entries.append(
            {
                "app": labels.get(LABEL_APP, ""),
                "tag": tags[0] if tags else "",
                "id": img.get("Id", ""),
                "inputs": labels.get(LABEL_INPUTS, ""),
                "size": img.get("Size", 0),
                "created": img.get("Created", 0),
                "containers": img.get("Containers", 0),
            }
        )
    return entries


def free_entries(
    *,
    app: str | None = None,
    image: str | None = None,
    podman_argv: list[str] | None = None,
    env: dict[str, str] | None = None,
) -> list[str]:
    """Remove the composed images of *app*, or those built from *image*; returns what was removed.

    Called when a flake or its container is removed. Images still used by a container stay.
    """
    from ..launch import runner

    argv = podman_argv or [runner.which("podman")]
    env = env or {}
    removed = []
    for entry in list_entries(argv, env):
        inputs = str(entry["inputs"]).split()
        if (app is not None and entry["app"] == app) or (image is not None and image in inputs):
            if runner.run([*argv, "rmi", str(entry["id"])], env=env, check=False).returncode == 0:
                removed.append(str(entry["tag"] or entry["id"]))
    return removed
