"""A flat apt repository: ``Packages``, ``Packages.gz`` and ``Release`` beside the .deb files.

apt reads it with ``deb [trusted=yes] file:/DIR ./`` (unsigned: the Release file has checksums
but no signature). The index covers every ``*.deb`` in the directory, sorted by file name, and
is written with fixed timestamps, so the same packages give the same index.
"""

from __future__ import annotations

import email.utils
import gzip
import hashlib
import os
import tempfile

from ..errors import EngineError, FlakeError
from ..launch.runner import first_line, run


def _hashes(path: str) -> tuple[int, str, str, str]:
    md5, sha1, sha256 = hashlib.md5(), hashlib.sha1(), hashlib.sha256()
    size = 0
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            size += len(chunk)
            for h in (md5, sha1, sha256):
                h.update(chunk)
    return size, md5.hexdigest(), sha1.hexdigest(), sha256.hexdigest()


def _stanza(directory: str, name: str) -> str:
    path = os.path.join(directory, name)
    proc = run(["dpkg-deb", "--field", path], check=False)
    if proc.returncode != 0:
        raise EngineError(f"{path}: not a Debian package: {first_line(proc.stderr)}", proc.returncode)
    control = proc.stdout.decode("utf-8", errors="replace").rstrip("\n")
    size, md5, sha1, sha256 = _hashes(path)
    extra = f"Filename: ./{name}\nSize: {size}\nMD5sum: {md5}\nSHA1: {sha1}\nSHA256: {sha256}\n"
    lines = control.split("\n")
    # Description goes last, as dpkg-scanpackages writes it
    cut = next((i for i, line in enumerate(lines) if line.startswith("Description:")), len(lines))
    head, tail = "\n".join(lines[:cut]), "\n".join(lines[cut:])
    return f"{head}\n{extra}{tail}\n" if tail else f"{head}\n{extra}"


def _write_atomic(path: str, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=os.path.dirname(path))
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def write(directory: str, mtime: int) -> list[str]:
    """(Re)write the index of *directory*; returns the package files it lists."""
    debs = sorted(n for n in os.listdir(directory) if n.endswith(".deb") and not n.startswith("."))
    packages = "\n".join(_stanza(directory, n) for n in debs).encode()
    packages_gz = gzip.compress(packages, compresslevel=9, mtime=0)
    files = {"Packages": packages, "Packages.gz": packages_gz}
    release = [
        "Origin: flake-ctl build-deb",
        "Label: flakes",
        f"Date: {email.utils.formatdate(mtime, usegmt=True)}",
    ]
    for title, algo in (("MD5Sum", hashlib.md5), ("SHA1", hashlib.sha1), ("SHA256", hashlib.sha256)):
        release.append(f"{title}:")
        release.extend(f" {algo(data).hexdigest()} {len(data)} {name}" for name, data in files.items())
    try:
        for name, data in (*files.items(), ("Release", ("\n".join(release) + "\n").encode())):
            _write_atomic(os.path.join(directory, name), data)
    except OSError as exc:
        raise FlakeError(f"{directory}: cannot write the repository index: {exc.strerror}") from exc
    return debs
