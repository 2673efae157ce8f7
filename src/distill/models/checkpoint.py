"""The student checkpoint folder: ``config.json`` + ``model.safetensors`` + ``stats/<teacher>.safetensors``.

The folder alone is enough to encode and decode: the config holds the teacher specs, the stats map
features back to each teacher's raw space. Written into a temporary sibling folder and renamed into
place, so a reader sees the old checkpoint or the new one, never a mix. Loading is strict.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from distill.io import atomic_write_text, fsync_path
from distill.models.config import StudentConfig
from distill.stats import FeatureStats
from distill.tensorfile import UnreadableFileError
from distill.tensorfile import load as load_tensors
from distill.tensorfile import save as save_tensors

FORMAT = "distill.student"
FORMAT_VERSION = 1
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
STATS_DIR = "stats"


def check_stats(
    config: StudentConfig, stats: Mapping[str, FeatureStats], source: str = "stats"
) -> dict[str, FeatureStats]:
    """Exactly one FeatureStats per predicted teacher, each computed for that teacher's shape."""
    missing = sorted(set(config.teachers) - set(stats))
    extra = sorted(set(stats) - set(config.teachers))
    if missing or extra:
        raise ValueError(
            f"{source}: stats must cover exactly the student's teachers {sorted(config.teachers)}; "
            f"missing {missing}, extra {extra}"
        )
    for name, spec in config.teachers.items():
        if stats[name].teacher != name:
            raise ValueError(
                f"{source}: the stats given for {name!r} were computed for teacher {stats[name].teacher!r}"
            )
        stats[name].check_matches(spec, source=f"{source} for {name!r}")
    return dict(stats)


def nonfinite_tensors(state: Mapping[str, torch.Tensor]) -> list[str]:
    """Names of the floating-point tensors holding a NaN or an infinity."""
    return [
        name
        for name, tensor in state.items()
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all())
    ]


def write_checkpoint(
    directory: str | Path,
    config: StudentConfig,
    state: Mapping[str, torch.Tensor],
    stats: Mapping[str, FeatureStats],
) -> None:
    """Write a complete checkpoint folder at ``directory``, replacing an older checkpoint there atomically."""
    target = Path(directory)
    stats = check_stats(config, stats, source=f"saving {target}")
    broken = nonfinite_tensors(state)
    if broken:
        shown = ", ".join(broken[:8]) + (f" and {len(broken) - 8} more" if len(broken) > 8 else "")
        raise ValueError(
            f"refusing to write {target}: {len(broken)} weight tensor(s) hold NaN or infinite values ({shown}); "
            "a checkpoint of them could only be resumed into the same failure"
        )
    if target.exists() and not (target.is_dir() and (not any(target.iterdir()) or _is_checkpoint(target))):
        raise FileExistsError(
            f"refusing to replace {target}: it exists and is not a student checkpoint folder"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        header: dict[str, Any] = {"format": FORMAT, "version": FORMAT_VERSION, "config": config.to_dict()}
        atomic_write_text(staging / CONFIG_NAME, json.dumps(header, indent=2) + "\n")
        save_tensors(staging / WEIGHTS_NAME, state, metadata={"format": FORMAT})
        for name, teacher_stats in stats.items():
            teacher_stats.save(staging / STATS_DIR / f"{name}.safetensors")
        _swap_into_place(staging, target)
    finally:
        if staging.exists():
            shutil.rmtree(staging)


def _is_checkpoint(folder: Path) -> bool:
    """Whether ``folder`` holds a config.json written by :func:`write_checkpoint` (and so may be replaced)."""
    try:
        header = json.loads((folder / CONFIG_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(header, dict) and header.get("format") == FORMAT


def _swap_into_place(staging: Path, target: Path) -> None:
    """Rename ``staging`` to ``target``; an existing ``target`` is moved aside first and deleted after."""
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old-{uuid.uuid4().hex[:8]}")
        os.replace(target, old)
    os.replace(staging, target)
    fsync_path(target.parent)
    if old is not None:
        shutil.rmtree(old)


def read_config(directory: str | Path) -> StudentConfig:
    """The StudentConfig saved in a checkpoint folder (refusing files that are not distill student configs)."""
    path = Path(directory) / CONFIG_NAME
    if not path.is_file():
        raise FileNotFoundError(
            f"no {CONFIG_NAME} in {directory}; is it a student checkpoint folder written by save_pretrained?"
        )
    try:
        header = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UnreadableFileError(
            f"{path} is not valid JSON ({exc}): the checkpoint folder is damaged; copy it again or use "
            "another checkpoint"
        ) from exc
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise ValueError(
            f"{path} is not a distill student config (format {header.get('format') if isinstance(header, dict) else None!r})"
        )
    if header.get("version") != FORMAT_VERSION:
        raise ValueError(
            f"{path} has format version {header.get('version')!r}; this distill reads version {FORMAT_VERSION}"
        )
    try:
        return StudentConfig.from_dict(header["config"])
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(f"{path}: invalid student config: {err}") from err


def read_stats(directory: str | Path, config: StudentConfig) -> dict[str, FeatureStats]:
    """Every teacher's stats from ``stats/``; a missing, extra or mismatching file is an error naming it."""
    folder = Path(directory) / STATS_DIR
    found = sorted(path.stem for path in folder.glob("*.safetensors")) if folder.is_dir() else []
    extra = sorted(set(found) - set(config.teachers))
    if extra:
        raise ValueError(
            f"{folder} holds stats for {extra}, which the student in {directory} does not predict"
        )
    stats = {name: FeatureStats.load(folder / f"{name}.safetensors") for name in config.teachers}
    return check_stats(config, stats, source=str(folder))


def load_state_strict(module: nn.Module, path: str | Path) -> None:
    """Load a safetensors file into ``module``; every tensor must be present, expected and of the right shape."""
    path = Path(path)
    tensors, _ = load_tensors(
        path,
        "student weights file",
        "the checkpoint folder is damaged (an interrupted copy or download?); copy it again or use another checkpoint",
    )
    expected = module.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    wrong = [
        f"{name} (file {tuple(tensors[name].shape)}, model {tuple(expected[name].shape)})"
        for name in sorted(set(expected) & set(tensors))
        if tensors[name].shape != expected[name].shape
    ]
    if missing or unexpected or wrong:
        problems = [
            f"{label}: {', '.join(names)}"
            for label, names in (
                ("missing tensors", missing),
                ("unexpected tensors", unexpected),
                ("wrong shapes", wrong),
            )
            if names
        ]
        raise ValueError(f"{path} does not match the model its config.json describes; {'; '.join(problems)}")
    module.load_state_dict({name: tensors[name].to(expected[name].dtype) for name in expected}, strict=True)
