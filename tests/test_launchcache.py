"""The launchers' shared registration cache (flake_pilot.launch.launchcache), in process."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from flake_pilot.launch import launchcache
from flake_pilot.launch.firecracker import plan as fcplan
from flake_pilot.launch.podman import plan


@pytest.fixture()
def reg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    flakes = tmp_path / "flakes"
    flakes.mkdir()
    cfg = tmp_path / "flakes.yml"
    cfg.write_text(f"generic:\n  flakes_dir: {flakes}\n  podman_ids_dir: {tmp_path / 'ids'}\n")
    (flakes / "app.yaml").write_text("container:\n  name: img1\n  runtime: {runas: root}\n")
    monkeypatch.setenv("FLAKES_CONFIG", str(cfg))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "userconfig"))
    return flakes


def test_fresh_registration_is_cached_and_a_same_stamp_rewrite_is_seen(
    reg: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert plan.load("app").image == "img1"
    hit = plan.cached("app")  # written just now (racy): the content digest vouches for it
    assert hit is not None and hit.image == "img1"
    old = {p: launchcache.stamp(p) for p in launchcache.inputs("app")}
    (reg / "app.yaml").write_text("container:\n  name: img2\n  runtime: {runas: root}\n")  # same size
    real = launchcache.stamp
    monkeypatch.setattr(launchcache, "stamp", lambda p: old.get(p, real(p)))  # a coarse clock: same stamps
    assert plan.cached("app") is None  # the digest differs
    monkeypatch.setattr(launchcache, "stamp", real)
    assert plan.load("app").image == "img2"


def test_a_racy_plan_is_stored_again_once_its_inputs_are_old(reg: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A plan stored right after its registration was written checks the files' contents on every
    launch; once every input is more than a second older than a launch that verified them, that
    launch stores the plan again, and later launches trust the stamps alone (like git refreshing
    its index)."""
    import marshal

    plan.load("app")
    [cached] = (reg.parent / "cache" / "flake-pilot" / "plans").glob("podman-app-*.plan")
    read: list[str] = []
    real_digest = launchcache.digest
    monkeypatch.setattr(launchcache, "digest", lambda p: read.append(p) or real_digest(p))
    assert plan.cached("app") is not None and read  # racy: contents compared, not stored again
    first = marshal.loads(cached.read_bytes())["stored"]
    later = launchcache.time_ns() + 2 * launchcache.RACY_NS  # as if two seconds had passed
    monkeypatch.setattr(launchcache, "time_ns", lambda: later)
    read.clear()
    assert plan.cached("app") is not None and read  # verified once more, then stored as of now
    assert marshal.loads(cached.read_bytes())["stored"] == later > first
    assert cached.stat().st_mode & 0o777 == 0o600
    read.clear()
    hit = plan.cached("app")
    assert hit is not None and hit.image == "img1" and not read  # stamps alone from now on
    (reg / "app.yaml").write_text("container:\n  name: img33\n  runtime: {runas: root}\n")
    assert plan.cached("app") is None  # a later change still shows in the stamp (here: the size)


def test_plan_cache_follows_the_files(reg: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "flakes.yml"
    past = time.time() - 10  # old inputs: no content check on a hit
    for f in (cfg, reg / "app.yaml"):
        os.utime(f, (past, past))
    assert plan.cached("app") is None
    assert plan.load("app").image == "img1"
    hit = plan.cached("app")
    assert hit is not None and hit.image == "img1" and hit.target == "app" and not hit.user_mode
    cache_dir = tmp_path / "cache" / "flake-pilot" / "plans"
    assert (cache_dir.stat().st_mode & 0o777) == 0o700
    (reg / "app.d").mkdir()
    assert plan.cached("app") is None  # a new drop-in dir
    assert plan.load("app").image == "img1"
    (reg / "app.d" / "a.yaml").write_text("container:\n  name: img2\n")
    assert plan.cached("app") is None  # a new drop-in
    assert plan.load("app").image == "img2"
    monkeypatch.setenv("FLAKES_CONFIG", str(tmp_path / "other.yml"))
    assert plan.cached("app") is None  # another config: another cache entry


def test_only_a_private_cache_is_used(reg: Path, tmp_path: Path) -> None:
    plan.load("app")
    plans = tmp_path / "cache" / "flake-pilot" / "plans"
    assert plans.stat().st_mode & 0o777 == 0o700 and plans.parent.stat().st_mode & 0o777 == 0o700
    [stored] = plans.glob("podman-app-*.plan")
    assert stored.stat().st_mode & 0o777 == 0o600 and plan.cached("app") is not None
    for path, mode in ((plans, 0o755), (plans.parent, 0o770), (stored, 0o644)):
        os.chmod(path, mode)
        assert plan.cached("app") is None, path
        os.chmod(path, 0o600 if path == stored else 0o700)
    assert plan.cached("app") is not None
    moved = tmp_path / "elsewhere"
    plans.rename(moved)
    plans.symlink_to(moved)  # a symlinked cache dir is refused
    assert plan.cached("app") is None
    plans.unlink()
    moved.rename(plans)
    target = plans / "real"
    stored.rename(target)
    stored.symlink_to(target)  # and so is a symlinked cache file
    assert plan.cached("app") is None


def test_kinds_do_not_mix(reg: Path) -> None:
    plan.load("app")
    assert fcplan.cached("app") is None  # a podman plan is never read as a VM plan
    with pytest.raises(Exception, match="not a Firecracker VM"):
        fcplan.load("app")


def test_a_cache_dir_of_ours_made_with_a_loose_umask_is_tightened(reg: Path, tmp_path: Path) -> None:
    """~/.cache/flake-pilot left 0755 (by an older version or a umask) must not disable the cache for good."""
    plans = tmp_path / "cache" / "flake-pilot" / "plans"
    plans.mkdir(parents=True)
    os.chmod(plans.parent, 0o755)
    os.chmod(plans, 0o755)
    plan.load("app")  # stores: tightens both dirs of ours
    assert plans.parent.stat().st_mode & 0o777 == 0o700 and plans.stat().st_mode & 0o777 == 0o700
    assert plan.cached("app") is not None
