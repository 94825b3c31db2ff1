"""Unit tests: generic settings, registration parsing with drop-ins, flake-ctl pure helpers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from flake_pilot import flakeconf, settings
from flake_pilot.ctl import output
from flake_pilot.ctl.podman import container_config, info_file_name, resolve_archive, strip_escape
from flake_pilot.errors import ConfigError, NotFoundError, UsageError
from flake_pilot.launch import fastos

# A registration exactly as the original flake-ctl 3.1.44 writes it (serde_yaml 0.8, `vm: ~`, "-ti").
ORIGINAL_CONTAINER = """\
---
include:
  tar: ~
  path: ~
container:
  name: docker.io/amazon/aws-cli
  target_app_path: /
  host_app_path: /usr/bin/aws
  base_container: ~
  check_host_dependencies: false
  layers: ~
  runtime:
    runas: root
    resume: false
    attach: false
    podman:
      - "--net host"
      - "-ti"
vm: ~
"""


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    monkeypatch.setenv("FLAKES_CONFIG", str(tmp_path / "flakes.yml"))
    return tmp_path


# -- settings ------------------------------------------------------------------------------------


@pytest.fixture
def as_root(monkeypatch: pytest.MonkeyPatch) -> None:
    """The defaults of root's scope, whoever runs the tests (make check runs unprivileged)."""
    monkeypatch.setattr(settings.os, "getuid", lambda: 0)
    monkeypatch.setattr(fastos, "getuid", lambda: 0)


def test_settings_defaults_without_file(env: Path, as_root: None) -> None:
    s = settings.load(False)
    assert s.source is None
    assert (s.flakes_dir, s.podman_ids_dir, s.podman_storage_conf) == (
        "/usr/share/flakes",
        "/run/flakes",  # root's own runtime dir: no other user can create or swap it
        "/etc/flakes/storage.conf",
    )
    assert s.podman_binary == "podman"


def test_settings_system_file_and_additions(env: Path, as_root: None) -> None:
    (env / "flakes.yml").write_text(
        "generic:\n  flakes_dir: /srv/flakes\n  podman_binary: /opt/podman\n  future_key: 1\n"
    )
    s = settings.load(False)
    assert s.source == str(env / "flakes.yml")
    assert s.flakes_dir == "/srv/flakes"
    assert s.podman_binary == "/opt/podman"
    assert s.podman_ids_dir == "/run/flakes"  # unset keys keep the default


def test_settings_user_mode(env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(settings.os, "getuid", lambda: 1000)  # root never reads a user scope
    (env / "flakes.yml").write_text("generic:\n  podman_ids_dir: /run/ids\n")
    s = settings.load(True)
    home = env / "home"
    assert s.flakes_dir == str(home / ".config/flakes")
    assert s.podman_ids_dir == "/run/ids"  # inherited from the system file
    assert s.podman_storage_conf is None  # the caller's own storage until `init --user`
    cfg = home / ".config/flakes.yml"
    cfg.parent.mkdir(parents=True)
    cfg.write_text(f"generic:\n  flakes_dir: {home}/f\n  podman_storage_conf: {home}/s.conf\n")
    s = settings.load(True)
    assert (s.flakes_dir, s.podman_storage_conf, s.source) == (f"{home}/f", f"{home}/s.conf", str(cfg))


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("generic:\n  flakes_dir: relative/dir\n", "key 'generic.flakes_dir'"),
        ("generic:\n  podman_ids_dir: 5\n", "key 'generic.podman_ids_dir'"),
        ("generic: [a, b]\n", "'generic' section"),
        ("generic:\n  flakes_dir: [unclosed\n", "invalid YAML at line 3"),
    ],
)
def test_settings_errors_name_file_and_key(env: Path, text: str, needle: str) -> None:
    (env / "flakes.yml").write_text(text)
    with pytest.raises(ConfigError) as err:
        settings.load(False)
    assert str(env / "flakes.yml") in str(err.value)
    assert needle in str(err.value)


# -- registrations and drop-ins ------------------------------------------------------------------


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_original_file_loads_unchanged(tmp_path: Path) -> None:
    cfg = write(tmp_path / "aws.yaml", ORIGINAL_CONTAINER)
    flake = flakeconf.parse("aws", str(cfg))
    assert isinstance(flake, flakeconf.PodmanFlake)
    assert flake.image == "docker.io/amazon/aws-cli"
    assert flake.target_app_path == "/"
    assert flake.host_app_path == "/usr/bin/aws"
    assert flake.podman_opts == ("--net host", "-ti")
    assert flake.runas == "root" and not flake.user_mode
    assert (flake.resume, flake.attach, flake.layers, flake.include) == (
        False,
        False,
        (),
        flakeconf.Include(),
    )


def test_dropins_merge_nested_later_scalar_and_list_win(tmp_path: Path) -> None:
    cfg = write(tmp_path / "aws.yaml", ORIGINAL_CONTAINER)
    write(tmp_path / "aws.d/20-opts.yaml", "container:\n  runtime:\n    podman: ['--rm-me']\n")
    write(
        tmp_path / "aws.d/10-resume.yaml",
        "container:\n  runtime:\n    resume: true\n    podman: ['-e', 'X=1']\n",
    )
    write(tmp_path / "aws.d/30-layer.yaml", "container:\n  base_container: base\n  layers: [l1, l2]\n")
    write(tmp_path / "aws.d/40-notes.txt", "container: {name: ignored}\n")  # only *.yaml are drop-ins
    flake = flakeconf.parse("aws", str(cfg))
    assert isinstance(flake, flakeconf.PodmanFlake)
    assert flake.resume is True  # nested mapping merged: runas etc. from the main file survive
    assert flake.runas == "root"
    assert flake.podman_opts == ("--rm-me",)  # 20 after 10: the later list replaces, no concatenation
    assert (flake.base_container, flake.layers) == ("base", ("l1", "l2"))
    assert flake.image == "docker.io/amazon/aws-cli"


def test_error_names_the_dropin_that_set_the_key(tmp_path: Path) -> None:
    cfg = write(tmp_path / "aws.yaml", ORIGINAL_CONTAINER)
    bad = write(tmp_path / "aws.d/50-bad.yaml", "container:\n  runtime:\n    resume: 'yes'\n")
    with pytest.raises(ConfigError) as err:
        flakeconf.parse("aws", str(cfg))
    assert str(bad) in str(err.value)
    assert "container.runtime.resume" in str(err.value)


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("container:\n  host_app_path: /usr/bin/x\n", "key 'container.name' is missing"),
        ("container:\n  name: img\n  layers: [a]\n", "needs 'container.base_container'"),
        ("container:\n  name: img\n  runtime: {resume: true, attach: true}\n", "exclude each other"),
        ("container:\n  name: img\n  layers: 5\n", "key 'container.layers'"),
        ("include: {tar: 1}\ncontainer:\n  name: img\n", "key 'include.tar'"),
        ("container: [1]\n", "key 'container'"),
        ("- a\n", "expected a mapping"),
        ("container:\n  name: [unclosed\n", "invalid YAML at line 3"),
        ("other: 1\n", "neither a 'container' nor a 'vm' section"),
    ],
)
def test_registration_errors(tmp_path: Path, text: str, needle: str) -> None:
    cfg = write(tmp_path / "x.yaml", text)
    with pytest.raises(ConfigError) as err:
        flakeconf.parse("x", str(cfg))
    assert str(cfg) in str(err.value)
    assert needle in str(err.value)


def test_find_prefers_system_then_user(env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(settings.os, "getuid", lambda: 1000)  # a user: root has no user scope
    sysdir = env / "sys"
    (env / "flakes.yml").write_text(f"generic:\n  flakes_dir: {sysdir}\n")
    userdir = env / "home/.config/flakes"
    write(userdir / "app.yaml", "container:\n  name: user-img\n")
    flake, user = flakeconf.find("app")
    assert (flake.engine, user) == ("podman", True)
    write(sysdir / "app.yaml", "container:\n  name: sys-img\n")
    flake, user = flakeconf.find("app")
    assert isinstance(flake, flakeconf.PodmanFlake) and (flake.image, user) == ("sys-img", False)
    with pytest.raises(NotFoundError, match="no flake registration for 'nope'"):
        flakeconf.find("nope")


def test_written_registration_has_template_shape_and_loads(tmp_path: Path) -> None:
    from flake_pilot import yamlio

    data = container_config(
        container="c",
        app="/usr/bin/a.b",
        target="/bin/a",
        base="base",
        layers=["l"],
        check_host_dependencies=True,
        include_tar=["/t.tar"],
        include_path=[],
        runas="root",
        resume=True,
        attach=False,
        opts=["--net host"],
    )
    assert list(data) == ["include", "container"]
    assert list(data["container"]) == [
        "name",
        "target_app_path",
        "host_app_path",
        "base_container",
        "check_host_dependencies",
        "layers",
        "runtime",
    ]
    assert list(data["container"]["runtime"]) == ["runas", "resume", "attach", "podman"]
    cfg = write(tmp_path / "a.b.yaml", yamlio.dump(data))
    flake = flakeconf.parse("a.b", str(cfg))
    assert isinstance(flake, flakeconf.PodmanFlake)
    assert (flake.layers, flake.include.tar, flake.include.path) == (("l",), ("/t.tar",), ())
    assert flake.check_host_dependencies and flake.resume and flake.podman_opts == ("--net host",)


# -- flake-ctl helpers ---------------------------------------------------------------------------


def test_strip_escape_removes_exactly_one_backslash() -> None:
    assert strip_escape("\\--net host") == "--net host"
    assert strip_escape("\\\\-x") == "\\-x"
    assert strip_escape("-ti") == "-ti"


def test_info_file_name() -> None:
    assert info_file_name("registry.example.com:5000/tools/aws-cli:1.2") == "aws-cli.yaml"
    assert info_file_name("aws@sha256:abc") == "aws.yaml"


def test_resolve_archive_glob_takes_last_match(tmp_path: Path) -> None:
    for v in ("1.0", "1.2", "1.10"):
        (tmp_path / f"img-{v}.tar").write_text("x")
    assert resolve_archive(str(tmp_path / "img-1.2.tar")) == str(tmp_path / "img-1.2.tar")
    assert resolve_archive(str(tmp_path / "img-")) == str(tmp_path / "img-1.2.tar")  # sorted order, like the original
    with pytest.raises(NotFoundError):
        resolve_archive(str(tmp_path / "other"))
    with pytest.raises(UsageError):
        resolve_archive(str(tmp_path))


COLS = (
    output.Column("name", "NAME"),
    output.Column("id", "ID", shorten=lambda s: s[:3]),
    output.Column("note", "NOTE"),
)
RECS = [{"name": "a.b", "id": "123456", "note": 'say "hi", bye'}, {"name": "c", "id": None, "note": "x\ny"}]


def test_output_csv_has_header_and_quotes() -> None:
    text = output.render(RECS, COLS, "csv", "head", "none")
    assert text.splitlines()[0] == "name,id,note"
    assert text.splitlines()[1] == 'a.b,123456,"say ""hi"", bye"'
    assert text.endswith('c,,"x\ny"\n')


def test_output_json_and_table() -> None:
    assert json.loads(output.render(RECS, COLS, "json", "h", "e"))[1] == {
        "name": "c",
        "id": None,
        "note": "x\ny",
    }
    table = output.render(RECS, COLS, "table", "Things in /x", "none").splitlines()
    assert table[:2] == ["Things in /x", ""]
    assert table[2].split() == ["NAME", "ID", "NOTE"]
    assert table[4].split()[:2] == ["a.b", "123"]  # shortened in the table only
    assert table[5].split() == ["c", "-", "x", "y"]
    assert output.render([], COLS, "table", "Things", "No things").splitlines() == ["Things", "", "No things"]
