"""The packaged Hydra configs compose, presets apply, and bad values fail naming their key."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_module
from hydra.errors import ConfigCompositionException
from omegaconf import DictConfig

import distill.configs
from distill.distributed import DistContext
from distill.features import TeacherSpec
from distill.models import PRESETS, Student
from distill.models.config import StudentConfig
from distill.stats import FeatureStats
from distill.teachers import load_teacher
from distill.train import main
from distill.train.config import RunConfig, load_run_config
from distill.train.data import LoaderPlan
from distill.train.setup import build_loss_config, check_architecture, load_student_weights, student_config
from distill.train.typed import ConfigError

REQUIRED = ["dataset.root=/data", "dataset.name=imagenet"]


def make_stats(spec: TeacherSpec) -> FeatureStats:
    cls = None if spec.cls_channels is None else torch.zeros(spec.cls_channels)
    ones = None if spec.cls_channels is None else torch.ones(spec.cls_channels)
    return FeatureStats(spec.name, torch.zeros(spec.channels), torch.ones(spec.channels), cls, ones, count=1)


def composed(*overrides: str) -> DictConfig:
    with initialize_config_module(config_module="distill.configs", version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


def run_config(*overrides: str) -> RunConfig:
    return load_run_config(composed(*REQUIRED, *overrides))


def test_defaults() -> None:
    cfg = run_config()
    assert cfg.model["size"] == "deit_small" and sorted(cfg.teachers) == ["clip", "dinov2", "mae"]
    assert cfg.training.lr == 5e-4 and cfg.init_from is None and cfg.resume is None
    assert all(t.source == "hub" and t.weight == 1.0 and not t.online for t in cfg.teachers.values())
    assert build_loss_config(cfg).teacher_weights == {"clip": 1.0, "dinov2": 1.0, "mae": 1.0}
    assert cfg.dataset.device_prefetch == 1


@pytest.mark.parametrize("depth", [0, 3])
def test_dataset_device_prefetch_reaches_the_loader(depth: int) -> None:
    cfg = run_config(f"dataset.device_prefetch={depth}")
    plan = LoaderPlan(cfg, [], DistContext(), {})
    assert plan.config.device_prefetch == depth


@pytest.mark.parametrize(
    ("group", "expected"),
    [
        ("all5", ["clip", "depth_anything", "dinov2", "mae", "sam"]),
        ("cdm", ["clip", "dinov2", "mae"]),
        ("dinov2", ["dinov2"]),
    ],
)
def test_teacher_sets(group: str, expected: list[str]) -> None:
    cfg = run_config(f"teachers={group}", "teacher_source=tiny", f"teachers.{expected[0]}.weight=0.5")
    assert sorted(t.name for t in cfg.teachers.values()) == expected
    assert all(t.source == "tiny" for t in cfg.teachers.values())
    assert build_loss_config(cfg).teacher_weight(expected[0]) == 0.5


MODEL_GROUP = Path(distill.configs.__file__).parent / "model"


def test_every_model_option_is_a_preset() -> None:
    assert sorted(path.stem for path in MODEL_GROUP.glob("*.yaml")) == sorted(PRESETS)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_each_preset_resolves_to_the_same_student_config_both_ways(name: str) -> None:
    """``model=<name>`` through Hydra and the trainer == ``StudentConfig.from_preset(name)`` in Python."""
    spec = load_teacher("dinov2", "tiny", device="cpu").spec
    built = student_config(run_config(f"model={name}"), {"dinov2": spec}, image_size=64)
    assert built == StudentConfig.from_preset(name, {"dinov2": spec}, image_size=64)
    preset = PRESETS[name]
    assert built.backbone == preset.backbone
    assert (built.patch_size, built.d_z, built.decoder_depth) == (
        preset.patch_size,
        preset.d_z,
        preset.decoder_depth,
    )


def test_model_overrides_apply_on_top_of_the_preset() -> None:
    spec = load_teacher("dinov2", "tiny", device="cpu").spec
    cfg = run_config("model=deit_base", "model.bottleneck=none", "model.d_z=256")
    built = student_config(cfg, {"dinov2": spec}, image_size=224)
    assert (built.size, built.d_z, built.bottleneck, built.patch_size) == ("deit_base", 256, "none", 16)


def test_sim_preset_is_the_tiny_student_with_keypoints_on_the_sim_schedule() -> None:
    spec = load_teacher("dinov2", "tiny", device="cpu").spec
    cfg = run_config("preset=sim", "model.d_z=64")
    built = student_config(cfg, {"dinov2": spec}, image_size=64)
    assert (built.size, built.d_z, built.z_keypoints, built.keypoint_sprites, built.patch_size) == (
        "tiny",
        64,
        4,
        True,
        8,
    )
    assert (built.decoder_dim, built.decoder_heads) == (96, 4)
    assert (cfg.training.steps, cfg.training.lr, cfg.init_from) == (3000, 2e-3, None)
    assert cfg.training.loss["sprite_assign_fade_steps"] == 1500  # the rest of training.loss stays default
    assert cfg.training.loss["sprite_assign"] == 0.1


def test_finetune_preset_lowers_lr_and_needs_init_from() -> None:
    with pytest.raises(ConfigError, match=r"^init_from: missing required value"):
        run_config("preset=finetune")
    cfg = run_config("preset=finetune", "init_from=runs/x/student", "training.steps=50")
    assert (cfg.init_from, cfg.training.lr, cfg.training.warmup_steps, cfg.training.steps) == (
        "runs/x/student",
        1e-4,
        200,
        50,
    )
    assert cfg.training.batch_size == 64  # the rest comes from training/default.yaml


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["dataset.root=???"], r"^dataset\.root: missing required value"),
        (["training.batch_size=abc"], r"^training\.batch_size: expected an integer"),
        (["training.batch_size=0"], r"^training\.batch_size: must be a positive number"),
        (["dataset.device_prefetch=-1"], r"^dataset\.device_prefetch: must be"),
        (["teachers.dinov2.weight=-1"], r"^teachers\.dinov2\.weight: must be a finite number >= 0"),
        (["teachers.mae.source=cloud"], r"^teachers\.mae\.source: 'cloud' is not one of 'tiny', 'hub'"),
        (["training.precision=fp16"], r"^training\.precision: 'fp16' is not one of"),
        (["training.teacher_precision=fp16"], r"^training\.teacher_precision: 'fp16' is not one of"),
        (["+training.momentum=0.9"], r"^training\.momentum: unknown key"),
        (["+model.depth=3"], r"^model\.depth: unknown key"),
        (["+training.loss.focal=1"], r"^training\.loss\.focal: unknown key"),
        (
            ["teachers.mae.name=dinov2"],
            r"^teachers\.mae\.name: teacher 'dinov2' is also listed as teachers\.dinov2",
        ),
    ],
)
def test_bad_values_name_their_key(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        cfg = load_run_config(composed(*REQUIRED, *overrides))
        build_loss_config(cfg)


def test_unknown_override_names_the_key() -> None:
    with pytest.raises(ConfigCompositionException, match=r"Could not override 'training\.lr_typo'"):
        composed(*REQUIRED, "training.lr_typo=1")


def test_a_student_folder_of_another_architecture_is_refused(tmp_path: Path) -> None:
    spec = load_teacher("dinov2", "tiny", device="cpu").spec
    config = StudentConfig.from_preset("tiny", {"dinov2": spec}, image_size=32, decoder_depth=2)
    student = Student(config, load_pretrained=False)
    student.save_pretrained(tmp_path / "student", {"dinov2": make_stats(spec)})
    check_architecture(
        tmp_path / "student",
        dataclasses.replace(config, pretrained="facebook/deit-small-patch16-224"),
        "init_from",
    )
    with pytest.raises(ConfigError, match=r"init_from .* \(d_z: init_from 32, config 16\)"):
        check_architecture(tmp_path / "student", dataclasses.replace(config, d_z=16), "init_from")
    other = Student(dataclasses.replace(config, d_z=16), load_pretrained=False)
    with pytest.raises(ConfigError, match="d_z"):
        load_student_weights(other, tmp_path / "student", "checkpoint")


@pytest.mark.filterwarnings(
    "ignore:Unable to enable fault handler"
)  # torchrun's @record under pytest's capture
def test_help_shows_usage_and_groups(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(sys, "argv", ["train_rvfm.py", "--help"])
    main()  # prints the help and returns without training
    text = capsys.readouterr().out
    assert "torchrun --nproc_per_node=8 scripts/train_rvfm.py" in text
    for line in (
        "model: deit_base, deit_small, deit_tiny, tiny",
        "preset: align, finetune, sim, train",
        "teachers: all5, cdm, dinov2",
    ):
        assert line in text
