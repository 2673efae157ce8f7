"""``rejected.txt``: every input a preprocessing step skipped, with the reason.

One line per input, three tab-separated fields: ``stage``, ``source`` (the path relative to
the input folder) and ``reason``. Tabs, newlines and backslashes inside a field are written
as ``\\t``, ``\\n`` and ``\\\\`` so one line is always one record.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from distill.io import atomic_write_text

REJECTED_NAME = "rejected.txt"
_ESCAPES = (("\\", "\\\\"), ("\t", "\\t"), ("\n", "\\n"), ("\r", "\\r"))


@dataclass(frozen=True)
class Rejection:
    """One skipped input: which step skipped it, the input, and why."""

    stage: str  # "organize", "videos"
    source: str
    reason: str


def _escape(text: str) -> str:
    for raw, escaped in _ESCAPES:
        text = text.replace(raw, escaped)
    return text


def _unescape(text: str) -> str:
    out, i = [], 0
    table = {"\\": "\\", "t": "\t", "n": "\n", "r": "\r"}
    while i < len(text):
        if text[i] == "\\" and i + 1 < len(text) and text[i + 1] in table:
            out.append(table[text[i + 1]])
            i += 2
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def format_rejections(rejections: list[Rejection]) -> str:
    return "".join(f"{_escape(r.stage)}\t{_escape(r.source)}\t{_escape(r.reason)}\n" for r in rejections)


def write_rejections(dataset: Path, rejections: list[Rejection]) -> Path:
    """Write (atomically, replacing any older list) ``<dataset>/rejected.txt``; an empty file when none."""
    path = dataset / REJECTED_NAME
    atomic_write_text(path, format_rejections(rejections))
    return path


def read_rejections(dataset: Path) -> list[Rejection]:
    path = dataset / REJECTED_NAME
    if not path.is_file():
        return []
    records = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        fields = line.split("\t")
        if len(fields) != 3:
            raise ValueError(
                f"{path}:{number}: expected 3 tab-separated fields (stage, source, reason), got {len(fields)}"
            )
        records.append(Rejection(*(_unescape(f) for f in fields)))
    return records
