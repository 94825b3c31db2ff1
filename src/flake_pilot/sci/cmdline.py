"""sci settings from the kernel command line (and init's environment, where the kernel puts
unknown ``key=value`` parameters).

| setting | meaning |
|---|---|
| ``run=CMD`` | serial mode: run CMD (shell-words split) on the console; ``run=vsock``: session mode |
| ``sci_transport=vsock[:PORT]`` / ``virtio-serial[:PREFIX]`` | session transport (default vsock:52) |
| ``sci_resume`` | keep serving sessions (resume mode); implies session mode |
| ``sci_force_vsock`` | session mode for a single session |
| ``overlay_root=DEV`` | overlay root on block device DEV (ext2 formatted on first use) |
| ``sci_term``, ``sci_lines``, ``sci_columns`` | TERM and terminal size defaults |
| ``PILOT_DEBUG`` | log sci's steps on the console |
| ``reboot=k`` | end the VM by reset (Firecracker) instead of power-off |
"""

from __future__ import annotations

import os
from collections.abc import Mapping

DEFAULT_VSOCK_PORT = 52
DEFAULT_PORT_PREFIX = "sci"
BASE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def parse_kernel_cmdline(text: str) -> dict[str, str]:
    """The kernel's own rules (kernel/params.c next_arg): blank-separated params, a double quote
    toggles quoting, only a leading quote (of the param or its value) and the matching last quote
    are dropped; inner quotes stay. A param without ``=`` is a flag (value ""); ``--`` ends the
    kernel's part."""
    params: dict[str, str] = {}
    i, n = 0, len(text)
    while i < n:
        while i < n and text[i].isspace():
            i += 1
        if i >= n:
            break
        quoted = text[i] == '"'
        if quoted:
            i += 1
        start, in_quote, equals = i, quoted, -1
        while i < n and (in_quote or not text[i].isspace()):
            if equals < 0 and text[i] == "=":
                equals = i
            if text[i] == '"':
                in_quote = not in_quote
            i += 1
        end = i
        value_quoted = equals >= 0 and text[equals + 1 : equals + 2] == '"'
        if end > start and text[end - 1] == '"' and (quoted or value_quoted):
            end -= 1
        if equals < 0:
            key, value = text[start:end], ""
        else:
            key, value = text[start:equals], text[equals + 1 : end]
            if value.startswith('"'):
                value = value[1:]
        if key == "--":
            break
        params[key] = value
    return params


def split_words(text: str) -> list[str]:
    """POSIX-shell word splitting (quotes, backslashes; no expansion). ValueError if unbalanced."""
    words: list[str] = []
    cur: list[str] = []
    started = False
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch.isspace():
            if started:
                words.append("".join(cur))
                cur, started = [], False
        elif ch == "\\":
            if i + 1 >= n:
                raise ValueError("trailing backslash")
            i += 1
            cur.append(text[i])
            started = True
        elif ch == "'":
            end = text.find("'", i + 1)
            if end < 0:
                raise ValueError("unterminated single quote")
            cur.append(text[i + 1 : end])
            i, started = end, True
        elif ch == '"':
            i += 1
            while i < n and text[i] != '"':
                if text[i] == "\\" and i + 1 < n and text[i + 1] in '"\\$`':
                    i += 1
                cur.append(text[i])
                i += 1
            if i >= n:
                raise ValueError("unterminated double quote")
            started = True
        else:
            cur.append(ch)
            started = True
        i += 1
    if started:
        words.append("".join(cur))
    return words


def _int(value: str | None, default: int) -> int:
    try:
        return int(value or "") or default
    except ValueError:
        return default


class Settings:
    """What sci was asked to do."""

    def __init__(self, params: Mapping[str, str]) -> None:
        self.params = dict(params)
        self.run = params.get("run")
        self.resume = "sci_resume" in params
        self.force_vsock = "sci_force_vsock" in params
        self.overlay_root = params.get("overlay_root") or None
        self.debug = params.get("PILOT_DEBUG", "") not in ("", "0")
        self.term = params.get("sci_term") or params.get("TERM") or "linux"
        self.rows = _int(params.get("sci_lines"), 24)
        self.cols = _int(params.get("sci_columns"), 80)
        self.reset = params.get("reboot", "").startswith("k")
        transport = params.get("sci_transport", "")
        self.session_mode = self.resume or self.force_vsock or self.run == "vsock" or bool(transport)
        kind, _, arg = (transport or "vsock").partition(":")
        if kind not in ("vsock", "virtio-serial"):
            raise ValueError(f"sci_transport={transport}: expected vsock[:PORT] or virtio-serial[:PREFIX]")
        self.transport = kind
        self.vsock_port = _int(arg, DEFAULT_VSOCK_PORT) if kind == "vsock" else 0
        self.port_prefix = (arg or DEFAULT_PORT_PREFIX) if kind == "virtio-serial" else ""

    def command(self) -> list[str]:
        """Serial mode: the command from ``run=``; ValueError when missing or unsplittable."""
        if not self.run:
            raise ValueError("no run= on the kernel command line: nothing to do")
        words = split_words(self.run)
        if not words:
            raise ValueError("run= is empty")
        return words

    def base_env(self) -> dict[str, str]:
        """The environment every program starts with (requests add to it)."""
        return {"PATH": BASE_PATH, "HOME": "/root", "TERM": self.term, "LANG": "C.UTF-8"}


def load(environ: Mapping[str, str] | None = None, cmdline_path: str = "/proc/cmdline") -> Settings:
    """Environment first, the kernel command line over it (it also carries flags without ``=``)."""
    params = dict(os.environ if environ is None else environ)
    try:
        with open(cmdline_path) as f:
            params.update(parse_kernel_cmdline(f.read()))
    except OSError:
        pass
    return Settings(params)
