"""Build sci as ONE self-contained executable (a zipapp) for ``/usr/sbin/sci`` in a guest rootfs.

It holds sci, the protocol and the error classes; the guest needs only python3-minimal. Modules
are stored uncompressed (no zlib needed) and precompiled (unchecked-hash .pyc, used when the
guest's Python has the same bytecode version, else the .py beside it), so sci starts fast.
The sources and .pyc headers (source hashes) are reproducible; the marshalled code inside a
.pyc can differ between processes (CPython sets reference flags by refcount).
"""

from __future__ import annotations

import io
import os
import py_compile
import stat
import tempfile
import zipfile
from pathlib import Path

from ..errors import FlakeError

SHEBANG = b"#!/usr/bin/python3 -IS\n"  # isolated, no site: 0.3 s less start-up under TCG
_PKG = Path(__file__).resolve().parent.parent  # src/flake_pilot
# guest modules: all of sci but this builder, plus what it imports from the package
MODULES = ["__init__.py", "errors.py", "protocol.py"] + sorted(
    f"sci/{p.name}" for p in (_PKG / "sci").glob("*.py") if p.name not in ("bundle.py", "__main__.py")
)
MAIN = b"import sys\nfrom flake_pilot.sci.main import main\nsys.exit(main())\n"
_DATE = (2020, 1, 1, 0, 0, 0)


def _pyc(source: Path) -> bytes:
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "m.pyc")
        py_compile.compile(
            str(source), cfile=out, doraise=True, invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH
        )
        return Path(out).read_bytes()


def build_bytes() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:

        def add(name: str, data: bytes) -> None:
            info = zipfile.ZipInfo(name, _DATE)
            info.external_attr = 0o644 << 16
            zf.writestr(info, data)

        add("__main__.py", MAIN)
        for rel in MODULES:
            src = _PKG / rel
            add(f"flake_pilot/{rel}", src.read_bytes())
            add(f"flake_pilot/{rel[:-3]}.pyc", _pyc(src))
    return SHEBANG + buf.getvalue()


def build_zipapp(dest_path: str | os.PathLike[str]) -> Path:
    """Write the sci executable to *dest_path* (atomically, mode 0755); FlakeError on failure."""
    dest = Path(dest_path)
    try:
        data = build_bytes()
        tmp = dest.with_name(f".{dest.name}.tmp{os.getpid()}")
        tmp.write_bytes(data)
        tmp.chmod(stat.S_IRWXU | stat.S_IRGRP | stat.S_IXGRP | stat.S_IROTH | stat.S_IXOTH)
        os.replace(tmp, dest)
    except OSError as exc:
        raise FlakeError(f"{dest}: cannot write the sci zipapp: {exc.strerror or exc}") from exc
    return dest


def main() -> int:
    import sys

    if len(sys.argv) != 2:
        sys.stderr.write("usage: python3 -m flake_pilot.sci.bundle DEST\n")
        return 2
    try:
        print(build_zipapp(sys.argv[1]))
    except FlakeError as exc:
        sys.stderr.write(f"{exc}\n")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
