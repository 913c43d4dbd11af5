"""Tables and report files: plain text for terminals, Markdown for the README, JSON and CSV on disk."""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Callable
from typing import Any


def format_table(rows: list[dict[str, Any]], columns: list[tuple[str, str]]) -> str:
    """A plain-text table of `rows`; `columns` are (key, header), missing keys print empty.

    >>> print(format_table([{"a": 1, "b": "xy"}], [("a", "A"), ("b", "bb")]))
    A  bb
    -  --
    1  xy
    """
    cells = [[h for _, h in columns]] + [[str(r.get(k, "")) for k, _ in columns] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def markdown_table(header: list[str], rows: list[list]) -> str:
    """A Markdown table.

    >>> print(markdown_table(["a", "b"], [[1, 2]]))
    | a | b |
    |---|---|
    | 1 | 2 |
    """
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(x) for x in row) + " |" for row in rows]
    return "\n".join(lines)


def format_floats(rows: list[dict[str, Any]], fmt: str | Callable[[float], str] = ".3f") -> list[dict[str, Any]]:
    """The rows with every float formatted (a format spec or a function); other values as they are.

    >>> format_floats([{"x": 0.12345, "n": 3}])
    [{'x': '0.123', 'n': 3}]
    """
    show = fmt if callable(fmt) else (lambda v: format(v, fmt))
    return [{k: (show(v) if isinstance(v, float) else v) for k, v in r.items()} for r in rows]


def write_json(report: dict, path: str) -> None:
    """Writes `report` as indented JSON, creating the folder."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(report, f, indent=2)


def write_csv(rows: list[dict[str, Any]], path: str) -> None:
    """Writes `rows` as CSV with the first row's keys as the header, creating the folder."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
