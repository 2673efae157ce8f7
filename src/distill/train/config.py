"""The trainer's typed view of the resolved Hydra config (``distill/configs``).

Everything the loop reads is a field here; ``load_run_config`` converts the composed
``DictConfig`` and fails with the dotted key of the first bad or missing value.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Literal

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue

from distill.models.config import StudentConfig
from distill.teachers.precision import TeacherPrecision
from distill.train.adapter import AdapterConfig
from distill.train.typed import ConfigError, build, require_non_negative, require_positive

Precision = Literal["auto", "bf16", "fp32"]


@dataclass(frozen=True)
class TeacherConfig:
    """One entry of a teacher set (``configs/teachers/*.yaml``)."""

    name: str  # registry name; also the feature folder in the dataset
    source: Literal["tiny", "hub"]
    weights: (
        str | None
    )  # hub id, local dir or checkpoint file; None: the registry default (hub) / none (tiny)
    weight: float  # loss weight of this teacher's terms
    online: bool  # run the teacher live on each batch instead of reading feature shards


@dataclass(frozen=True)
class TrainingConfig:
    steps: int
    batch_size: int
    grad_accum: int
    lr: float
    min_lr_ratio: float
    warmup_steps: int
    weight_decay: float
    no_decay_names: tuple[str, ...]
    betas: tuple[float, float]
    grad_clip: float
    precision: Precision
    teacher_precision: TeacherPrecision  # online teachers (distill.teachers.precision)
    compile: bool
    compile_backend: str  # torch.compile's backend: inductor (fused kernels), or e.g. aot_eager to debug
    ema_decay: float | None
    val_every: int
    checkpoint_every: int
    keep_last: int
    online_stats_steps: int
    calibration_batches: int
    loss: dict[str, Any]  # distill.losses.LossConfig fields
    val_at_start: bool = False  # also validate before the first step (preset=align: alignment before/after)

    def __post_init__(self) -> None:
        for key in (
            "steps",
            "batch_size",
            "grad_accum",
            "checkpoint_every",
            "online_stats_steps",
            "calibration_batches",
        ):
            require_positive(f"training.{key}", getattr(self, key))
        require_positive("training.lr", self.lr)
        for key in ("warmup_steps", "weight_decay", "grad_clip", "val_every", "keep_last", "min_lr_ratio"):
            require_non_negative(f"training.{key}", getattr(self, key))
        if self.min_lr_ratio > 1:
            raise ConfigError(f"training.min_lr_ratio: must be in [0, 1], got {self.min_lr_ratio}")
        if self.ema_decay is not None and not 0 < self.ema_decay < 1:
            raise ConfigError(f"training.ema_decay: must be in (0, 1) or null, got {self.ema_decay}")


@dataclass(frozen=True)
class WandbConfig:
    mode: Literal["online", "offline", "disabled"] | None
    project: str
    entity: str | None
    tags: tuple[str, ...]


@dataclass(frozen=True)
class LoggingConfig:
    log_every: int
    wandb: WandbConfig

    def __post_init__(self) -> None:
        require_positive("logging.log_every", self.log_every)


@dataclass(frozen=True)
class DatasetConfig:
    root: str
    name: str
    train_split: str
    val_split: str | None
    stats_dir: str | None
    num_streams: int
    shuffle_buffer: int
    max_buffer_gb: float | None  # per rank: bound on the decoded samples the shuffle buffers hold
    num_workers: int
    val_batch_size: int | None
    device_prefetch: int  # on GPU: batches made ahead on a background thread, at most (0: when asked for)

    def __post_init__(self) -> None:
        require_non_negative("dataset.shuffle_buffer", self.shuffle_buffer)
        require_non_negative("dataset.device_prefetch", self.device_prefetch)
        if self.max_buffer_gb is not None:
            require_positive("dataset.max_buffer_gb", self.max_buffer_gb)


@dataclass(frozen=True)
class RunConfig:
    """The whole run, as the trainer reads it."""

    run_name: str | None
    output_dir: str
    resume: str | None  # None | "auto" | a checkpoint directory
    init_from: str | None  # a student folder to start from (finetune, preset=align)
    seed: int
    device: Literal["auto", "cpu", "cuda"]
    teacher_source: Literal["tiny", "hub"]
    dataset: DatasetConfig
    model: dict[str, Any]  # StudentConfig fields other than teachers and image_size
    teachers: dict[str, TeacherConfig]
    training: TrainingConfig
    logging: LoggingConfig
    adapter: AdapterConfig | None = None  # LoRA on a frozen init_from student or teacher copy (preset=align)

    def __post_init__(self) -> None:
        if self.adapter is not None:
            self._check_adapter(self.adapter)
        if self.adapter is not None and self.training.ema_decay is not None:
            raise ConfigError("training.ema_decay: adapters train without EMA; set training.ema_decay=null")
        if not self.teachers:
            raise ConfigError("teachers: the teacher set is empty; pick one with teachers=all5|cdm|dinov2")
        seen: dict[str, str] = {}
        for key, teacher in self.teachers.items():
            if teacher.name in seen:
                raise ConfigError(
                    f"teachers.{key}.name: teacher {teacher.name!r} is also listed as teachers.{seen[teacher.name]}"
                )
            seen[teacher.name] = key
            if not math.isfinite(teacher.weight) or teacher.weight < 0:
                raise ConfigError(
                    f"teachers.{key}.weight: must be a finite number >= 0, got {teacher.weight}"
                )
            if teacher.source == "tiny" and teacher.weights is not None:
                raise ConfigError(
                    f"teachers.{key}.weights: source=tiny builds random weights; drop weights or use source=hub"
                )
        allowed = {f.name for f in dataclasses.fields(StudentConfig)} - {"teachers", "image_size"}
        unknown = sorted(set(self.model) - allowed)
        if unknown:
            raise ConfigError(f"model.{unknown[0]}: unknown key (known: {', '.join(sorted(allowed))})")

    def _check_adapter(self, adapter: AdapterConfig) -> None:
        """The student path adapts init_from; the teacher path adapts a copy of the run's one stored teacher."""
        if adapter.encoder == "student" and not self.init_from:
            raise ConfigError(
                "adapter: LoRA adapts a trained student; set init_from=<student folder> "
                "(or adapter.encoder=teacher to adapt a copy of the teacher)"
            )
        if adapter.encoder == "teacher":
            if self.init_from:
                raise ConfigError(
                    "init_from: adapter.encoder=teacher adapts a copy of the teacher, not a student; "
                    "set init_from=null"
                )
            if len(self.teachers) != 1 or any(t.online for t in self.teachers.values()):
                raise ConfigError(
                    f"teachers: adapter.encoder=teacher aligns one teacher to its own stored features of the "
                    f"target images; pick one precomputed teacher (teachers=dinov2), not {sorted(self.teachers)}"
                    + (" with online=true" if any(t.online for t in self.teachers.values()) else "")
                )

    def teacher_weights(self) -> dict[str, float]:
        return {t.name: t.weight for t in self.teachers.values()}


def load_run_config(cfg: DictConfig) -> RunConfig:
    """Resolve interpolations, refuse missing values, and convert to :class:`RunConfig`."""
    try:
        data = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    except MissingMandatoryValue as err:
        key = err.full_key or "?"
        raise ConfigError(
            f"{key}: missing required value; set it on the command line, e.g. {key}=..."
        ) from err
    return build(RunConfig, data, "")
