"""Result output shared by list/show commands: table, json or csv on stdout.

table: headline, blank line, then columns (2 spaces apart, '-' for a missing value) or the
*empty* message. json: a pretty-printed list of objects (missing = null). csv: a header line
with the keys, then one line per record (RFC 4180 quoting, missing = empty).
"""

from __future__ import annotations

import csv
import io
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Column:
    key: str
    header: str
    shorten: Callable[[str], str] | None = None  # applied in the table only


def render(records: Sequence[dict[str, Any]], columns: Sequence[Column], fmt: str, headline: str, empty: str) -> str:
    if fmt == "json":
        return json.dumps([{c.key: r.get(c.key) for c in columns} for r in records], indent=2) + "\n"
    if fmt == "csv":
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow([c.key for c in columns])
        for r in records:
            writer.writerow(["" if r.get(c.key) is None else str(r.get(c.key)) for c in columns])
        return buf.getvalue()
    lines = [headline, ""]
    if not records:
        lines.append(empty)
        return "\n".join(lines) + "\n"
    rows = []
    for r in records:
        row = []
        for c in columns:
            value = r.get(c.key)
            text = "-" if value is None or value == "" else str(value)
            if c.shorten and value:
                text = c.shorten(text)
            row.append(text.replace("\n", " "))
        rows.append(row)
    headers = [c.header for c in columns]
    widths = [max(len(x) for x in col) for col in zip(headers, *rows, strict=False)]

    def fmt_row(cells: Sequence[str]) -> str:
        padded = [cell.ljust(w) for cell, w in zip(cells[:-1], widths[:-1], strict=True)]
        return "  ".join([*padded, cells[-1]])

    lines.append(fmt_row(headers))
    lines.append(fmt_row(["-" * w for w in widths]))
    lines.extend(fmt_row(row) for row in rows)
    return "\n".join(lines) + "\n"


def emit(records: Sequence[dict[str, Any]], columns: Sequence[Column], fmt: str, headline: str, empty: str) -> None:
    sys.stdout.write(render(records, columns, fmt, headline, empty))
    sys.stdout.flush()
