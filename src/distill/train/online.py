"""Online teachers: run live on each batch's images instead of reading precomputed feature shards.

Targets must be in the same stats-normalised space as precomputed ones, so each online teacher
needs a :class:`FeatureStats`. They are taken, in order, from

1. ``<run_dir>/feature_stats/<teacher>.safetensors``: what this run already used (resume);
2. ``<dataset.stats_dir>/<teacher>.safetensors``: stats computed ahead with calc_feature_stats.py;
3. an estimate over the samples of the first ``training.online_stats_steps`` optimiser steps
   (the same samples for any number of ranks or accumulation steps), merged across ranks in
   float64 and saved as (1).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch

from distill.distributed import DistContext
from distill.features import TeacherOutput
from distill.stats import FeatureStats, StatsAccumulator, merge_across_ranks
from distill.teachers.base import Teacher

log = logging.getLogger(__name__)

RUN_STATS_DIR = "feature_stats"


def _clone(out: TeacherOutput) -> TeacherOutput:
    """Ordinary tensors (teachers return inference-mode tensors, which autograd may not save)."""
    return TeacherOutput(out.patch.clone(), None if out.cls is None else out.cls.clone())


class OnlineTargets:
    """Normalised targets of every online teacher for a batch of canonical-view images."""

    def __init__(self, teachers: Mapping[str, Teacher], stats: Mapping[str, FeatureStats]) -> None:
        if set(teachers) != set(stats):
            raise ValueError(f"online teachers {sorted(teachers)} and their stats {sorted(stats)} differ")
        self.teachers = dict(teachers)
        self.stats = dict(stats)

    def __call__(self, images: torch.Tensor) -> dict[str, TeacherOutput]:
        return {
            name: _clone(self.stats[name].normalize(teacher(images)))
            for name, teacher in self.teachers.items()
        }


def _find_stats(name: str, teacher: Teacher, candidates: list[Path]) -> FeatureStats | None:
    for path in candidates:
        if path.is_file():
            stats = FeatureStats.load(path)
            stats.check_matches(teacher.spec, source=str(path))
            log.info("online teacher %s: stats from %s", name, path)
            return stats
    return None


def estimate_stats(
    teachers: Mapping[str, Teacher], images: Iterable[torch.Tensor], ctx: DistContext
) -> dict[str, FeatureStats]:
    """Per-channel stats of each teacher's raw features over ``images``, merged over all ranks."""
    accumulators = {name: StatsAccumulator(name) for name in teachers}
    for batch in images:
        for name, teacher in teachers.items():
            accumulators[name].add(teacher(batch))
    merged: dict[str, FeatureStats] = {}
    for name, acc in accumulators.items():
        spec = teachers[name].spec
        merged[name] = merge_across_ranks(ctx, acc, spec.channels, spec.cls_channels).finish()
    return merged


def resolve_online_stats(
    teachers: Mapping[str, Teacher],
    run_dir: Path,
    stats_dir: Path | None,
    images: Iterable[torch.Tensor],
    ctx: DistContext,
) -> dict[str, FeatureStats]:
    """Stats for every online teacher, from a file or estimated (see the module docstring)."""
    found: dict[str, FeatureStats] = {}
    missing: dict[str, Teacher] = {}
    for name, teacher in teachers.items():
        candidates = [run_dir / RUN_STATS_DIR / f"{name}.safetensors"]
        if stats_dir is not None:
            candidates.append(stats_dir / f"{name}.safetensors")
        stats = _find_stats(name, teacher, candidates)
        if stats is None:
            missing[name] = teacher
        else:
            found[name] = stats
    if missing:
        log.info(
            "online teacher(s) %s: no stats file, estimating them from the first training batches",
            sorted(missing),
        )
        estimated = estimate_stats(missing, images, ctx)
        if ctx.is_main:
            for name, stats in estimated.items():
                stats.save(run_dir / RUN_STATS_DIR / f"{name}.safetensors")
        found |= estimated
    return found
