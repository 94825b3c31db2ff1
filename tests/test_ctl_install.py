"""scripts/install.sh (make install): a distro-style install into a staging DESTDIR and a runnable
install into a private prefix."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

import flake_pilot
from conftest import check_preload, imported, need

ROOT = Path(__file__).resolve().parent.parent
HOSTPY = "/usr/bin/python3"


pytestmark = pytest.mark.build


def install(destdir: str, prefix: str, sysconfdir: str) -> subprocess.CompletedProcess:
    need(os.access(HOSTPY, os.X_OK), f"{HOSTPY} missing: install.sh installs for the system Python (Debian python3)")
    return subprocess.run(
        ["bash", str(ROOT / "scripts/install.sh"), destdir, prefix, sysconfdir],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_make_install_layout_into_destdir(tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    before = subprocess.run(
        ["git", "-C", str(ROOT), "status", "--porcelain", "--ignored", "build"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    proc = install(str(dest), "/usr", "/etc")
    assert proc.returncode == 0, proc.stderr
    for prog, flags in (("flake-ctl", "-I"), ("podman-pilot", "-IS"), ("firecracker-pilot", "-IS")):
        launcher = dest / "usr/bin" / prog
        assert os.access(launcher, os.X_OK)
        head = launcher.read_text().splitlines()
        assert head[0] == f"#!{HOSTPY} {flags}" and 'sys.path.insert(0, "/usr/lib/flake-pilot")' in head
    assert (dest / "usr/lib/flake-pilot/flake_pilot/ctl/main.py").is_file()
    generic = yaml.safe_load((dest / "etc/flakes.yml").read_text())["generic"]
    assert generic == {  # no state base: each caller's own default (statedir.default_base)
        "flakes_dir": "/usr/share/flakes",
        "podman_storage_conf": "/etc/flakes/storage.conf",
    }
    template = yaml.safe_load((dest / "etc/flakes/container-flake.yaml").read_text())
    assert set(template) == {"include", "container"} and "runtime" in template["container"]
    assert "vm" in yaml.safe_load((dest / "etc/flakes/firecracker-flake.yaml").read_text())
    assert 'graphroot = "/usr/share/flakes/storage"' in (dest / "etc/flakes/storage.conf").read_text()
    after = subprocess.run(
        ["git", "-C", str(ROOT), "status", "--porcelain", "--ignored", "build"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert after == before  # the checkout got no build/ dir

    # a second install keeps changed configuration and puts the new one next to it
    (dest / "etc/flakes.yml").write_text("generic: {flakes_dir: /srv/flakes}\n")
    proc = install(str(dest), "/usr", "/etc")
    assert proc.returncode == 0 and "kept" in proc.stderr
    assert (dest / "etc/flakes.yml").read_text() == "generic: {flakes_dir: /srv/flakes}\n"
    assert (dest / "etc/flakes.yml.new").is_file()


def test_installed_programs_run(tmp_path: Path) -> None:
    prefix, etc = tmp_path / "usr", tmp_path / "etc"
    proc = install("", str(prefix), str(etc))
    assert proc.returncode == 0, proc.stderr
    assert f"podman_storage_conf: {etc}/flakes/storage.conf" in (etc / "flakes.yml").read_text()
    env = {"PATH": "/usr/bin:/bin", "FLAKES_CONFIG": str(etc / "flakes.yml"), "HOME": str(tmp_path)}
    version = subprocess.run([str(prefix / "bin/flake-ctl"), "--version"], capture_output=True, text=True, env=env)
    assert version.returncode == 0 and version.stdout.startswith("flake-ctl ")
    # flakes_dir of the installed default config is /usr/share/flakes: point it into the test dir
    cfg = (etc / "flakes.yml").read_text().replace("/usr/share/flakes", str(tmp_path / "flakes"))
    (etc / "flakes.yml").write_text(cfg)
    (etc / "flakes/storage.conf").write_text(
        (etc / "flakes/storage.conf").read_text().replace("/usr/share/flakes", str(tmp_path / "flakes"))
    )
    app = tmp_path / "bin/hello"
    reg = subprocess.run(
        [
            str(prefix / "bin/flake-ctl"),
            "podman",
            "register",
            "--container",
            "registry.example.com/img",
            "--app",
            str(app),
        ],
        capture_output=True,
        text=True,
        env=env,
    )
    assert reg.returncode == 0, reg.stderr
    assert os.readlink(app) == str(prefix / "bin/podman-pilot")  # the installed launcher, found next to flake-ctl
    listed = subprocess.run(
        [str(prefix / "bin/flake-ctl"), "list", "--format", "csv"], capture_output=True, text=True, env=env
    )
    assert listed.stdout.splitlines()[1].startswith("hello,podman,")
    shutil.rmtree(prefix)


def test_installed_launcher_starts_without_site(tmp_path: Path) -> None:
    """The installed podman-pilot runs as ``python3 -IS``: a cold launch (no registration cache:
    the YAML is parsed) finds the system PyYAML through site.main(); a warm launch imports
    neither yaml nor site. The engine is /bin/true (podman_binary), so no podman is needed."""
    prefix = tmp_path / "usr"
    proc = install("", str(prefix), str(tmp_path / "etc"))
    assert proc.returncode == 0, proc.stderr
    launcher = prefix / "bin/podman-pilot"
    shebang = launcher.read_text().splitlines()[0]
    assert shebang == f"#!{HOSTPY} -IS"
    flakes, bindir = tmp_path / "flakes", tmp_path / "bin"
    flakes.mkdir()
    bindir.mkdir()
    (tmp_path / "storage.conf").write_text("")  # the launcher checks that it exists; /bin/true ignores it
    (tmp_path / "flakes.yml").write_text(
        f"generic:\n  flakes_dir: {flakes}\n  podman_ids_dir: {tmp_path / 'ids'}\n  podman_binary: /bin/true\n"
        f"  podman_storage_conf: {tmp_path / 'storage.conf'}\n"
    )
    app = bindir / "hello"
    (flakes / "hello.yaml").write_text(
        "include: {tar: ~, path: ~}\ncontainer:\n  name: img\n  target_app_path: /bin/sh\n"
        f"  host_app_path: {app}\n  check_host_dependencies: false\n"
        "  runtime: {resume: false, attach: false, podman: ~}\n"
    )
    app.symlink_to(launcher)
    cache = tmp_path / "cache"
    env = {
        "PATH": "/usr/bin:/bin",
        "FLAKES_CONFIG": str(tmp_path / "flakes.yml"),
        "HOME": str(tmp_path),
        "XDG_CACHE_HOME": str(cache),
    }

    def launch(*pre: str) -> subprocess.CompletedProcess:
        done = subprocess.run([*pre, str(app), "-c", "true"], capture_output=True, text=True, env=env, timeout=60)
        assert done.returncode == 0, done.stderr
        return done

    # through the shebang itself: cold (parses YAML, stores the plan), then warm
    launch()
    assert list((cache / "flake-pilot/plans").iterdir()), "the cold launch stored no plan"
    launch()
    # the same interpreter and flags as the shebang, plus -X importtime (-I ignores PYTHON* variables)
    traced = [HOSTPY, "-IS", "-X", "importtime"]
    warm = imported(launch(*traced).stderr)
    assert "flake_pilot" in warm  # the trace is real
    assert not {"site", "yaml", "_yaml"} & warm, sorted(warm)
    # what a warm launch does without: os (~2 ms, fastos instead), __future__, typing, the error
    # classes (imported on failure only) and the heavy stdlib the slow paths use
    slow = {"os", "__future__", "typing", "flake_pilot.errors", "subprocess", "signal", "enum", "re", "shlex"}
    assert not slow & warm, sorted(slow & warm)
    # the warm modules run from their .pyc without the import system; a stale one falls back to it
    check_preload(lambda: imported(launch(*traced).stderr), prefix / "lib/flake-pilot", flake_pilot._WARM_PODMAN)
    shutil.rmtree(cache)
    cold = imported(launch(*traced).stderr)
    assert {"site", "yaml", "flake_pilot.yamlio"} <= cold, sorted(cold)
    shutil.rmtree(prefix)


def _tree(root: Path) -> dict[str, str]:
    """Every path under *root* with its content (files) or kind."""
    kind = {True: "dir", False: "link"}
    return {
        str(p.relative_to(root)): p.read_text() if p.is_file() and not p.is_symlink() else kind[p.is_dir()]
        for p in sorted(root.rglob("*"))
    }


def make(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["make", "-s", "-C", str(ROOT), *args], capture_output=True, text=True, timeout=300)


def test_make_build_install_uninstall_leaves_the_tree_as_before(tmp_path: Path) -> None:
    """make build, then make install and make uninstall into a DESTDIR: uninstall removes exactly what
    install put in place (the directories it created too), keeps a configuration file the user
    changed, and leaves what was there before untouched."""
    stage, dest = tmp_path / "stage", tmp_path / "dest"
    # STAGE relative to the checkout, like its default build/stage
    paths = [f"STAGE={os.path.relpath(stage, ROOT)}", f"DESTDIR={dest}", "PREFIX=/usr", "SYSCONFDIR=/etc"]
    paths.append(f"PYTHON={HOSTPY}")
    (dest / "usr/share/man/man8").mkdir(parents=True)
    (dest / "usr/share/man/man8/other.8").write_text("someone else's page\n")
    before = _tree(dest)
    built = make("build", *paths)
    assert built.returncode == 0, built.stderr
    assert (stage / "bin/podman-pilot").read_text().startswith(f"#!{HOSTPY} -IS\n")
    assert make("build", *paths).stdout.strip() == ""  # up to date: nothing rebuilt

    proc = make("install", *paths)
    assert proc.returncode == 0, proc.stderr
    listed = (dest / "usr/lib/flake-pilot/.installed-files").read_text().splitlines()
    assert "f /usr/bin/podman-pilot" in listed and "t /usr/lib/flake-pilot" in listed
    assert "d /usr/share/man" not in listed  # it was there before: not ours
    assert (dest / "usr/bin/flake-ctl").is_file() and (dest / "etc/flakes.yml").is_file()
    proc = make("uninstall", *paths)
    assert proc.returncode == 0, proc.stderr
    assert _tree(dest) == before

    # a changed configuration file is kept (and so its directory); everything else goes
    assert make("install", *paths).returncode == 0
    (dest / "etc/flakes.yml").write_text("generic: {flakes_dir: /srv/flakes}\n")
    assert make("install", *paths).returncode == 0  # a second install over the first
    proc = make("uninstall", *paths)
    assert proc.returncode == 0 and "kept" in proc.stderr, proc.stderr
    assert _tree(dest) == {**before, "etc": "dir", "etc/flakes.yml": "generic: {flakes_dir: /srv/flakes}\n"}

    script = str(ROOT / "scripts/install.sh")
    proc = subprocess.run(["bash", script, "uninstall", str(dest), "/usr"], capture_output=True)
    assert proc.returncode == 4 and b"flake-pilot is not installed" in proc.stderr  # nothing left to remove
