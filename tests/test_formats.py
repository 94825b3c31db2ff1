"""Every listing/status command offers --format table|json|csv, and its csv header is the field
list documented in docs/flake-ctl.md (section Output formats)."""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path

from conftest import Prefix
from flake_pilot.ctl import completion
from flake_pilot.ctl.main import build_parser

REFERENCE = Path(__file__).resolve().parent.parent / "docs" / "flake-ctl.md"
LISTING_VERBS = {"list", "show", "images", "doctor"}


def documented() -> dict[str, list[str]]:
    section = REFERENCE.read_text().split("## Output formats")[1].split("\n## ")[0]
    rows = re.findall(r"^\| `flake-ctl ([a-z ]+)` \| `([a-z_, ]+)` \|$", section, flags=re.M)
    return {cmd: [f.strip() for f in fields.split(",")] for cmd, fields in rows}


def test_listing_commands_offer_formats() -> None:
    docs = documented()
    for node in completion.tree(build_parser()).walk():
        if not node.path or node.path[-1] not in LISTING_VERBS:
            continue
        fmt = [o for o in node.options if "--format" in o.names]
        assert fmt, f"flake-ctl {' '.join(node.path)} has no --format"
        assert {"table", "json", "csv"} <= set(fmt[0].choices)
        assert " ".join(node.path) in docs, f"flake-ctl {' '.join(node.path)}: fields undocumented (docs/flake-ctl.md)"


def test_documented_fields_are_the_output(prefix: Prefix) -> None:
    for command, fields in documented().items():
        args = command.split()
        out = prefix.ctl(*args, "--format", "csv")
        assert out.returncode in (0, 1), out.stderr  # doctor: 1 = a problem found
        header = next(csv.reader(io.StringIO(out.stdout)))
        assert header == fields, f"flake-ctl {command}: csv header {header} != docs/flake-ctl.md {fields}"
        records = json.loads(prefix.ctl(*args, "--format", "json").stdout)
        assert all(list(r) == fields for r in records), f"flake-ctl {command}: json keys differ"
