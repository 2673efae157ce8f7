"""Per-channel feature statistics of stored features -> ``<dataset>/feature_stats/<teacher>.safetensors``.

Statistics are taken over the features exactly as the loader serves them (after int8/bf16/fp16
storage and any grid downsampling), patch tokens and CLS separately, in float64 with a
streaming, mergeable accumulator. Under torchrun each rank reads shards r, r+W, ...; the
per-rank moments are gathered and merged in rank order, and rank 0 writes the files. Each file
records its provenance (teacher weights, precision, storage dtype, stored grid, dataset, split,
count), which every reader checks against the features it normalises.
Run as ``python -m distill.preprocess.calc_stats --help`` or scripts/preprocessing/calc_feature_stats.py.
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from distill import distributed as dist
from distill.data.codec import SampleFeatures, parse_sample
from distill.data.dataset import check_stored, stored_provenance
from distill.data.manifest import TeacherRecord, default_stats_dir, load_manifest
from distill.data.shards import iter_shard
from distill.features import TeacherOutput
from distill.preprocess.cli import setup_logging
from distill.stats import FeatureStats, StatsAccumulator, merge_across_ranks

log = logging.getLogger(__name__)
ROWS_PER_UPDATE = 64  # samples stacked per accumulator update


@dataclass(frozen=True)
class StatsConfig:
    dataset: Path
    teachers: tuple[str, ...] = ()  # empty: every teacher complete for the split
    split: str = "train"
    output_dir: Path | None = None  # None: <dataset>/feature_stats

    @property
    def stats_dir(self) -> Path:
        return self.output_dir if self.output_dir is not None else default_stats_dir(self.dataset)


def iter_features(path: Path, teacher: str, record: TeacherRecord) -> Iterator[SampleFeatures]:
    """Decoded features of one feature shard, each checked against its member key and the manifest record."""
    for sample in iter_shard(path):
        where = f"{path} key {sample.key!r}"
        blob = sample.files.get(f"{teacher}.safetensors")
        if blob is None:
            raise ValueError(f"{where}: no {teacher}.safetensors member; re-extract this teacher")
        stored = parse_sample(blob, where)
        check_stored(stored, sample.key, teacher, record, where)
        yield stored.dequantize()


def accumulate(dataset: Path, teacher: str, record: TeacherRecord, shards: list[str]) -> StatsAccumulator:
    acc = StatsAccumulator(teacher)
    rows: list[SampleFeatures] = []

    def flush() -> None:
        cls = None if rows[0].cls is None else torch.stack([r.cls for r in rows])  # type: ignore[misc]
        acc.add(TeacherOutput(torch.stack([r.patch for r in rows]), cls))
        rows.clear()

    for shard in shards:
        for features in iter_features(dataset / teacher / shard, teacher, record):
            rows.append(features)
            if len(rows) == ROWS_PER_UPDATE:
                flush()
    if rows:
        flush()
    return acc


def compute_stats(cfg: StatsConfig) -> dict[str, FeatureStats]:
    """Stats of every requested teacher over ``cfg.split``; rank 0 saves them (all ranks return them)."""
    info = dist.current()
    manifest = load_manifest(cfg.dataset)
    shards = [s.name for s in manifest.split(cfg.split, cfg.dataset).shards]
    names = cfg.teachers or tuple(n for n, r in manifest.teachers.items() if cfg.split in r.complete_splits)
    if not names:
        raise ValueError(
            f"{cfg.dataset}: no teacher has complete features for split {cfg.split!r}; run feature_extraction.py first"
        )
    results = {}
    for name in names:
        record = manifest.teacher(name, cfg.split, cfg.dataset / "manifest.json")
        spec = record.target_spec
        local = accumulate(cfg.dataset, name, record, shards[info.rank :: info.world_size])
        provenance = stored_provenance(manifest, name, record, cfg.split)
        stats = merge_across_ranks(info, local, spec.channels, spec.cls_channels).finish(provenance)
        stats.check_matches(spec, source=f"stats of {name!r} from {cfg.dataset}")
        if info.is_main:
            path = cfg.stats_dir / f"{name}.safetensors"
            stats.save(path)
            log.info("%s: %d samples -> %s", name, stats.count, path)
        results[name] = stats
    dist.barrier(info)
    return results


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("dataset", type=Path, help="dataset folder holding manifest.json")
    parser.add_argument(
        "--teachers", nargs="*", default=[], help="default: every teacher complete for the split"
    )
    parser.add_argument("--split", default="train")
    parser.add_argument(
        "--output-dir",
        type=Path,
        default=None,
        help="where <teacher>.safetensors go (default: DATASET/feature_stats, where training and check look)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging()
    info = dist.init_control_group()
    try:
        results = compute_stats(StatsConfig(args.dataset, tuple(args.teachers), args.split, args.output_dir))
    finally:
        dist.shutdown(info)
    if info.is_main:
        folder = args.output_dir if args.output_dir is not None else default_stats_dir(args.dataset)
        print(
            json.dumps(
                {
                    name: {"count": s.count, "path": str(folder / f"{name}.safetensors")}
                    for name, s in results.items()
                }
            )
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
