"""Silent wrong answers the trainer now refuses, each reproduced in process (one rank):

- an infinite gradient with a finite loss stops the run before the optimiser steps, naming the
  step and the parameters; no checkpoint with non-finite weights is ever written or resumed;
- a finetune keeps the init student's normalisation space (its raw-space predictions at step 0
  are the init student's);
- stats are applied only to the features they were measured on (provenance), found by default
  inside the dataset folder;
- a damaged init or resume checkpoint is a one-line error naming the file.
"""

from __future__ import annotations

import multiprocessing
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf
from safetensors.torch import load_file
from train_helpers import ReferenceRun, TinyData, data_overrides, run_train

from distill.checkpoints import latest_checkpoint
from distill.distributed import DistContext
from distill.models import Student
from distill.stats import LIVE_STORAGE, FeatureStats
from distill.train.config import RunConfig, load_run_config
from distill.train.rundir import plan_run
from distill.train.setup import load_student_weights, prepare_inputs
from distill.train.trainer import NonFiniteGradientError, NonFiniteLossError, Trainer, train
from distill.train.typed import ConfigError


def in_process(overrides: list[str]) -> tuple[RunConfig, dict[str, Any]]:
    with initialize_config_module(config_module="distill.configs", version_base="1.3"):
        cfg = compose(config_name="config", overrides=[*overrides, "logging.wandb.mode=disabled"])
    resolved: dict[str, Any] = OmegaConf.to_container(cfg, resolve=True)  # type: ignore[assignment]
    return load_run_config(cfg), resolved


def build_trainer(overrides: list[str]) -> Trainer:
    cfg, resolved = in_process(overrides)
    ctx = DistContext()
    inputs = prepare_inputs(cfg, ctx)
    return Trainer(cfg, resolved, ctx, plan_run(cfg, ctx, resolved), inputs)


def small_run(data: TinyData, tmp_path: Path, name: str, *extra: str) -> list[str]:
    return [
        *data_overrides(data),
        "teachers=cdm",
        "~teachers.clip",
        "training.steps=3",
        "training.batch_size=4",
        "training.checkpoint_every=1",
        "training.keep_last=0",
        "training.val_every=0",
        "training.ema_decay=0.9",
        "dataset.num_workers=0",
        f"output_dir={tmp_path}",
        f"run_name={name}",
        *extra,
    ]


# ----------------------------------------------------------------------------- non-finite gradients
def test_an_infinite_gradient_stops_the_run_before_the_step(
    tiny_data: TinyData, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """At step 2 one gradient becomes inf while the loss stays finite. Before, clipping turned it into
    NaN weights that the step-2 checkpoint saved (and resume=auto reloaded)."""
    seen: dict[str, Any] = {}
    original = Trainer._micro_step

    def poisoned(self: Trainer, batch: Any, sync: bool) -> Any:
        breakdown = original(self, batch, sync)
        seen["trainer"] = self
        if self.step + 1 == 2:  # the step being taken
            self.student.heads["mae"].spatial.out.bias.grad[0] = float("inf")
        return breakdown

    monkeypatch.setattr(Trainer, "_micro_step", poisoned)
    cfg, resolved = in_process(small_run(tiny_data, tmp_path, "inf-grad"))
    with pytest.raises(NonFiniteGradientError) as caught:
        train(cfg, resolved)
    message = str(caught.value)
    assert message.startswith("non-finite gradient at step 2 on rank 0 (the loss was finite): 1 parameter(s)")
    assert "heads.mae.spatial.out.bias" in message and "no checkpoint was written" in message
    trainer: Trainer = seen["trainer"]
    assert trainer.step == 1  # the optimiser did not step
    assert all(bool(torch.isfinite(p).all()) for p in trainer.student.parameters())
    assert trainer.ema is not None and all(
        bool(torch.isfinite(p).all()) for p in trainer.ema.module.parameters()
    )
    checkpoints = sorted(p.name for p in (tmp_path / "inf-grad" / "checkpoints").iterdir())
    assert checkpoints == ["step_00000001"]


def test_a_non_finite_loss_in_an_early_micro_batch_stops_the_step_naming_the_teacher(
    tiny_data: TinyData, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The loss is checked with the gradients, after the step's backward passes (one read-back per
    step): NaN targets in the first micro-batch of step 2 (its second is finite) still stop the run with
    the loss's message (not the gradients' it also broke), before the optimiser steps."""
    seen: dict[str, Any] = {"calls": 0}
    original = Trainer.targets

    def poisoned(self: Trainer, batch: Any, images: torch.Tensor) -> Any:
        targets = original(self, batch, images)
        seen["calls"] += 1
        seen["trainer"] = self
        if seen["calls"] == 3:  # step 2, micro-batch 1
            dinov2 = targets["dinov2"]
            targets["dinov2"] = type(dinov2)(dinov2.patch * float("nan"), dinov2.cls)
        return targets

    monkeypatch.setattr(Trainer, "targets", poisoned)
    cfg, resolved = in_process(small_run(tiny_data, tmp_path, "nan-accum", "training.grad_accum=2"))
    with pytest.raises(NonFiniteLossError) as caught:
        train(cfg, resolved)
    assert str(caught.value).startswith(
        "non-finite loss at step 2 on rank 0: teacher(s) dinov2 (dinov2/total=nan)"
    )
    trainer: Trainer = seen["trainer"]
    assert trainer.step == 1 and seen["calls"] == 4  # both micro-batches ran, then the step stopped
    assert all(bool(torch.isfinite(p).all()) for p in trainer.student.parameters())
    assert trainer.ema is not None and all(
        bool(torch.isfinite(p).all()) for p in trainer.ema.module.parameters()
    )
    checkpoints = sorted(p.name for p in (tmp_path / "nan-accum" / "checkpoints").iterdir())
    assert checkpoints == ["step_00000001"]


def test_a_failed_run_leaves_no_loader_worker_behind(
    tiny_data: TinyData, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The trainer closes its batch stream when training fails: the loader's worker process is gone
    while the error is still held (its traceback keeps the trainer's frames, and the stream, alive)."""
    original = Trainer._micro_step

    def failing(self: Trainer, batch: Any, sync: bool) -> Any:
        if self.step + 1 == 2:  # the step being taken
            raise RuntimeError("planted failure at step 2")
        return original(self, batch, sync)

    monkeypatch.setattr(Trainer, "_micro_step", failing)
    run = [o for o in small_run(tiny_data, tmp_path, "fails") if o != "dataset.num_workers=0"]
    cfg, resolved = in_process([*run, "dataset.num_workers=1"])
    before = {p.pid for p in multiprocessing.active_children()}
    with pytest.raises(RuntimeError, match="planted failure at step 2") as caught:
        train(cfg, resolved)
    assert caught.value.__traceback__ is not None
    assert {p.pid for p in multiprocessing.active_children()} - before == set()


def test_non_finite_weights_are_never_written_or_resumed(tiny_data: TinyData, tmp_path: Path) -> None:
    trainer = build_trainer(small_run(tiny_data, tmp_path, "nan-save", "training.steps=1"))
    trainer.fit()
    with torch.no_grad():
        trainer.student.heads["dinov2"].spatial.out.weight[0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"refusing to write .*heads\.dinov2\.spatial\.out\.weight"):
        trainer.save_checkpoint()
    assert [p.name for p in (tmp_path / "nan-save" / "checkpoints").iterdir()] == ["step_00000001"]
    # a checkpoint with NaN weights written by an older version is refused when resumed or finetuned from
    folder = tmp_path / "old"
    shutil.copytree(tmp_path / "nan-save" / "student", folder)
    from safetensors.torch import save_file

    tensors = load_file(str(folder / "model.safetensors"))
    tensors["to_z.proj.weight" if "to_z.proj.weight" in tensors else next(iter(tensors))][0] = float("inf")
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "distill.student"})
    with pytest.raises(ValueError, match="holds NaN or infinite weights"):
        load_student_weights(Student(trainer.config, load_pretrained=False), folder, "init_from")


# ----------------------------------------------------------------------------- finetune stats space
def test_finetune_keeps_the_init_students_normalisation_space(
    reference_run: ReferenceRun, tiny_data: TinyData, tmp_path: Path
) -> None:
    """At step 0 the finetuned student's raw-space predictions equal the init student's, and the
    domain targets are normalised with the init stats (not the domain's own)."""
    init = reference_run.run_dir / "student"
    overrides = [
        *data_overrides(tiny_data, "domain", streams=2),
        "preset=finetune",
        f"init_from={init}",
        "teachers=cdm",
        "teachers.clip.online=true",
        "training.batch_size=4",
        "dataset.num_workers=0",
        f"output_dir={tmp_path}",
        "run_name=ft0",
    ]
    trainer = build_trainer(overrides)
    before = Student.from_pretrained(init).eval()
    after = trainer.student.eval()
    images = next(trainer.loader.train(0)).images
    with torch.no_grad():
        z = before.encode(images)
        torch.testing.assert_close(after.encode(images), z, rtol=0, atol=0)
        expected, got = before.predict(z, denormalize=True), after.predict(z, denormalize=True)
    for name in ("clip", "dinov2", "mae"):
        torch.testing.assert_close(got.features[name].patch, expected.features[name].patch, rtol=0, atol=0)
        torch.testing.assert_close(got.features[name].cls, expected.features[name].cls, rtol=0, atol=0)
    assert before.stats is not None and trainer.online is not None
    for name in ("dinov2", "mae"):  # what the loader normalises the domain targets with
        assert trainer.loader.stats[name].patch_mean.equal(before.stats[name].patch_mean)
    assert trainer.online.stats["clip"].patch_std.equal(before.stats["clip"].patch_std)
    domain = FeatureStats.load(tiny_data.stats["domain"] / "dinov2.safetensors")
    assert not domain.patch_mean.equal(before.stats["dinov2"].patch_mean)


# ----------------------------------------------------------------------------- stats provenance
def test_stats_of_another_dataset_are_refused_naming_what_differs(
    tiny_data: TinyData, tmp_path: Path
) -> None:
    """Before: a stats folder that does not belong to dataset.name was applied as long as channel counts matched."""
    overrides = [*small_run(tiny_data, tmp_path, "other"), f"dataset.stats_dir={tiny_data.stats['domain']}"]
    with pytest.raises(ConfigError) as caught:
        build_trainer(overrides)
    message = str(caught.value)
    assert message.startswith(
        f"dataset.stats_dir: {tiny_data.stats['domain']}/dinov2.safetensors: stats were"
    )
    assert "dataset: stats 'domain', here 'base'" in message and "dataset_fingerprint" in message
    assert f"distill-stats {tiny_data.root / 'base'}" in message
    assert not (tmp_path / "other").exists()


def test_stats_default_to_the_dataset_folder(tiny_data: TinyData, tmp_path: Path) -> None:
    """dataset.stats_dir=null reads <root>/<name>/feature_stats (distill-stats' default output)."""
    root = tmp_path / "root"
    shutil.copytree(tiny_data.root / "base", root / "base")
    overrides = [*small_run(tiny_data, tmp_path, "default", "training.steps=1"), f"dataset.root={root}"]
    overrides = [o for o in overrides if not o.startswith("dataset.stats_dir=")]
    with pytest.raises(
        ConfigError, match=r"dataset.stats_dir \(default .*root/base/feature_stats\): no stats"
    ):
        build_trainer(overrides)
    shutil.copytree(tiny_data.stats["base"], root / "base" / "feature_stats")
    trainer = build_trainer(overrides)
    assert trainer.loader.stats_dir == root / "base" / "feature_stats"


def test_an_online_teacher_never_takes_stats_of_stored_features(tiny_data: TinyData, tmp_path: Path) -> None:
    """dinov2's stats in the stats folder were measured on its stored (fp16, 7x7) features: an online
    dinov2 estimates its own live stats instead. Stats of the same name but other weights are an error."""
    stats_dir = tmp_path / "stats"
    shutil.copytree(tiny_data.stats["base"], stats_dir)
    overrides = [*small_run(tiny_data, tmp_path, "online"), "teachers.dinov2.online=true"]
    overrides += [f"dataset.stats_dir={stats_dir}", "training.online_stats_steps=1"]
    trainer = build_trainer(overrides)
    used = trainer.stats["dinov2"]
    stored = FeatureStats.load(stats_dir / "dinov2.safetensors")
    assert used.provenance is not None and used.provenance.storage == LIVE_STORAGE
    assert not used.patch_mean.equal(stored.patch_mean)
    assert FeatureStats.load(tmp_path / "online" / "feature_stats" / "dinov2.safetensors").patch_mean.equal(
        used.patch_mean
    )
    other = stored.with_provenance(
        stored.provenance.__class__(
            **{**stored.provenance.__dict__, "source": "hub", "weights": "someone/else"}
        )
    )
    other.save(stats_dir / "dinov2.safetensors")
    with pytest.raises(ValueError, match=r"source: stats 'hub', here 'tiny'; weights: stats 'someone/else'"):
        build_trainer([*overrides[:-1], "run_name=online2", "training.online_stats_steps=1"])


# ----------------------------------------------------------------------------- damaged files
def _damage(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


@pytest.fixture(scope="module")
def one_step_run(tiny_data: TinyData, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    output = tmp_path_factory.mktemp("damaged")
    base = small_run(tiny_data, output, "first", "training.steps=1")
    train(*in_process(base))
    return output / "first", base


@pytest.mark.parametrize(
    "what", ["init_weights", "init_stats", "resume_optimizer", "resume_rng", "dataset_stats"]
)
def test_a_damaged_checkpoint_or_stats_file_is_an_error_naming_it(
    one_step_run: tuple[Path, list[str]], tiny_data: TinyData, tmp_path: Path, what: str
) -> None:
    first, base = one_step_run
    run = tmp_path / "copy"
    shutil.copytree(first, run)
    base = [*base[:-2], f"output_dir={tmp_path}", "run_name=copy"]
    if what.startswith("init"):
        damaged = (
            run / "student" / ("model.safetensors" if what == "init_weights" else "stats/mae.safetensors")
        )
        overrides = [*base[:-1], "run_name=second", f"init_from={run / 'student'}"]
    elif what.startswith("resume"):
        checkpoint = latest_checkpoint(run)
        assert checkpoint is not None
        damaged = checkpoint / ("optimizer.pt" if what == "resume_optimizer" else "rng.safetensors")
        overrides = [*base, "resume=auto", "training.steps=2"]
    else:
        stats_dir = tmp_path / "stats"
        shutil.copytree(tiny_data.stats["base"], stats_dir)
        damaged = stats_dir / "mae.safetensors"
        overrides = [*base[:-1], "run_name=third", f"dataset.stats_dir={stats_dir}"]
    _damage(damaged)
    with pytest.raises(ValueError) as caught:  # UnreadableFileError, or the ConfigError that wraps it
        train(*in_process(overrides))
    assert str(damaged) in str(caught.value) and "truncated" in str(caught.value), caught.value
    if what == "init_weights":  # the command line prints that one line, no traceback
        result = run_train(overrides)
        assert result.returncode == 1, result.stderr[-3000:]
        assert "Traceback" not in result.stderr, result.stderr[-3000:]
        last = result.stderr.strip().splitlines()[-1]
        assert last.startswith("error: ") and str(damaged) in last and "truncated" in last, last


def test_shipped_stats_are_matched_by_provenance_never_by_name(tmp_path: Path) -> None:
    """feature_stats/ at the top of the repository (see its README): a file is used for an online
    teacher when teacher, source, weights, live storage, precision and grid match, whatever its name or
    dataset."""
    from distill.stats import StatsProvenance
    from distill.teachers import load_teacher
    from distill.train.online import find_shipped

    teacher = load_teacher("dinov2", "tiny", device="cpu")
    spec = teacher.spec
    want = StatsProvenance("dinov2", "tiny", None, LIVE_STORAGE, "fp32", spec.grid, "mine", "f" * 16, "train")

    def stats(count: int, **changes: Any) -> FeatureStats:
        provenance = StatsProvenance(
            **{**want.__dict__, "dataset": "imagenet", "dataset_fingerprint": "0" * 16, **changes}
        )
        cls = None if spec.cls_channels is None else torch.zeros(spec.cls_channels)
        ones = None if spec.cls_channels is None else torch.ones(spec.cls_channels)
        return FeatureStats(
            "dinov2", torch.zeros(spec.channels), torch.ones(spec.channels), cls, ones, count, provenance
        )

    stats(10, source="hub", weights="facebook/dinov2-large").save(tmp_path / "dinov2.safetensors")
    stats(20, storage="int8").save(tmp_path / "dinov2-int8.safetensors")
    stats(30, precision="bf16").save(tmp_path / "dinov2-bf16.safetensors")
    assert (
        find_shipped("dinov2", teacher, want, tmp_path) is None
    )  # right name, wrong weights / stored / bf16
    stats(5).save(tmp_path / "anything.safetensors")
    stats(7).save(tmp_path / "more.safetensors")
    found = find_shipped("dinov2", teacher, want, tmp_path)
    assert found is not None and found.count == 7  # any name; the most samples wins
    assert find_shipped("dinov2", teacher, want, tmp_path / "absent") is None
