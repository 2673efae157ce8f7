"""What a run reads before it creates its run directory, checked up front.

Precomputed teachers are described by the dataset manifest (their features are already in
shards); online teachers are loaded to run live. The student's config is checked against any
folder it starts from, so a checkpoint of another architecture fails naming the fields.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, fields
from pathlib import Path

from distill.data.manifest import Manifest, TeacherRecord, load_manifest
from distill.distributed import DistContext
from distill.features import TeacherSpec
from distill.losses import LossConfig
from distill.models import Student, StudentConfig, load_state_strict, read_config
from distill.models.checkpoint import WEIGHTS_NAME
from distill.stats import FeatureStats
from distill.teachers import Teacher, get_entry, load_teacher
from distill.train.config import RunConfig, TeacherConfig
from distill.train.data import LoaderPlan, dataset_dir
from distill.train.typed import ConfigError

log = logging.getLogger(__name__)


@dataclass
class TeacherPlan:
    """Which teachers come from shards and which run live, with every teacher's target spec."""

    specs: dict[str, TeacherSpec]
    offline: list[str]
    online: dict[str, Teacher]


def _check_record(key: str, teacher: TeacherConfig, record: TeacherRecord, dataset: str) -> None:
    """The config's source/weights must describe the features that are in the shards."""
    expected = teacher.weights
    if teacher.source == "hub" and expected is None:
        expected = get_entry(teacher.name).default_weights
    recorded = record.weights
    if record.source == "hub" and recorded is None:
        recorded = get_entry(teacher.name).default_weights
    if (teacher.source, expected) != (record.source, recorded):
        raise ConfigError(
            f"teachers.{key}: asks for source={teacher.source} weights={expected}, but the features in "
            f"{dataset}/{teacher.name} were extracted with source={record.source} weights={recorded}; "
            f"fix teachers.{key}.source/weights, re-extract, or set teachers.{key}.online=true"
        )


def check_splits(cfg: RunConfig, manifest: Manifest, dataset: str) -> None:
    """The configured splits exist in the dataset (named by their config keys)."""
    for key, split in (("train_split", cfg.dataset.train_split), ("val_split", cfg.dataset.val_split)):
        if split is not None and split not in manifest.splits:
            hint = "; set dataset.val_split=null to train without validation" if key == "val_split" else ""
            raise ConfigError(
                f"dataset.{key}: {dataset} has no split {split!r} (it has {sorted(manifest.splits)}){hint}"
            )


def plan_teachers(cfg: RunConfig, manifest: Manifest, dataset: str, device: str) -> TeacherPlan:
    check_splits(cfg, manifest, dataset)
    specs: dict[str, TeacherSpec] = {}
    offline: list[str] = []
    online: dict[str, Teacher] = {}
    for key, teacher in cfg.teachers.items():
        if teacher.online:
            model = load_teacher(teacher.name, teacher.source, teacher.weights, device=device)
            online[teacher.name] = model
            specs[teacher.name] = model.spec
            continue
        splits = [cfg.dataset.train_split] + ([cfg.dataset.val_split] if cfg.dataset.val_split else [])
        records = [manifest.teacher(teacher.name, split, f"{dataset}/manifest.json") for split in splits]
        _check_record(key, teacher, records[0], dataset)
        specs[teacher.name] = records[0].target_spec
        offline.append(teacher.name)
    return TeacherPlan(specs=specs, offline=offline, online=online)


def student_config(cfg: RunConfig, specs: dict[str, TeacherSpec], image_size: int) -> StudentConfig:
    """The student the run trains: ``model.size``'s preset with the other ``model.*`` keys on top."""
    model = dict(cfg.model)
    try:
        return StudentConfig.from_preset(model.pop("size", None), dict(specs), image_size=image_size, **model)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"model: {err}") from err


def config_differences(a: StudentConfig, b: StudentConfig) -> list[str]:
    return [
        f.name
        for f in fields(StudentConfig)
        if getattr(a, f.name) != getattr(b, f.name) and f.name != "pretrained"
    ]


def check_architecture(folder: Path, config: StudentConfig, what: str) -> None:
    """Refuse a student folder whose architecture (model fields, teacher specs) differs from ``config``."""
    saved = read_config(folder)
    differ = config_differences(saved, config)
    if differ:
        details = "; ".join(
            f"{name}: {what} {getattr(saved, name)!r}, config {getattr(config, name)!r}" for name in differ
        )
        raise ConfigError(
            f"{what} {folder} was trained with another student config ({details}); "
            "use the same model=/teachers= as that run, or start without it"
        )


def load_student_weights(student: Student, folder: Path, what: str) -> None:
    """Strictly load a student folder's weights into ``student``, after checking the architectures match."""
    check_architecture(folder, student.config, what)
    load_state_strict(student, folder / WEIGHTS_NAME)


def build_loss_config(cfg: RunConfig) -> LossConfig:
    allowed = {f.name for f in fields(LossConfig)} - {"teacher_weights"}
    unknown = sorted(set(cfg.training.loss) - allowed)
    if unknown:
        raise ConfigError(f"training.loss.{unknown[0]}: unknown key (known: {', '.join(sorted(allowed))})")
    try:
        return LossConfig(**cfg.training.loss, teacher_weights=cfg.teacher_weights())
    except (TypeError, ValueError) as err:
        raise ConfigError(f"training.loss: {err}") from err


@dataclass
class Inputs:
    """Everything a run reads before it touches its run directory, checked up front."""

    teachers: TeacherPlan
    student: StudentConfig
    loader: LoaderPlan
    loss: LossConfig
    offline_stats: dict[str, FeatureStats]


def prepare_inputs(cfg: RunConfig, ctx: DistContext) -> Inputs:
    """Open the dataset, teachers, stats and loss config; any error here leaves no run dir behind."""
    dataset = dataset_dir(cfg)
    manifest = load_manifest(dataset)
    teachers = plan_teachers(cfg, manifest, str(dataset), str(ctx.device))
    student = student_config(cfg, teachers.specs, manifest.canonical_size)
    if cfg.init_from:
        check_architecture(Path(cfg.init_from), student, "init_from")
    loader = LoaderPlan(cfg, teachers.offline, ctx)
    loss = build_loss_config(cfg)
    if cfg.training.warmup_steps >= cfg.training.steps:
        log.warning(
            "training.warmup_steps=%d >= training.steps=%d: the lr never reaches training.lr=%g",
            cfg.training.warmup_steps,
            cfg.training.steps,
            cfg.training.lr,
        )
    return Inputs(teachers, student, loader, loss, loader.offline_stats(teachers.specs))
