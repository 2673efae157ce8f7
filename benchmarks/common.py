"""Shared helpers for the data benchmarks: a synthetic dataset, timing, and JSON output."""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from distill.io import atomic_write_text
from distill.preprocess.organize import OrganizeConfig, organize_images
from distill.synthetic import write_image_folder

HERE = Path(__file__).resolve().parent
FIVE = ("clip", "dinov2", "mae", "sam", "depth_anything")


def base_parser(name: str, doc: str | None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--output", type=Path, default=HERE / "results" / f"{name}.json", help="JSON result path"
    )
    parser.add_argument("--device", default=None, help="default: cuda when present, else cpu")
    return parser


def device_of(arg: str | None) -> torch.device:
    return torch.device(arg or ("cuda" if torch.cuda.is_available() else "cpu"))


def machine(device: torch.device) -> dict[str, Any]:
    name = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"cpu, {torch.get_num_threads()} threads"
    )
    return {"python": platform.python_version(), "torch": torch.__version__, "device": name}


def synthetic_dataset(root: Path, images: int, size: int, per_shard: int) -> Path:
    """``images`` procedural scenes (one class folder) organised at canonical ``size``, all in train."""
    source = root / "source"
    write_image_folder(source, classes=1, per_class=images, size=(size * 5 // 4, size), seed=0)
    dataset = root / "ds"
    organize_images(OrganizeConfig(source, dataset, size=size, samples_per_shard=per_shard, val_fraction=0.0))
    return dataset


def best_seconds(fn: Callable[[], object], repeats: int, sync: torch.device | None = None) -> float:
    """Fastest of ``repeats`` runs: the least disturbed by other load on a shared machine."""
    return min(_seconds(fn, sync) for _ in range(repeats))


def _seconds(fn: Callable[[], object], sync: torch.device | None) -> float:
    if sync is not None and sync.type == "cuda":
        torch.cuda.synchronize(sync)
    start = time.perf_counter()
    fn()
    if sync is not None and sync.type == "cuda":
        torch.cuda.synchronize(sync)
    return time.perf_counter() - start


def spread(values: list[float], digits: int = 4) -> dict[str, float]:
    """Median and range of repeated measurements: the median is the figure, the range its trust."""
    return {
        "median": round(statistics.median(values), digits),
        "min": round(min(values), digits),
        "max": round(max(values), digits),
    }


def paired_ratio(
    reference: Callable[[], object],
    candidate: Callable[[], object],
    repeats: int,
    sync: torch.device | None = None,
) -> dict[str, Any]:
    """Time two ways of doing the same work, warmed up and interleaved, so both see the same load.

    Each repeat runs ``reference`` then ``candidate`` back to back; the ratio of each repeat is
    reference seconds / candidate seconds (1.0: the candidate is as fast). Reported: the seconds
    of each side and the ratios, as median and range over the repeats. A ratio whose range is wide
    was measured on a disturbed machine; rerun it rather than quote it.
    """
    reference()  # warm-up: first-call allocations, kernel selection, lazy imports, file cache
    candidate()
    ref_s, cand_s = [], []
    for _ in range(repeats):
        ref_s.append(_seconds(reference, sync))
        cand_s.append(_seconds(candidate, sync))
    ratios = [r / c for r, c in zip(ref_s, cand_s, strict=True)]
    return {
        "repeats": repeats,
        "reference_seconds": spread(ref_s),
        "candidate_seconds": spread(cand_s),
        "ratio": spread(ratios, 3),
    }


def write_result(path: Path, result: dict[str, Any], echo: bool = True) -> None:
    atomic_write_text(path, json.dumps(result, indent=2) + "\n")
    if echo:
        print(json.dumps(result, indent=2))
