"""Checkpoint directories of a training run: written whole or not at all, found by step, pruned to the last N.

The student trainer and the world-model trainer (``distill.worldmodel``) both resume from these.
Layout of ``<run_dir>/checkpoints/step_00000120/``::

    student/          the model folder (``models=``; the student's save_pretrained): usable on its own
    ema/              the EMA student folder, when EMA is on
    optimizer.pt      AdamW state (torch.save of tensors and numbers; loaded with weights_only=True)
    rng.safetensors   every rank's generator states (metadata holds the non-tensor parts)
    trainer.json      step, loader position, world size, batch size, accumulation, schedule (written last)

Everything is written into a staging folder ``checkpoints/.tmp-step_00000120.<random>.tmp/``, every file
fsynced, then the folder is renamed to its final name (``distill.io.atomic_folder``). A folder whose name
starts with ``.tmp-`` is an interrupted write; it is never read and is removed at the next start.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from distill.io import TMP_FOLDER_PREFIX, atomic_folder
from distill.rng import RngState
from distill.tensorfile import UnreadableFileError
from distill.tensorfile import load as load_tensors
from distill.tensorfile import save as save_tensors

CHECKPOINTS = "checkpoints"
STEP_PREFIX = "step_"
TRAINER_FILE = "trainer.json"
OPTIMIZER_FILE = "optimizer.pt"
RNG_FILE = "rng.safetensors"
STUDENT_DIR = "student"
EMA_DIR = "ema"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class TrainerState:
    """The scalars that place a run on its trajectory."""

    step: int  # optimiser steps taken
    loader_position: int  # global batches consumed (micro-batches when accumulating)
    world_size: int
    batch_size: int  # per rank, per micro-batch
    grad_accum: int
    schedule: dict[str, Any]  # WarmupCosine fields, to report a changed schedule on resume

    @property
    def global_batch(self) -> int:
        return self.batch_size * self.world_size


@dataclass
class Checkpoint:
    """A complete checkpoint directory, read back."""

    path: Path
    state: TrainerState
    optimizer: dict[str, Any]
    rng: list[RngState]  # indexed by rank

    @property
    def student_dir(self) -> Path:
        return self.path / STUDENT_DIR

    @property
    def ema_dir(self) -> Path | None:
        ema = self.path / EMA_DIR
        return ema if ema.is_dir() else None


def checkpoints_dir(run_dir: Path) -> Path:
    return run_dir / CHECKPOINTS


def step_dir_name(step: int) -> str:
    return f"{STEP_PREFIX}{step:08d}"


def _step_of(path: Path) -> int | None:
    name = path.name
    if not name.startswith(STEP_PREFIX):
        return None
    digits = name[len(STEP_PREFIX) :]
    return int(digits) if digits.isdigit() else None


def complete_checkpoints(run_dir: Path) -> list[Path]:
    """Finished checkpoint directories, oldest first (a directory without trainer.json is skipped)."""
    root = checkpoints_dir(run_dir)
    if not root.is_dir():
        return []
    found = [(step, p) for p in root.iterdir() if p.is_dir() and (step := _step_of(p)) is not None]
    return [p for _, p in sorted(found) if (p / TRAINER_FILE).is_file()]


def latest_checkpoint(run_dir: Path) -> Path | None:
    done = complete_checkpoints(run_dir)
    return done[-1] if done else None


def remove_incomplete(run_dir: Path) -> list[Path]:
    """Delete interrupted writes (``.tmp-*``) left by a killed run; returns what was removed."""
    root = checkpoints_dir(run_dir)
    if not root.is_dir():
        return []
    stale = [p for p in root.iterdir() if p.name.startswith(TMP_FOLDER_PREFIX)]
    for path in stale:
        shutil.rmtree(path, ignore_errors=True)
    return stale


def _rng_parts(rng: list[RngState]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    tensors: dict[str, torch.Tensor] = {}
    meta: dict[str, Any] = {}
    for rank, state in enumerate(rng):
        tensors |= state.tensors(f"rank{rank}")
        meta[f"rank{rank}"] = state.meta()
    return tensors, {"ranks": str(len(rng)), "states": json.dumps(meta)}


def write_checkpoint(
    run_dir: Path,
    state: TrainerState,
    optimizer: dict[str, Any],
    rng: list[RngState],
    save_models: Callable[[Path], None],
    keep_last: int,
) -> Path:
    """Write a complete checkpoint atomically (rank 0 only) and prune to the last ``keep_last``.

    ``save_models(tmp_dir)`` writes the ``student/`` (and ``ema/``) folders into the temporary dir.
    """
    final = checkpoints_dir(run_dir) / step_dir_name(state.step)
    with atomic_folder(final) as tmp:  # replaces a step reached again after resuming from an older one
        save_models(tmp)
        torch.save(optimizer, tmp / OPTIMIZER_FILE)
        tensors, meta = _rng_parts(rng)
        save_tensors(tmp / RNG_FILE, tensors, metadata=meta)
        record = {"format_version": FORMAT_VERSION, **asdict(state)}
        (tmp / TRAINER_FILE).write_text(json.dumps(record, indent=2, sort_keys=True), encoding="utf-8")
    prune(run_dir, keep_last)
    return final


def prune(run_dir: Path, keep_last: int) -> list[Path]:
    """Remove all but the newest ``keep_last`` complete checkpoints (``keep_last <= 0`` keeps all)."""
    if keep_last <= 0:
        return []
    doomed = complete_checkpoints(run_dir)[:-keep_last]
    for path in doomed:
        shutil.rmtree(path, ignore_errors=True)
    return doomed


def read_checkpoint(path: Path, models: str = STUDENT_DIR) -> Checkpoint:
    """Load a complete checkpoint's trainer state, optimiser state and RNG states; the model folder
    ``models`` must be there (the caller loads it)."""
    path = Path(path)
    trainer_file = path / TRAINER_FILE
    if not trainer_file.is_file():
        raise FileNotFoundError(
            f"{path} is not a complete checkpoint (no {TRAINER_FILE}); "
            "point resume= at a checkpoints/step_* directory or use resume=auto"
        )
    fix = f"resume from another checkpoint of {path.parent} (or delete this one so resume=auto skips it)"
    try:
        record = json.loads(trainer_file.read_text(encoding="utf-8"))
        version = record.pop("format_version", None)
    except (UnicodeDecodeError, json.JSONDecodeError, AttributeError) as exc:
        raise UnreadableFileError(f"{trainer_file} is not a trainer state ({exc}); {fix}") from exc
    if version != FORMAT_VERSION:
        raise ValueError(
            f"{trainer_file}: checkpoint format {version!r}, this trainer reads {FORMAT_VERSION}"
        )
    state = TrainerState(**record)
    optimizer_file = path / OPTIMIZER_FILE
    try:
        optimizer = torch.load(optimizer_file, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} has no {OPTIMIZER_FILE}; {fix}") from None
    except Exception as exc:  # truncated zip, unpickling refused, ...
        raise UnreadableFileError(
            f"{optimizer_file} is not a readable optimiser state: truncated or corrupt "
            f"({type(exc).__name__}: {exc}); {fix}"
        ) from exc
    tensors, meta = load_tensors(path / RNG_FILE, "checkpoint RNG file", fix)
    try:
        states = json.loads(meta["states"])
        rng = [
            RngState.from_parts(f"rank{r}", tensors, states[f"rank{r}"]) for r in range(int(meta["ranks"]))
        ]
    except (KeyError, ValueError, TypeError) as exc:
        raise UnreadableFileError(f"{path / RNG_FILE}: RNG states are incomplete ({exc!r}); {fix}") from exc
    if not (path / models).is_dir():
        raise FileNotFoundError(f"{path} has no {models}/ folder")
    return Checkpoint(path=path, state=state, optimizer=optimizer, rng=rng)
