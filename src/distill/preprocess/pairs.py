"""Pairing source images with target images for cross-domain alignment (``organize --target / --pairs``).

The student reads the source side, the teachers the target side, under one key. Two ways to pair:

- folders: a source file and a target file match when their relative paths agree without the
  extension (``scenes/a.png`` pairs ``scenes/a.jpg``), so overlays saved as PNG pair JPEG originals
  (videos pair the same way: ``ep1.mp4`` with ``ep1.mkv``);
- a CSV with the header ``source,target``: one pair per row, paths relative to the two folders.

A pairing error is never resolved by guessing: a file without a partner, two files claiming one
pair (``a.jpg`` and ``a.png`` on one side; a source listed twice in the CSV) and a CSV row naming a
missing file are each a line of ``rejected.txt`` (stage ``pairs`` for source-side files and rows,
``pairs-target`` for target-side files) and a count in the report.
"""

from __future__ import annotations

import csv
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from distill.data.manifest import TARGET_IMAGES_DIR
from distill.images import IMAGE_EXTENSIONS
from distill.preprocess.rejected import Rejection

CSV_HEADER = ("source", "target")
ASPECT_TOLERANCE = 0.01  # paired sides may differ in resolution, not in shape


def same_aspect(source: tuple[int, int], target: tuple[int, int]) -> bool:
    """Whether a target's (width, height) has the source's aspect ratio, within ``ASPECT_TOLERANCE`` of it:
    one canonical crop then covers the same content on both sides."""
    (w, h), (tw, th) = source, target
    return abs(w * th - tw * h) <= ASPECT_TOLERANCE * w * th


@dataclass(frozen=True)
class Partner:
    path: Path  # the target file
    relpath: str  # relative to the target folder, as metadata records it


@dataclass
class PairPlan:
    """Source relative path -> its target file, and every input that could not be paired."""

    partners: dict[str, Partner] = field(default_factory=dict)
    rejections: list[Rejection] = field(default_factory=list)

    def reject(self, stage: str, source: str, reason: str) -> None:
        self.rejections.append(Rejection(stage, source, reason))


def _stem(relpath: str) -> str:
    return str(PurePosixPath(relpath).with_suffix(""))


def _files(folder: Path, kind: str = "image") -> list[str]:
    if not folder.is_dir():
        raise NotADirectoryError(
            f"target {folder} is not a folder of {kind}s; pass the folder the pairs are in"
        )
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def _by_stem(relpaths: list[str]) -> dict[str, list[str]]:
    groups: dict[str, list[str]] = defaultdict(list)
    for rel in relpaths:
        groups[_stem(rel)].append(rel)
    return groups


def pair_folders(
    sources: list[str], target: Path, extensions: frozenset[str] = IMAGE_EXTENSIONS, kind: str = "image"
) -> PairPlan:
    """Match ``sources`` (paths relative to the source folder) with the files under ``target`` whose
    extension is in ``extensions`` (``kind`` names them in messages: image, video)."""
    plan = PairPlan()
    images: list[str] = []
    for rel in _files(target, kind):
        if PurePosixPath(rel).suffix.lower() in extensions:
            images.append(rel)
        else:
            plan.reject(
                "pairs-target",
                rel,
                f"not a{'n' if kind[0] in 'aeiou' else ''} {kind} extension: no source {kind} can pair with it",
            )
    source_groups, target_groups = _by_stem(sources), _by_stem(images)
    for stem, group in source_groups.items():
        if len(group) > 1:
            _reject_claims(plan, "pairs", "source", stem, group, "; rename all but one")
            continue
        partners = target_groups.get(stem, [])
        if not partners:
            plan.reject("pairs", group[0], f"no target {kind} {stem}.* under {target}")
        elif len(partners) > 1:
            plan.reject(
                "pairs", group[0], f"{len(partners)} target files claim it: {', '.join(partners)}; keep one"
            )
        else:
            plan.partners[group[0]] = Partner(target / partners[0], partners[0])
    for stem, group in target_groups.items():
        if stem not in source_groups:
            for rel in group:
                plan.reject("pairs-target", rel, f"no source {kind} {stem}.* for it")
        elif len(group) > 1:
            _reject_claims(plan, "pairs-target", "target", stem, group, "")
        elif len(source_groups[stem]) > 1:
            plan.reject(
                "pairs-target", group[0], f"its source is ambiguous: {', '.join(source_groups[stem])}"
            )
    return plan


def read_pairs_csv(path: Path) -> list[tuple[int, str, str]]:
    """(line, source, target) rows of a pairs CSV; a file that is not one is an error naming the fix."""
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            rows = list(csv.reader(handle))
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(
            f"pairs file {path} is unreadable ({exc}); give a UTF-8 CSV with the header source,target"
        ) from exc
    if not rows or tuple(cell.strip() for cell in rows[0]) != CSV_HEADER:
        raise ValueError(
            f"pairs file {path}: the first line must be the header 'source,target', got {rows[0] if rows else 'nothing'}"
        )
    out = []
    for line, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue
        if len(row) != 2 or not row[0].strip() or not row[1].strip():
            raise ValueError(f"pairs file {path}:{line}: expected two paths 'source,target', got {row}")
        out.append((line, row[0].strip(), row[1].strip()))
    return out


def pair_csv(sources: list[str], source: Path, target: Path, pairs: Path) -> PairPlan:
    """Pair ``sources`` (image paths relative to ``source``) as the rows of ``pairs`` say."""
    plan = PairPlan()
    rows = read_pairs_csv(pairs)
    lines: dict[str, list[int]] = defaultdict(list)
    for line, src, _ in rows:
        lines[src].append(line)
    listed = set(lines)
    candidates = set(sources)
    for line, src, tgt in rows:
        where = f"{pairs.name}:{line}"
        if len(lines[src]) > 1:
            plan.reject("pairs", src, f"{where}: the source is paired on lines {lines[src]}; keep one row")
        elif src not in candidates:
            missing = not (source / src).is_file()
            why = (
                f"no such file under {source}"
                if missing
                else "not an image of the source folder (see its own line)"
            )
            plan.reject("pairs", src, f"{where}: {why}")
        elif not (target / tgt).is_file():
            plan.reject("pairs", src, f"{where}: its target {tgt} is not a file under {target}")
        else:
            plan.partners[src] = Partner(target / tgt, tgt)
    targets = {partner.relpath for partner in plan.partners.values()} | {tgt for _, _, tgt in rows}
    same_folder = source.resolve() == target.resolve()
    for rel in sources:
        if rel not in listed and not (same_folder and rel in targets):
            plan.reject("pairs", rel, f"not listed in {pairs}")
    if not same_folder:
        for rel in _files(target):
            if rel not in targets:
                plan.reject("pairs-target", rel, f"not listed in {pairs}")
    return plan


def pairing_record(target: Path, csv_file: Path | None, pairs: int) -> dict[str, object]:
    """What the manifest records about a paired build (images or videos)."""
    return {
        "images": TARGET_IMAGES_DIR,
        "match": "csv" if csv_file is not None else "relative path without extension",
        "target": str(target.resolve()),
        "csv": None if csv_file is None else str(csv_file.resolve()),
        "pairs": pairs,
    }


def _reject_claims(plan: PairPlan, stage: str, side: str, stem: str, group: list[str], hint: str) -> None:
    """Reject every file of ``group``: several files of one side claim the pair ``stem``."""
    for rel in group:
        plan.reject(
            stage, rel, f"{len(group)} {side} files claim the pair {stem!r}: {', '.join(group)}{hint}"
        )
