"""Validate a dataset folder: every shard readable, keys aligned, shapes as the manifest says, finite.

Checks, per split and shard: the image shard's samples decode to the canonical size and carry
JSON metadata with their own key; every teacher complete for the split has a feature shard with
the same keys in the same order, whose blobs carry that key, the manifest's storage dtype,
shapes (stored grid, channels, CLS) and only finite values; counts equal the manifest's. Stray
shards and temporary files of interrupted runs are reported too, as are stats files that do not
fit or were measured on other features (``--stats-dir``, default ``DATASET/feature_stats`` when it
exists). The first problem of each shard is reported with the shard and key; exit status 1 when
anything is wrong.
Run as ``python -m distill.preprocess.check --help`` or scripts/preprocessing/check_dataset.py.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch

from distill.data.codec import parse_sample
from distill.data.dataset import check_stored, load_checked_stats, stats_path
from distill.data.join import iter_joined
from distill.data.jpeg import decode_view
from distill.data.manifest import IMAGES_DIR, MANIFEST_NAME, Manifest, default_stats_dir, load_manifest
from distill.data.shards import ShardError, iter_shard


@dataclass(frozen=True)
class Problem:
    path: str  # the shard (or file) at fault
    key: str | None  # the first bad sample, when one is to blame
    message: str

    def __str__(self) -> str:
        return f"{self.path}" + (f" [key {self.key}]" if self.key else "") + f": {self.message}"


@dataclass
class CheckReport:
    dataset: Path
    shards: int = 0
    samples: int = 0
    problems: list[Problem] = field(default_factory=list)
    stats_dir: Path | None = None  # the stats folder that was checked, if any

    @property
    def ok(self) -> bool:
        return not self.problems


def _check_sample_features(
    manifest: Manifest, name: str, blob: bytes | memoryview, key: str, where: str
) -> None:
    stored = parse_sample(blob, where)
    check_stored(stored, key, name, manifest.teachers[name], where)
    features = stored.dequantize()
    for part, tensor in (("patch", features.patch), ("cls", features.cls)):
        if tensor is not None and not bool(torch.isfinite(tensor).all()):
            raise ValueError(f"non-finite values in {part}")


def _check_shard(
    dataset: Path, manifest: Manifest, split: str, shard: str, count: int, report: CheckReport
) -> None:
    teachers = [n for n, r in manifest.teachers.items() if split in r.complete_splits]
    key: str | None = None
    path = str(dataset / IMAGES_DIR / shard)
    keys: list[str] = []
    try:
        for sample in iter_joined(dataset, shard, teachers, expected=count):
            key, path = sample.key, str(dataset / IMAGES_DIR / shard)
            keys.append(key)
            decode_view(sample.jpeg, manifest.canonical_size, path)
            meta = json.loads(sample.meta)
            if meta.get("key") != key:
                raise ValueError(f"metadata names key {meta.get('key')!r}")
            for name, blob in sample.features.items():
                path = str(dataset / name / shard)
                _check_sample_features(manifest, name, blob, key, path)
            report.samples += 1
        if manifest.pairing:
            key = None
            _check_targets(dataset / manifest.teacher_images / shard, manifest.canonical_size, keys)
    except ShardError as exc:
        report.problems.append(Problem(str(exc.path or path), exc.key, str(exc)))
    except (ValueError, RuntimeError, OSError) as exc:
        report.problems.append(Problem(path, key, str(exc)))


def _check_targets(path: Path, size: int, keys: list[str]) -> None:
    """A paired dataset's target shard: the image shard's keys in the same order, every view decodable."""
    found = []
    for sample in iter_shard(path):
        found.append(sample.key)
        if "jpg" not in sample.files:
            raise ShardError(f"{path}: key {sample.key!r} has no .jpg member; rebuild with organize", path)
        decode_view(sample.files["jpg"], size, str(path))
    if found != keys:
        position = next(
            (i for i, pair in enumerate(zip(found, keys, strict=False)) if pair[0] != pair[1]),
            min(len(found), len(keys)),
        )
        raise ShardError(
            f"{path}: the target keys differ from the image shard's from position {position} on "
            f"({len(found)} vs {len(keys)} samples); rebuild the dataset with organize",
            path,
        )


def _check_files(dataset: Path, manifest: Manifest, report: CheckReport) -> None:
    listed = {s.name for info in manifest.splits.values() for s in info.shards}
    sides = {IMAGES_DIR, manifest.teacher_images}
    for folder in [*(dataset / side for side in sorted(sides)), *(dataset / n for n in manifest.teachers)]:
        if not folder.is_dir():
            report.problems.append(Problem(str(folder), None, "folder is missing"))
            continue
        for path in sorted(folder.iterdir()):
            if path.name.endswith(".tmp"):
                report.problems.append(
                    Problem(
                        str(path),
                        None,
                        "temporary file of an interrupted run; rerun that step (it cleans up)",
                    )
                )
            elif path.suffix == ".tar" and path.name not in listed:
                report.problems.append(
                    Problem(str(path), None, "shard not listed in the manifest; remove it or rebuild")
                )
    for name, record in manifest.teachers.items():
        for split in manifest.splits:
            if split not in record.complete_splits:
                report.problems.append(
                    Problem(
                        str(dataset / name),
                        None,
                        f"features incomplete for split {split!r}; rerun feature_extraction.py",
                    )
                )


def check_dataset(dataset: Path, stats_dir: Path | None = None) -> CheckReport:
    report = CheckReport(dataset)
    try:
        manifest = load_manifest(dataset)
    except (OSError, ValueError) as exc:
        report.problems.append(Problem(str(dataset / MANIFEST_NAME), None, str(exc)))
        return report
    _check_files(dataset, manifest, report)
    for split, info in manifest.splits.items():
        for shard in info.shards:
            report.shards += 1
            _check_shard(dataset, manifest, split, shard.name, shard.count, report)
    if stats_dir is None and default_stats_dir(dataset).is_dir():
        stats_dir = default_stats_dir(dataset)
    if stats_dir is not None:
        report.stats_dir = stats_dir
        for name, record in manifest.teachers.items():
            try:
                stats = load_checked_stats(stats_dir, name, record, manifest, dataset)
                if not all(bool(torch.isfinite(t).all()) for t in stats.tensors().values()):
                    raise ValueError("non-finite mean or std")
            except (OSError, ValueError) as exc:
                report.problems.append(Problem(str(stats_path(stats_dir, name)), None, str(exc)))
    return report


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("dataset", type=Path, help="dataset folder holding manifest.json")
    parser.add_argument(
        "--stats-dir",
        type=Path,
        default=None,
        help="also check <stats-dir>/<teacher>.safetensors (default: DATASET/feature_stats when it exists): "
        "shapes, finite values, and that their provenance matches this dataset's stored features",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    report = check_dataset(args.dataset, args.stats_dir)
    if report.ok:
        stats = f", stats in {report.stats_dir}" if report.stats_dir is not None else ", no stats checked"
        print(f"OK {report.dataset}: {report.shards} shards, {report.samples} samples{stats}")
        return 0
    print(
        f"FAILED {report.dataset}: {len(report.problems)} problem(s); first: {report.problems[0]}",
        file=sys.stderr,
    )
    for problem in report.problems:
        print(f"  {problem}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    raise SystemExit(main())
