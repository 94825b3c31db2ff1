"""A local HTTP(S) server for download tests.

The certificate is made per test session with ``openssl req`` (CN/SAN localhost, 127.0.0.1) and
trusted by the client through ``SSL_CERT_FILE``. Routes: plain files, redirects, and "drop"
files whose connection is cut after half the body although the full Content-Length was sent.
"""

from __future__ import annotations

import http.server
import shutil
import socket
import ssl
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from conftest import need_program


def make_cert(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate for localhost/127.0.0.1: (cert, key)."""
    need_program("openssl", "openssl")
    directory.mkdir(parents=True, exist_ok=True)
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-days",
            "2",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost,IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


@dataclass
class Site:
    """What the server answers; tests may change it while the server runs."""

    files: dict[str, bytes] = field(default_factory=dict)
    redirects: dict[str, str] = field(default_factory=dict)
    drop: set[str] = field(default_factory=set)  # send half the body, then cut the connection
    stall: set[str] = field(default_factory=set)  # send half the body, then wait for `release`
    trickle: set[str] = field(default_factory=set)  # one byte every 0.2 s until `release`
    release: threading.Event = field(default_factory=threading.Event)
    status: dict[str, int] = field(default_factory=dict)  # answer these paths with this status, no body
    log: list[str] = field(default_factory=list)


class _Handler(http.server.BaseHTTPRequestHandler):
    site: Site
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - base class signature
        pass

    def do_GET(self) -> None:  # noqa: N802 - base class naming
        site = self.server.site  # type: ignore[attr-defined]
        site.log.append(self.path)
        if self.path in site.status:
            self.send_response(site.status[self.path])
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if self.path in site.redirects:
            self.send_response(302)
            self.send_header("Location", site.redirects[self.path])
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        data = site.files.get(self.path)
        if data is None:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.path in site.trickle:
            for index in range(len(data)):
                if site.release.wait(0.2):
                    break
                try:
                    self.wfile.write(data[index : index + 1])
                    self.wfile.flush()
                except OSError:
                    break
            self.close_connection = True
            return
        if self.path in site.stall:
            self.wfile.write(data[: len(data) // 2])
            self.wfile.flush()
            site.release.wait(60)
            self.close_connection = True
            return
        if self.path in site.drop:
            self.wfile.write(data[: len(data) // 2])
            self.wfile.flush()
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            return
        self.wfile.write(data)


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, site: Site, context: ssl.SSLContext | None) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.site = site
        self.context = context

    def get_request(self) -> tuple[socket.socket, object]:
        sock, addr = super().get_request()
        if self.context is not None:
            sock = self.context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        return sock, addr

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # clients that give up (refused redirects, dropped transfers) are expected


@dataclass
class Running:
    site: Site
    base: str
    port: int

    def url(self, path: str) -> str:
        return self.base + path


@contextmanager
def serve(site: Site, cert: tuple[Path, Path] | None) -> Iterator[Running]:
    """Serve *site* on 127.0.0.1 (https with *cert*, plain http without) until the block ends."""
    context = None
    if cert is not None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(str(cert[0]), str(cert[1]))
    server = _Server(site, context)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    port = server.server_address[1]
    scheme = "https" if cert is not None else "http"
    try:
        yield Running(site, f"{scheme}://localhost:{port}", port)
    finally:
        site.release.set()
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


# -- image builders for the VM image tests -------------------------------------------------------


def ext4_image(
    path: Path, files: dict[str, bytes], size_mb: int = 8, fstype: str = "ext4", links: dict[str, str] | None = None
) -> Path:
    """A real ext2/3/4 image holding *files* and symlinks *links* (mkfs -d, no mount)."""
    import os
    import tempfile

    tree = Path(tempfile.mkdtemp(prefix="rootfs-", dir=path.parent))
    try:
        for name, data in files.items():
            target = tree / name.lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
            os.chmod(target, 0o755)
        for name, dest in (links or {}).items():
            link = tree / name.lstrip("/")
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(dest)
        with open(path, "wb") as handle:
            handle.truncate(size_mb * 1024 * 1024)
        mkfs = [f"/usr/sbin/mkfs.{fstype}", "-q", "-F", "-d", str(tree), str(path)]
        subprocess.run(mkfs, check=True, capture_output=True)
    finally:
        shutil.rmtree(tree)
    return path


def kis_tarball(members: dict[str, bytes], compression: str = "xz") -> bytes:
    """A tar archive (xz by default) with the given flat members."""
    import io
    import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=f"w:{compression}") as tar:  # type: ignore[call-overload]
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def kis_members(
    rootfs: bytes,
    kernel: bytes = b"KERNEL" * 100,
    initrd: bytes | None = b"INITRD" * 50,
    name: str = "test.x86_64-1.15.6",
    blocks: bool = True,
) -> dict[str, bytes]:
    """KIWI's members: rootfs, .kernel, [.initrd], .append, .sha256 (<hex> [<blocks> <blocksize>])."""
    import hashlib

    digest = hashlib.sha256(rootfs).hexdigest()
    line = f"{digest} {len(rootfs) // 512} 512\n" if blocks and len(rootfs) % 512 == 0 else f"{digest}\n"
    members = {name: rootfs, f"{name}.kernel": kernel, f"{name}.append": b"quiet\n", f"{name}.sha256": line.encode()}
    if initrd is not None:
        members[f"{name}.initrd"] = initrd
    return members


def debugfs_cat(image: Path, path: str) -> bytes:
    return subprocess.run(
        ["/usr/sbin/debugfs", "-R", f"cat {path}", str(image)], check=True, capture_output=True
    ).stdout


def debugfs_stat(image: Path, path: str) -> str:
    return subprocess.run(
        ["/usr/sbin/debugfs", "-R", f"stat {path}", str(image)], check=True, capture_output=True, text=True
    ).stdout


def fsck_clean(image: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["/usr/sbin/e2fsck", "-fn", str(image)], capture_output=True, text=True)
