"""Online teachers: run live on each batch's images instead of reading precomputed feature shards.

Targets must be in the same stats-normalised space as precomputed ones, so each online teacher
needs a :class:`FeatureStats` of its *live* features (float32, its own grid: never stats measured
on stored, quantised or pooled features). They are taken, in order, from

1. stats fixed before the run (finetuning keeps the init student's);
2. ``<run_dir>/feature_stats/<teacher>.safetensors``: what this run already used (resume);
3. ``<dataset.stats_dir>/<teacher>.safetensors`` when its provenance says it was measured on
   this teacher's live features on this dataset (stats of the stored features, which
   calc_feature_stats.py writes there, are passed over with a warning);
4. the repository's ``feature_stats/`` (stats shipped for published weights), matched by
   provenance (teacher, source, weights, live storage, grid), never by file name;
5. an estimate over the samples of the first ``training.online_stats_steps`` optimiser steps
   (the same samples for any number of ranks or accumulation steps), merged across ranks in
   float64 and saved as (2).

A file for the teacher measured with *other weights* is an error naming the differences.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch

import distill
from distill.distributed import DistContext
from distill.features import TeacherOutput
from distill.stats import FeatureStats, StatsAccumulator, StatsProvenance, merge_across_ranks
from distill.teachers.base import Teacher
from distill.teachers.precision import TeacherPrecision, run_teacher

log = logging.getLogger(__name__)

RUN_STATS_DIR = "feature_stats"
# stats shipped with the project for published teacher weights (a source checkout; see its README)
SHIPPED_STATS_DIR = Path(distill.__file__).resolve().parents[2] / "feature_stats"
# provenance fields that say how the features were made or measured, not which teacher model made them
IDENTITY_ONLY = ("storage", "precision", "grid", "dataset", "dataset_fingerprint", "split")
DATASET_FIELDS = ("dataset", "dataset_fingerprint", "split")


def _clone(out: TeacherOutput) -> TeacherOutput:
    """Ordinary tensors (teachers return inference-mode tensors, which autograd may not save)."""
    return TeacherOutput(out.patch.clone(), None if out.cls is None else out.cls.clone())


class OnlineTargets:
    """Normalised targets of every online teacher for a batch of canonical-view images."""

    def __init__(
        self,
        teachers: Mapping[str, Teacher],
        stats: Mapping[str, FeatureStats],
        precision: TeacherPrecision = "auto",
    ) -> None:
        if set(teachers) != set(stats):
            raise ValueError(f"online teachers {sorted(teachers)} and their stats {sorted(stats)} differ")
        self.teachers = dict(teachers)
        self.stats = dict(stats)
        self.precision = precision

    def __call__(self, images: torch.Tensor) -> dict[str, TeacherOutput]:
        return {
            name: _clone(self.stats[name].normalize(run_teacher(teacher, images, self.precision)))
            for name, teacher in self.teachers.items()
        }


def _load(path: Path, name: str, teacher: Teacher) -> FeatureStats:
    stats = FeatureStats.load(path)
    if stats.teacher != name:
        raise ValueError(f"{path}: stats were computed for teacher {stats.teacher!r}, not {name!r}")
    stats.check_matches(teacher.spec, source=str(path))
    return stats


def _check_identity(stats: FeatureStats, want: StatsProvenance, path: Path) -> None:
    """Stats of this teacher name measured with other weights are never right: an error."""
    stats.check_provenance(
        want,
        source=str(path),
        ignore=IDENTITY_ONLY,
        fix=f"they belong to another teacher model; delete or move {path}, or set the teacher's source/weights "
        "to the ones they were measured with",
    )


def _run_stats(name: str, teacher: Teacher, run_dir: Path, want: StatsProvenance) -> FeatureStats | None:
    path = run_dir / RUN_STATS_DIR / f"{name}.safetensors"
    if not path.is_file():
        return None
    stats = _load(path, name, teacher)
    if stats.provenance is not None:  # files of runs from before provenance are this run's own space
        stats.check_provenance(
            want,
            source=str(path),
            ignore=DATASET_FIELDS,
            fix="this run was started with another teacher or training.teacher_precision; resume it with its "
            "own config, or start a new run",
        )
    log.info("online teacher %s: stats from %s (this run's)", name, path)
    return stats


def _dataset_stats(
    name: str, teacher: Teacher, stats_dir: Path | None, want: StatsProvenance
) -> FeatureStats | None:
    path = None if stats_dir is None else stats_dir / f"{name}.safetensors"
    if path is None or not path.is_file():
        return None
    stats = _load(path, name, teacher)
    if stats.provenance is None:
        log.warning(
            "online teacher %s: %s records no provenance, so nothing says it describes live features; "
            "not used (the stats are estimated instead)",
            name,
            path,
        )
        return None
    _check_identity(stats, want, path)
    differ = stats.provenance.differences(want, ignore=("split",))
    if differ:
        log.warning(
            "online teacher %s: %s was measured on other features than the live ones (%s); not used "
            "(the stats are estimated instead)",
            name,
            path,
            "; ".join(differ),
        )
        return None
    log.info("online teacher %s: stats from %s", name, path)
    return stats


def find_shipped(
    name: str, teacher: Teacher, want: StatsProvenance, folder: Path = SHIPPED_STATS_DIR
) -> FeatureStats | None:
    """The shipped stats file whose provenance matches ``want`` (any dataset); file names play no part.

    Of several matches the one measured on the most samples wins (then the first by file name).
    """
    if not folder.is_dir():
        return None
    best: tuple[int, str, FeatureStats] | None = None
    for path in sorted(folder.glob("*.safetensors")):
        stats = FeatureStats.load(path)
        if stats.teacher != name or stats.provenance is None:
            continue
        if stats.provenance.differences(want, ignore=DATASET_FIELDS):
            continue
        stats.check_matches(teacher.spec, source=str(path))
        if best is None or stats.count > best[0]:
            best = (stats.count, str(path), stats)
    if best is not None:
        log.info("online teacher %s: shipped stats %s (%s)", name, best[1], best[2].provenance.describe())  # type: ignore[union-attr]
        return best[2]
    return None


def estimate_stats(
    teachers: Mapping[str, Teacher],
    images: Iterable[torch.Tensor],
    ctx: DistContext,
    provenance: Mapping[str, StatsProvenance] | None = None,
    precision: TeacherPrecision = "auto",
) -> dict[str, FeatureStats]:
    """Per-channel stats of each teacher's raw features over ``images`` (in the precision training
    runs them in), merged over all ranks."""
    accumulators = {name: StatsAccumulator(name) for name in teachers}
    for batch in images:
        for name, teacher in teachers.items():
            accumulators[name].add(run_teacher(teacher, batch, precision))
    merged: dict[str, FeatureStats] = {}
    for name, acc in accumulators.items():
        spec = teachers[name].spec
        total = merge_across_ranks(ctx, acc, spec.channels, spec.cls_channels)
        merged[name] = total.finish(None if provenance is None else provenance[name])
    return merged


def resolve_online_stats(
    teachers: Mapping[str, Teacher],
    run_dir: Path,
    stats_dir: Path | None,
    images: Iterable[torch.Tensor],
    ctx: DistContext,
    provenance: Mapping[str, StatsProvenance],
    fixed: Mapping[str, FeatureStats] | None = None,
    shipped_dir: Path = SHIPPED_STATS_DIR,
    precision: TeacherPrecision = "auto",
) -> dict[str, FeatureStats]:
    """Stats for every online teacher, from a file or estimated (see the module docstring)."""
    fixed = fixed or {}
    found: dict[str, FeatureStats] = {}
    missing: dict[str, Teacher] = {}
    for name, teacher in teachers.items():
        want = provenance[name]
        stats = fixed.get(name)
        if stats is None:
            stats = _run_stats(name, teacher, run_dir, want)
        if stats is None:
            stats = _dataset_stats(name, teacher, stats_dir, want)
        if stats is None:
            stats = find_shipped(name, teacher, want, shipped_dir)
        if stats is None:
            missing[name] = teacher
        else:
            found[name] = stats
    if missing:
        log.info(
            "online teacher(s) %s: no stats file for their live features, estimating them from the first "
            "training batches",
            sorted(missing),
        )
        estimated = estimate_stats(missing, images, ctx, provenance, precision)
        if ctx.is_main:
            for name, stats in estimated.items():
                stats.save(run_dir / RUN_STATS_DIR / f"{name}.safetensors")
        found |= estimated
    if ctx.is_main:
        for name, stats in found.items():  # the run's own copy (resume reads it first)
            path = run_dir / RUN_STATS_DIR / f"{name}.safetensors"
            if not path.is_file():
                stats.save(path)
    return found
