#!/usr/bin/env python3
"""Launch cost of podman-pilot against raw podman doing the same work (not a test).

(a) one-shot flake call  vs  raw ``podman run --rm -i --entrypoint /bin/sh IMG -c true``
(b) resume flake call    vs  raw ``podman exec -i CTR /bin/sh -c true`` (same instance), with the
    OCI runtime alone entering it (``runc --root ROOT exec CTR /bin/sh -c true``) printed beside;
    as root and as the rootless test user (``--rootless``: its runtime runs in podman's user and
    mount namespaces, ``nsenter -U -m --preserve-credentials -t CONMON runc ...``)
(c) the launcher alone: a flake whose engine is ``/bin/true`` (``podman_binary``) vs ``/bin/true``

Pairs alternate (AB, BA, AB, ...) in one run so load drifts hit both sides; prints medians,
the ratio of medians and the median of per-pair ratios with its 95% bootstrap interval (how
much this run's noise alone moves it). The flake is called through its
symlink to the installed console script (the venv's bin), like a user would; with ``--installed``
to ``PREFIX/bin/podman-pilot`` of scripts/install.sh into a temp prefix (what ``make install``
gives: ``#!/usr/bin/python3 -IS``, byte-compiled package).
Run as root from the repository: ``.venv/bin/python bench/podman_launch.py [-n 21] [--installed]
[--rootless]``
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
from conftest import BB_IMAGE, BIN, STATE, STORAGE, busybox_rootfs_tar, import_image, podman, storage_conf  # noqa: E402


def timed(argv: list[str], env: dict[str, str], cpu: list[float] | None = None, user: dict | None = None) -> float:
    """Wall seconds of one run; appends its CPU seconds (user+sys of the process and the children
    it reaped) to *cpu*, steadier than wall time on a shared host. *user*: Popen's user, group,
    extra_groups and cwd (the rootless case)."""
    start = time.perf_counter()
    proc = subprocess.Popen(
        argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, **(user or {})
    )
    assert proc.stderr is not None
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    proc.stderr.close()
    if proc.returncode != 0:
        raise SystemExit(f"{argv[0]} failed ({proc.returncode}): {err.decode()[-300:]}")
    if cpu is not None:
        cpu.append(usage.ru_utime + usage.ru_stime)
    return elapsed


def backdate(*files: Path) -> None:
    """Registrations are older than a second, as installed ones are: the registration cache then
    trusts their stamps (a file changed within the last second is also compared by content)."""
    past = time.time() - 10
    for f in files:
        os.utime(f, (past, past))


def pairs(
    label: str,
    flake: list[str],
    raw: list[str],
    env: dict[str, str],
    n: int,
    beside: list[str] | None = None,
    user: dict | None = None,
) -> tuple[float, float]:
    """*beside*: a third command timed in the same rounds (the OCI runtime alone), its median
    printed next to the pair."""
    for _ in range(2):  # warm-up: plan cache, instance, page cache
        timed(flake, env, user=user)
        timed(raw, env, user=user)
        if beside:
            timed(beside, env, user=user)
    fl, rw, bs = [], [], []
    fc: list[float] = []
    rc: list[float] = []
    for i in range(n):
        if i % 2:
            rw.append(timed(raw, env, rc, user))
            fl.append(timed(flake, env, fc, user))
        else:
            fl.append(timed(flake, env, fc, user))
            rw.append(timed(raw, env, rc, user))
        if beside:
            bs.append(timed(beside, env, user=user))
    mf, mr = statistics.median(fl), statistics.median(rw)
    ratios = [f / r for f, r in zip(fl, rw, strict=True)]
    per_pair = statistics.median(ratios)
    low, high = bootstrap_median(ratios)
    cf, cr = statistics.median(fc), statistics.median(rc)
    print(
        f"{label:9} flake median {mf * 1000:7.1f} ms   raw median {mr * 1000:7.1f} ms   "
        f"ratio {mf / mr:.3f}   median pair ratio {per_pair:.3f} (95% CI {low:.3f}-{high:.3f})   "
        f"(+{(mf - mr) * 1000:.1f} ms, n={n})   "
        f"CPU flake {cf * 1000:.1f} ms raw {cr * 1000:.1f} ms (+{(cf - cr) * 1000:.1f} ms)"
    )
    if beside:
        mb = statistics.median(bs)
        shown = " ".join(beside[:2])
        print(f"{'':9} runtime alone median {mb * 1000:7.1f} ms   flake/runtime {mf / mb:.3f}   ({shown} ...)")
    return mf, mr


def bootstrap_median(values: list[float], rounds: int = 2000) -> tuple[float, float]:
    """95% percentile-bootstrap interval of the median: how far this run's noise alone moves it."""
    import random

    rng = random.Random(1)  # the interval of a given sample is reproducible
    medians = sorted(statistics.median(rng.choices(values, k=len(values))) for _ in range(rounds))
    return medians[int(rounds * 0.025)], medians[int(rounds * 0.975) - 1]


def runtime_alone(record: Path, cmd: list[str]) -> list[str]:
    """The OCI runtime entering the instance by itself, as the launcher's record says where
    (launch/podman/oci.py): ``[nsenter ...] runc --root ROOT exec CID CMD``."""
    import marshal

    rec = marshal.loads(record.read_bytes())
    assert rec["process"] is not None, f"no runtime entry recorded: {rec.get('why')}"
    enter = []
    if rec["holder"] is not None:
        enter = [rec["nsenter"], "-U", "-m", "--preserve-credentials", "-t", str(rec["holder"][0])]
    return [*enter, rec["runtime"], "--root", rec["root"], *rec["global"], "exec", rec["cid"], *cmd]


def rootless_resume(pilot: Path, n: int) -> None:
    """The resume case as the rootless test user, in its own storage (tests/podman_scopes.py)."""
    from podman_scopes import prepare_user, remove_user_scope, user_scope

    storage = storage_conf(STORAGE / "root")
    scope = user_scope(*prepare_user(storage))
    user = {"user": scope.uid, "group": scope.gid, "extra_groups": [], "cwd": str(scope.root)}
    try:
        app = scope.bin_dir / "bench-resume"
        scope.register("bench-resume", resume=True)
        app.unlink()
        app.symlink_to(pilot)
        backdate(*scope.flakes_dir.iterdir())
        env = {k: v for k, v in scope.env.items() if k != "PILOT_DEBUG"}
        timed([str(app), "-c", "true"], env, user=user)  # creates the instance
        cid = scope.cid_files()[0].read_text().strip()
        record = next(scope.ids_dir.glob("*/bench-resume.oci"))
        pairs(
            "rootless",
            [str(app), "-c", "true"],
            ["podman", "--log-level=error", "exec", "-i", cid, "/bin/sh", "-c", "true"],
            {**env, "CONTAINERS_STORAGE_CONF": str(scope.storage)},
            n,
            beside=runtime_alone(record, ["/bin/sh", "-c", "true"]),
            user=user,
        )
    finally:
        remove_user_scope(scope)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("-n", type=int, default=61, help="pairs per case (default 61)")
    parser.add_argument("--rootless", action="store_true", help="also the resume case as the rootless test user")
    parser.add_argument(
        "--installed",
        action="store_true",
        help="the launcher of scripts/install.sh into a temp prefix, not the venv's console script",
    )
    args = parser.parse_args()
    import compileall

    # an installed package is byte-compiled; a dev tree under PYTHONDONTWRITEBYTECODE=1 is not,
    # and compiling the launcher's modules on every call would be measured instead of the launch
    compileall.compile_dir(str(REPO / "src" / "flake_pilot"), quiet=1)
    conf = STATE / "podman" / "containers.conf"
    if conf.exists():
        os.environ["CONTAINERS_CONF"] = str(conf)
    storage = storage_conf(STORAGE / "root")
    if podman("image", "exists", BB_IMAGE, storage=storage, check=False).returncode != 0:
        import_image(BB_IMAGE, busybox_rootfs_tar(), storage)
    with tempfile.TemporaryDirectory(prefix="flake-bench-") as tmp:
        root = Path(tmp)
        if args.rootless:
            root.chmod(0o755)  # the test user runs the launcher installed here
        (root / "flakes").mkdir()
        (root / "bin").mkdir()
        if args.installed:
            from installed import install

            pilot = install(root / "inst") / "podman-pilot"
        else:
            pilot = BIN / "podman-pilot"
        (root / "flakes.yml").write_text(
            f"generic:\n  flakes_dir: {root / 'flakes'}\n  podman_ids_dir: {root / 'ids'}\n"
            f"  podman_storage_conf: {storage}\n"
        )
        for name, resume in (("bench-once", "false"), ("bench-resume", "true")):
            (root / "flakes" / f"{name}.yaml").write_text(
                f"include: {{tar: ~, path: ~}}\ncontainer:\n  name: {BB_IMAGE}\n  target_app_path: /bin/sh\n"
                f"  host_app_path: {root / 'bin' / name}\n  check_host_dependencies: false\n"
                f"  runtime: {{runas: root, resume: {resume}, attach: false, podman: ~}}\n"
            )
            (root / "bin" / name).symlink_to(pilot)
        backdate(root / "flakes.yml", *(root / "flakes").iterdir())
        env = {
            **os.environ,
            "FLAKES_CONFIG": str(root / "flakes.yml"),
            "XDG_CACHE_HOME": str(root / "cache"),
            "CONTAINERS_STORAGE_CONF": str(storage),
        }
        env.pop("PILOT_DEBUG", None)
        env.pop("PYTHONDONTWRITEBYTECODE", None)  # measure with bytecode caches, as an installed package has
        raw_podman = ["podman", "--log-level=error"]
        print(
            f"podman-pilot launch bench: {BB_IMAGE}, launcher {pilot} ({pilot.read_text().splitlines()[0]}), "
            f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}"
        )
        pairs(
            "one-shot",
            [str(root / "bin" / "bench-once"), "-c", "true"],
            [*raw_podman, "run", "--rm", "-i", "--entrypoint", "/bin/sh", BB_IMAGE, "-c", "true"],
            env,
            args.n,
        )
        timed([str(root / "bin" / "bench-resume"), "-c", "true"], env)  # creates the instance
        cid = next((root / "ids").glob("*/bench-resume.cid")).read_text().strip()
        try:
            pairs(
                "resume",
                [str(root / "bin" / "bench-resume"), "-c", "true"],
                [*raw_podman, "exec", "-i", cid, "/bin/sh", "-c", "true"],
                env,
                args.n,
                beside=runtime_alone(next((root / "ids").glob("*/bench-resume.oci")), ["/bin/sh", "-c", "true"]),
            )
        finally:
            subprocess.run([*raw_podman, "rm", "-f", "-t", "0", cid], env=env, capture_output=True)
        if args.rootless:
            rootless_resume(pilot, args.n)
        fake = root / "fake"
        (fake / "flakes").mkdir(parents=True)
        (fake / "flakes.yml").write_text(
            f"generic:\n  flakes_dir: {fake / 'flakes'}\n  podman_ids_dir: {root / 'ids'}\n  podman_binary: /bin/true\n"
            f"  podman_storage_conf: {storage}\n"  # the launcher checks that it exists; /bin/true ignores it
        )
        (fake / "flakes" / "bench-once.yaml").write_text((root / "flakes" / "bench-once.yaml").read_text())
        backdate(fake / "flakes.yml", fake / "flakes" / "bench-once.yaml")
        pairs(
            "launcher",
            [str(root / "bin" / "bench-once"), "-c", "true"],
            ["/bin/true", "run", "--rm"],
            {**env, "FLAKES_CONFIG": str(fake / "flakes.yml")},
            args.n,
        )
        print(f"load after: {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
