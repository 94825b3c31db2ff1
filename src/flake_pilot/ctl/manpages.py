"""Man pages generated from the sources that also feed ``--help``.

* ``flake-ctl(8)`` and one page per subcommand (``flake-ctl-podman-register(8)``, ...): from the
  argparse parser of ``flake_pilot.ctl.main.build_parser()`` (prog, description, usage, every
  option with its help text, choices and sub-commands, the exit codes of ``errors.EXIT_CODES``).
* ``podman-pilot(8)``, ``firecracker-pilot(8)``, ``sci(8)``: from the module docstring of each
  program's entry module (read with ``ast``, nothing is imported or run). Docstring layout: first
  line = summary; paragraphs = DESCRIPTION; a line ``Title:`` alone starts a section (``Files:``
  -> FILES); indented lines are shown verbatim.
* ``flakes.yml(5)``: from the docstrings of ``settings`` and ``flakeconf`` and the key tables.

    python -m flake_pilot.ctl.manpages OUTDIR     # writes *.8 and flakes.yml.5
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import os
import re
import sys

from .. import __version__

SECTION_TITLE = {"8": "System Administration", "5": "File Formats"}
LAUNCHERS = {
    "podman-pilot": ("flake_pilot.podman.pilot", "flake_pilot.podman"),
    "firecracker-pilot": ("flake_pilot.firecracker.pilot", "flake_pilot.firecracker"),
    "sci": ("flake_pilot.sci.main", "flake_pilot.sci.init", "flake_pilot.sci"),
}
# used only while a launcher module has no docstring yet
FALLBACK = {
    "podman-pilot": "launch a container flake\n\nCalled through a symlink /usr/bin/APP -> podman-pilot; "
    "runs APP "
    "in its container as registered by flake-ctl podman register.",
    "firecracker-pilot": "launch a Firecracker VM flake\n\nCalled through a symlink /usr/bin/APP -> "
    "firecracker-pilot; runs APP in its microVM as registered by flake-ctl firecracker register.",
    "sci": "init (PID 1) inside a flake microVM\n\nMounts the overlay root, starts the command given on the "
    "kernel command line or served over vsock, and powers the VM off when it ends.",
}


def esc(text: str) -> str:
    """Escape text for roff: backslashes, dashes, and a leading dot or quote."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    return re.sub(r"^([.'])", r"\\&\1", text, flags=re.M)


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


def ctl_page(parser: argparse.ArgumentParser, summary: str, root: bool) -> str:
    from ..errors import EXIT_CODES

    name = page_name(parser.prog)
    parts = [
        _th(name, "8"),
        ".SH NAME\n",
        f"{esc(name)} \\- {esc(summary or parser.prog)}\n",
        ".SH SYNOPSIS\n",
        _usage(parser),
    ]
    if parser.description:
        parts += [".SH DESCRIPTION\n", _paragraphs(parser.description)]
    options = _options(parser)
    if options:
        parts += [".SH OPTIONS\n", options]
    subs = _subparsers(parser)
    if subs:
        parts.append(".SH COMMANDS\n")
        for sub_name, sub_help, sub in subs:
            sentence = sub_help[:1].upper() + sub_help[1:].rstrip(".")
            parts.append(f".TP\n\\fB{esc(sub_name)}\\fR\n{esc(sentence)}. See \\fB{esc(page_name(sub.prog))}\\fR(8).\n")
    parts.append(".SH EXIT STATUS\n")
    parts += [f".TP\n\\fB{code}\\fR\n{esc(text)}\n" for code, text in EXIT_CODES.items()]
    if root:
        parts += [
            ".SH ENVIRONMENT\n",
            ".TP\n\\fBFLAKES_CONFIG\\fR\nA file used instead of \\fI/etc/flakes.yml\\fR.\n",
            ".TP\n\\fBPILOT_DEBUG\\fR\nSet to 1 (or give \\fB\\-\\-debug\\fR) to show engine command lines, "
            "per\\-phase timings and tracebacks.\n",
            ".SH FILES\n",
            ".TP\n\\fI/etc/flakes.yml\\fR, \\fI~/.config/flakes.yml\\fR\nSee \\fBflakes.yml\\fR(5).\n",
        ]
    related = ["flake-ctl", *(page_name(s.prog) for _, _, s in subs)] if root else ["flake-ctl"]
    related += ["podman-pilot", "firecracker-pilot"]
    parts += [
        ".SH SEE ALSO\n",
        ", ".join(f"\\fB{esc(r)}\\fR(8)" for r in dict.fromkeys(related) if r != name) + ", \\fBflakes.yml\\fR(5)\n",
    ]
    return "".join(parts)


def ctl_pages(parser: argparse.ArgumentParser) -> dict[str, str]:
    """``{file name: roff}`` for flake-ctl and every subcommand at any depth (``help`` excluded)."""
    pages: dict[str, str] = {}

    def visit(p: argparse.ArgumentParser, summary: str, root: bool) -> None:
        pages[page_name(p.prog) + ".8"] = ctl_page(p, summary, root)
        for name, sub_help, sub in _subparsers(p):
            if name != "help":
                visit(sub, sub_help, False)

    summary = (parser.description or "").split(". ")[0].split(":")[0]
    visit(parser, summary[:1].lower() + summary[1:], True)
    return pages


# -- pages from module docstrings ---------------------------------------------------------------------


def module_docstring(module: str) -> str | None:
    """The docstring of *module*, read from its source without importing it."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.origin or not spec.origin.endswith(".py"):
        return None
    with open(spec.origin, encoding="utf-8") as handle:
        return ast.get_docstring(ast.parse(handle.read()), clean=True)


def docstring_page(name: str, section: str, doc: str, extra: str = "") -> str:
    """Summary line -> NAME; ``Title:`` lines start sections; the rest -> DESCRIPTION."""
    summary, _, body = doc.partition("\n")
    summary = summary.strip().rstrip(".")
    summary = re.sub(r"^[\w.-]+\s*[:-]\s*", "", summary) or summary
    summary = summary.replace("``", "")
    parts = [_th(name, section), ".SH NAME\n", f"{esc(name)} \\- {esc(summary[:1].lower() + summary[1:])}\n"]
    section_name = "DESCRIPTION"
    chunk: list[str] = []

    def flush() -> None:
        if "\n".join(chunk).strip():
            parts.append(f".SH {section_name}\n")
            parts.append(_paragraphs("\n".join(chunk)))

    for line in body.split("\n"):
        m = re.fullmatch(r"([A-Z][A-Za-z /.-]{1,30}):", line.strip())
        if m and not line.startswith(" "):
            flush()
            section_name, chunk = m.group(1).upper(), []
        else:
            chunk.append(line)
    flush()
    parts.append(extra)
    return "".join(parts)


def launcher_doc(prog: str) -> str:
    for module in LAUNCHERS[prog]:
        doc = module_docstring(module)
        if doc:
            return doc
    return FALLBACK[prog]


def launcher_page(prog: str) -> str:
    from ..errors import LAUNCHER_EXIT

    extra = ""
    if prog != "sci":
        extra = (
            ".SH EXIT STATUS\nThe app's own exit status; 128+N when it was killed by signal N; 126/127 when "
            f"the target cannot be run or is not found; \\fB{LAUNCHER_EXIT}\\fR when the launcher itself "
            "fails (one line on stderr says what and where).\n"
            ".SH ENVIRONMENT\n.TP\n\\fBPILOT_DEBUG\\fR\nSet to 1 to show every engine command line and a "
            "per\\-phase timing line.\n"
            ".SH SEE ALSO\n\\fBflake\\-ctl\\fR(8), \\fBflakes.yml\\fR(5)\n"
        )
    return docstring_page(prog, "8", launcher_doc(prog), extra)


def flakes_yml_page() -> str:
    from .. import flakeconf, settings

    keys = "".join(f".TP\n\\fB{esc(k)}\\fR\nDefault: \\fI{esc(v)}\\fR\n" for k, v in settings.DEFAULTS.items())
    keys += ".TP\n\\fBpodman_binary\\fR, \\fBfirecracker_binary\\fR\nEngine programs (default: found in PATH).\n"
    doc = f"flake configuration files\n\n{settings.__doc__ or ''}\n\nRegistrations:\n{flakeconf.__doc__ or ''}"
    extra = (
        ".SH GENERIC KEYS\nUnder \\fBgeneric:\\fR in \\fI/etc/flakes.yml\\fR (user mode: "
        "\\fI~/.config/flakes.yml\\fR):\n"
        + keys
        + ".SH SEE ALSO\n\\fBflake\\-ctl\\fR(8), \\fBpodman\\-pilot\\fR(8), \\fBfirecracker\\-pilot\\fR(8)\n"
    )
    return docstring_page("flakes.yml", "5", doc, _templates() + extra)


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


def all_pages(parser: argparse.ArgumentParser | None = None) -> dict[str, str]:
    if parser is None:
        from .main import build_parser

        parser = build_parser()
    pages = ctl_pages(parser)
    for prog in LAUNCHERS:
        pages[f"{prog}.8"] = launcher_page(prog)
    pages["flakes.yml.5"] = flakes_yml_page()
    return pages


def write(outdir: str, parser: argparse.ArgumentParser | None = None) -> list[str]:
    os.makedirs(outdir, exist_ok=True)
    written = []
    for name, text in sorted(all_pages(parser).items()):
        path = os.path.join(outdir, name)
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(text)
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        sys.stderr.write("usage: python -m flake_pilot.ctl.manpages OUTDIR\n")
        return 2
    for path in write(args[0]):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
