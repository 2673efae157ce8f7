"""LoRA adapters on a student: zero at the start, merged equals unmerged, strict save and load."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from distill.models import Student, StudentConfig
from distill.stats import FeatureStats
from distill.teachers import load_teacher
from distill.train.adapter import AdapterConfig, LoraAdapter
from distill.train.typed import ConfigError

CONFIG = AdapterConfig(rank=4, alpha=8, target_modules=("q_proj", "v_proj"), train=("heads.dinov2",))


def _student() -> Student:
    torch.manual_seed(0)
    spec = load_teacher("dinov2", "tiny").spec
    return Student(
        StudentConfig.from_preset("tiny", {"dinov2": spec}, image_size=32), load_pretrained=False
    ).eval()


def _stats(student: Student) -> dict[str, FeatureStats]:
    spec = student.config.teachers["dinov2"]
    assert spec.cls_channels is not None
    c, k = spec.channels, spec.cls_channels
    return {"dinov2": FeatureStats("dinov2", torch.zeros(c), torch.ones(c), torch.zeros(k), torch.ones(k), 1)}


def _images() -> torch.Tensor:
    return torch.randint(
        0, 256, (3, 3, 32, 32), generator=torch.Generator().manual_seed(1), dtype=torch.uint8
    )


def _perturb(adapter: LoraAdapter[Student]) -> None:
    """What training does to the trainable tensors: every LoRA B away from zero, the head moved."""
    with torch.no_grad():
        for param in adapter.module.parameters():
            if param.requires_grad:
                param.add_(0.3 * torch.randn_like(param))


def test_only_adapters_and_chosen_modules_train_and_start_as_a_no_op() -> None:
    student = _student()
    images = _images()
    before = student(images)
    adapter = LoraAdapter(student, CONFIG)
    trainable = adapter.trainable()
    lora = [n for n in trainable if ".lora_" in n]
    assert len(lora) == 2 * 2 * student.config.backbone.depth  # A and B, q_proj and v_proj, per layer
    assert all(".q_proj." in n or ".v_proj." in n for n in lora)
    assert sorted(set(trainable) - set(lora)) == sorted(
        f"heads.dinov2.{n}" for n, _ in student.heads["dinov2"].named_parameters()
    )
    after = student(images)  # B = 0: the adapted student is the old one
    assert torch.equal(after.z, before.z) and torch.equal(
        after.features["dinov2"].patch, before.features["dinov2"].patch
    )


def test_merged_equals_unmerged_and_loads_strictly(tmp_path: Path) -> None:
    student = _student()
    adapter = LoraAdapter(student, CONFIG)
    _perturb(adapter)
    images = _images()
    with torch.no_grad():
        unmerged = student(images)
        merged = adapter.merged()
        assert not any(".lora_" in n or "base_layer" in n for n in merged.state_dict())
        out = merged(images)
    torch.testing.assert_close(out.z, unmerged.z, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(
        out.features["dinov2"].patch, unmerged.features["dinov2"].patch, rtol=1e-5, atol=1e-5
    )
    assert not torch.allclose(unmerged.z, _student()(images).z, atol=1e-3), (
        "the perturbation must change outputs"
    )
    assert any(".lora_" in n for n, _ in student.named_parameters()), (
        "merging must not touch the live student"
    )

    merged.save_pretrained(tmp_path / "merged", _stats(merged))
    loaded = Student.from_pretrained(tmp_path / "merged")
    with torch.no_grad():
        assert torch.equal(loaded(images).features["dinov2"].patch, out.features["dinov2"].patch)


def test_adapter_folder_round_trip_and_strictness(tmp_path: Path) -> None:
    adapter = LoraAdapter(_student(), CONFIG)
    _perturb(adapter)
    adapter.save(tmp_path / "adapter")
    assert sorted(p.name for p in (tmp_path / "adapter").iterdir()) == [
        "adapter_config.json",
        "adapter_model.safetensors",
        "trained_modules.safetensors",
    ]
    fresh = LoraAdapter(_student(), CONFIG)
    fresh.load(tmp_path / "adapter")
    images = _images()
    with torch.no_grad():
        assert torch.equal(fresh.module(images).z, adapter.module(images).z)

    with pytest.raises(ConfigError, match="another adapter config"):
        LoraAdapter(_student(), AdapterConfig(8, 16, ("q_proj", "v_proj"), ("heads.dinov2",))).load(
            tmp_path / "adapter"
        )
    with pytest.raises(ConfigError, match=r"no module 'heads\.clip'"):
        LoraAdapter(_student(), AdapterConfig(4, 8, ("q_proj",), ("heads.clip",)))
