"""Man pages: the options from the parser that prints ``--help``, the rest from ``docs/``.

* ``flake-ctl(8)`` and one page per subcommand (``flake-ctl-podman-register(8)``, ...): NAME,
  SYNOPSIS, DESCRIPTION, OPTIONS and COMMANDS from the argparse parser of
  ``flake_pilot.ctl.main.build_parser()``, EXIT STATUS from ``errors.EXIT_CODES``, and the
  sections of ``CTL_SECTIONS`` (FILES, output fields, ...) from the docs pages.
* ``podman-pilot(8)``, ``firecracker-pilot(8)``, ``sci(8)`` and ``flakes.yml(5)``: the whole
  docs page of ``DOC_PAGES`` (``# name — summary`` gives NAME, each ``##`` a section).

A docs page or section named here that is missing is an error (``mdroff.DocsError``), so the
man pages never lose a section silently.

    python -m flake_pilot.ctl.manpages OUTDIR [DOCSDIR]     # writes *.8 and flakes.yml.5
"""

from __future__ import annotations

import argparse
import os
import re
import sys

from .. import __version__
from ..errors import EXIT_CODES
from . import mdroff
from .mdroff import esc

SECTION_TITLE = {"8": "System Administration", "5": "File Formats"}
# man page -> (docs page, man section)
DOC_PAGES = {
    "podman-pilot": ("podman-pilot.md", "8"),
    "firecracker-pilot": ("firecracker-pilot.md", "8"),
    "sci": ("sci.md", "8"),
    "flakes.yml": ("configuration.md", "5"),
}
LAUNCHERS = ("podman-pilot", "firecracker-pilot", "sci")
# flake-ctl page -> [(man section, docs page, docs heading)]; sections of one name are joined
_FILES = ("FILES", "configuration.md", "Files")
_OUTPUT = ("OUTPUT FIELDS", "flake-ctl.md", "Output formats")
_REGISTRIES = ("DETAILS", "flake-ctl.md", "Registries, registration checks and removal")
CTL_SECTIONS: dict[str, list[tuple[str, str, str]]] = {
    "flake-ctl": [("ENVIRONMENT", "flake-ctl.md", "Environment"), _FILES],
    "flake-ctl-init": [("FILES", "configuration.md", "Generic configuration")],
    "flake-ctl-list": [_OUTPUT, ("FILES", "configuration.md", "Registrations")],
    "flake-ctl-podman-pull": [_REGISTRIES, _FILES],
    "flake-ctl-podman-register": [
        _REGISTRIES,
        ("FILES", "configuration.md", "Registrations"),
        ("FILES", "configuration.md", "Container registration keys"),
    ],
    "flake-ctl-podman-remove": [_REGISTRIES, ("FILES", "podman-pilot.md", "Files")],
    "flake-ctl-podman-show": [_OUTPUT, ("FILES", "podman-pilot.md", "Files")],
    "flake-ctl-podman-cache": [("DETAILS", "delta-containers.md", "Cache commands"), _FILES],
    "flake-ctl-podman-cache-list": [_OUTPUT, ("FILES", "delta-containers.md", "Warm launch")],
    "flake-ctl-podman-cache-prune": [("FILES", "delta-containers.md", "Warm launch")],
    "flake-ctl-firecracker-pull": [
        ("DETAILS", "vm-flakes.md", "pull"),
        ("GUEST READINESS", "vm-flakes.md", "Guest readiness"),
        _FILES,
    ],
    "flake-ctl-firecracker-register": [
        ("VM MONITORS", "vm-engines.md", "Registration keys"),
        ("FILES", "configuration.md", "Registrations"),
        ("FILES", "configuration.md", "VM registration keys"),
    ],
    "flake-ctl-firecracker-remove": [("DETAILS", "vm-flakes.md", "remove"), _FILES],
    "flake-ctl-firecracker-show": [_OUTPUT, ("FILES", "firecracker-pilot.md", "Files")],
    "flake-ctl-firecracker-images": [_OUTPUT, _FILES],
    "flake-ctl-doctor": [("CHECKS", "flake-ctl.md", "Doctor"), _OUTPUT, _FILES],
}
_DEB = [
    ("IMAGE", "packaging.md", "Image"),
    ("APPS", "packaging.md", "Apps"),
    ("PACKAGE", "packaging.md", "Package metadata"),
    ("PACKAGE", "packaging.md", "Reproducible, without root"),
    ("REPOSITORY", "packaging.md", "A local apt repository"),
    ("ON THE HOST", "packaging.md", "What the package does on the host"),
    _FILES,
]
_DEB_HOOK = [("DETAILS", "packaging.md", "What the package does on the host"), _FILES]
for _engine in ("podman", "firecracker"):
    CTL_SECTIONS[f"flake-ctl-{_engine}-build-deb"] = _DEB
    CTL_SECTIONS[f"flake-ctl-{_engine}-deb-hook"] = _DEB_HOOK
# every other flake-ctl page
CTL_DEFAULT_SECTIONS = [_FILES]


def inline(text: str) -> str:
    """Escaped text with ``literal`` marks turned bold."""
    return re.sub(r"``(.+?)``", r"\\fB\1\\fR", esc(text))


def _th(name: str, section: str) -> str:
    return f'.TH "{name.upper()}" "{section}" "" "flake-pilot {__version__}" "{SECTION_TITLE[section]}"\n.nh\n.ad l\n'


def _paragraphs(text: str) -> str:
    """Paragraphs become .PP; indented blocks are kept verbatim (.nf)."""
    out: list[str] = []
    for block in re.split(r"\n\s*\n", text.strip("\n")):
        lines = block.split("\n")
        if all(ln.startswith(("  ", "\t")) for ln in lines if ln.strip()):
            out.append(".PP\n.nf\n.RS 4\n" + "\n".join(esc(ln.strip()) for ln in lines) + "\n.RE\n.fi")  # verbatim
        elif len(lines) > 1 and all(ln.startswith(("  ", "\t")) for ln in lines[1:] if ln.strip()):
            out.append(".PP\n" + inline(lines[0].strip()) + "\n.nf\n.RS 4\n")
            out[-1] += "\n".join(esc(ln.rstrip()[_indent(lines[1:]) :]) for ln in lines[1:]) + "\n.RE\n.fi"
        elif any(ln.startswith("- ") for ln in lines):
            out.append(_bullets(lines))
        else:
            out.append(".PP\n" + inline(" ".join(ln.strip() for ln in lines)))
    return "\n".join(out) + "\n"


def _indent(lines: list[str]) -> int:
    return min(len(ln) - len(ln.lstrip()) for ln in lines if ln.strip())


def _bullets(lines: list[str]) -> str:
    """Text lines, then ``- item`` lines (continued by indented lines) as a bullet list."""
    items: list[list[str]] = [[]]
    for ln in lines:
        if ln.startswith("- "):
            items.append([ln[2:].strip()])
        else:
            items[-1].append(ln.strip())
    head = ".PP\n" + inline(" ".join(items[0])) + "\n" if items[0] else ""
    return head + "\n".join(".IP \\(bu 2\n" + inline(" ".join(item)) for item in items[1:])


# -- flake-ctl pages from argparse -------------------------------------------------------------------


def _subparsers(parser: argparse.ArgumentParser) -> list[tuple[str, str, argparse.ArgumentParser]]:
    out = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help or "" for a in action._choices_actions}
            for name, sub in action.choices.items():
                if not name.startswith("_"):
                    out.append((name, helps.get(name, ""), sub))
    return out


def _opt_label(action: argparse.Action, parser: argparse.ArgumentParser) -> str:
    formatter = parser._get_formatter()
    if not action.option_strings:
        return "\\fI" + esc(formatter._format_args(action, action.dest.upper())) + "\\fR"
    names = ", ".join("\\fB" + esc(o) + "\\fR" for o in action.option_strings)
    if action.nargs == 0:
        return names
    metavar = formatter._format_args(action, formatter._get_default_metavar_for_optional(action))
    return f"{names} \\fI{esc(metavar)}\\fR"


def _options(parser: argparse.ArgumentParser) -> str:
    formatter = parser._get_formatter()
    out = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction) or action.help == argparse.SUPPRESS:
            continue
        text = formatter._expand_help(action) if action.help else ""
        out.append(f".TP\n{_opt_label(action, parser)}\n{esc(text)}\n")
    return "".join(out)


def _usage(parser: argparse.ArgumentParser) -> str:
    usage = parser.format_usage().strip()
    usage = re.sub(r"^usage:\s*", "", usage)
    return esc(re.sub(r"\s+", " ", usage)) + "\n"


def page_name(prog: str) -> str:
    return prog.replace(" ", "-")


def _doc_sections(docs: mdroff.Docs, wanted: list[tuple[str, str, str]]) -> str:
    """The docs sections of *wanted* as roff, those of one man section name joined under one .SH."""
    joined: dict[str, list[str]] = {}
    for man_title, page, heading in wanted:
        joined.setdefault(man_title, []).append(mdroff.body(docs.section(page, heading)))
    return "".join(f".SH {esc(man_title)}\n" + "".join(parts) for man_title, parts in joined.items())


def ctl_page(parser: argparse.ArgumentParser, summary: str, root: bool, docs: mdroff.Docs) -> str:
    name = page_name(parser.prog)
    parts = [
        _th(name, "8"),
        ".SH NAME\n",
        f"{esc(name)} \\- {esc(summary or parser.prog)}\n",
        ".SH SYNOPSIS\n",
        _usage(parser),
    ]
    description = parser.description or (summary[:1].upper() + summary[1:].rstrip(".") + "." if summary else "")
    if description:
        parts += [".SH DESCRIPTION\n", _paragraphs(description)]
    options = _options(parser)
    if options:
        parts += [".SH OPTIONS\n", options]
    subs = _subparsers(parser)
    if subs:
        parts.append(".SH COMMANDS\n")
        for sub_name, sub_help, sub in subs:
            sentence = sub_help[:1].upper() + sub_help[1:].rstrip(".")
            parts.append(f".TP\n\\fB{esc(sub_name)}\\fR\n{esc(sentence)}. See \\fB{esc(page_name(sub.prog))}\\fR(8).\n")
    parts.append(_doc_sections(docs, CTL_SECTIONS.get(name, CTL_DEFAULT_SECTIONS)))
    parts.append(".SH EXIT STATUS\n")
    parts += [f".TP\n\\fB{code}\\fR\n{esc(text)}\n" for code, text in EXIT_CODES.items()]
    related = ["flake-ctl", *(page_name(s.prog) for n, _, s in subs if n != "help")] if root else ["flake-ctl"]
    related += ["podman-pilot", "firecracker-pilot"]
    parts += [
        ".SH SEE ALSO\n",
        ", ".join(f"\\fB{esc(r)}\\fR(8)" for r in dict.fromkeys(related) if r != name) + ", \\fBflakes.yml\\fR(5)\n",
    ]
    return "".join(parts)


def ctl_pages(parser: argparse.ArgumentParser, docs: mdroff.Docs) -> dict[str, str]:
    """``{file name: roff}`` for flake-ctl and every subcommand at any depth (``help`` excluded)."""
    pages: dict[str, str] = {}

    def visit(p: argparse.ArgumentParser, summary: str, root: bool) -> None:
        pages[page_name(p.prog) + ".8"] = ctl_page(p, summary, root, docs)
        for name, sub_help, sub in _subparsers(p):
            if name != "help":
                visit(sub, sub_help, False)

    summary = (parser.description or "").split(". ")[0].split(":")[0]
    visit(parser, summary[:1].lower() + summary[1:], True)
    return pages


# -- pages that are a docs page as a whole -------------------------------------------------------------


def doc_page(name: str, docs: mdroff.Docs, extra: str = "") -> str:
    """The docs page of *name* (``DOC_PAGES``): its title gives NAME, each ``##`` a section."""
    page, section = DOC_PAGES[name]
    text = docs.page(page)
    title, summary = mdroff.title(text)
    if title != name:
        raise mdroff.DocsError(f"{os.path.join(docs.directory, page)}: title names {title!r}, expected {name!r}")
    rest = text.split("\n", 1)[1] if "\n" in text else ""
    return _th(name, section) + ".SH NAME\n" + f"{esc(name)} \\- {esc(summary)}\n" + mdroff.body(rest) + extra


def launcher_page(prog: str, docs: mdroff.Docs) -> str:
    related = [p for p in ("flake-ctl", "podman-pilot", "firecracker-pilot", "sci") if p != prog]
    see_also = ".SH SEE ALSO\n" + ", ".join(f"\\fB{esc(r)}\\fR(8)" for r in related) + ", \\fBflakes.yml\\fR(5)\n"
    return doc_page(prog, docs, see_also)


def flakes_yml_page(docs: mdroff.Docs) -> str:
    see_also = ".SH SEE ALSO\n\\fBflake\\-ctl\\fR(8), \\fBpodman\\-pilot\\fR(8), \\fBfirecracker\\-pilot\\fR(8)\n"
    return doc_page("flakes.yml", docs, _templates() + see_also)


def _templates() -> str:
    """The shipped flakes.yml and registration templates (package data), verbatim, as EXAMPLES."""
    from importlib import resources

    out = []
    data = resources.files("flake_pilot") / "data"
    for name, what in (
        ("flakes.yml", "/etc/flakes.yml"),
        ("container-flake.yaml", "a container registration (/etc/flakes/container-flake.yaml)"),
        ("firecracker-flake.yaml", "a VM registration (/etc/flakes/firecracker-flake.yaml)"),
    ):
        item = data / name
        if item.is_file():
            body = "\n".join(esc(ln) for ln in item.read_text(encoding="utf-8").rstrip().split("\n"))
            out.append(f".PP\n{esc(what[:1].upper() + what[1:])}:\n.PP\n.nf\n.RS 4\n{body}\n.RE\n.fi\n")
    return ".SH EXAMPLES\n" + "".join(out) if out else ""


def all_pages(parser: argparse.ArgumentParser | None = None, docs_dir: str | None = None) -> dict[str, str]:
    if parser is None:
        from .main import build_parser

        parser = build_parser()
    docs = mdroff.Docs(docs_dir or mdroff.find_docs())
    pages = ctl_pages(parser, docs)
    for prog in LAUNCHERS:
        pages[f"{prog}.8"] = launcher_page(prog, docs)
    pages["flakes.yml.5"] = flakes_yml_page(docs)
    return pages


def write(outdir: str, parser: argparse.ArgumentParser | None = None, docs_dir: str | None = None) -> list[str]:
    pages = all_pages(parser, docs_dir)  # all or nothing: a missing docs section writes no page
    os.makedirs(outdir, exist_ok=True)
    written = []
    for name, text in sorted(pages.items()):
        path = os.path.join(outdir, name)
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(text)
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) not in (1, 2):
        sys.stderr.write("usage: python -m flake_pilot.ctl.manpages OUTDIR [DOCSDIR]\n")
        return 2
    try:
        paths = write(args[0], docs_dir=args[1] if len(args) == 2 else None)
    except mdroff.DocsError as exc:
        sys.stderr.write(f"manpages: {exc}\n")
        return 1
    for path in paths:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
