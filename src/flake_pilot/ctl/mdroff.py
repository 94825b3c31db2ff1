"""The reference pages under ``docs/`` (Markdown) as man page sections (roff).

The docs are the one source of the reference; the man pages show them. Only the Markdown the
docs use is understood: ``#``/``##``/``###`` headings, paragraphs, ``- `` and ``1. `` lists
(continued by indented lines), tables, fenced or indented code, and inline ``code``, ``**bold**``,
``*italic*`` and ``[text](link)``.
"""

from __future__ import annotations

import os
import re

# Markdown headings whose man page section has a conventional name
MAN_TITLES = {"Caller arguments": "OPTIONS"}


_ITEM = re.compile(r"(-|\d+\.) ")  # a list item: "- text" or "1. text"


class DocsError(Exception):
    """A docs page or section the man pages need is missing."""


# typographic characters of the docs as roff glyphs (an ASCII terminal has no "…")
_GLYPHS = {"…": "...", "–": "\\(en", "—": "\\(em", "×": "\\(mu", "→": "\\(->", "≤": "\\(<=", "±": "\\(+-"}


def esc(text: str) -> str:
    """Escape text for roff: backslashes, dashes, and a leading dot or quote."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    for char, glyph in _GLYPHS.items():
        text = text.replace(char, glyph)
    return re.sub(r"^([.'])", r"\\&\1", text, flags=re.M)


_INLINE = re.compile(r"`([^`]+)`|\*\*(.+?)\*\*|(?<![\w*])\*([^*\s][^*]*?)\*(?![\w*])|\[([^\]]+)\]\([^)\s]+\)")


def inline(text: str) -> str:
    """One line of Markdown as escaped roff with font changes."""
    out: list[str] = []
    pos = 0
    for m in _INLINE.finditer(text):
        out.append(esc(text[pos : m.start()]))
        code, bold, italic, link = m.groups()
        if code is not None:
            out.append("\\fB" + esc(code) + "\\fR")
        elif bold is not None:
            out.append("\\fB" + inline(bold).replace("\\fR", "\\fB") + "\\fR")
        elif italic is not None:
            out.append("\\fI" + esc(italic) + "\\fR")
        else:
            out.append(inline(link))
        pos = m.end()
    out.append(esc(text[pos:]))
    return re.sub(r"^([.'])", r"\\&\1", "".join(out))


def _cells(row: str) -> list[str]:
    """Cells of a table row; a ``|`` inside backticks belongs to the cell."""
    cells, cell, in_code = [], "", False
    for ch in row.strip().strip("|"):
        if ch == "`":
            in_code = not in_code
        if ch == "|" and not in_code:
            cells.append(cell.strip())
            cell = ""
        else:
            cell += ch
    cells.append(cell.strip())
    return cells


# table columns whose header needs no repeating in front of each cell
PLAIN_COLUMNS = ("meaning", "what", "effect", "content", "what happens")


def _table(rows: list[str]) -> str:
    """Each row becomes a tagged paragraph: the first cell is the tag, further cells follow on
    their own lines, named by their header (two-column tables and descriptive columns plain)."""
    header = _cells(rows[0])
    out = []
    for row in rows[2:]:
        cells = _cells(row)
        parts = []
        for name, cell in zip(header[1:], cells[1:], strict=False):
            plain = len(header) == 2 or not name or name.startswith(PLAIN_COLUMNS)
            if cell:
                parts.append(inline(cell) if plain else f"\\fI{esc(name)}\\fR: {inline(cell)}")
        out.append(".TP\n" + inline(cells[0]) + "\n" + "\n.br\n".join(parts) + "\n")
    return "".join(out)


def _verbatim(lines: list[str]) -> str:
    return ".PP\n.nf\n.RS 4\n" + "\n".join("\\&" + esc(ln) if ln else "" for ln in lines) + "\n.RE\n.fi\n"


def body(markdown: str) -> str:
    """Markdown blocks (no ``#`` title) as roff; ``##`` starts ``.SH``, ``###`` ``.SS``."""
    lines = markdown.split("\n")
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        if not line.strip():
            i += 1
        elif line.startswith("```"):
            j = i + 1
            while j < len(lines) and not lines[j].startswith("```"):
                j += 1
            out.append(_verbatim(lines[i + 1 : j]))
            i = j + 1
        elif line.startswith("    "):
            j = i
            while j < len(lines) and (lines[j].startswith("    ") or not lines[j].strip()):
                j += 1
            block = [ln[4:] for ln in lines[i:j]]
            while block and not block[-1].strip():
                block.pop()
            out.append(_verbatim(block))
            i = j
        elif line.startswith("### "):
            out.append(".SS " + inline(line[4:].strip()) + "\n")
            i += 1
        elif line.startswith("## "):
            title = line[3:].strip()
            out.append(".SH " + esc(MAN_TITLES.get(title, title).upper()) + "\n")
            i += 1
        elif line.startswith("|"):
            j = i
            while j < len(lines) and lines[j].startswith("|"):
                j += 1
            out.append(_table(lines[i:j]))
            i = j
        elif _ITEM.match(line):
            items: list[tuple[str, str]] = []
            while i < len(lines) and (_ITEM.match(lines[i]) or lines[i].startswith("  ")):
                m = _ITEM.match(lines[i])
                if m:
                    mark = "\\(bu" if m.group(1) == "-" else m.group(1)
                    items.append((mark, lines[i][m.end() :].strip()))
                else:
                    items[-1] = (items[-1][0], items[-1][1] + " " + lines[i].strip())
                i += 1
            out.append("".join(f".IP {mark} 4\n" + inline(item) + "\n" for mark, item in items))
        else:
            para = []
            while (
                i < len(lines)
                and lines[i].strip()
                and not lines[i].startswith(("|", "#", "```", "    "))
                and not _ITEM.match(lines[i])
            ):
                para.append(lines[i].strip())
                i += 1
            out.append(".PP\n" + inline(" ".join(para)) + "\n")
    return "".join(out)


def title(markdown: str) -> tuple[str, str]:
    """``# name — summary`` of a page: (name, summary)."""
    first = markdown.split("\n", 1)[0]
    name, sep, summary = first.removeprefix("# ").partition(" — ")
    if not first.startswith("# ") or not sep:
        raise DocsError(f"first line must be '# NAME — summary', got {first!r}")
    return name.strip(), summary.strip()


def sections(markdown: str) -> dict[str, str]:
    """``{heading: markdown}`` of every ``##`` section (its ``###`` subsections included)."""
    found: dict[str, str] = {}
    parts = re.split(r"^## (.+)$", markdown, flags=re.M)
    for heading, text in zip(parts[1::2], parts[2::2], strict=True):
        found[heading.strip()] = text.strip("\n")
    return found


def find_docs(start: str | None = None) -> str:
    """The ``docs/`` directory of the source tree this module lies in."""
    here = os.path.dirname(os.path.abspath(start or __file__))
    while True:
        candidate = os.path.join(here, "docs")
        if os.path.isfile(os.path.join(candidate, "podman-pilot.md")):
            return candidate
        parent = os.path.dirname(here)
        if parent == here:
            raise DocsError("no docs/ directory above the package: pass the docs directory")
        here = parent


class Docs:
    """The docs pages of one directory, read once."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self._pages: dict[str, str] = {}

    def page(self, name: str) -> str:
        if name not in self._pages:
            path = os.path.join(self.directory, name)
            try:
                with open(path, encoding="utf-8") as handle:
                    self._pages[name] = handle.read()
            except OSError as exc:
                raise DocsError(f"{path}: {exc.strerror}") from None
        return self._pages[name]

    def section(self, name: str, heading: str) -> str:
        found = sections(self.page(name))
        if heading not in found:
            raise DocsError(f"{os.path.join(self.directory, name)}: no section '## {heading}'")
        return found[heading]
