"""The training loop: one optimiser step = ``grad_accum`` micro-batches on every rank.

The loop's position is fully described by the optimiser step: the loader restarts at global
batch ``step * grad_accum``, the schedule is a function of the step, and model, optimiser, EMA
and every rank's RNG come from the checkpoint. So a resumed run repeats the uninterrupted one.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, NoReturn

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from distill import rng
from distill.checkpoints import Checkpoint, TrainerState, read_checkpoint, write_checkpoint
from distill.data.dataset import Batch
from distill.distributed import (
    DistContext,
    all_gather_object,
    all_reduce_sum,
    barrier,
    init_distributed,
    shutdown,
)
from distill.features import TeacherOutput
from distill.losses import LossBreakdown, LossConfig, PatchTerms, distillation_loss, patch_terms
from distill.models import Student, StudentConfig, read_stats
from distill.models.quantize import code_histogram, usage_metrics
from distill.optim import WarmupCosine, build_optimizer, load_optimizer_state
from distill.teachers import load_teacher
from distill.train.adapter import ADAPTER_DIR, LoraAdapter
from distill.train.calibrate import image_moments, pixel_scale, recalibrate
from distill.train.config import RunConfig
from distill.train.ema import Ema
from distill.train.metrics import MetricsSink, WandbSettings
from distill.train.online import OnlineTargets, resolve_online_stats
from distill.train.precision import AutocastFactory, autocast_factory
from distill.train.reach import freeze_unreachable
from distill.train.rundir import RunPlan, plan_run
from distill.train.setup import Inputs, load_student_weights, prepare_inputs
from distill.train.teacher_source import TeacherEncoder, TeacherEncoderConfig, read_teacher_stats
from distill.train.validate import evaluate

log = logging.getLogger(__name__)

FINAL_STUDENT = "student"
FINAL_EMA = "student_ema"


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or infinite; the message names the step and the teachers responsible."""


def _raise_nonfinite_loss(breakdown: LossBreakdown, step: int, rank: int) -> NoReturn:
    culprits = breakdown.nonfinite()
    teachers = sorted({name.split("/")[0] for name in culprits})
    values = ", ".join(f"{name}={float(breakdown.terms[name])}" for name in culprits)
    who = (
        f"teacher(s) {', '.join(teachers)} ({values})"
        if culprits
        else "no single term (their sum overflowed)"
    )
    raise NonFiniteLossError(
        f"non-finite loss at step {step} on rank {rank}: {who}; check those teachers' feature shards and "
        "stats files (a zero or NaN std gives infinite targets), or lower training.lr"
    )


class NonFiniteGradientError(FloatingPointError):
    """A gradient became NaN or infinite while the loss was finite; raised before the optimiser steps."""


def _describe(names: list[str], limit: int = 8) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def check_step(
    model: nn.Module, losses: Sequence[LossBreakdown], step: int, rank: int, max_norm: float
) -> float:
    """After the backward passes of one optimiser step: every micro-batch's loss finite, then the global
    gradient norm (before clipping), clipped to ``max_norm`` when it is > 0; returns the norm.

    A non-finite loss or norm stops the run *before* the optimiser steps (so no NaN reaches the weights,
    the EMA or a checkpoint), naming the step and the teachers or every parameter responsible. Both are
    read back from the device together, once per step: a read-back after the forward pass as well kept
    the host from launching the backward pass while the GPU still ran the forward (on the step that fails,
    up to ``grad_accum`` forward and backward passes are wasted). Under DDP the gradients are averaged
    first, so a NaN or infinite loss on one rank normally stops every rank at the same step (its own with
    the loss's message, the others with the gradients').
    """
    loss_finite = torch.stack([torch.isfinite(loss.total.detach()) for loss in losses]).all()
    named = [(name, p.grad) for name, p in model.named_parameters() if p.grad is not None]
    grads = [g for _, g in named]
    norms = torch._foreach_norm(grads, 2.0) if grads else []
    total = (
        torch.linalg.vector_norm(torch.stack([n.float() for n in norms]), 2.0)
        if norms
        else torch.zeros((), device=loss_finite.device)
    )
    loss_ok, norm = torch.stack([loss_finite.to(total.device, torch.float32), total]).tolist()
    if not loss_ok:
        _raise_nonfinite_loss(
            next(loss for loss in losses if not bool(torch.isfinite(loss.total))), step, rank
        )
    if not math.isfinite(norm):
        finite = torch.isfinite(torch.stack([n.float() for n in norms])).tolist()
        culprits = [name for (name, _), ok in zip(named, finite, strict=True) if not ok]
        raise NonFiniteGradientError(
            f"non-finite gradient at step {step} on rank {rank} (the loss was finite): "
            f"{len(culprits)} parameter(s) would have gone non-finite: {_describe(culprits)}; the weights "
            "were not updated and no checkpoint was written. Under DDP, first look for a non-finite loss in "
            "the other ranks' logs (it makes every rank's averaged gradients non-finite); else lower "
            "training.lr, keep training.grad_clip > 0 (it cannot clip an infinite norm), use precision=fp32 "
            "to rule out bf16 overflow, or resume from the last checkpoint"
        )
    if max_norm > 0 and grads:
        coef = (max_norm / (total + 1e-6)).clamp(max=1.0)
        torch._foreach_mul_(grads, coef.to(grads[0].device))
    return norm


@dataclass
class _Window:
    """Training metrics summed since the last metrics record (on this rank)."""

    sums: dict[str, torch.Tensor] = field(default_factory=dict)
    micro_batches: int = 0
    steps: int = 0
    seconds: float = 0.0
    codes: torch.Tensor | None = None  # histogram of the summary quantiser's codes [groups, vocabulary]

    def add(self, breakdown: LossBreakdown, codes: torch.Tensor | None) -> None:
        for name, value in {"loss": breakdown.total.detach(), **breakdown.terms}.items():
            self.sums[name] = self.sums[name] + value.float() if name in self.sums else value.float()
        if codes is not None:
            self.codes = codes if self.codes is None else self.codes + codes
        self.micro_batches += 1


class Trainer:
    """Owns the student, optimiser, data stream and outputs of one run."""

    def __init__(
        self, cfg: RunConfig, resolved: dict[str, Any], ctx: DistContext, plan: RunPlan, inputs: Inputs
    ) -> None:
        self.cfg, self.ctx, self.plan = cfg, ctx, plan
        self.run_dir = plan.run_dir
        training = cfg.training
        teachers = inputs.teachers
        self.loader = inputs.loader
        self.loss_cfg: LossConfig = inputs.loss
        self.autocast: AutocastFactory = autocast_factory(training.precision, ctx.device)

        stats = dict(inputs.offline_stats)
        self.online: OnlineTargets | None = None
        if teachers.online:
            first = self.loader.first_images(training.online_stats_steps * training.grad_accum)
            online_stats = resolve_online_stats(
                teachers.online,
                self.run_dir,
                self.loader.stats_dir,
                first,
                ctx,
                inputs.online_provenance,
                inputs.fixed_stats,
                precision=training.teacher_precision,
            )
            stats |= online_stats
            self.online = OnlineTargets(teachers.online, online_stats, training.teacher_precision)
        self.stats = stats

        rng.seed_everything(cfg.seed)  # the same initial weights on every rank
        starting_from = plan.resume_from or (Path(cfg.init_from) if cfg.init_from else None)
        self.student: Student | TeacherEncoder
        self.config: StudentConfig | TeacherEncoderConfig
        if cfg.adapter is not None and cfg.adapter.encoder == "teacher":
            # the source encoder is a copy of the teacher whose stored features are the targets
            (teacher,) = cfg.teachers.values()
            self.student = TeacherEncoder(
                load_teacher(teacher.name, teacher.source, teacher.weights, device="cpu"),
                inputs.student.image_size,
            )
            log.info(
                "source encoder: a copy of teacher %s (%s)", teacher.name, teacher.weights or teacher.source
            )
        else:
            self.student = Student(inputs.student, load_pretrained=starting_from is None)
        self.config = self.student.config
        # adapters resume on top of the frozen init student: their checkpoints hold only what trains
        if cfg.init_from and (plan.resume_from is None or cfg.adapter is not None):
            assert isinstance(self.student, Student)  # RunConfig refuses init_from with a teacher encoder
            load_student_weights(self.student, Path(cfg.init_from), "init_from")
            log.info("initialised the student from %s", cfg.init_from)
        self.adapter = LoraAdapter(self.student, cfg.adapter) if cfg.adapter is not None else None
        self.student.set_stats(stats)
        self.student.to(ctx.device)
        moments = image_moments(self._calibration_images(), ctx)
        self.loss_cfg = replace(self.loss_cfg, pixel_scale=pixel_scale(moments))
        if starting_from is None and self.student.pixel_head is not None:
            self.student.pixel_head.set_canvas(moments.mean_image)
        self.ema: Ema[Student] | None = None
        if training.ema_decay:
            assert isinstance(self.student, Student)  # RunConfig refuses EMA with adapters
            self.ema = Ema(self.student, training.ema_decay)
        self.optimizer = build_optimizer(
            self.student,
            lr=training.lr,
            weight_decay=training.weight_decay,
            betas=training.betas,
            no_decay_names=training.no_decay_names,
            fused=ctx.device.type == "cuda",
        )
        self.schedule = WarmupCosine(
            training.lr, training.warmup_steps, training.steps, training.min_lr_ratio
        )
        # after the optimiser, so its parameter groups (and checkpoints) do not depend on the weights
        self.frozen = freeze_unreachable(self.student, self.loss_cfg)
        if self.adapter is not None:
            log.info(
                "frozen %s with LoRA adapters; training %s",
                self.adapter.config.encoder,
                _summarise(self.adapter.trainable()),
            )
        if self.frozen:
            log.info(
                "%d parameter tensor(s) get no gradient with these loss weights and are frozen: %s",
                len(self.frozen),
                _summarise(self.frozen),
            )
        self.step = 0
        self._calibrated_at: int | None = None  # the step whose weights z batch norm's statistics describe
        if plan.resume_from is not None:
            self._resume(read_checkpoint(plan.resume_from))
        else:
            rng.seed_everything(cfg.seed + 1 + ctx.rank)  # distinct per-rank streams from here on

        self.model: nn.Module = self.student
        if ctx.distributed:
            # every parameter left trainable gets a gradient on every step (reach.py), so DDP needs
            # no search for unused ones
            self.model = DistributedDataParallel(
                self.student,
                device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None,
                find_unused_parameters=False,
            )
        self.patch_loss: PatchTerms = patch_terms
        if training.compile:
            backend = training.compile_backend
            self.model = torch.compile(self.model, backend=backend)  # type: ignore[assignment]
            # fuses the loss's passes over the teachers' grids; one static graph per grid shape (a few
            # teachers, one batch size) rather than kernels made dynamic in h, w and C after the second
            self.patch_loss = torch.compile(patch_terms, backend=backend, dynamic=False)
        self.sink = MetricsSink(
            self.run_dir,
            enabled=ctx.is_main,
            wandb_settings=WandbSettings(
                cfg.logging.wandb.mode,
                cfg.logging.wandb.project,
                cfg.logging.wandb.entity,
                cfg.logging.wandb.tags,
            ),
            config=dict(resolved, run_name=plan.name),
            run_name=plan.name,
            total_steps=training.steps,
            start_step=self.step,
        )

    # ----------------------------------------------------------------- setup helpers
    def _resume(self, checkpoint: Checkpoint) -> None:
        state = checkpoint.state
        world = self.ctx.world_size
        batch = self.cfg.training.batch_size
        if (
            state.batch_size * state.world_size != batch * world
            or state.grad_accum != self.cfg.training.grad_accum
        ):
            raise ValueError(
                f"{checkpoint.path} was trained with global batch {state.global_batch} x {state.grad_accum} accumulation "
                f"({state.world_size} ranks x {state.batch_size}); this run has {world} x {batch} x "
                f"{self.cfg.training.grad_accum}. Resume with the same global batch and training.grad_accum"
            )
        if self.adapter is not None:
            self.adapter.load(checkpoint.path / ADAPTER_DIR)
        else:
            assert isinstance(self.student, Student)  # a teacher encoder always has adapters
            load_student_weights(self.student, checkpoint.student_dir, "checkpoint")
        if isinstance(self.config, TeacherEncoderConfig):
            saved = read_teacher_stats(checkpoint.student_dir, self.config)
        else:
            saved = read_stats(checkpoint.student_dir, self.config)
        changed = sorted(
            name
            for name, stats in self.stats.items()
            if any(
                not torch.equal(a, b)
                for a, b in zip(stats.tensors().values(), saved[name].tensors().values(), strict=True)
            )
        )
        if changed:
            raise ValueError(
                f"the stats of {changed} differ from those {checkpoint.path} was trained with "
                f"({checkpoint.student_dir / 'stats'}): resuming would move every target of those teachers. "
                "Restore the stats files the run started with (a copy is in that folder), or start a new run"
            )
        if self.ema is not None:
            if checkpoint.ema_dir is None:
                raise ValueError(f"training.ema_decay is set but {checkpoint.path} has no ema/ folder")
            load_student_weights(self.ema.module, checkpoint.ema_dir, "checkpoint EMA")
        load_optimizer_state(self.optimizer, checkpoint.optimizer)
        if asdict(self.schedule) != state.schedule:
            log.warning(
                "the lr schedule differs from the checkpoint's %s; the run will not repeat it", state.schedule
            )
        self.step = state.step
        if self.ctx.rank < len(checkpoint.rng):
            rng.restore(checkpoint.rng[self.ctx.rank])
        else:
            log.warning(
                "checkpoint has RNG states for %d ranks; rank %d is seeded afresh",
                len(checkpoint.rng),
                self.ctx.rank,
            )
            rng.seed_everything(self.cfg.seed + 1 + self.ctx.rank + state.step)
        if state.world_size != world:
            log.warning(
                "resuming %d-rank checkpoint on %d ranks: same data, not a bit-identical trajectory",
                state.world_size,
                world,
            )
        log.info("resumed from %s at step %d", checkpoint.path, self.step)

    # ----------------------------------------------------------------- the loop
    def targets(self, batch: Batch, images: torch.Tensor) -> dict[str, TeacherOutput]:
        targets = {name: out.to(self.ctx.device) for name, out in batch.targets.items()}
        if self.online is not None:
            targets |= self.online(images)
        return targets

    def _micro_step(self, batch: Batch, sync: bool) -> tuple[LossBreakdown, torch.Tensor | None]:
        """Forward and backward of one micro-batch: its loss terms and histogram of codes (with a quantiser)."""
        images = batch.images.to(self.ctx.device, non_blocking=True)
        targets = self.targets(batch, images)
        no_sync = getattr(self.model, "no_sync", None)
        context = no_sync() if (no_sync is not None and not sync) else contextlib.nullcontext()
        with context:
            with self.autocast():
                output = self.model(images)
            breakdown = distillation_loss(
                output, targets, images, self.loss_cfg.at_step(self.step), self.patch_loss
            )
            (breakdown.total / self.cfg.training.grad_accum).backward()
        quantizer = self.student.quantizer
        if output.codes is None or quantizer is None:
            return breakdown, None
        summary = output.codes.detach()[:, : quantizer.groups]  # keypoint cells are positions, not a codebook
        return breakdown, code_histogram(summary, quantizer.vocabulary)

    def _optimizer_step(self, stream: Iterator[Batch], window: _Window) -> tuple[float, float | None]:
        """``grad_accum`` micro-batches, clip, step, EMA; returns (lr used, grad norm before clipping)."""
        training = self.cfg.training
        lr = self.schedule.apply(self.optimizer, self.step)
        losses = []
        for micro in range(training.grad_accum):
            breakdown, codes = self._micro_step(next(stream), sync=micro == training.grad_accum - 1)
            window.add(breakdown, codes)
            losses.append(breakdown)
        norm = check_step(self.student, losses, self.step + 1, self.ctx.rank, training.grad_clip)
        grad_norm = norm if training.grad_clip > 0 else None
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        if self.ema is not None:
            self.ema.update(self.student, self.step)
        return lr, grad_norm

    def fit(self) -> Path:
        training = self.cfg.training
        window = _Window()
        # a frozen student (adapters) runs in eval mode: z batch norm keeps its statistics, no buffer moves
        self.model.train(self.adapter is None)
        if training.val_at_start and self.step == 0:
            self.validate()
        # closed when training ends or fails: stops the loader's prefetch thread and workers at once
        with contextlib.closing(self.loader.train(start_batch=self.step * training.grad_accum)) as batches:
            while self.step < training.steps:
                started = time.perf_counter()
                lr, grad_norm = self._optimizer_step(batches, window)
                window.steps += 1
                window.seconds += time.perf_counter() - started
                last = self.step == training.steps
                loss_now = None
                if self.step % self.cfg.logging.log_every == 0 or last:
                    record = self._train_record(window, lr, grad_norm)
                    loss_now = record["loss"]
                    self.sink.log(record)
                    window = _Window()
                self.sink.advance(1, loss_now, lr)
                if (training.val_every and self.step % training.val_every == 0) or last:
                    self.validate()
                if self.step % training.checkpoint_every == 0 or last:
                    self.save_checkpoint()
        self.export()
        self.sink.close()
        return self.run_dir

    def _train_record(self, window: _Window, lr: float, grad_norm: float | None) -> dict[str, Any]:
        """Means over the window's micro-batches and all ranks, plus lr and global samples/s."""
        names = sorted(window.sums)
        sums = torch.stack([window.sums[n].double().cpu() for n in names])
        means = all_reduce_sum(self.ctx, sums) / (window.micro_batches * self.ctx.world_size)
        training = self.cfg.training
        samples = window.steps * training.grad_accum * training.batch_size * self.ctx.world_size
        record: dict[str, Any] = {
            "kind": "train",
            "step": self.step,
            "lr": lr,
            "samples_per_s": samples / max(window.seconds, 1e-9),
        }
        record |= {name: float(means[i]) for i, name in enumerate(names)}
        if grad_norm is not None:
            record["grad_norm"] = grad_norm
        if window.codes is not None:
            record |= usage_metrics(all_reduce_sum(self.ctx, window.codes))
        return record

    def _calibration_images(self) -> Iterator[torch.Tensor]:
        training = self.cfg.training  # whole optimiser steps, so accumulation sees the same images
        return self.loader.first_images(training.calibration_batches * training.grad_accum)

    def _recalibrate(self) -> None:
        """z batch-norm statistics for the weights about to be evaluated or saved (live and EMA).

        Validation, checkpoint and export often fall on the same step: the weights have not moved, so
        the statistics are computed once per step. A frozen student with adapters keeps its own: its
        z norm is part of what alignment must match.
        """
        if self._calibrated_at == self.step or self.adapter is not None:
            return
        assert isinstance(self.student, Student)  # a teacher encoder always has adapters
        models = [self.student] + ([self.ema.module] if self.ema is not None else [])
        recalibrate(models, self._calibration_images(), self.ctx.device)
        self._calibrated_at = self.step

    def validate(self) -> None:
        if self.loader.val_split is None:
            return
        self._recalibrate()
        # the bare student, not the DDP wrapper: ranks may hold different numbers of val batches,
        # so no forward pass here may take part in a collective
        models: dict[str, nn.Module] = {"": self.student}
        if self.ema is not None:
            models["ema/"] = self.ema.module
        record: dict[str, Any] = {"kind": "val", "step": self.step}
        for prefix, model in models.items():
            metrics = evaluate(
                model, self.config, self.loader.val(), self.targets, self.loss_cfg, self.ctx, self.autocast
            )
            record |= {f"{prefix}{k}": v for k, v in metrics.items()}
        if self.ctx.is_main:
            summary = ", ".join(
                f"{k}={v:.4f}" for k, v in record.items() if k.endswith(("loss", "cos", "psnr"))
            )
            log.info("validation at step %d: %s", self.step, summary)
        self.sink.log(record)

    def _state(self) -> TrainerState:
        return TrainerState(
            step=self.step,
            loader_position=self.step * self.cfg.training.grad_accum,
            world_size=self.ctx.world_size,
            batch_size=self.cfg.training.batch_size,
            grad_accum=self.cfg.training.grad_accum,
            schedule=asdict(self.schedule),
        )

    def _save_models(self, folder: Path) -> None:
        self._save_student(folder / "student")
        if self.ema is not None:
            self.ema.module.save_pretrained(folder / "ema", self.stats)

    def _save_student(self, folder: Path) -> None:
        """The student folder; with adapters the merged student, and the adapter folder beside it."""
        if self.adapter is None:
            self.student.save_pretrained(folder, self.stats)
            return
        self.adapter.merged().save_pretrained(folder, self.stats)
        self.adapter.save(folder.parent / ADAPTER_DIR)

    def save_checkpoint(self) -> None:
        self._recalibrate()
        states = all_gather_object(self.ctx, rng.capture())
        if self.ctx.is_main:
            path = write_checkpoint(
                self.run_dir,
                self._state(),
                self.optimizer.state_dict(),
                states,
                self._save_models,
                self.cfg.training.keep_last,
            )
            log.info("checkpoint %s", path)
        barrier(self.ctx)

    def export(self) -> None:
        """The final weights as plain student folders: ``<run_dir>/student`` (and ``student_ema``)."""
        self._recalibrate()
        if self.ctx.is_main:
            self._save_student(self.run_dir / FINAL_STUDENT)
            if self.ema is not None:
                self.ema.module.save_pretrained(self.run_dir / FINAL_EMA, self.stats)
        barrier(self.ctx)


def _summarise(names: list[str]) -> str:
    """``heads.mae.spatial.out.weight, ...`` -> ``heads.mae.spatial (4), ...``: module prefixes with counts."""
    counts: dict[str, int] = {}
    for name in names:
        prefix = ".".join(name.split(".")[:3])
        counts[prefix] = counts.get(prefix, 0) + 1
    return ", ".join(f"{prefix} ({n})" for prefix, n in counts.items())


def _configure_logging(ctx: DistContext) -> None:
    logging.getLogger().setLevel(logging.INFO if ctx.is_main else logging.WARNING)


def train(cfg: RunConfig, resolved: dict[str, Any]) -> Path:
    """Run (or resume) one training run; returns the run directory."""
    ctx = init_distributed(cfg.device)
    try:
        _configure_logging(ctx)
        inputs = prepare_inputs(cfg, ctx)
        plan = plan_run(cfg, ctx, resolved)
        log.info("run dir %s (%d rank(s), device %s)", plan.run_dir, ctx.world_size, ctx.device)
        trainer = Trainer(cfg, resolved, ctx, plan, inputs)
        return trainer.fit()
    finally:
        shutdown(ctx)
