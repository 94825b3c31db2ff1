"""VM image building blocks against real parts: tar archives, ext4 images read and written with
debugfs (checked with e2fsck), downloads from a local HTTPS server with a generated certificate."""

from __future__ import annotations

import hashlib
import io
import os
import stat
import tarfile
from pathlib import Path

import pytest

from flake_pilot.errors import DownloadError, EngineError, NotFoundError, UsageError
from flake_pilot.firecracker import download, guestfs, kis
from https_server import (
    Site,
    debugfs_cat,
    debugfs_stat,
    ext4_image,
    fsck_clean,
    kis_members,
    kis_tarball,
    make_cert,
    serve,
)


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("no_proxy", "localhost,127.0.0.1")  # the local test server, even behind a proxy


def _archive(tmp_path: Path, members: dict[str, bytes], compression: str = "xz") -> str:
    path = tmp_path / "image.tar.xz"
    path.write_bytes(kis_tarball(members, compression))
    return str(path)


def _fetch(url: str, dest: Path) -> str:
    return download.fetch(download.parse_source(url, "--rootfs"), str(dest), dest.name)


# -- kis -----------------------------------------------------------------------------------------


def test_kis_extract_classifies_members_and_verifies_blocks(tmp_path: Path) -> None:
    rootfs = os.urandom(512 * 7)
    out = tmp_path / "out"
    out.mkdir()
    members = kis.extract(_archive(tmp_path, kis_members(rootfs)), str(out))
    assert members.rootfs == "test.x86_64-1.15.6"
    assert members.dropped == ("test.x86_64-1.15.6.append",)
    assert sorted(os.listdir(out)) == ["checksum", "initrd", "kernel", "rootfs"]
    assert (out / "rootfs").read_bytes() == rootfs
    expected = hashlib.sha256(rootfs).hexdigest()
    assert kis.verify_checksum(str(out / "rootfs"), str(out / "checksum"), "t") == expected


def test_kis_checksum_covers_only_blocks_times_blocksize(tmp_path: Path) -> None:
    rootfs, checksum = tmp_path / "rootfs", tmp_path / "checksum"
    covered = os.urandom(1024)
    rootfs.write_bytes(covered + b"padding after the filesystem")
    checksum.write_text(f"{hashlib.sha256(covered).hexdigest()} 2 512\n")
    kis.verify_checksum(str(rootfs), str(checksum), "t")
    checksum.write_text(f"{hashlib.sha256(covered).hexdigest()}\n")  # whole file: now a mismatch
    with pytest.raises(DownloadError, match="checksum mismatch"):
        kis.verify_checksum(str(rootfs), str(checksum), "t")
    checksum.write_text("")
    with pytest.raises(DownloadError, match="not a sha256"):
        kis.verify_checksum(str(rootfs), str(checksum), "t")


def test_kis_extension_less_rootfs_and_gzip(tmp_path: Path) -> None:
    members = kis_members(b"x" * 512, name="rootfs")  # "rootfs", "rootfs.kernel", ...: no panic on no dot
    out = tmp_path / "out"
    out.mkdir()
    assert kis.extract(_archive(tmp_path, members, "gz"), str(out)).rootfs == "rootfs"


@pytest.mark.parametrize("case", ["two rootfs", "two kernels", "no kernel", "no checksum"])
def test_kis_rejects_ambiguous_or_incomplete(tmp_path: Path, case: str) -> None:
    members = kis_members(b"r" * 512)
    if case == "two rootfs":
        members["other.x86_64-2.0"] = b"second"
    elif case == "two kernels":
        members["b.kernel"] = b"k2"
    elif case == "no kernel":
        del members["test.x86_64-1.15.6.kernel"]
    else:
        del members["test.x86_64-1.15.6.sha256"]
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(DownloadError, match="ambiguous|not a KIWI kis image"):
        kis.extract(_archive(tmp_path, members), str(out))


@pytest.mark.parametrize("bad", ["../evil", "/etc/evil", "sub/dir.kernel", "link"])
def test_kis_rejects_traversal_links_and_nesting(tmp_path: Path, bad: str) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:xz") as tar:
        info = tarfile.TarInfo(bad)
        if bad == "link":
            info.type = tarfile.SYMTYPE
            info.linkname = "/etc/shadow"
            tar.addfile(info)
        else:
            info.size = 3
            tar.addfile(info, io.BytesIO(b"bad"))
    archive = tmp_path / "bad.tar.xz"
    archive.write_bytes(buf.getvalue())
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(DownloadError):
        kis.extract(str(archive), str(out))
    assert os.listdir(out) == []
    assert not (tmp_path / "evil").exists()


def test_kis_rejects_garbage(tmp_path: Path) -> None:
    archive = tmp_path / "garbage.tar.xz"
    archive.write_bytes(b"this is not a tar archive" * 100)
    with pytest.raises(DownloadError, match="not a readable tar archive"):
        kis.extract(str(archive), str(tmp_path))


# -- debugfs ---------------------------------------------------------------------------------------


def test_readiness_and_sci_install_read_back(tmp_path: Path) -> None:
    files = {"usr/bin/python3": b"#!fake python\n", "etc/hostname": b"vm\n"}
    image = ext4_image(tmp_path / "rootfs.ext4", files)
    before = guestfs.readiness(str(image))
    assert (before.filesystem, before.sci, before.python3) == (True, False, True)
    sci = tmp_path / "sci"
    sci.write_bytes(b"#!/usr/bin/python3\n" + os.urandom(3000))
    guestfs.install_sci(str(image), str(sci))
    assert debugfs_cat(image, "/usr/sbin/sci") == sci.read_bytes()
    info = debugfs_stat(image, "/usr/sbin/sci")
    assert "Mode:  0755" in info and "User:     0   Group:     0" in info
    for directory in ("/overlayroot", "/proc", "/sys", "/dev", "/run", "/tmp", "/mnt"):
        assert "Type: directory" in debugfs_stat(image, directory), directory
    assert "Mode:  01777" in debugfs_stat(image, "/tmp")
    assert guestfs.readiness(str(image)).ready
    # a second install replaces the file (no "file exists", no corruption)
    sci.write_bytes(b"#!/usr/bin/python3\nprint('v2')\n")
    guestfs.install_sci(str(image), str(sci))
    assert debugfs_cat(image, "/usr/sbin/sci") == sci.read_bytes()
    check = fsck_clean(image)
    assert check.returncode == 0, check.stdout


def test_sci_install_refuses_a_directory_in_the_way(tmp_path: Path) -> None:
    (tmp_path / "tree").mkdir()
    image = ext4_image(tmp_path / "rootfs.ext4", {"usr/sbin/sci/keep": b"x"})
    sci = tmp_path / "sci"
    sci.write_bytes(b"sci")
    with pytest.raises(EngineError, match="is a directory"):
        guestfs.install_sci(str(image), str(sci))
    assert fsck_clean(image).returncode == 0


def test_non_ext_image_is_reported_not_modified(tmp_path: Path) -> None:
    image = tmp_path / "rootfs.squashfs"
    image.write_bytes(b"\0" * 4096)
    assert guestfs.readiness(str(image)).summary().startswith("rootfs is not an ext2/3/4 image")
    with pytest.raises(UsageError):
        guestfs.install_sci(str(image), str(image))
    assert image.read_bytes() == b"\0" * 4096


# -- downloads ---------------------------------------------------------------------------------------


def test_https_download_streams_and_hashes(
    tmp_path: Path, cert: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SSL_CERT_FILE", str(cert[0]))
    data = os.urandom(3 * 1024 * 1024 + 5)
    with serve(Site(files={"/rootfs": data}), cert) as srv:
        digest = _fetch(srv.url("/rootfs"), tmp_path / "r")
        assert digest == hashlib.sha256(data).hexdigest()
        assert (tmp_path / "r").read_bytes() == data
        assert download.fetch_small(download.parse_source(srv.url("/missing.sha256"), "x")) is None
        with pytest.raises(NotFoundError, match="404"):
            download.fetch(download.parse_source(srv.url("/nope"), "x"), str(tmp_path / "n"), "n")


def test_untrusted_certificate_is_refused(
    tmp_path: Path, cert: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    other = make_cert(tmp_path / "other")
    monkeypatch.setenv("SSL_CERT_FILE", str(other[0]))
    with serve(Site(files={"/rootfs": b"data"}), cert) as srv:
        with pytest.raises(DownloadError, match="certificate"):
            _fetch(srv.url("/rootfs"), tmp_path / "r")
    assert not (tmp_path / "r").exists()


def test_plain_http_needs_the_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(download.INSECURE_ENV, raising=False)
    with serve(Site(files={"/k": b"kernel"}), None) as srv:
        with pytest.raises(DownloadError, match="plain http refused"):
            download.parse_source(srv.url("/k"), "--kernel")
        monkeypatch.setenv(download.INSECURE_ENV, "")  # set, even empty, allows it (like the original)
        download.fetch(download.parse_source(srv.url("/k"), "--kernel"), str(tmp_path / "k"), "k")
    assert (tmp_path / "k").read_bytes() == b"kernel"


def test_redirect_to_http_is_refused(tmp_path: Path, cert: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SSL_CERT_FILE", str(cert[0]))
    monkeypatch.delenv(download.INSECURE_ENV, raising=False)
    with serve(Site(files={"/k": b"kernel"}), None) as plain:
        site = Site(redirects={"/k": plain.url("/k"), "/ok": "/real"}, files={"/real": b"fine"})
        with serve(site, cert) as srv:
            with pytest.raises(DownloadError, match="redirect to http://.* refused"):
                download.fetch(download.parse_source(srv.url("/k"), "--kernel"), str(tmp_path / "k"), "k")
            assert plain.site.log == []  # the http URL was never requested
            download.fetch(download.parse_source(srv.url("/ok"), "--kernel"), str(tmp_path / "ok"), "ok")
    assert (tmp_path / "ok").read_bytes() == b"fine"


def test_dropped_connection_is_an_error(
    tmp_path: Path, cert: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SSL_CERT_FILE", str(cert[0]))
    with serve(Site(files={"/big": os.urandom(2 * 1024 * 1024)}, drop={"/big"}), cert) as srv:
        with pytest.raises(DownloadError, match="incomplete download|transfer failed"):
            download.fetch(download.parse_source(srv.url("/big"), "--rootfs"), str(tmp_path / "b"), "b")


def test_local_sources(tmp_path: Path) -> None:
    src = tmp_path / "my kernel"
    src.write_bytes(b"k" * 100)
    for text in (str(src), "file://" + str(src).replace(" ", "%20")):
        dest = tmp_path / f"out{len(text)}"
        assert (
            download.fetch(download.parse_source(text, "--kernel"), str(dest), "k")
            == hashlib.sha256(b"k" * 100).hexdigest()
        )
    with pytest.raises(NotFoundError):
        download.fetch(download.parse_source(str(tmp_path / "missing"), "--kernel"), str(tmp_path / "m"), "m")
    with pytest.raises(UsageError, match="unsupported URL scheme"):
        download.parse_source("ftp://example.org/x", "--kernel")
    assert stat.S_ISREG(os.stat(tmp_path / f"out{len(str(src))}").st_mode)


@pytest.mark.parametrize("fstype", ["ext2", "ext3"])
def test_sci_install_on_ext2_ext3_with_a_python3_symlink(tmp_path: Path, fstype: str) -> None:
    """Debian's layout: /usr/bin/python3 -> python3.11, merged /sbin -> usr/sbin, no /usr/sbin yet."""
    image = ext4_image(
        tmp_path / "rootfs.img",
        {"usr/bin/python3.11": b"#!fake\n"},
        fstype=fstype,
        links={"usr/bin/python3": "python3.11", "sbin": "usr/sbin"},
    )
    assert guestfs.readiness(str(image)) == guestfs.Readiness(True, False, True)
    sci = tmp_path / "sci"
    sci.write_bytes(b"#!/usr/bin/python3 -I\n" + os.urandom(500))
    guestfs.install_sci(str(image), str(sci))
    assert debugfs_cat(image, "/usr/sbin/sci") == sci.read_bytes()
    assert debugfs_cat(image, "/sbin/sci") == sci.read_bytes()  # through the merged-usr symlink
    assert guestfs.readiness(str(image)).ready
    check = fsck_clean(image)
    assert check.returncode == 0, check.stdout


def test_downloads_keep_images_sparse(tmp_path: Path) -> None:
    data = b"head" + bytes(8 * 1024 * 1024) + b"tail" + bytes(2 * 1024 * 1024)  # ends in a hole
    src = tmp_path / "rootfs.src"
    src.write_bytes(data)
    dest = tmp_path / "rootfs"
    assert _fetch(str(src), dest) == hashlib.sha256(data).hexdigest()
    assert dest.read_bytes() == data
    assert dest.stat().st_blocks * 512 < len(data) // 4


def test_http_status_handling(tmp_path: Path, cert: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SSL_CERT_FILE", str(cert[0]))
    site = Site(status={"/s3.sha256": 403, "/gone.sha256": 410, "/broken.sha256": 500, "/img": 503})
    with serve(site, cert) as srv:

        def small(path: str) -> bytes | None:
            return download.fetch_small(download.parse_source(srv.url(path), "x"))

        assert small("/s3.sha256") is None and small("/gone.sha256") is None  # optional sibling: absent
        with pytest.raises(DownloadError, match="HTTP 500"):
            small("/broken.sha256")
        with pytest.raises(DownloadError, match="HTTP 503"):
            _fetch(srv.url("/img"), tmp_path / "img")
    assert not (tmp_path / "img").exists()
