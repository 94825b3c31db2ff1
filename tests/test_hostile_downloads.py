"""Issue 7 part 4: tampered and hostile downloads (``flake-ctl firecracker pull``) over the local
HTTPS server of tests/https_server.py. Each one: one line, a documented non-zero exit code, no
traceback, the registry unchanged (every file hashed before and after), no staging left over,
and nothing written outside the registry.
"""

from __future__ import annotations

import hashlib
import io
import tarfile
from pathlib import Path

import pytest

from conftest import Prefix
from fc_ctl_fixtures import registry, snapshot
from flake_pilot.errors import EXIT_CODES
from https_server import Site, kis_members, kis_tarball, serve
from reliability import record

GROUP = "hostile input corpus (one line, documented exit code, nothing changed)"


def tar_with(entries: list[tarfile.TarInfo], data: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:xz") as tar:
        for info in entries:
            payload = data.get(info.name)
            if payload is not None:
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
            else:
                tar.addfile(info)
    return buf.getvalue()


def traversal(rootfs: bytes) -> bytes:
    members = kis_members(rootfs)
    infos = []
    for name in members:
        infos.append(tarfile.TarInfo(name))
    evil = tarfile.TarInfo("../../../../tmp/flake-hostile-evil")
    infos.append(evil)
    return tar_with(infos, {**members, evil.name: b"pwned\n"})


def symlinked_rootfs(rootfs: bytes) -> bytes:
    members = kis_members(rootfs)
    infos = []
    for name in members:
        info = tarfile.TarInfo(name)
        if name == "test.x86_64-1.15.6":
            info.type = tarfile.SYMTYPE
            info.linkname = "/etc/shadow"
        infos.append(info)
    data = {k: v for k, v in members.items() if k != "test.x86_64-1.15.6"}
    return tar_with(infos, data)


def tampered(rootfs: bytes) -> bytes:
    members = kis_members(rootfs)
    bad = bytearray(rootfs)
    bad[8192] ^= 0xFF
    members["test.x86_64-1.15.6"] = bytes(bad)  # the inner .sha256 still describes the original
    return kis_tarball(members)


CASES = {
    "tampered rootfs (inner checksum mismatch)": ("/t.tar.xz", lambda r: {"/t.tar.xz": tampered(r)}, "https"),
    "sibling .sha256 does not match the tarball": (
        "/s.tar.xz",
        lambda r: {"/s.tar.xz": kis_tarball(kis_members(r)), "/s.tar.xz.sha256": b"1" * 64 + b"  s.tar.xz\n"},
        "https",
    ),
    "sibling .sha256 is garbage": (
        "/g.tar.xz",
        lambda r: {
            "/g.tar.xz": kis_tarball(kis_members(r)),
            "/g.tar.xz.sha256": b"\xff\0not a digest" * 1000,
        },
        "https",
    ),
    "not a tarball": ("/n.tar.xz", lambda r: {"/n.tar.xz": b"\x89PNG" + b"\0" * 4096}, "https"),
    "member with ../ path traversal": ("/p.tar.xz", lambda r: {"/p.tar.xz": traversal(r)}, "https"),
    "rootfs member is a symlink to /etc/shadow": (
        "/l.tar.xz",
        lambda r: {"/l.tar.xz": symlinked_rootfs(r)},
        "https",
    ),
    "HTTP 404": ("/missing.tar.xz", lambda r: {}, "https"),
    "plain http URL": ("/h.tar.xz", lambda r: {"/h.tar.xz": kis_tarball(kis_members(r))}, "http"),
    "connection dropped half-way": (
        "/d.tar.xz",
        lambda r: {"/d.tar.xz": kis_tarball(kis_members(r))},
        "drop",
    ),
}


def _identity(path: Path) -> tuple[int, int, int, int]:
    """What any write to *path* changes (readable without root, unlike /etc/shadow itself)."""
    st = path.stat()
    return st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns


@pytest.mark.parametrize("case", list(CASES))
def test_hostile_download(fc: Prefix, cert: tuple[Path, Path], rootfs_bytes: bytes, case: str) -> None:
    path, files, how = CASES[case]
    site = Site(files=files(rootfs_bytes))
    if how == "drop":
        site.drop.add(path)
    outside = Path("/tmp/flake-hostile-evil")
    outside.unlink(missing_ok=True)
    shadow = _identity(Path("/etc/shadow"))
    site.files["/good.tar.xz"] = kis_tarball(kis_members(rootfs_bytes))
    with record("4", f"download: {case}") as rec:
        rec.extra["group"] = GROUP
        with serve(site, cert) as srv:  # a good image is in place first: --force must keep it
            first = fc.ctl("firecracker", "pull", "--name", "leap", "--kis-image", srv.url("/good.tar.xz"))
            assert first.returncode == 0, first.stderr
        before = snapshot(fc)
        assert before.get("images/leap/rootfs") == hashlib.sha256(rootfs_bytes).hexdigest()
        with serve(site, None if how == "http" else cert) as srv:
            done = fc.ctl("firecracker", "pull", "--force", "--name", "leap", "--kis-image", srv.url(path))
        lines = done.stderr.splitlines()
        assert "Traceback" not in done.stderr, done.stderr
        assert done.returncode in set(EXIT_CODES) - {0}, (done.returncode, done.stderr)
        assert len(lines) == 1 and lines[0].startswith("flake-ctl: "), done.stderr
        assert snapshot(fc) == before
        leftovers = [p.name for p in registry(fc).iterdir() if p.name.startswith((".pull-", ".trash-"))]
        assert leftovers == []
        assert not outside.exists()
        assert _identity(Path("/etc/shadow")) == shadow
        rec.detail = f"exit {done.returncode}: {lines[0][:140]}"
