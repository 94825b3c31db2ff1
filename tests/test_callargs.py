"""One caller-argument parser (``flake_pilot.launch.callargs``) with each launcher's option set."""

from __future__ import annotations

import pytest

from flake_pilot.errors import UsageError
from flake_pilot.launch import callargs
from flake_pilot.launch.firecracker.pilot import parse_args
from flake_pilot.launch.names import instance_name
from flake_pilot.launch.podman import argv


def test_split_sorts_instances_options_and_app_args() -> None:
    c = callargs.split(["@a", "-x", "%port:7", "@b", "%%lit", "@@at", "%progress", "y"], callargs.FIRECRACKER_OPTIONS)
    assert c.instances == ["a", "b"] and c.instance == "a"
    assert c.options == {"port": "7", "progress": ""}
    assert c.app_args == ["-x", "%lit", "@at", "y"]
    assert callargs.split([], callargs.PODMAN_OPTIONS).instance is None


def test_unknown_option_strict_or_dropped() -> None:
    with pytest.raises(ValueError, match=r"unknown launcher option '%port:1'.*%interactive"):
        callargs.split(["%port:1"], callargs.PODMAN_OPTIONS)
    assert callargs.split(["%silent", "x"], callargs.FIRECRACKER_OPTIONS, strict=False).app_args == ["x"]


def test_both_launchers_use_it() -> None:
    """podman-pilot's and firecracker-pilot's caller arguments come from the same parser."""
    assert argv.OPTIONS is callargs.PODMAN_OPTIONS
    assert isinstance(argv.split_caller_args(["@x"], instance_name), callargs.CallerArgs)
    # firecracker-pilot: the literal escapes pass through, every @NAME joins the instance name
    call = parse_args("app", ["@@at", "%%pct", "@one", "@two", "%port:9"])
    assert (call.meta, call.args, call.port) == ("app@one@two", ["@at", "%pct"], 9)
    with pytest.raises(UsageError):
        parse_args("app", ["@a/b"])
