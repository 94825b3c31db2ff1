"""The launcher's registration cache: a hit skips PyYAML; any change to the YAML is seen."""

from __future__ import annotations

import os
import time
from pathlib import Path

from firecracker_fixtures import VmPrefix


def imported(stderr: str) -> set[str]:
    return {ln.rsplit("|", 1)[1].strip() for ln in stderr.splitlines() if ln.startswith("import time:")}


def age(*paths: Path) -> None:
    """Make files look written 10 s ago (then a hit needs no content check)."""
    past = time.time() - 10
    for p in paths:
        os.utime(p, (past, past))


def run(vp: VmPrefix, app: str) -> tuple[str, set[str]]:
    res = vp.prefix.app(app, env={"PYTHONPROFILEIMPORTTIME": "1"}, timeout=30)
    assert res.returncode == 0, res.stderr
    cmdline = [ln for ln in res.stdout.replace("\r", "").splitlines() if ln.startswith("CMDLINE:")][0]
    return cmdline, imported(res.stderr)


def test_cache_hit_skips_yaml_and_edits_are_seen(vm_prefix: VmPrefix) -> None:
    vm_prefix.register("cached", boot_args=("console=ttyS0", "marker=one"))
    yaml_file = vm_prefix.prefix.flakes_dir / "cached.yaml"
    age(yaml_file, vm_prefix.prefix.config)
    first, mods = run(vm_prefix, "cached")
    assert "yaml" in mods and "marker=one" in first  # parsed, then stored
    cache = Path(vm_prefix.prefix.env["XDG_CACHE_HOME"]) / "flake-pilot"
    assert cache.stat().st_mode & 0o777 == 0o700 and (cache / "plans").stat().st_mode & 0o777 == 0o700
    [stored] = (cache / "plans").glob("firecracker-cached-*.plan")  # the launchers' shared cache
    assert stored.stat().st_mode & 0o777 == 0o600
    second, mods = run(vm_prefix, "cached")
    assert "yaml" not in mods and second == first  # hit: no YAML import, same VM definition

    yaml_file.write_text(yaml_file.read_text().replace("marker=one", "marker=two"))  # same size
    third, mods = run(vm_prefix, "cached")
    assert "yaml" in mods and "marker=two" in third

    dropins = vm_prefix.prefix.flakes_dir / "cached.d"
    dropins.mkdir()
    dropin = 'vm: {runtime: {firecracker: {boot_args: ["console=ttyS0", "m=3"]}}}\n'
    (dropins / "50-args.yaml").write_text(dropin)
    fourth, _ = run(vm_prefix, "cached")
    assert "m=3" in fourth and "marker" not in fourth

    yaml_file.unlink()
    res = vm_prefix.prefix.app("cached", timeout=30)
    assert res.returncode == 125 and "no flake registration" in res.stderr


def test_untrusted_cache_dir_is_ignored(vm_prefix: VmPrefix) -> None:
    vm_prefix.register("c2", boot_args=("console=ttyS0", "marker=real"))
    age(vm_prefix.prefix.flakes_dir / "c2.yaml", vm_prefix.prefix.config)
    cache = Path(vm_prefix.prefix.env["XDG_CACHE_HOME"]) / "flake-pilot"
    run(vm_prefix, "c2")
    os.chmod(cache, 0o777)  # others could have written it: not used
    _, mods = run(vm_prefix, "c2")
    assert "yaml" in mods
