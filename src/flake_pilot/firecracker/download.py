"""Streaming downloads for VM images: https (http only with FLAKE_ALLOW_INSECURE_TRANSPORT),
``file://`` URLs and plain paths. Every source is hashed (sha256) while it is copied.

Rules: a redirect to a non-https URL is refused like a plain http URL; the response must be
``200``; a declared ``Content-Length`` must be met exactly (a dropped connection is an error,
never a short file). Failures raise DownloadError (exit 7), a missing local file NotFoundError.

Bounds: each read waits at most ``TIMEOUT`` seconds; a whole download at most
``$FLAKE_DOWNLOAD_TIMEOUT`` seconds (default 3600, checked between reads, so a server trickling
a byte now and then cannot hold a pull forever) and at most ``$FLAKE_DOWNLOAD_MAX_SIZE`` bytes
(a size such as ``20GiB``; default 64GiB; a larger Content-Length is refused before the
transfer). The partial file goes with the caller's staging dir.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import ssl
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, Any

from .. import progress
from ..errors import DownloadError, NotFoundError, UsageError
from ..launch import debug

INSECURE_ENV = "FLAKE_ALLOW_INSECURE_TRANSPORT"
DEADLINE_ENV, DEFAULT_DEADLINE = "FLAKE_DOWNLOAD_TIMEOUT", 3600.0
MAX_SIZE_ENV, DEFAULT_MAX_SIZE = "FLAKE_DOWNLOAD_MAX_SIZE", 64 << 30
CHUNK = 1024 * 1024
TIMEOUT = 60.0
_HEX64 = re.compile(r"[0-9a-fA-F]{64}")


def insecure_allowed() -> bool:
    """Like the original: the variable being set at all (even empty) allows plain http."""
    return INSECURE_ENV in os.environ


@dataclass(frozen=True)
class Source:
    """A parsed source: ``kind`` is ``https``, ``http`` or ``file`` (``location`` = URL or path)."""

    kind: str
    location: str

    @property
    def shown(self) -> str:
        return self.location


def parse_source(text: str, option: str) -> Source:
    """Classify a URL or path given on the command line; refuses http without the variable."""
    if not text or "\0" in text or "\n" in text:
        raise UsageError(f"{option}: empty or invalid URL/path")
    parsed = urllib.parse.urlsplit(text)
    scheme = parsed.scheme.lower()
    if scheme == "https":
        return Source("https", text)
    if scheme == "http":
        if not insecure_allowed():
            raise DownloadError(f"{option}: {text}: plain http refused (set {INSECURE_ENV} to allow it)")
        return Source("http", text)
    if scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise UsageError(f"{option}: {text}: file:// URLs must name a local path")
        return Source("file", urllib.parse.unquote(parsed.path))
    if scheme and len(scheme) > 1:  # "c:" style is no concern on Linux; anything else is unknown
        raise UsageError(f"{option}: {text}: unsupported URL scheme {scheme!r} (https, file:// or a path)")
    return Source("file", os.path.abspath(text))


def sibling(source: Source, suffix: str) -> Source:
    """The source of ``<url><suffix>`` (e.g. ``.sha256`` next to an image)."""
    if source.kind == "file":
        return Source("file", source.location + suffix)
    parsed = urllib.parse.urlsplit(source.location)
    return Source(source.kind, urllib.parse.urlunsplit(parsed._replace(path=parsed.path + suffix)))


class _NoInsecureRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req: Any, fp: Any, code: int, msg: str, headers: Any, newurl: str) -> Any:
        scheme = urllib.parse.urlsplit(newurl).scheme.lower()
        if scheme != "https" and not (scheme == "http" and insecure_allowed()):
            raise DownloadError(
                f"{req.full_url}: redirect to {newurl} refused (https only; set {INSECURE_ENV} to allow http)"
            )
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _opener() -> urllib.request.OpenerDirector:
    # create_default_context honours SSL_CERT_FILE / SSL_CERT_DIR through OpenSSL's defaults.
    context = ssl.create_default_context()
    return urllib.request.build_opener(urllib.request.HTTPSHandler(context=context), _NoInsecureRedirect())


class HTTPStatusError(DownloadError):
    """A response other than 200 (404 is NotFoundError)."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


def _open_http(source: Source) -> tuple[Any, int | None]:
    debug.log(f"GET {source.location}")
    headers = {"User-Agent": "flake-ctl", "Accept-Encoding": "identity"}
    request = urllib.request.Request(source.location, headers=headers)
    try:
        response = _opener().open(request, timeout=TIMEOUT)
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            raise NotFoundError(f"{source.location}: HTTP 404 Not Found") from None
        raise HTTPStatusError(f"{source.location}: HTTP {exc.code} {exc.reason}", exc.code) from None
    except urllib.error.URLError as exc:
        raise DownloadError(f"{source.location}: {_reason(exc.reason)}") from None
    except (OSError, http.client.HTTPException) as exc:
        raise DownloadError(f"{source.location}: {_reason(exc)}") from None
    if response.status != 200:
        response.close()
        raise HTTPStatusError(f"{source.location}: HTTP {response.status} (expected 200)", response.status)
    length = response.headers.get("Content-Length")
    chunked = "chunked" in (response.headers.get("Transfer-Encoding") or "").lower()
    if length is None and not chunked:
        response.close()
        raise DownloadError(f"{source.location}: no Content-Length, a complete download cannot be told")
    try:
        total = None if length is None else int(length)
    except ValueError:
        response.close()
        raise DownloadError(f"{source.location}: invalid Content-Length {length!r}") from None
    return response, total


def _reason(reason: object) -> str:
    if isinstance(reason, ssl.SSLCertVerificationError):
        return f"TLS certificate not trusted ({reason.verify_message})"
    if isinstance(reason, OSError) and reason.strerror:
        return reason.strerror
    return str(reason) or type(reason).__name__


def _chunks(stream: IO[bytes] | Any, where: str) -> Iterator[bytes]:
    read = getattr(stream, "read1", stream.read)  # whatever has arrived: the bar moves on slow links
    while True:
        try:
            data = read(CHUNK)
        except (OSError, http.client.HTTPException) as exc:
            raise DownloadError(f"{where}: transfer failed: {_reason(exc)}") from None
        if not data:
            return
        yield data


class SparseWriter:
    """Writes a file, leaving holes for all-zero chunks (filesystem images are mostly zeros)."""

    def __init__(self, handle: IO[bytes]) -> None:
        self.handle = handle

    def write(self, data: bytes) -> None:
        if data.count(0) == len(data):
            self.handle.seek(len(data), os.SEEK_CUR)
        else:
            self.handle.write(data)

    def finish(self) -> None:
        self.handle.truncate(self.handle.tell())  # a trailing hole still counts for the size
        self.handle.flush()
        os.fsync(self.handle.fileno())


def bounds() -> tuple[float, int]:
    """(overall deadline in seconds, size cap in bytes) from the environment (module docstring)."""
    from ..sizes import parse_size

    text = os.environ.get(DEADLINE_ENV, "")
    try:
        seconds = float(text) if text else DEFAULT_DEADLINE
    except ValueError:
        raise UsageError(f"{DEADLINE_ENV}={text!r}: expected seconds") from None
    text = os.environ.get(MAX_SIZE_ENV, "")
    try:
        cap = parse_size(text) if text else DEFAULT_MAX_SIZE
    except ValueError:
        raise UsageError(f"{MAX_SIZE_ENV}={text!r}: expected a size such as 20GiB") from None
    if seconds <= 0 or cap <= 0:
        raise UsageError(f"{DEADLINE_ENV} and {MAX_SIZE_ENV} must be positive")
    return seconds, cap


def fetch(source: Source, dest: str, label: str) -> str:
    """Copy *source* to the new file *dest*; returns the sha256 hex digest of what was written."""
    import time

    seconds, cap = bounds()
    deadline = time.monotonic() + seconds
    digest = hashlib.sha256()
    done = 0
    total: int | None
    if source.kind == "file":
        try:
            handle: Any = open(source.location, "rb")  # noqa: SIM115 - closed below
        except FileNotFoundError:
            raise NotFoundError(f"{source.location}: no such file") from None
        except OSError as exc:
            raise DownloadError(f"{source.location}: cannot read: {exc.strerror}") from None
        total = os.fstat(handle.fileno()).st_size
    else:
        handle, total = _open_http(source)
    if total is not None and total > cap:
        handle.close()
        raise DownloadError(f"{source.location}: {total} bytes, more than {MAX_SIZE_ENV} allows ({cap})")
    try:
        with open(dest, "xb") as out, progress.bar(f"Downloading {label}", total) as bar:
            writer = SparseWriter(out)
            for data in _chunks(handle, source.location):
                if done + len(data) > cap:
                    raise DownloadError(f"{source.location}: more than {cap} bytes ({MAX_SIZE_ENV}), stopped")
                if time.monotonic() > deadline:
                    raise DownloadError(f"{source.location}: not complete within {seconds:g} s ({DEADLINE_ENV})")
                writer.write(data)
                digest.update(data)
                done += len(data)
                bar.advance(len(data))
            writer.finish()
        if total is not None and done != total:
            raise DownloadError(f"{source.location}: incomplete download ({done} of {total} bytes)")
    except BaseException as exc:
        try:
            os.unlink(dest)  # never a partial file left behind
        except OSError:
            pass
        if isinstance(exc, OSError):
            raise DownloadError(f"{dest}: cannot write: {exc.strerror}") from None
        raise
    finally:
        handle.close()
    debug.log(f"fetched {source.location}: {done} bytes, sha256 {digest.hexdigest()}")
    return digest.hexdigest()


def fetch_small(source: Source, limit: int = 4096) -> bytes | None:
    """A small text file (a checksum); None when it does not exist."""
    try:
        if source.kind == "file":
            try:
                with open(source.location, "rb") as handle:
                    return handle.read(limit + 1)[:limit]
            except FileNotFoundError:
                return None
            except OSError as exc:
                raise DownloadError(f"{source.location}: cannot read: {exc.strerror}") from None
        response, _total = _open_http(source)
    except NotFoundError:
        return None
    except HTTPStatusError as exc:
        if exc.status in (401, 403, 410):  # object stores answer 403 for a missing object
            return None
        raise
    try:
        return bytes(response.read(limit))
    except (OSError, http.client.HTTPException) as exc:
        raise DownloadError(f"{source.location}: transfer failed: {_reason(exc)}") from None
    finally:
        response.close()


def parse_sha256(text: str, where: str) -> str:
    """The digest of a checksum file: ``<hex> [file]`` (sha256sum) or ``<hex> [blocks blocksize]``."""
    words = text.split()
    if not words or not _HEX64.fullmatch(words[0]):
        raise DownloadError(f"{where}: not a sha256 checksum")
    return words[0].lower()


def check_hex(value: str, option: str) -> str:
    if not _HEX64.fullmatch(value):
        raise UsageError(f"{option}: {value!r} is not a sha256 digest (64 hex digits)")
    return value.lower()
