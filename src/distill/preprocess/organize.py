"""Image folder -> image shards of the canonical view, manifest.json and rejected.txt.

Splits: when the input's top level has ``train/`` and ``val/`` folders (ImageNet layout) they
are the splits (``test/`` too when present) and the first folder under a split is the label.
Otherwise the first folder of each path is the label and a file goes to ``val`` when the hash
of its relative path falls under ``val_fraction``: membership does not change when files are
added, so a grown dataset never moves an image between train and val.

Within a split, images are written in a seeded random order so a shard mixes classes.

Paired datasets (cross-domain alignment, docs/alignment.md): with ``--target DIR`` (or ``--pairs
CSV``) every source image has a target image (``distill.preprocess.pairs``); both get the same
canonical view, the source side goes to ``images/`` (what the student reads) and the target side to
``target_images/`` under the same key, in the same shards (what the teachers are extracted from).
A pair whose sides differ in aspect ratio (the same crop would cover different content) is rejected.
Run as ``python -m distill.preprocess.organize --help`` or scripts/preprocessing/organize_webdataset.py.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TypeVar

import numpy as np

from distill.data.keys import make_keys, path_digest
from distill.data.manifest import IMAGES_DIR, TARGET_IMAGES_DIR, Manifest, ShardInfo, SplitInfo, save_manifest
from distill.data.shards import SplitWriter
from distill.geometry import canonical_view
from distill.images import DEFAULT_MAX_PIXELS, IMAGE_EXTENSIONS, ImageLimits, RejectedInput, load_rgb
from distill.preprocess.cli import config_from_args, setup_logging
from distill.preprocess.dataset_dir import prepare_dataset_dir
from distill.preprocess.pairs import (
    PairPlan,
    Partner,
    pair_csv,
    pair_folders,
    pairing_record,
    same_aspect,
)
from distill.preprocess.rejected import Rejection, write_rejections

log = logging.getLogger(__name__)
SPLIT_FOLDERS = ("train", "val", "test")
T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True)
class OrganizeConfig:
    source: Path  # input folder (any nesting)
    dataset: Path  # output <root>/<dataset>
    size: int = 224  # canonical view side
    quality: int = 95  # JPEG quality of the stored view
    samples_per_shard: int = 1000
    val_fraction: float = 0.05  # used only without train/ and val/ folders
    min_size: int = 32
    max_pixels: int = DEFAULT_MAX_PIXELS
    seed: int = 0  # order of images within a split
    workers: int = 0  # decoding processes; 0 decodes in this process
    overwrite: bool = False
    target: Path | None = None  # paired dataset: the target folder (matched by relative path)
    pairs: Path | None = None  # paired dataset: a CSV source,target (paths under source and target)


@dataclass(frozen=True)
class Candidate:
    path: Path
    relpath: str
    split: str
    label: str | None
    partner: Partner | None = None  # the target image of a paired dataset


@dataclass(frozen=True)
class OrganizeReport:
    dataset: Path
    counts: dict[str, int]
    rejected: int


@dataclass(frozen=True)
class Encoded:
    """A stored view and what metadata needs from the decode, or the rejection reason."""

    jpeg: bytes = b""
    width: int = 0
    height: int = 0
    mode: str = ""
    rejected: str | None = None

    def size_record(self) -> dict[str, object]:
        """The decoded original's size and mode, as the sample's metadata records them."""
        return {"width": self.width, "height": self.height, "mode": self.mode}


def _val_by_hash(relpath: str, fraction: float) -> bool:
    return int(path_digest(relpath, 8), 16) / 16**8 < fraction


def discover(source: Path, val_fraction: float) -> tuple[list[Candidate], list[Rejection]]:
    """Every file under ``source``: image candidates with split and label, or a rejection."""
    if not source.is_dir():
        raise NotADirectoryError(f"input {source} is not a folder of images")
    files = sorted(p for p in source.rglob("*") if p.is_file())
    split_layout = all((source / name).is_dir() for name in ("train", "val"))
    candidates, rejections = [], []
    for path in files:
        rel = path.relative_to(source).as_posix()
        parts = rel.split("/")
        if path.suffix.lower() not in IMAGE_EXTENSIONS:
            rejections.append(
                Rejection("organize", rel, f"extension {path.suffix or '(none)'!r} is not an image extension")
            )
        elif split_layout and parts[0] not in SPLIT_FOLDERS:
            rejections.append(
                Rejection("organize", rel, "outside the train/val/test folders of an ImageNet-style input")
            )
        elif split_layout:
            candidates.append(Candidate(path, rel, parts[0], parts[1] if len(parts) > 2 else None))
        else:
            split = "val" if _val_by_hash(rel, val_fraction) else "train"
            candidates.append(Candidate(path, rel, split, parts[0] if len(parts) > 1 else None))
    return candidates, rejections


def encode_view(path: Path, size: int, quality: int, limits: ImageLimits) -> Encoded:
    """Decode, validate, take the canonical view and JPEG-encode it (runs in worker processes)."""
    try:
        rgb, mode = load_rgb(path, limits)
    except RejectedInput as exc:
        return Encoded(rejected=exc.reason)
    buffer = io.BytesIO()
    canonical_view(rgb, size).save(buffer, format="JPEG", quality=quality)
    return Encoded(buffer.getvalue(), rgb.width, rgb.height, mode)


def ordered_map(fn: Callable[[T], R], items: Iterable[T], workers: int, window: int = 256) -> Iterator[R]:
    """``map`` in input order over a process pool, with at most ``window`` tasks in flight."""
    if workers <= 0:
        yield from map(fn, items)
        return
    with ProcessPoolExecutor(max_workers=workers) as pool:
        pending: deque[Future[R]] = deque()
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) >= window:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


class _Encoder:
    """Picklable callable for the pool: Candidate -> (source view, target view or None)."""

    def __init__(self, cfg: OrganizeConfig) -> None:
        self.size, self.quality = cfg.size, cfg.quality
        self.limits = ImageLimits(cfg.min_size, cfg.max_pixels)

    def __call__(self, candidate: Candidate) -> tuple[Encoded, Encoded | None]:
        source = encode_view(candidate.path, self.size, self.quality, self.limits)
        if candidate.partner is None:
            return source, None
        return source, encode_view(candidate.partner.path, self.size, self.quality, self.limits)


def pair_rejection(candidate: Candidate, source: Encoded, target: Encoded | None) -> str | None:
    """Why a (paired) candidate cannot be stored, or None."""
    if source.rejected is not None:
        return source.rejected
    if target is None or candidate.partner is None:
        return None
    if target.rejected is not None:
        return f"its target {candidate.partner.relpath}: {target.rejected}"
    if not same_aspect((source.width, source.height), (target.width, target.height)):
        return (
            f"source is {source.width}x{source.height}, its target {candidate.partner.relpath} "
            f"{target.width}x{target.height}: paired images need the same aspect ratio (one canonical crop)"
        )
    return None


def plan_pairs(cfg: OrganizeConfig, candidates: list[Candidate]) -> PairPlan | None:
    """The pairing of a paired build (None for a plain one)."""
    if cfg.pairs is not None:
        return pair_csv([c.relpath for c in candidates], cfg.source, cfg.target or cfg.source, cfg.pairs)
    if cfg.target is not None:
        return pair_folders([c.relpath for c in candidates], cfg.target)
    return None


def organize_images(cfg: OrganizeConfig) -> OrganizeReport:
    """Build ``cfg.dataset`` from ``cfg.source``; see the module docstring for the rules."""
    if not 0.0 <= cfg.val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {cfg.val_fraction}")
    candidates, rejections = discover(cfg.source, cfg.val_fraction)
    paired = plan_pairs(cfg, candidates)
    if paired is not None:
        rejections += paired.rejections
        candidates = [
            replace(c, partner=paired.partners[c.relpath]) for c in candidates if c.relpath in paired.partners
        ]
        if paired.rejections:
            log.warning(
                "%d input(s) could not be paired (see %s/rejected.txt)", len(paired.rejections), cfg.dataset
            )
    keys = make_keys([c.relpath for c in candidates])
    classes = tuple(sorted({c.label for c in candidates if c.label is not None}))
    prepare_dataset_dir(cfg.dataset, cfg.overwrite)
    splits: dict[str, SplitInfo] = {}
    rng = np.random.default_rng(cfg.seed)
    for split in sorted({c.split for c in candidates}):
        members = [c for c in candidates if c.split == split]
        ordered = [members[i] for i in rng.permutation(len(members))]
        with (
            SplitWriter(cfg.dataset / IMAGES_DIR, split, cfg.samples_per_shard) as writer,
            SplitWriter(cfg.dataset / TARGET_IMAGES_DIR, split, cfg.samples_per_shard) as target_writer,
        ):
            for candidate, (encoded, target) in zip(
                ordered, ordered_map(_Encoder(cfg), ordered, cfg.workers), strict=True
            ):
                reason = pair_rejection(candidate, encoded, target)
                if reason is not None:
                    rejections.append(Rejection("organize", candidate.relpath, reason))
                    continue
                key = keys[candidate.relpath]
                label = {
                    "split": split,
                    "label": candidate.label,
                    "label_index": None if candidate.label is None else classes.index(candidate.label),
                }
                meta = {"key": key, "source": candidate.relpath, **label, **encoded.size_record()}
                if target is not None and candidate.partner is not None:
                    meta["target"] = candidate.partner.relpath
                    side = {"key": key, "source": candidate.partner.relpath, "pair_of": candidate.relpath}
                    side |= label | target.size_record()
                    target_writer.add(key, {"jpg": target.jpeg, "json": json.dumps(side).encode()})
                writer.add(key, {"jpg": encoded.jpeg, "json": json.dumps(meta).encode()})
        if writer.shards:
            splits[split] = SplitInfo(tuple(ShardInfo(name, count) for name, count in writer.shards))
        else:
            log.warning("split %r: every candidate image was rejected, the split is left out", split)
    if not splits:
        raise ValueError(
            f"no usable image under {cfg.source} ({len(rejections)} rejected, see {cfg.dataset}/rejected.txt)"
        )
    rejections.sort(key=lambda r: r.source)
    write_rejections(cfg.dataset, rejections)
    manifest = Manifest(
        name=cfg.dataset.name,
        kind="images",
        source=str(cfg.source.resolve()),
        canonical_size=cfg.size,
        jpeg_quality=cfg.quality,
        splits=splits,
        classes=classes,
        rejected=len(rejections),
        pairing={}
        if paired is None
        else pairing_record(cfg.target or cfg.source, cfg.pairs, sum(splits[s].count for s in splits)),
    )
    save_manifest(cfg.dataset, manifest)
    counts = {name: info.count for name, info in splits.items()}
    log.info("organized %s: %s, %d rejected", cfg.dataset, counts, len(rejections))
    return OrganizeReport(cfg.dataset, counts, len(rejections))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "source", type=Path, help="input image folder (any nesting; ImageNet train/val layout is detected)"
    )
    parser.add_argument("dataset", type=Path, help="output dataset folder, <root>/<dataset>")
    parser.add_argument("--size", type=int, default=224, help="canonical view side in pixels (default 224)")
    parser.add_argument(
        "--quality", type=int, default=95, help="JPEG quality of the stored view (default 95)"
    )
    parser.add_argument("--samples-per-shard", type=int, default=1000)
    parser.add_argument(
        "--val-fraction", type=float, default=0.05, help="val share without train/ and val/ folders"
    )
    parser.add_argument("--min-size", type=int, default=32, help="reject images whose short side is smaller")
    parser.add_argument(
        "--max-pixels", type=int, default=DEFAULT_MAX_PIXELS, help="reject larger images (bomb guard)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the image order within a split")
    parser.add_argument("--workers", type=int, default=0, help="decoding processes (0: in this process)")
    parser.add_argument(
        "--overwrite", action="store_true", help="replace an existing dataset (and its features)"
    )
    parser.add_argument(
        "--target",
        type=Path,
        default=None,
        help="paired dataset: folder of target images matched to the source images by relative path "
        "(extension aside); teachers are extracted from the target side (docs/alignment.md)",
    )
    parser.add_argument(
        "--pairs",
        type=Path,
        default=None,
        help="paired dataset: CSV with the header source,target (paths under SOURCE and --target, "
        "default SOURCE) instead of matching by path",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging()
    report = organize_images(config_from_args(OrganizeConfig, args))
    print(json.dumps({"dataset": str(report.dataset), "counts": report.counts, "rejected": report.rejected}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
