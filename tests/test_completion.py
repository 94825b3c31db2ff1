"""Completion scripts generated from flake-ctl's parser, loaded by real bash, zsh and fish.

Expected candidates come from the parser itself (sub-command names, option strings, choices) and
from a real registration and image in a private prefix (the dynamic ``__complete`` helper)."""

from __future__ import annotations

import argparse
import re
import subprocess
from pathlib import Path

import pytest

from conftest import BB_IMAGE, BIN, Prefix
from flake_pilot.ctl import completion
from flake_pilot.ctl.main import build_parser


def subparser(*path: str) -> argparse.ArgumentParser:
    parser = build_parser()
    for name in path:
        action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = action.choices[name]
    return parser


def commands(*path: str) -> set[str]:
    parser = subparser(*path)
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return {n for n in action.choices if not n.startswith("_")}
    return set()


def long_options(*path: str) -> set[str]:
    """The long options as ``--help`` lists them (the option column of its option lines)."""
    found: set[str] = set()
    for line in subparser(*path).format_help().splitlines():
        m = re.match(r"^  (-\S.*?)(\s{2,}|$)", line)
        if m:
            found.update(re.findall(r"--[a-z][a-z0-9-]*", m.group(1)))
    return found


def all_paths() -> list[tuple[str, ...]]:
    return [node.path for node in completion.tree(build_parser()).walk()]


@pytest.fixture
def scripts(tmp_path: Path) -> dict[str, Path]:
    out = {}
    for shell in ("bash", "zsh", "fish"):
        path = tmp_path / f"flake-ctl.{shell}"
        # the module's command line, as debian/rules and `make completion` call it
        subprocess.run([str(BIN / "python"), "-m", "flake_pilot.ctl.completion", shell, str(path)], check=True)
        out[shell] = path
    return out


@pytest.fixture
def registered(prefix: Prefix, bb_image: str) -> Path:
    """A registered flake in the private prefix (so `--app` has a candidate)."""
    app = prefix.bin_dir / "comp-echo"
    prefix.ctl("podman", "register", "--container", bb_image, "--app", str(app), "--target", "/bin/echo", check=True)
    return app


def bash_complete(script: Path, words: list[str], env: dict[str, str]) -> list[str]:
    """Run the completion function registered for flake-ctl in a real bash; COMPREPLY, one per line."""
    program = (
        f"source {script}\n"
        'fn=$(complete -p flake-ctl | sed -E "s/.* -F ([^ ]+) .*/\\1/")\n'
        'COMP_WORDS=("$@"); COMP_CWORD=$((${#COMP_WORDS[@]} - 1)); COMP_LINE="$*"; COMP_POINT=${#COMP_LINE}\n'
        '"$fn" flake-ctl "${COMP_WORDS[COMP_CWORD]}" "${COMP_WORDS[COMP_CWORD-1]}"\n'
        'printf "%s\\n" "${COMPREPLY[@]}"\n'
    )
    proc = subprocess.run(
        ["bash", "--norc", "--noprofile", "-c", program, "bash", "flake-ctl", *words],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == "", proc.stderr
    return [line for line in proc.stdout.splitlines() if line]


def test_bash_commands_and_options_match_the_parser(scripts: dict[str, Path], prefix: Prefix) -> None:
    for path in all_paths():
        got = set(bash_complete(scripts["bash"], [*path, ""], prefix.env))
        assert commands(*path) <= got, f"{path}: sub-commands missing"
        assert long_options(*path) <= got | {"--help"}, f"{path}: options missing"
        assert "__complete" not in got
        dashed = set(bash_complete(scripts["bash"], [*path, "--"], prefix.env))
        assert dashed == long_options(*path), f"{path}: `--<TAB>` differs from --help"


def test_bash_values(scripts: dict[str, Path], prefix: Prefix, registered: Path) -> None:
    bash = scripts["bash"]
    assert set(bash_complete(bash, ["list", "--format", ""], prefix.env)) == set(
        next(a for a in subparser("list")._actions if "--format" in a.option_strings).choices
    )
    # options given before the sub-command (podman --user register) do not confuse the walk
    assert set(bash_complete(bash, ["podman", "--user", ""], prefix.env)) >= commands("podman")
    assert bash_complete(bash, ["podman", "remove", "--app", ""], prefix.env) == [str(registered)]
    assert BB_IMAGE in bash_complete(bash, ["podman", "register", "--container", ""], prefix.env)
    assert bash_complete(bash, ["podman", "rem"], prefix.env) == ["remove"]


def test_bash_completion_loader_finds_the_installed_name(
    scripts: dict[str, Path], tmp_path: Path, prefix: Prefix
) -> None:
    """bash-completion loads `<datadir>/bash-completion/completions/flake-ctl` on first Tab."""
    data = tmp_path / "share"
    target = data / "bash-completion" / "completions" / "flake-ctl"
    target.parent.mkdir(parents=True)
    target.write_text(scripts["bash"].read_text())
    loader = Path("/usr/share/bash-completion/bash_completion")
    assert loader.is_file(), "bash-completion is not installed: run `make setup-test`"
    program = f"source {loader}\n_completion_loader flake-ctl\ncomplete -p flake-ctl\n"
    env = {**prefix.env, "XDG_DATA_DIRS": str(data), "BASH_COMPLETION_USER_DIR": str(tmp_path / "none")}
    proc = subprocess.run(
        ["bash", "--norc", "--noprofile", "-c", program], capture_output=True, text=True, env=env, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert "-F _flake_ctl flake-ctl" in proc.stdout


def zsh_complete(script: Path, words: list[str], env: dict[str, str], tmp: Path) -> list[str]:
    """Load the script after compinit, check compdef registered it, call it with words/CURRENT set.

    Outside an interactive completion widget ``compadd`` cannot run, so ``_describe``/``_files``
    are replaced by functions that print what they were given."""
    program = (
        f"autoload -Uz compinit && compinit -u -d {tmp}/zcompdump\n"
        f"source {script}\n"
        '[[ $_comps[flake-ctl] == _flake_ctl ]] || { print -u2 "not registered"; exit 3; }\n'
        '_describe() { print -rl -- "${(@P)argv[-1]}" }\n'
        '_files() { print -r -- "<files>" }\n'
        'words=(flake-ctl "$@"); CURRENT=$#words\n'
        "_flake_ctl\n"
    )
    proc = subprocess.run(
        ["zsh", "-f", "-c", program, "zsh", *words], capture_output=True, text=True, env=env, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == "", proc.stderr
    # _describe specs are NAME:DESCRIPTION with ':' in NAME escaped
    return [re.split(r"(?<!\\):", line)[0].replace("\\:", ":") for line in proc.stdout.splitlines() if line]


def test_zsh(scripts: dict[str, Path], prefix: Prefix, registered: Path, tmp_path: Path) -> None:
    zsh = scripts["zsh"]
    assert set(zsh_complete(zsh, [""], prefix.env, tmp_path)) >= commands() | long_options()
    assert set(zsh_complete(zsh, ["podman", "--user", ""], prefix.env, tmp_path)) >= commands("podman")
    assert zsh_complete(zsh, ["podman", "remove", "--app", ""], prefix.env, tmp_path) == [str(registered)]
    assert BB_IMAGE in zsh_complete(zsh, ["podman", "register", "--base", ""], prefix.env, tmp_path)
    assert zsh_complete(zsh, ["podman", "load", "--oci", ""], prefix.env, tmp_path) == ["<files>"]
    fmt = zsh_complete(zsh, ["podman", "show", "--format", ""], prefix.env, tmp_path)
    assert set(fmt) == {"table", "json", "csv"}


def fish_complete(script: Path, line: str, env: dict[str, str]) -> list[str]:
    proc = subprocess.run(
        ["fish", "--no-config", "-c", f"source {script}; complete -C '{line}'"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    return [entry.split("\t")[0] for entry in proc.stdout.splitlines() if entry]


def test_fish(scripts: dict[str, Path], prefix: Prefix, registered: Path) -> None:
    fish = scripts["fish"]
    assert set(fish_complete(fish, "flake-ctl ", prefix.env)) == commands()
    assert set(fish_complete(fish, "flake-ctl podman --user ", prefix.env)) == commands("podman")
    assert set(fish_complete(fish, "flake-ctl podman register --", prefix.env)) >= long_options("podman", "register")
    assert fish_complete(fish, "flake-ctl podman remove --app ", prefix.env) == [str(registered)]
    assert BB_IMAGE in fish_complete(fish, "flake-ctl podman register --container ", prefix.env)


def test_complete_helper_never_fails(prefix: Prefix, tmp_path: Path) -> None:
    broken = tmp_path / "broken.yml"
    broken.write_text("generic: [unclosed\n")
    for kind in ("apps", "vms", "containers", "unknown"):
        proc = prefix.ctl("__complete", kind, env={"FLAKES_CONFIG": str(broken)})
        assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    assert prefix.ctl("__complete", "apps").stdout == ""  # nothing registered yet


def test_vm_images(scripts: dict[str, Path], prefix: Prefix) -> None:
    """VM image names come from <firecracker_registry_dir>/images/<name>/."""
    (prefix.root / "firecracker" / "images" / "tiny-vm").mkdir(parents=True)
    assert prefix.ctl("__complete", "vms").stdout == "tiny-vm\n"
    assert bash_complete(scripts["bash"], ["firecracker", "remove", "--vm", ""], prefix.env) == ["tiny-vm"]
    assert fish_complete(scripts["fish"], "flake-ctl firecracker register --vm ", prefix.env) == ["tiny-vm"]
