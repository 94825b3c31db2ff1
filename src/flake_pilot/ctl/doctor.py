"""flake-ctl doctor: check what this host needs to run flakes and say how to fix what is missing.

Every check yields a record ``check, status, detail, fix`` with status ``ok``, ``warn`` (missing but
not needed by anything registered) or ``fail`` (needed). Exit 0 only when nothing failed, 1
otherwise. ``--format json|csv`` gives the same records for scripts.
"""

from __future__ import annotations

import argparse
import os
import pwd
import shutil
import stat
from dataclasses import asdict, dataclass
from typing import Any

from .. import settings
from ..errors import FlakeError
from ..launch import runner
from ..settings import Settings

OK, WARN, FAIL = "ok", "warn", "fail"
FIELDS = ("check", "status", "detail", "fix")
LAUNCHER_OF = {"podman": "podman-pilot", "firecracker": "firecracker-pilot"}


@dataclass(frozen=True)
class Result:
    check: str
    status: str
    detail: str
    fix: str = ""


def add_parser(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg,unused-ignore]
    from .common import add_user_flag

    p = subparsers.add_parser(
        "doctor",
        help="check the host and every registration; say how to fix what is missing",
        description="Check engine binaries and versions, the podman runtime and storage (a real tiny run),"
        " subuid/subgid, /dev/kvm (hardware or PVM), /dev/net/tun, state directory permissions and every"
        " registration (symlink, config, image). Exit status 0 only when everything needed is there,"
        " 1 otherwise.",
    )
    add_user_flag(p)
    p.add_argument(
        "--format",
        choices=("table", "json", "csv"),
        default="table",
        help="output format (default: table); json and csv carry the fields check, status, detail, fix",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from .common import user_mode
    from .output import Column, emit

    results = diagnose(user_mode(args))
    failed = [r for r in results if r.status == FAIL]
    columns = [
        Column("check", "CHECK"),
        Column("status", "STATUS"),
        Column("detail", "DETAIL"),
        Column("fix", "FIX"),
    ]
    headline = f"flake-ctl doctor: {len(failed)} problem(s), {sum(r.status == WARN for r in results)} warning(s)"
    emit([asdict(r) for r in results], columns, args.format, headline, "no checks ran")
    return 1 if failed else 0


# -- the checks ---------------------------------------------------------------------------------


def diagnose(user_mode: bool) -> list[Result]:
    """All checks for one scope (system, or the caller's user scope)."""
    results: list[Result] = []
    try:
        cfg = settings.load(user_mode)
    except FlakeError as exc:
        return [Result("config", FAIL, str(exc), "fix the YAML named in the message")]
    results.append(Result("config", OK, f"{cfg.source or 'no config file, defaults'}; flakes in {cfg.flakes_dir}"))
    flakes, reg_results = registrations(cfg)
    engines = {engine for engine, _ in flakes}
    vmms = {flake.vmm for engine, flake in flakes if engine == "firecracker"}
    podman_res, podman_ok = engine_binary(
        "podman",
        cfg.podman_binary,
        "podman" in engines,
        ("container flakes are registered", "needed for container flakes"),
        "apt-get install podman (or set generic.podman_binary in flakes.yml)",
    )
    fc_res, _ = engine_binary(
        "firecracker",
        cfg.firecracker_binary,
        "firecracker" in vmms,
        ("Firecracker VM flakes are registered", "needed for Firecracker VM flakes only"),
        "install firecracker (scripts/get-firecracker.sh) or set generic.firecracker_binary",
    )
    qemu_res, _ = engine_binary(
        "qemu",
        cfg.qemu_binary,
        "qemu" in vmms,
        ("QEMU VM flakes are registered", "needed for VM flakes with vmm: qemu only"),
        "apt-get install qemu-system-x86 (or set generic.qemu_binary in flakes.yml)",
    )
    results += [podman_res, fc_res, qemu_res]
    if podman_ok:
        results += podman_runtime(cfg, "podman" in engines)
        results.append(subids(user_mode, "podman" in engines))
    needs_vm = "firecracker" in engines
    results += [kvm("firecracker" in vmms), qemu_accel(), tun(needs_vm)]
    results += state_dirs(cfg)
    results += reg_results
    if podman_ok:
        results += images(cfg, [flake for engine, flake in flakes if engine == "podman"])
    return results


def _needed(needed: bool) -> str:
    return FAIL if needed else WARN


def _version(argv: list[str]) -> str:
    proc = runner.run(argv, check=False, timeout=20)
    text = (proc.stdout or b"").decode(errors="replace").strip().splitlines()
    return text[0] if proc.returncode == 0 and text else ""


def engine_binary(name: str, binary: str, needed: bool, why: tuple[str, str], fix: str) -> tuple[Result, bool]:
    """Is the engine *binary* there and does it answer --version? why = (needed, not needed) reasons."""
    try:
        path = runner.which(binary)
    except FlakeError:
        return Result(name, _needed(needed), f"{binary} not found in PATH ({why[0] if needed else why[1]})", fix), False
    version = _version([path, "--version"])
    if not version:
        return Result(name, FAIL, f"{path} --version failed", f"reinstall {name}"), False
    return Result(name, OK, f"{path}: {version}"), True


def _podman(cfg: Settings) -> tuple[list[str], dict[str, str]]:
    from .common import podman_engine

    return podman_engine(cfg)


def podman_runtime(cfg: Settings, needed: bool) -> list[Result]:
    """podman info (runtime, storage driver), then a real tiny run of a local image if there is one."""
    try:
        argv, env = _podman(cfg)
    except FlakeError as exc:
        return [Result("podman storage", FAIL, str(exc), "run 'flake-ctl init' or fix generic.podman_storage_conf")]
    info = runner.run(
        [*argv, "info", "--format", "{{.Host.OCIRuntime.Name}} {{.Store.GraphDriverName}}"],
        env=env,
        check=False,
        timeout=60,
    )
    if info.returncode != 0:
        return [
            Result(
                "podman storage",
                FAIL,
                f"podman info failed: {runner.first_line(info.stderr)}",
                "see 'podman info'; check CONTAINERS_CONF / storage.conf",
            )
        ]
    runtime, _, driver = info.stdout.decode().strip().partition(" ")
    out = [
        Result(
            "podman storage",
            OK,
            f"runtime {runtime}, storage driver {driver}" + (f" ({env['CONTAINERS_STORAGE_CONF']})" if env else ""),
        )
    ]
    imgs = runner.run(
        [*argv, "images", "--format", "{{.ID}} {{.Size}}", "--sort", "size"], env=env, check=False, timeout=60
    )
    ids = imgs.stdout.decode().split()[:1] if imgs.returncode == 0 else []
    if not ids:
        out.append(Result("podman run", OK, "no local image to try a run with; podman info works"))
        return out
    proc = runner.run(
        [*argv, "run", "--rm", "--network", "none", "--entrypoint", "true", ids[0]],
        env=env,
        check=False,
        timeout=120,
    )
    err = (proc.stderr or b"").decode(errors="replace")
    if proc.returncode == 0 or "executable file" in err or "no such file or directory" in err.lower():
        out.append(Result("podman run", OK, f"a container of image {ids[0]} ran"))
    else:
        out.append(
            Result(
                "podman run",
                _needed(needed),
                f"podman run {ids[0]} failed: {runner.first_line(proc.stderr)}",
                "run it by hand with --log-level=debug; check the OCI runtime (runc/crun)",
            )
        )
    return out


def _has_subid(path: str, user: str, uid: int) -> bool:
    try:
        with open(path, encoding="utf-8") as handle:
            for line in handle:
                owner = line.split(":", 1)[0].strip()
                if owner in (user, str(uid)):
                    return True
    except OSError:
        return False
    return False


def subids(user_mode: bool, needed: bool) -> Result:
    uid = os.getuid()
    if uid == 0:
        return Result("subuid/subgid", OK, "root: not needed for system flakes")
    try:
        user = pwd.getpwuid(uid).pw_name
    except KeyError:
        user = str(uid)
    missing = [f for f in ("/etc/subuid", "/etc/subgid") if not _has_subid(f, user, uid)]
    if missing:
        return Result(
            "subuid/subgid",
            _needed(needed and user_mode),
            f"no entry for {user} in {', '.join(missing)}",
            f"usermod --add-subuids 200000-265535 --add-subgids 200000-265535 {user}",
        )
    if not shutil.which("newuidmap"):
        return Result("subuid/subgid", _needed(needed and user_mode), "newuidmap not found", "apt-get install uidmap")
    return Result("subuid/subgid", OK, f"{user} has subordinate ids")


def kvm_kind() -> str:
    """'pvm' (software, /sys/module/kvm_pvm), 'hardware' (kvm_intel/kvm_amd) or 'unknown'."""
    if os.path.exists("/sys/module/kvm_pvm"):
        return "pvm"
    if os.path.exists("/sys/module/kvm_intel") or os.path.exists("/sys/module/kvm_amd"):
        return "hardware"
    return "unknown"


def kvm(needed: bool) -> Result:
    path = "/dev/kvm"
    try:
        st = os.stat(path)
    except OSError:
        return Result(
            "kvm",
            _needed(needed),
            f"{path} missing (VM flakes need it)",
            "enable virtualization in firmware; modprobe kvm_intel or kvm_amd",
        )
    if not stat.S_ISCHR(st.st_mode):
        return Result("kvm", FAIL, f"{path} is not a character device", f"rm {path}; modprobe kvm")
    if not os.access(path, os.R_OK | os.W_OK):
        return Result(
            "kvm",
            _needed(needed),
            f"{path} not read/writable by uid {os.getuid()}",
            "add the user to group kvm (usermod -aG kvm USER)",
        )
    kind = kvm_kind()
    detail = {
        "pvm": "usable, PVM (software virtualization, kvm_pvm; no hardware extensions)",
        "hardware": "usable, hardware-backed (kvm_intel/kvm_amd)",
    }.get(kind, "usable, backend unknown")
    return Result("kvm", OK, detail)


def qemu_accel() -> Result:
    """What QEMU VM flakes run with here: hardware KVM or TCG (the launcher's own rule)."""
    from ..launch.firecracker.qemu import kvm_accel

    accel, why = kvm_accel()
    if accel == "kvm":
        return Result("qemu accel", OK, "QEMU VM flakes run with hardware KVM")
    return Result(
        "qemu accel",
        OK,
        f"QEMU VM flakes run under TCG, software emulation (boots take seconds): {why}",
        "for KVM: a host with VMX/SVM and read/write access to /dev/kvm (group kvm)",
    )


def tun(needed: bool) -> Result:
    path = "/dev/net/tun"
    if not os.path.exists(path):
        return Result("tap", _needed(needed), f"{path} missing (VM networking needs TAP devices)", "modprobe tun")
    if not os.access(path, os.R_OK | os.W_OK):
        return Result(
            "tap",
            _needed(needed),
            f"{path} not read/writable by uid {os.getuid()}",
            f"chmod 0666 {path} (or run VM flakes as root)",
        )
    return Result("tap", OK, f"{path} usable")


def state_dir(name: str, base: str) -> Result:
    """The launchers' own walk of ``<base>/<uid>`` (``statedir.check_private_dir``), creating nothing."""
    from ..launch import statedir

    try:
        missing = statedir.check_private_dir(base)
    except FlakeError as exc:
        return Result(name, FAIL, str(exc), _state_fix(str(exc)))
    own = os.path.join(base, str(os.getuid()))
    if missing:
        return Result(name, OK, f"{base} ok ({missing} will be created on first use)")
    mode = os.lstat(own).st_mode & 0o777
    if mode & 0o077:
        return Result(name, WARN, f"{own} has mode {oct(mode)} (the launchers make it 0700)", f"chmod 700 {own}")
    return Result(name, OK, f"{base} ok, {own} private")


def _state_fix(message: str) -> str:
    """How to fix what the state dir walk refused; its message starts with the path at fault."""
    path = message.split(":", 1)[0]
    if "chmod" in message:
        return "chmod 1777 " + path
    if "not by the caller" in message:
        return f"rm -rf {path} (it is recreated)"
    if "owned by uid" in message:
        return f"chown root {path} (or set podman_ids_dir/firecracker_ids_dir to a dir of your own)"
    if "symbolic link" in message:
        return f"rm {path} (it is recreated)"
    if "no space left" in message:
        return "free some space on the state disk"
    return f"mkdir -m 1777 {path} (as root)"


def state_dirs(cfg: Settings) -> list[Result]:
    out = [state_dir("podman ids dir", cfg.podman_ids_dir)]
    if cfg.firecracker_ids_dir != cfg.podman_ids_dir:
        out.append(state_dir("firecracker ids dir", cfg.firecracker_ids_dir))
    if os.path.isdir(cfg.flakes_dir):
        if not os.access(cfg.flakes_dir, os.R_OK | os.X_OK):
            out.append(Result("flakes dir", FAIL, f"{cfg.flakes_dir} not readable", f"chmod 755 {cfg.flakes_dir}"))
    return out


def registrations(cfg: Settings) -> tuple[list[tuple[str, Any]], list[Result]]:
    """Parse every ``<flakes_dir>/*.yaml`` and check its symlink: (engine, flake) pairs and results."""
    from ..flakeconf import parse

    try:
        names = sorted(n for n in os.listdir(cfg.flakes_dir) if n.endswith(".yaml") and not n.startswith("."))
    except FileNotFoundError:
        return [], [Result("registrations", OK, f"{cfg.flakes_dir} does not exist: nothing registered")]
    except OSError as exc:
        return [], [Result("registrations", FAIL, f"{cfg.flakes_dir}: {exc.strerror}", f"chmod 755 {cfg.flakes_dir}")]
    flakes: list[tuple[str, Any]] = []
    out: list[Result] = []
    for name in names:
        app = name[: -len(".yaml")]
        path = os.path.join(cfg.flakes_dir, name)
        try:
            flake = parse(app, path)
        except FlakeError as exc:
            out.append(Result(f"flake {app}", FAIL, str(exc), f"fix {path} or remove the registration"))
            continue
        flakes.append((flake.engine, flake))
        out.append(link_check(flake))
    if not names:
        out.append(Result("registrations", OK, f"none in {cfg.flakes_dir}"))
    return flakes, out


def link_check(flake: Any) -> Result:
    """The app path must be a symlink to an installed, executable launcher of the flake's engine."""
    app_path = flake.host_app_path
    name = f"flake {flake.app}"
    group = "podman" if flake.engine == "podman" else "firecracker"
    app = app_path or flake.app
    refix = f"flake-ctl {group} register --force ... (or flake-ctl {group} remove --app {app} --force)"
    if not app_path:
        return Result(name, WARN, f"{flake.config_file}: no host_app_path, cannot check the app symlink")
    launcher = LAUNCHER_OF[flake.engine]
    try:
        target = os.readlink(app_path)
    except FileNotFoundError:
        return Result(name, FAIL, f"{app_path} missing (registration without its command)", refix)
    except OSError:
        return Result(name, FAIL, f"{app_path} is not a symlink", refix)
    resolved = os.path.join(os.path.dirname(app_path), target)
    if os.path.basename(target) != launcher:
        return Result(name, FAIL, f"{app_path} -> {target}, not {launcher}", refix)
    if not os.path.exists(resolved):
        return Result(name, FAIL, f"{app_path} -> {target}: dangling (launcher not installed)", refix)
    if not os.access(resolved, os.X_OK):
        return Result(name, FAIL, f"{app_path} -> {target}: launcher not executable", f"chmod 755 {resolved}")
    if flake.engine == "firecracker":
        fc = flake.firecracker
        missing = [p for p in (fc.rootfs_image_path, fc.kernel_image_path) if p and not os.path.exists(p)]
        if missing:
            return Result(
                name,
                FAIL,
                f"VM image file(s) missing: {', '.join(missing)}",
                f"flake-ctl firecracker pull --name {flake.vm_name} ...",
            )
    return Result(name, OK, f"{app_path} -> {target}; {flake.config_file} loads")


def images(cfg: Settings, flakes: list[Any]) -> list[Result]:
    """Container images of the registrations present in the flake storage (warn: pulled on first run)."""
    if not flakes:
        return []
    try:
        argv, env = _podman(cfg)
    except FlakeError:
        return []
    out = []
    seen: set[str] = set()
    for flake in flakes:
        for image in (flake.image, flake.base_container, *flake.layers):
            if not image or image in seen:
                continue
            seen.add(image)
            proc = runner.run([*argv, "image", "exists", image], env=env, check=False, timeout=60)
            if proc.returncode != 0:
                out.append(
                    Result(
                        f"image {image}",
                        WARN,
                        f"not in the flake storage (flake {flake.app}); the first launch pulls it",
                        f"flake-ctl podman pull --uri {image}",
                    )
                )
            else:
                out.append(Result(f"image {image}", OK, f"present (flake {flake.app})"))
    return out
