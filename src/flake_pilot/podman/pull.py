"""Pulling images for flake-ctl and for a launch (never on a warm launch: slow-path imports are fine).

A pull writes no engine output to the caller's streams: podman runs with ``-q``, its messages
are captured, a spinner shows on a terminal only (``progress.spinner``), and a failure is one
line naming the image, with a hint when the registry speaks plain http (``PILOT_DEBUG=1``
shows podman's full text). Whether a launch must pull is decided without an engine call where
the image store can be read (``images_json`` + ``compose_store``).
"""

from __future__ import annotations

import os

from ..errors import EngineError
from ..launch import debug, runner

PLAIN_HTTP = "HTTP response to HTTPS client"  # podman's words for a registry without TLS


class PullError(EngineError):
    """A failed pull; ``reason``: podman's first error line with the hint."""

    def __init__(self, ref: str, reason: str, returncode: int | None) -> None:
        super().__init__(f"cannot pull {ref}: {reason}", returncode)
        self.reason = reason


def tls_args(tls_verify: bool) -> list[str]:
    return [] if tls_verify else ["--tls-verify=false"]


def hint(stderr: bytes | str, remedy: str) -> str:
    """A short hint for a known failure in podman's *stderr*, else ''."""
    text = stderr.decode(errors="replace") if isinstance(stderr, bytes) else stderr
    if PLAIN_HTTP in text:
        return f" (the registry speaks plain http: {remedy})"
    return ""


def pull(
    prefix: list[str], env: dict[str, str], ref: str, *, tls_verify: bool = True, remedy: str, label: str = ""
) -> str:
    """Pull *ref* quietly (a spinner on a terminal); returns the image ID. *remedy* names the
    option that turns TLS verification off where the failure hint should point to it."""
    from .. import progress

    argv = [*prefix, "pull", "-q", *tls_args(tls_verify), ref]
    with progress.spinner(label or f"pulling {ref}"):
        done = runner.run(argv, env=env, check=False)
    if done.returncode != 0:
        debug.log(f"podman pull {ref}: {done.stderr.decode(errors='replace').strip()}")
        raise PullError(ref, runner.first_line(done.stderr) + hint(done.stderr, remedy), done.returncode)
    lines = done.stdout.decode(errors="replace").split()
    return lines[-1] if lines else ""


def exists(prefix: list[str], env: dict[str, str], ref: str) -> bool:
    """``podman image exists``: True/False; any other answer is an EngineError."""
    done = runner.run([*prefix, "image", "exists", ref], env=env, check=False)
    if done.returncode not in (0, 1):
        raise EngineError(f"podman image exists {ref} failed: {runner.first_line(done.stderr)}", done.returncode)
    return done.returncode == 0


def images_json(storage_conf: str | None) -> str | None:
    """The image list of the store that *storage_conf* configures, when the file names it
    plainly (``[storage] graphroot`` and ``driver``; root's or a user's own conf); else None."""
    if not storage_conf:
        return None
    import tomllib

    try:
        with open(storage_conf, "rb") as handle:
            storage = tomllib.load(handle).get("storage", {})
    except (OSError, ValueError):
        return None
    root = storage.get("graphroot")
    if os.getuid() != 0 and storage.get("rootless_storage_path"):
        root = storage["rootless_storage_path"]
    driver = storage.get("driver")
    if not isinstance(root, str) or not isinstance(driver, str) or not root.startswith("/") or "$" in root:
        return None
    from .compose_store import images_json_path

    return images_json_path(root, driver)


def present(path: str | None, ref: str) -> bool | None:
    """Whether the store's image list at *path* holds *ref*; None when it cannot tell."""
    if path is None:
        return None
    from .compose_store import load, qualify

    qualified = qualify(ref.partition("@")[0]) is not None
    if not os.path.lexists(path):  # a store without images yet
        return False if qualified and os.path.isdir(os.path.dirname(path)) else None
    index = load(path)
    if index is None:
        return None
    if index.resolve(ref) is not None:
        return True
    return False if qualified else None  # a short name podman may resolve otherwise
