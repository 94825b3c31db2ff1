"""Issue 7 part 4: property-based fuzzing (Hypothesis, derandomized, bounded).

Config loader: ``flakeconf.parse`` on generated YAML trees (keys from the real schema, values of
every YAML type, drop-ins) and on raw bytes; caller arguments: ``argv.split_caller_args`` with
the launcher's instance validator plus ``pilot._opts`` (%VAR expansion of registration options)
exactly as ``podman-pilot`` uses them. Only FlakeError subclasses may escape, and their message
must be one line naming the file (config) or the argument.
"""

from __future__ import annotations

import os
import re
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flake_pilot import flakeconf, yamlio
from flake_pilot.errors import FlakeError, UsageError
from flake_pilot.launch import names
from flake_pilot.launch.podman import argv, pilot
from flake_pilot.launch.podman.plan import Plan
from reliability import record

EXAMPLES = int(os.environ.get("FLAKE_FUZZ_EXAMPLES", "300"))
FUZZ = settings(
    max_examples=EXAMPLES,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

KEYS = [
    "container",
    "vm",
    "name",
    "runtime",
    "runas",
    "resume",
    "attach",
    "podman",
    "layers",
    "base_container",
    "include",
    "tar",
    "path",
    "target_app_path",
    "host_app_path",
    "check_host_dependencies",
    "firecracker",
    "boot_args",
    "mem_size_mib",
    "vcpu_count",
    "cache_type",
    "overlay_size",
    "rootfs_image_path",
    "kernel_image_path",
    "initrd_path",
    "force_vsock",
    "x",
]

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=40),
    st.sampled_from(["20GiB", "0", "-1", "Writeback", "Unsafe", "/abs", "rel", "%HOME", "", "yes", "~"]),
)
trees = st.recursive(
    scalars,
    lambda kids: st.one_of(
        st.lists(kids, max_size=5),
        st.dictionaries(st.one_of(st.sampled_from(KEYS), st.integers(), st.booleans()), kids, max_size=6),
    ),
    max_leaves=40,
)
documents = st.one_of(
    trees,
    st.fixed_dictionaries({"container": trees}, optional={"include": trees}),
    st.fixed_dictionaries({"vm": trees}, optional={"include": trees}),
    st.fixed_dictionaries(
        {
            "container": st.fixed_dictionaries(
                {"name": scalars},
                optional={
                    "runtime": trees,
                    "layers": trees,
                    "base_container": scalars,
                    "target_app_path": scalars,
                },
            )
        }
    ),
    st.fixed_dictionaries(
        {
            "vm": st.fixed_dictionaries(
                {"name": scalars},
                optional={
                    "runtime": st.fixed_dictionaries(
                        {}, optional={"firecracker": trees, "resume": scalars, "runas": scalars}
                    )
                },
            )
        }
    ),
)

COUNTS: dict[str, list[int]] = {}


def _one_line(exc: FlakeError) -> str:
    text = str(exc)
    assert text and "\n" not in text.replace("\\n", ""), repr(text)
    return text


def _parse(directory: Path, doc: Any, dropin: Any) -> None:
    cfg = directory / "app.yaml"
    cfg.write_text(yaml.safe_dump(doc, allow_unicode=True))
    d = directory / "app.d"
    if dropin is not None:
        d.mkdir(exist_ok=True)
        (d / "10-x.yaml").write_text(yaml.safe_dump(dropin, allow_unicode=True))
    outcome = COUNTS.setdefault("config trees", [0, 0])
    try:
        flakeconf.parse("app", str(cfg))
        outcome[0] += 1
    except FlakeError as exc:
        outcome[1] += 1
        message = _one_line(exc)
        assert str(directory) in message, message  # names the file that is wrong


def test_fuzz_config_loader_trees() -> None:
    with record("4", "fuzz: flakeconf.parse on generated YAML trees (+ drop-ins)", count=EXAMPLES) as rec:
        with tempfile.TemporaryDirectory() as tmp:

            @FUZZ
            @given(doc=documents, dropin=st.one_of(st.none(), documents))
            def run(doc: Any, dropin: Any) -> None:
                case = Path(tempfile.mkdtemp(dir=tmp))
                _parse(case, doc, dropin)

            t0 = time.monotonic()
            run()
        ok, refused = COUNTS["config trees"]
        rec.count = ok + refused
        rec.detail = (
            f"{ok + refused} documents: {ok} accepted, {refused} refused with a one-line FlakeError "
            f"naming the file; no other exception ({time.monotonic() - t0:.1f} s, derandomized)"
        )


def test_fuzz_config_loader_raw_bytes() -> None:
    with record("4", "fuzz: flakeconf.parse on raw bytes (YAML-ish text, aliases, tags)", count=EXAMPLES) as rec:
        stats = [0, 0]
        with tempfile.TemporaryDirectory() as tmp:
            fragments = st.sampled_from(
                [
                    b"container:",
                    b"\n  ",
                    b"name: ",
                    b"&a ",
                    b"*a ",
                    b"[",
                    b"]",
                    b"{",
                    b"}",
                    b"- ",
                    b"!!python/object:os.system ",
                    b"!!binary ",
                    b"%YAML 1.1\n",
                    b"---\n",
                    b"\t",
                    b"\xff",
                    b"\0",
                    b"'",
                    b'"',
                    b"? ",
                    b": ",
                    b"|\n",
                    b"#",
                ]
            )

            @FUZZ
            @given(parts=st.lists(st.one_of(fragments, st.binary(max_size=8)), max_size=30))
            def run(parts: list[bytes]) -> None:
                path = Path(tempfile.mkdtemp(dir=tmp)) / "app.yaml"
                path.write_bytes(b"".join(parts))
                try:
                    flakeconf.parse("app", str(path))
                    stats[0] += 1
                except FlakeError as exc:
                    _one_line(exc)
                    stats[1] += 1

            run()
        rec.count = sum(stats)
        rec.detail = f"{sum(stats)} inputs: {stats[0]} accepted, {stats[1]} refused (FlakeError); no other exception"


def test_alias_bomb_is_refused_fast(tmp_path: Path) -> None:
    with record("4", "alias bomb (10^9 values once expanded) refused in bounded time", count=1) as rec:
        lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
        lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 9)]
        path = tmp_path / "bomb.yaml"
        path.write_text("\n".join(lines) + "\ncontainer: {name: *a8}\n")
        t0 = time.monotonic()
        try:
            yamlio.load_file(str(path))
        except FlakeError as exc:
            took = time.monotonic() - t0
            assert "alias" in str(exc) and took < 2, (str(exc), took)
            rec.detail = f"ConfigError after {took * 1000:.0f} ms: {exc}"[:200]
        else:
            raise AssertionError("an alias bomb was accepted")


SPECIAL = st.sampled_from(
    [
        "@",
        "@@",
        "%",
        "%%",
        "@a",
        "@.",
        "@..",
        "%remove",
        "%interactive",
        "%progress:x",
        "%bogus",
        "@x/y",
        "@a\nb",
        "@$(id)",
        "%ignore_missing_volume_path",
        "@" + "a" * 70,
    ]
)


def test_fuzz_caller_arguments() -> None:
    with record("4", "fuzz: podman-pilot caller arguments (@NAME, %option, %VAR expansion)", count=EXAMPLES) as rec:
        stats = [0, 0]

        @FUZZ
        @given(
            args=st.lists(
                st.one_of(SPECIAL, st.text(max_size=12), st.builds(lambda a, b: a + b, SPECIAL, st.text(max_size=6))),
                max_size=12,
            ),
            opts=st.lists(
                st.one_of(
                    st.text(max_size=20),
                    st.sampled_from(
                        [
                            "-e A=%HOME",
                            "-v %NOPE:/x",
                            "%",
                            "%%HOME",
                            "--volume=/nonexistent:/x",
                            "-v /tmp:/t",
                            "-e X=" + "%HOME" * 70,
                        ]
                    ),
                ),
                max_size=5,
            ),
            env=st.dictionaries(
                st.from_regex(r"[A-Z_][A-Z0-9_]{0,5}", fullmatch=True), st.text(max_size=30), max_size=4
            ),
        )
        def run(args: list[str], opts: list[str], env: dict[str, str]) -> None:
            try:
                try:
                    caller = argv.split_caller_args(args, pilot._validate_instance)
                except ValueError as exc:  # launch() turns this into UsageError
                    raise UsageError(str(exc)) from None
                if caller.instance is not None:
                    assert re.fullmatch(r"[A-Za-z0-9=_-][A-Za-z0-9@=_-]{0,62}", caller.instance)
                plain = [a for a in args if not a.startswith(("@", "%"))]
                assert [a for a in caller.app_args if not a.startswith(("@", "%"))] == plain
                plan = Plan(
                    {
                        "app": "app",
                        "config_file": "/f/app.yaml",
                        "image": "img",
                        "target": "/bin/sh",
                        "resume": False,
                        "attach": False,
                        "opts": tuple(opts),
                        "user_mode": False,
                        "user_scope": False,
                        "ids_dir": "/tmp",
                        "storage_conf": None,
                        "podman": "podman",
                        "compose": False,
                        "tls_verify": True,
                        "images_json": None,
                        "image_present": None,
                    }
                )
                items = pilot._opts(plan, caller, {"HOME": "/root", **env})
                assert all(isinstance(i, str) for i in items)
                stats[0] += 1
            except FlakeError as exc:
                _one_line(exc)
                stats[1] += 1

        run()
        rec.count = sum(stats)
        rec.detail = f"{sum(stats)} argument lists: {stats[0]} accepted, {stats[1]} refused (FlakeError only)"


def test_fuzz_names() -> None:
    with record(
        "4", "fuzz: instance/app names and absolute paths (NUL, /, .., newlines, controls)", count=EXAMPLES
    ) as rec:
        stats = [0, 0]
        alphabet = st.characters(codec="utf-8") | st.sampled_from(list("/.\0\n$;*@=_-+ ~"))

        @FUZZ
        @given(value=st.text(alphabet=alphabet, max_size=140))
        def run(value: str) -> None:
            for check in (names.instance_name, names.app_name, lambda v: names.absolute_path(v, "--app")):
                try:
                    out = check(value)
                    assert "\0" not in out and "\n" not in out
                    if check is not names.absolute_path:
                        assert "/" not in out or check is not names.app_name
                    stats[0] += 1
                except UsageError as exc:
                    _one_line(exc)
                    stats[1] += 1

        run()
        rec.count = sum(stats)
        rec.detail = f"{sum(stats)} checks: {stats[0]} accepted, {stats[1]} refused (UsageError only)"
