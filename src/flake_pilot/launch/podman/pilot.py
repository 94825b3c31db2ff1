"""podman-pilot: every container flake is a symlink to this launcher.

The symlink's name selects the registration. Modes:
- one-shot: one ``podman run --rm`` (removed at exit);
- resume: one long-lived instance per app/@NAME, each call one ``podman exec``;
- attach: a kept container, re-attached (``attach``) or restarted (``start --attach``).
In every mode the launcher stays podman's parent and delivers signals to the app itself
(proc.py): podman does not forward them for exec, -t or attach, and an app running as the
container's PID 1 would ignore them. Any failure of the launcher itself exits 125 with one
line on stderr. A warm launch imports only the stdlib's built-in modules (fastos instead of os).
"""

from .. import debug, fastos
from ..main import run
from . import oci

TYPE_CHECKING = False
if TYPE_CHECKING:
    from contextlib import AbstractContextManager
    from typing import NoReturn

    from .argv import CallerArgs
    from .instance import Paths
    from .plan import Plan


def _validate_instance(name: str) -> str:
    from ..names import instance_name

    return instance_name(name)


def _opts(p: "Plan", caller: "CallerArgs", env: dict[str, str]) -> list[str]:
    from .argv import drop_missing_volumes, expand_vars, missing_volumes, split_opts, user_opts

    items = []
    for item in split_opts(p.opts):
        try:
            items.append(expand_vars(item, env))
        except (KeyError, ValueError) as exc:
            from ...errors import ConfigError

            why = f"%{exc.args[0]} is not set in the environment" if isinstance(exc, KeyError) else str(exc)
            raise ConfigError(f"{p.config_file}: key 'container.runtime.podman': {item!r}: {why}") from None
    if "ignore_missing_volume_path" in caller.options:
        items = drop_missing_volumes(items)
    else:
        missing = missing_volumes(items)
        if missing:  # podman would report it raw on the app's stderr
            from ...errors import ConfigError

            raise ConfigError(
                f"{p.config_file}: key 'container.runtime.podman': volume path {missing[0]} does not exist "
                "(%ignore_missing_volume_path skips it)"
            )
    if not p.tls_verify:
        items.append("--tls-verify=false")
    return user_opts(items)


_TLS_REMEDY = "register the flake with --tls-verify=false"


def _progress(caller: "CallerArgs", label: str) -> "AbstractContextManager[object]":
    if "progress" not in caller.options:
        return _Null()
    from ... import progress

    return progress.spinner(label)


class _Null:
    def __enter__(self) -> object:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def launch(app: str, args: list[str]) -> int:
    from .. import runner, statedir
    from . import argv, plan

    with debug.phase("plan"):
        p = plan.load(app)
    if not p.user_mode and fastos.getuid() != 0:
        from ...errors import SecurityError

        raise SecurityError(
            f"{p.config_file}: runas root: this system flake uses root's podman storage; run it as root "
            f"(e.g. sudo {app}) or register your own: flake-ctl podman --user register ..."
        )
    try:
        caller = argv.split_caller_args(args, _validate_instance)
    except ValueError as exc:
        from ...errors import UsageError

        raise UsageError(str(exc)) from None
    podman = runner.which(p.podman)
    runner.bound_engine_calls()  # a hanging engine fails the launch; the app itself is never bounded
    env = dict(fastos.environ)
    if p.storage_conf:
        if not fastos.exists(p.storage_conf):  # podman would exit 1 (the app's status) with its own text
            from ...errors import ConfigError

            raise ConfigError(f"{p.storage_conf}: podman storage config missing (generic.podman_storage_conf)")
        env["CONTAINERS_STORAGE_CONF"] = p.storage_conf
    opts = _opts(p, caller, env)
    with debug.phase("state"):
        state = statedir.private_dir(p.ids_dir)
    prefix = argv.engine(podman, debug.enabled())
    image = p.image
    if p.image_present is False:  # known missing: pulled here, quietly, not by podman run on the app's stderr
        from ...podman import pull

        with debug.phase("pull"):
            pull.pull(prefix, env, image, tls_verify=p.tls_verify, remedy=_TLS_REMEDY, label=f"{app}: pulling {image}")
    if p.compose:
        from ...podman import compose

        ignore = "ignore_sync_error" in caller.options
        with debug.phase("compose"):  # warm: no YAML parse, no engine call
            cached = compose.warm_image(app, p.config_file, prefix, env, state_dir=state, ignore_sync_error=ignore)
            if cached is None:
                from ... import flakeconf

                flake = flakeconf.parse(app, p.config_file)
                assert isinstance(flake, flakeconf.PodmanFlake)
                cached = compose.ensure_image(flake, prefix, env, state_dir=state, ignore_sync_error=ignore)
            image = cached
    # a terminal only when all three streams are one: with -t podman merges the app's stderr into
    # the terminal, so `app 2>log` would lose the separation
    from .proc import in_background

    tty = "interactive" in caller.options or (fastos.isatty(0) and fastos.isatty(1) and fastos.isatty(2))
    tty = tty and not in_background()
    if p.resume:
        if p.target == "/":
            from ...errors import ConfigError

            raise ConfigError(
                f"{p.config_file}: key 'container.target_app_path': resume mode needs the "
                "program to run in the instance, not '/'"
            )
        return _resume(p, caller, prefix, env, image, opts, state, tty)
    if p.attach:
        return _attach(p, caller, prefix, env, image, opts, state, tty)
    return _oneshot(p, caller, prefix, env, image, opts, state, tty)


def _oneshot(
    p: "Plan",
    caller: "CallerArgs",
    prefix: list[str],
    env: dict[str, str],
    image: str,
    opts: list[str],
    state: str,
    tty: bool,
) -> int:
    from . import argv, instance

    paths = instance.Paths(state, instance.name(p.app, caller.instance, oneshot=True))
    with debug.phase("gc"):
        instance.gc(state)
    if caller.instance is not None:
        cid = instance.alive(paths)
        if cid:
            from ...errors import ConflictError

            raise ConflictError(
                f"{paths.cid}: instance {p.app}@{caller.instance} is running (container {cid[:12]}); use another @NAME"
            )
        instance.clear(paths)  # left by a crash: never blocks a launch
    cmd = argv.run_argv(prefix, image, p.target, opts, caller.app_args, tty, paths.cid, paths.pid)
    debug.timing()
    from . import proc

    code = proc.supervise(cmd, env, proc.by_conmon(paths.pid, paths.cid))
    instance.clear(paths)
    return code


def _resume(
    p: "Plan",
    caller: "CallerArgs",
    prefix: list[str],
    env: dict[str, str],
    image: str,
    opts: list[str],
    state: str,
    tty: bool,
) -> int:
    from .. import statedir
    from . import argv, instance, proc

    paths = instance.Paths(state, instance.name(p.app, caller.instance, oneshot=False))
    wanted = instance.spec(image, p.opts)
    key = oci.engine_key(prefix[0], env)
    # through the runtime: a terminal only when it can take one from our streams (all three)
    args = oci.args_json([p.target, *caller.app_args]) if not tty or _all_ttys() else None
    verdict = oci.STALE
    if args is not None:
        fd, rec, verdict = oci.open_record(paths.stem, wanted, key)
        if fd >= 0:
            assert rec is not None
            return _resume_direct(caller, prefix, env, paths, fd, rec, args, tty)
    cid = instance.alive(paths)
    record = args is not None and verdict == oci.STALE
    if cid is None or not instance.same_spec(paths, wanted) or record:
        with debug.phase("instance"), statedir.locked(paths.lock):
            cid = instance.alive(paths)  # another launch may have created it meanwhile
            if cid is not None and not instance.same_spec(paths, wanted):
                cid = _replace_if_idle(prefix, env, cid, paths)  # the registration changed
            if cid is None:
                with _progress(caller, f"starting {p.app}"):
                    cid = _start_resume(prefix, env, image, opts, paths, wanted, key)
            elif record and instance.same_spec(paths, wanted):
                from ...podman import oci_capture

                with debug.phase("record"):
                    oci_capture.ensure(prefix, env, cid, paths, wanted, key)
        if args is not None:
            fd, rec, verdict = oci.open_record(paths.stem, wanted, key)
            if fd >= 0:
                assert rec is not None
                if rec["cid"] == cid:
                    return _resume_direct(caller, prefix, env, paths, fd, rec, args, tty)
                fastos.close(fd)
    debug.log(f"resume: podman exec ({'terminal or argument' if args is None else verdict + ' runtime entry'})")
    session = f"{fastos.getpid()}-{fastos.urandom(6).hex()}"
    cmd = argv.exec_argv(prefix, cid, p.target, caller.app_args, tty, session)
    debug.timing()
    code = proc.supervise(cmd, env, proc.by_session(argv.SESSION_VAR, session))
    if "remove" in caller.options:
        _discard(prefix, env, cid, paths)
    return code


def _all_ttys() -> bool:
    return fastos.isatty(0) and fastos.isatty(1) and fastos.isatty(2)


def _resume_direct(
    caller: "CallerArgs",
    prefix: list[str],
    env: dict[str, str],
    paths: "Paths",
    fd: int,
    rec: "dict[str, object]",
    args: str,
    tty: bool,
) -> int:
    """Run the app through the OCI runtime; *fd* (the record, shared-locked) is held until it ends."""
    from . import proc

    cid = str(rec["cid"])
    cmd, spec_fd, log_fd = oci.command(rec, args, tty)
    debug.log(f"resume: {rec['runtime']} exec in {cid[:12]}")
    try:
        debug.timing()
        if tty:  # the runtime relays the terminal and forwards signals; it stays the app's parent
            code = proc.supervise(cmd, env, None)
        else:
            code = oci.run_detached(cmd, env, proc.in_background())
        if code == oci.RUNTIME_FAILED:
            code = oci.outcome(code, log_fd, oci.check(rec, str(rec["spec"]), str(rec["engine"])) == oci.DIRECT)
    finally:
        for each in (spec_fd, log_fd, fd):
            fastos.close(each)
    if "remove" in caller.options:
        _discard(prefix, env, cid, paths)
    return code


def _replace_if_idle(prefix: list[str], env: dict[str, str], cid: str, paths: "Paths") -> str | None:
    """Remove the instance unless apps still run in it (then it is kept until they are done):
    None when removed, else *cid*. Direct calls hold its runtime record shared; podman's
    calls are its exec sessions. The record stays claimed until the instance is gone, so a
    direct call that starts meanwhile waits and then finds it gone."""
    claim = oci.claim(paths.stem)
    if claim is None or _busy(prefix, env, cid):
        debug.log(f"registration changed, but {cid[:12]} still runs apps: kept for now")
        if claim is not None and claim >= 0:
            fastos.close(claim)
        return cid
    try:
        _remove(prefix, env, cid, paths)
    finally:
        if claim >= 0:
            fastos.close(claim)
    return None


def _busy(prefix: list[str], env: dict[str, str], cid: str) -> bool:
    """True if apps started by ``podman exec`` still run in the instance."""
    from .. import runner

    done = runner.run([*prefix, "container", "inspect", "--format", "{{len .ExecIDs}}", cid], env=env, check=False)
    return done.returncode == 0 and done.stdout.strip() not in (b"", b"0")


def _start_resume(
    prefix: list[str], env: dict[str, str], image: str, opts: list[str], paths: "Paths", wanted: str, key: str
) -> str:
    """Restart a stopped instance (its files are kept), or create a fresh one; then record how
    later calls enter it through the runtime."""
    from ...errors import EngineError
    from ...podman import oci_capture
    from .. import runner, statedir
    from . import argv, instance

    fd, previous, _ = oci.open_record(paths.stem, wanted, key)
    if fd >= 0:
        fastos.close(fd)

    old = instance.read_cid(paths.cid)
    if old and not instance.same_spec(paths, wanted):
        runner.run([*prefix, "rm", "-f", "-t", "0", old], env=env, check=False)
        old = ""
    if old:
        statedir.remove_file(paths.pid)  # stale (its conmon is gone); conmon writes a new one
        if runner.run([*prefix, "start", old], env=env, check=False).returncode == 0:
            instance.tighten(paths)
            oci_capture.record(prefix, env, old, paths, wanted, key, previous)
            return old
        runner.run([*prefix, "rm", "-f", "-t", "0", old], env=env, check=False)
    instance.clear(paths)
    _remove_orphans(prefix, env, paths)
    label = _launch_label()  # finds the container even if its cid file could not be written
    create = argv.resume_create_argv(prefix, image, [*opts, "--label", label, *_owner(paths)], paths.cid, paths.pid)
    done = runner.run(create, env=env, check=False)
    cid = instance.read_cid(paths.cid)
    if done.returncode != 0 or not cid:
        _remove_failed(prefix, env, cid, label)
        instance.clear(paths)
        raise EngineError(
            f"{image}: cannot start the resume instance: {runner.first_line(done.stderr)}", done.returncode
        )
    instance.tighten(paths)
    statedir.write_file(paths.spec, wanted)
    oci_capture.record(prefix, env, cid, paths, wanted, key)
    return cid


def _attach(
    p: "Plan",
    caller: "CallerArgs",
    prefix: list[str],
    env: dict[str, str],
    image: str,
    opts: list[str],
    state: str,
    tty: bool,
) -> int:
    from ...errors import EngineError
    from .. import runner, statedir
    from . import argv, instance, proc

    paths = instance.Paths(state, instance.name(p.app, caller.instance, oneshot=False))
    lock = statedir.locked(paths.lock)
    with debug.phase("instance"), lock:
        cid = instance.alive(paths)
        if cid:
            cmd = [*prefix, "attach", cid]
        else:
            cid = instance.read_cid(paths.cid)
            if not cid or runner.run([*prefix, "container", "exists", cid], env=env, check=False).returncode:
                instance.clear(paths)
                _remove_orphans(prefix, env, paths)
                label = _launch_label()
                with _progress(caller, f"creating {p.app}"):
                    done = runner.run(
                        argv.create_argv(
                            prefix,
                            image,
                            p.target,
                            [*opts, "--label", label, *_owner(paths)],
                            caller.app_args,
                            tty,
                            paths.cid,
                            paths.pid,
                        ),
                        env=env,
                        check=False,
                    )
                cid = instance.read_cid(paths.cid)
                if done.returncode != 0 or not cid:
                    _remove_failed(prefix, env, cid, label)
                    instance.clear(paths)
                    why = runner.first_line(done.stderr)
                    raise EngineError(f"{image}: cannot create the container: {why}", done.returncode)
            cmd = [*prefix, "start", "--attach", "-i", cid]
        # the lock is held until the app exits: one session per instance, parallel calls run
        # one after another and each gets its own run's status (an attach to a container that
        # is just exiting would report podman's 125, or the other caller's status)
        debug.timing()
        code = proc.supervise(cmd, env, proc.by_conmon(paths.pid, paths.cid))
        instance.tighten(paths)  # the kept container's files
        if "remove" in caller.options:  # the instance goes with all its files, the lock file too
            _remove(prefix, env, cid, paths)
            lock.unlink()
    return code


LAUNCH_LABEL = "io.flake-pilot.launch"


def _launch_label() -> str:
    return f"{LAUNCH_LABEL}={fastos.getpid()}-{fastos.urandom(6).hex()}"


INSTANCE_LABEL = "io.flake-pilot.instance"


def _owner(paths: "Paths") -> list[str]:
    """The label naming a kept instance's state files: finds its container when they are damaged."""
    return ["--label", f"{INSTANCE_LABEL}={paths.stem}"]


def _remove_orphans(prefix: list[str], env: dict[str, str], paths: "Paths") -> None:
    """Before a kept instance is created anew: remove containers created for the same state files
    that they no longer name (a damaged or deleted .cid would otherwise leak them)."""
    from .. import runner

    runner.run(
        [*prefix, "rm", "-f", "-t", "0", "--filter", f"label={INSTANCE_LABEL}={paths.stem}"], env=env, check=False
    )


def _remove_failed(prefix: list[str], env: dict[str, str], cid: str, label: str) -> None:
    """A create that failed (e.g. disk full: no cid file) must not leak its container."""
    from .. import runner

    if cid:
        runner.run([*prefix, "rm", "-f", "-t", "0", cid], env=env, check=False)
    else:
        runner.run([*prefix, "rm", "-f", "-t", "0", "--filter", f"label={label}"], env=env, check=False)


def _remove(prefix: list[str], env: dict[str, str], cid: str, paths: "Paths") -> None:
    from .. import runner
    from . import instance

    runner.run([*prefix, "rm", "-f", "-t", "0", cid], env=env, check=False)
    instance.clear(paths)


def _discard(prefix: list[str], env: dict[str, str], cid: str, paths: "Paths") -> None:
    """``%remove``: the instance goes with all its files, its lock file included."""
    from .. import statedir

    lock = statedir.locked(paths.lock)
    with lock:
        _remove(prefix, env, cid, paths)
        lock.unlink()


def main() -> "NoReturn":
    """The console script's entry (``flake_pilot.podman_pilot``): the launchers' one main."""
    run("podman-pilot", lambda app, args: launch(app, args))  # launch looked up per call: tests replace it


if __name__ == "__main__":
    main()
