"""Shared helpers for the data benchmarks: a synthetic dataset, timing, and JSON output."""

from __future__ import annotations

import argparse
import json
import platform
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
    best = float("inf")
    for _ in range(repeats):
        if sync is not None and sync.type == "cuda":
            torch.cuda.synchronize(sync)
        start = time.perf_counter()
        fn()
        if sync is not None and sync.type == "cuda":
            torch.cuda.synchronize(sync)
        best = min(best, time.perf_counter() - start)
    return best


def write_result(path: Path, result: dict[str, Any]) -> None:
    atomic_write_text(path, json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
