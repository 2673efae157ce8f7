"""What a run reads before it creates its run directory, checked up front.

Precomputed teachers are described by the dataset manifest (their features are already in
shards); online teachers are loaded to run live. The student's config is checked against any
folder it starts from, so a checkpoint of another architecture fails naming the fields.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, fields
from pathlib import Path

from distill.data.dataset import load_checked_stats, stored_provenance
from distill.data.manifest import Manifest, TeacherRecord, default_stats_dir, load_manifest
from distill.distributed import DistContext
from distill.features import FeaturePrecision, TeacherSpec
from distill.losses import LossConfig
from distill.models import Student, StudentConfig, load_state_strict, read_config, read_stats
from distill.models.checkpoint import STATS_DIR, WEIGHTS_NAME, nonfinite_tensors
from distill.stats import LIVE_STORAGE, FeatureStats, StatsProvenance
from distill.teachers import Teacher, get_entry, load_teacher
from distill.teachers.precision import resolved_precision
from distill.train.config import RunConfig, TeacherConfig
from distill.train.data import LoaderPlan, dataset_dir, stats_dir_of
from distill.train.online import IDENTITY_ONLY
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


def check_online_unpaired(cfg: RunConfig, manifest: Manifest, dataset: str) -> None:
    """An online teacher sees the batch's images, the source side: a paired dataset's teachers need the target side."""
    online = [key for key, teacher in cfg.teachers.items() if teacher.online]
    if manifest.pairing and online:
        raise ConfigError(
            f"teachers.{online[0]}.online=true: {dataset}/manifest.json is a paired dataset, whose teachers must "
            f"see its target images ({manifest.teacher_images}/), but an online teacher sees the source images "
            f"the student reads; extract {', '.join(cfg.teachers[k].name for k in online)} with distill-extract "
            f"(it reads the target side) and set {', '.join(f'teachers.{k}.online=false' for k in online)}"
        )


def plan_teachers(cfg: RunConfig, manifest: Manifest, dataset: str, device: str) -> TeacherPlan:
    check_splits(cfg, manifest, dataset)
    check_online_unpaired(cfg, manifest, dataset)
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
    broken = nonfinite_tensors(student.state_dict())
    if broken:
        raise ValueError(
            f"{what} {folder / WEIGHTS_NAME} holds NaN or infinite weights ({', '.join(broken[:8])}); "
            "start from an earlier checkpoint (resume=<run>/checkpoints/step_*)"
        )


def build_loss_config(cfg: RunConfig) -> LossConfig:
    allowed = {f.name for f in fields(LossConfig)} - {"teacher_weights"}
    unknown = sorted(set(cfg.training.loss) - allowed)
    if unknown:
        raise ConfigError(f"training.loss.{unknown[0]}: unknown key (known: {', '.join(sorted(allowed))})")
    try:
        return LossConfig(**cfg.training.loss, teacher_weights=cfg.teacher_weights())
    except (TypeError, ValueError) as err:
        raise ConfigError(f"training.loss: {err}") from err


def check_something_trains(loss: LossConfig, student: StudentConfig) -> None:
    """Refuse weights that leave no loss term at all (zero weights are otherwise fine, alone or many)."""
    for name, spec in student.teachers.items():
        terms = [loss.patch_cos, loss.patch_l1] + ([loss.cls_cos] if spec.cls_channels is not None else [])
        if loss.teacher_weight(name) > 0 and any(w > 0 for w in terms):
            return
    if student.pixel_head and loss.pixel_mse > 0:
        return
    raise ConfigError(
        "training.loss / teachers.*.weight: every loss term is weighted 0, so nothing would train; "
        "give at least one teacher and one of its terms (or the pixel loss) a positive weight"
    )


@dataclass
class Inputs:
    """Everything a run reads before it touches its run directory, checked up front."""

    teachers: TeacherPlan
    student: StudentConfig
    loader: LoaderPlan
    loss: LossConfig
    offline_stats: dict[str, FeatureStats]
    # what stats of each online teacher must record: its weights, live float32 features, this dataset
    online_provenance: dict[str, StatsProvenance]
    # stats fixed before the run starts (finetuning: the init student's); online teachers included
    fixed_stats: dict[str, FeatureStats]


def teacher_weights_id(teacher: TeacherConfig) -> str | None:
    """The weights a teacher entry loads, as records name them (the registry default for hub=None)."""
    if teacher.source == "hub" and teacher.weights is None:
        return get_entry(teacher.name).default_weights
    return teacher.weights


def live_provenance(
    teacher: TeacherConfig, spec: TeacherSpec, manifest: Manifest, split: str, precision: FeaturePrecision
) -> StatsProvenance:
    """The provenance stats of an online teacher's live features on this dataset carry."""
    return StatsProvenance(
        teacher=teacher.name,
        source=teacher.source,
        weights=teacher_weights_id(teacher),
        storage=LIVE_STORAGE,
        precision=precision,
        grid=spec.grid,
        dataset=manifest.name,
        dataset_fingerprint=manifest.fingerprint(),
        split=split,
    )


def init_student_stats(
    folder: Path, student: StudentConfig, expected: dict[str, StatsProvenance]
) -> dict[str, FeatureStats]:
    """The init student's stats, to keep its normalisation space while finetuning.

    Its heads predict in the space of the stats it was trained with; normalising the new
    dataset's targets with its own stats would silently move every target (the raw-space output
    of the finetuned student at step 0 would differ from the init student's). So the finetune
    normalises with the init stats. They must come from the same teacher weights; the storage,
    precision, grid and dataset may differ (that is what finetuning on another dataset means).
    """
    stats = read_stats(folder, student)
    for name, teacher_stats in stats.items():
        where = f"init_from {folder / STATS_DIR / f'{name}.safetensors'}"
        if teacher_stats.provenance is None:
            log.warning(
                "%s records no provenance (an older checkpoint); its teacher cannot be verified", where
            )
            continue
        teacher_stats.check_provenance(
            expected[name],
            source=where,
            ignore=IDENTITY_ONLY,
            fix=f"finetune with the teacher weights the init student was trained on (teachers.*.source/weights "
            f"for {name!r}), or train from scratch",
        )
        others = teacher_stats.provenance.differences(expected[name], ignore=("split",))
        if others:
            log.info(
                "teacher %s: targets are normalised with the init student's stats (%s), not this dataset's (%s)",
                name,
                teacher_stats.provenance.describe(),
                "; ".join(others),
            )
    return stats


def resolve_offline_stats(
    cfg: RunConfig, manifest: Manifest, offline: list[str], fixed: dict[str, FeatureStats]
) -> dict[str, FeatureStats]:
    """Precomputed teachers' stats: the fixed ones (finetune), else the dataset's, checked for provenance."""
    dataset = dataset_dir(cfg)
    folder = stats_dir_of(cfg)
    out = {}
    for name in offline:
        if name in fixed:
            out[name] = fixed[name]
            continue
        record = manifest.teacher(name, cfg.dataset.train_split, dataset / "manifest.json")
        path = folder / f"{name}.safetensors"
        if not path.is_file():
            key = "dataset.stats_dir" if cfg.dataset.stats_dir else f"dataset.stats_dir (default {folder})"
            raise ConfigError(
                f"{key}: no stats for precomputed teacher {name!r} at {path}; compute them with "
                f"distill-stats {dataset} (writes {default_stats_dir(dataset)}/) or set dataset.stats_dir"
            )
        try:
            out[name] = load_checked_stats(folder, name, record, manifest, dataset)
        except ValueError as err:
            raise ConfigError(f"dataset.stats_dir: {err}") from err
    return out


def prepare_inputs(cfg: RunConfig, ctx: DistContext) -> Inputs:
    """Open the dataset, teachers, stats and loss config; any error here leaves no run dir behind."""
    dataset = dataset_dir(cfg)
    manifest = load_manifest(dataset)
    teachers = plan_teachers(cfg, manifest, str(dataset), str(ctx.device))
    student = student_config(cfg, teachers.specs, manifest.canonical_size)
    split = cfg.dataset.train_split
    by_name = {t.name: t for t in cfg.teachers.values()}
    precision = resolved_precision(cfg.training.teacher_precision, ctx.device)
    online_provenance = {
        name: live_provenance(by_name[name], teachers.specs[name], manifest, split, precision)
        for name in teachers.online
    }
    fixed: dict[str, FeatureStats] = {}
    if cfg.init_from:
        folder = Path(cfg.init_from)
        check_architecture(folder, student, "init_from")
        expected = dict(online_provenance)
        for name in teachers.offline:
            record = manifest.teacher(name, split, dataset / "manifest.json")
            expected[name] = stored_provenance(manifest, name, record, split)
        try:
            fixed = init_student_stats(folder, student, expected)
        except ValueError as err:
            raise ConfigError(f"init_from: {err}") from err
    offline_stats = resolve_offline_stats(cfg, manifest, teachers.offline, fixed)
    loader = LoaderPlan(cfg, teachers.offline, ctx, offline_stats)
    loss = build_loss_config(cfg)
    check_something_trains(loss, student)
    if cfg.training.warmup_steps >= cfg.training.steps:
        log.warning(
            "training.warmup_steps=%d >= training.steps=%d: the lr never reaches training.lr=%g",
            cfg.training.warmup_steps,
            cfg.training.steps,
            cfg.training.lr,
        )
    fixed_online = {name: fixed[name] for name in teachers.online if name in fixed}
    return Inputs(teachers, student, loader, loss, offline_stats, online_provenance, fixed_online)
