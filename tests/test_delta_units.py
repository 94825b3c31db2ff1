"""Pure parts of delta composition: host-file lists, tar member names, store name resolution."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from flake_pilot.errors import SecurityError
from flake_pilot.podman import compose_store, hostdeps
from flake_pilot.podman.compose_build import repo_name
from flake_pilot.podman.compose_tar import clean_name


def test_removed_list_is_data() -> None:
    text = "# comment\n/etc/hosts\n\n  etc/ssl/certs/ \n/etc/hosts\n/usr//lib/x.so\n"
    assert hostdeps.parse_list(text, "img:/removed") == ["/etc/hosts", "/etc/ssl/certs", "/usr/lib/x.so"]


@pytest.mark.parametrize("line", ["/etc/../root/.ssh/id_rsa", "../../etc/shadow", "a/b/../../c"])
def test_removed_list_refuses_dotdot(line: str) -> None:
    with pytest.raises(SecurityError, match="line 2"):
        hostdeps.parse_list(f"/ok\n{line}\n", "img:/removed")


@pytest.mark.parametrize(("name", "clean"), [("./etc/a", "etc/a"), ("/etc//a/", "etc/a"), (".", ""), ("a/./b", "a/b")])
def test_member_names_made_relative(name: str, clean: str) -> None:
    assert clean_name(name, "x") == clean


@pytest.mark.parametrize("name", ["../x", "etc/../../x", "/a/../b"])
def test_member_names_never_leave_the_root(name: str) -> None:
    with pytest.raises(SecurityError, match="outside the container root"):
        clean_name(name, "include.tar x.tar")


def test_host_file_policy(tmp_path: Path) -> None:
    public, private = tmp_path / "public", tmp_path / "private"
    public.write_text("x")
    private.write_text("x")
    public.chmod(0o644)
    private.chmod(0o600)
    check = hostdeps.HostFileCheck("flake.yaml", ignore_errors=False)
    assert check(str(public), os.lstat(public))
    with pytest.raises(SecurityError, match="not world-readable"):
        check(str(private), os.lstat(private))
    lenient = hostdeps.HostFileCheck("flake.yaml", ignore_errors=True)
    assert not lenient(str(private), os.lstat(private)) and not lenient.exists(str(tmp_path / "missing"))
    assert lenient.skipped == [str(private), str(tmp_path / "missing")]
    assert stat.S_IMODE(os.lstat(private).st_mode) == 0o600


def test_store_index_resolves_like_podman(tmp_path: Path) -> None:
    images = [
        {"id": "a" * 64, "names": ["localhost/tools/base:latest"], "digest": "sha256:" + "1" * 64},
        {"id": "b" * 64, "names": ["registry.example/delta/joe:2", "docker.io/library/joe:latest"]},
        {"id": "c" * 64, "names": ["localhost/joe:latest"]},
    ]
    path = tmp_path / "images.json"
    path.write_text(json.dumps(images))
    index = compose_store.load(str(path))
    assert index is not None
    assert index.resolve("localhost/tools/base") == "a" * 64
    assert index.resolve("registry.example/delta/joe:2") == "b" * 64
    assert index.resolve("registry.example/delta/joe") is None  # :latest is another tag
    assert index.resolve("localhost/tools/base@sha256:" + "1" * 64) == "a" * 64
    assert index.resolve("joe") is None  # short name matching two images: ask the engine
    assert index.resolve("c" * 64) == "c" * 64
    assert compose_store.load(str(tmp_path / "missing.json")) is None


def test_repo_names_are_valid_references() -> None:
    assert repo_name("aws") == "aws"
    assert repo_name("My_App+2.0@x") == "my-app-2-0-x"
    assert repo_name("...") == "app"
