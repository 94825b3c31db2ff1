"""Cheap reads of podman's image store (no engine call): which image ID a name points to.

podman (containers/storage) keeps ``<graphroot>/<driver>-images/images.json``, written
atomically (temp + rename), so a plain read always sees a complete list. The warm launch path
uses it to check the composition key in a few milliseconds; anything it cannot resolve with
certainty (short names matching several images, an unreadable store) returns None and the
caller asks the engine instead.
"""

from __future__ import annotations

import os
import stat

from ..errors import SecurityError

TYPE_CHECKING = False  # no typing/collections imports at launch (~8 ms)
if TYPE_CHECKING:
    from collections.abc import Iterator

MAX_TREE_ENTRIES = 20000


class StoreIndex:
    """Read-only view of images.json (a slotted class: dataclasses cost ~10 ms at launch)."""

    __slots__ = ("by_name", "by_digest", "ids")

    def __init__(self, by_name: dict[str, str], by_digest: dict[str, str], ids: frozenset[str]) -> None:
        self.by_name = by_name  # fully qualified "repo:tag" -> image id
        self.by_digest = by_digest  # "sha256:..." manifest digest -> image id
        self.ids = ids

    def resolve(self, ref: str) -> str | None:
        """Image ID for *ref* as podman would resolve it, or None when unsure."""
        if ref in self.ids:
            return ref
        name, _, digest = ref.partition("@")
        if digest:
            return self.by_digest.get(digest)
        full = qualify(name)
        if full is not None:
            return self.by_name.get(full)
        # short name: accept only an unambiguous match (podman's own rules need registries.conf)
        short = name if _has_tag(name) else name + ":latest"
        hits = {iid for n, iid in self.by_name.items() if n.endswith("/" + short)}
        return hits.pop() if len(hits) == 1 else None


def _has_tag(name: str) -> bool:
    return ":" in name.rsplit("/", 1)[-1]


def qualify(name: str) -> str | None:
    """``host/repo:tag`` for a name with a registry part; None for short names."""
    if not _has_tag(name):
        name += ":latest"
    first, sep, _ = name.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost"):
        return name
    return None


def load(images_json: str) -> StoreIndex | None:
    """Parse images.json; None when it cannot be read (e.g. a root store seen by a user)."""
    import json

    try:
        with open(images_json, "rb") as handle:
            records = json.loads(handle.read() or b"[]")
    except (OSError, ValueError):
        return None
    by_name: dict[str, str] = {}
    by_digest: dict[str, str] = {}
    ids = set()
    for rec in records if isinstance(records, list) else []:
        iid = rec.get("id") if isinstance(rec, dict) else None
        if not isinstance(iid, str):
            continue
        ids.add(iid)
        for name in rec.get("names") or ():
            by_name[name] = iid
        for dig in [rec.get("digest"), *(rec.get("digests") or ())]:
            if isinstance(dig, str):
                by_digest[dig] = iid
    return StoreIndex(by_name, by_digest, frozenset(ids))


def images_json_path(graphroot: str, driver: str) -> str:
    return os.path.join(graphroot, f"{driver}-images", "images.json")


def walk(path: str) -> Iterator[tuple[str, os.stat_result]]:
    """(path, lstat) of *path* and, for a real directory, everything below it (sorted)."""
    st = os.lstat(path)
    yield path, st
    if not stat.S_ISDIR(st.st_mode):
        return
    count = 0
    stack = [path]
    while stack:
        top = stack.pop()
        with os.scandir(top) as it:
            names = sorted(e.name for e in it)
        for name in names:
            full = os.path.join(top, name)
            sub = os.lstat(full)
            count += 1
            if count > MAX_TREE_ENTRIES:
                raise SecurityError(f"{path}: more than {MAX_TREE_ENTRIES} entries, refusing to copy it")
            yield full, sub
            if stat.S_ISDIR(sub.st_mode):
                stack.append(full)


def signature(paths: list[str]) -> list[list[object]]:
    """Cheap change detector: lstat fields of every path and tree entry ('missing' if absent)."""
    sig: list[list[object]] = []
    for path in paths:
        try:
            for entry, st in walk(path):
                sig.append(
                    [entry, st.st_mode, st.st_uid, st.st_gid, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]
                )
        except OSError as exc:
            sig.append([path, "error", exc.errno])
    return sig
